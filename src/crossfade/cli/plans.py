"""`crossfade simulate`, `plan` and `demo`: a migration played in virtual time on synthetic traffic, before
any real call depends on it."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from crossfade.cli.common import SERVER_EXTRA, AsJson, _fail, _message, _seconds, _write, out, shown
from crossfade.spec import SpecError, format_duration, format_percent, load_spec


def simulate(
    file: Annotated[Path, typer.Argument(help="The spec file to simulate.")],
    rps: Annotated[float, typer.Option("--rps", min=0.001, max=1e7, help="Calls per second.")] = 200.0,
    legacy: Annotated[str, typer.Option(
        "--legacy", help='Legacy\'s behaviour, e.g. "errors=1% latency=lognormal(50ms,0.4) cost=0.001".')] = "",
    candidate: Annotated[str, typer.Option(
        "--candidate", help='The candidate\'s, e.g. "errors=3% latency=x1.5 cost=x2 lost=0.8%" (x: times legacy; '
                            "default: as legacy; a custom metric the spec declares: lost=0.8% on that share of "
                            "calls, tokens=800 on every call).")] = "",
    fault: Annotated[str | None, typer.Option(
        "--fault", help="step (default) or drift: how the candidate turns into the behaviour given.")] = None,
    fault_at: Annotated[str | None, typer.Option(
        "--fault-at", help="When the fault begins, e.g. 2h; the candidate behaves like legacy before.")] = None,
    fault_over: Annotated[str | None, typer.Option("--fault-over", help="How long a drift takes, e.g. 1h.")] = None,
    keys: Annotated[int, typer.Option("--keys", min=0, help="Routing keys, Zipf-popular; 0: a key per call.")] = 10_000,
    zipf: Annotated[float, typer.Option("--zipf", min=0, help="Zipf exponent of key popularity.")] = 1.1,
    runs: Annotated[int, typer.Option("--runs", min=1, help="Independent runs (estimates duration and "
                                                           "rollback chance).")] = 1,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the first run; run i uses seed + i.")] = 0,
    approve_after: Annotated[str, typer.Option(
        "--approve-after", help="When the simulation approves a stage that needs it (a duration, or never).")] = "0s",
    until: Annotated[str | None, typer.Option(
        "--until", help="Simulated time before giving up (default: twice the holds plus 1h, at least 6h).")] = None,
    mode: Annotated[str, typer.Option(
        "--mode", help="calls (every call through mig.run), aggregate (drawn per interval) or auto.")] = "auto",
    jobs: Annotated[int | None, typer.Option("--jobs", min=1, help="Processes for --runs (default: cores).")] = None,
    as_json: AsJson = False,
) -> None:
    """Run the migration in virtual time on synthetic traffic through the real SDK and controller.

    Prints the timeline and the outcome of a run, or with --runs the spread of outcomes and durations.
    """
    import re

    from crossfade.simulate import (
        OUTCOMES,
        Workload,
        WorkloadError,
        check_workload,
        key_shares,
        median,
        parse_arm,
        parse_fault,
        simulate_many,
        wilson,
    )
    try:
        spec = load_spec(file)
    except SpecError as exc:
        _fail(_message(exc), 2)
    try:
        legacy_arm = parse_arm(legacy, label="--legacy")
        workload = Workload(
            rps=rps, legacy=legacy_arm, candidate=parse_arm(candidate, base=legacy_arm, label="--candidate"),
            fault=parse_fault(fault, fault_at, fault_over), keys=keys, zipf=zipf, mode=mode)
        check_workload(spec, workload)
        approve = None if approve_after.strip().lower() == "never" else _seconds("--approve-after", approve_after)
        limit = None if until is None else _seconds("--until", until)
    except (WorkloadError, ValueError) as exc:
        _fail(_message(exc), 2)
    results = simulate_many(spec, workload, runs=runs, seed=seed, approve=approve, until=limit,
                            jobs=1 if runs == 1 else jobs)
    counts = {name: sum(1 for r in results if r.outcome == name) for name in OUTCOMES}
    middle = median([r.duration_s for r in results])
    if as_json:
        sys.stdout.write(json.dumps({"runs": runs, "outcomes": counts, "median_duration_s": middle,
                                     "detail": [r.to_dict() for r in results]}, indent=2) + "\n")
        return
    fault_text = f"; candidate fault: {workload.fault.describe()}" if workload.fault else ""
    out.print(f"[bold]{spec.name}[/bold]: {rps:g} rps, "
              + (f"{keys:,} keys (Zipf {zipf:g})" if keys else "a key per call") + fault_text)
    out.print(f"  legacy:    {workload.legacy.describe()}\n  candidate: {workload.candidate.describe()}")
    for share in key_shares(spec, workload):
        out.print(f"  {share.stage}: {format_percent(share.traffic)} of keys carry {share.share:.1%} of calls under "
                  f"salt {spec.salt!r} ({share.low:.1%}..{share.high:.1%}, median {share.median:.1%}, over "
                  f"{share.salts} other salts)")
    if runs == 1:
        result = results[0]
        for entry in result.timeline:
            out.print(f"  +{format_duration(round(entry.elapsed)):>9} {shown(entry.stage or '-'):<12} "
                      f"[bold]{entry.kind}[/bold] by {shown(entry.actor)}: {shown(entry.text)}")
        out.print(shown(result.summary()))
        return
    rolled = counts["rolled_back"]
    low, high = wilson(rolled, runs)
    out.print(", ".join(f"{name.replace('_', ' ')} {n}" for name, n in counts.items()) + f" of {runs} runs")
    done = sorted(r.duration_s for r in results if r.outcome == "completed")
    if done:
        out.print(f"duration when completed: median {format_duration(round(median(done) or 0))}, "
                  f"{format_duration(round(done[0]))} to {format_duration(round(done[-1]))}")
    out.print(f"rolled back in {format_percent(rolled / runs)} of runs (95% interval "
              f"{format_percent(round(low, 4))}..{format_percent(round(high, 4))}); for a healthy candidate this "
              "is the false-rollback chance")
    reasons: dict[str, int] = {}
    for r in results:
        if r.outcome != "completed":
            # Group by what fired (the words before its numbers), not by the numbers themselves.
            what = re.match(r"(.*?)(?=\s[+\-x]?\d|$)", r.reason)
            key = f"{r.outcome.replace('_', ' ')} at {r.stage}: {what.group(1) if what else r.reason}"
            reasons[key] = reasons.get(key, 0) + 1
    for reason, n in sorted(reasons.items(), key=lambda kv: -kv[1])[:5]:
        out.print(f"  {n} x {shown(reason)}")


def plan(
    file: Annotated[Path, typer.Argument(help="The spec file, or a program file (`program:` and `components:`).")],
    rps: Annotated[float | None, typer.Option("--rps", min=0.001, help="Calls per second to simulate the "
                                               "timeline at (without it: no simulation; a program's components "
                                               "use their own `rps:` first).")] = None,
    runs: Annotated[int, typer.Option("--runs", min=1, help="Simulated runs per scenario.")] = 20,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write the plan here.")] = None,
    as_html: Annotated[bool, typer.Option("--html", help="An HTML page instead of Markdown.")] = False,
    legacy: Annotated[str, typer.Option(
        "--legacy", help='Legacy\'s behaviour for the simulations and what each stage can detect, e.g. '
                         '"errors=0.2% latency=lognormal(2s,0.6) cost=0.01" (default: 1% errors, 50 ms).')] = "",
) -> None:
    """Render a Markdown migration plan: phases, success criteria, rollback, testing, timeline, communication.

    Given a program file, the strategy package for all its migrations: phases in dependency order with the
    critical path, acceptance, rollback with data preservation and its rehearsal, shadow's extra cost and the
    communication plan."""
    from crossfade import plandoc
    from crossfade.program import is_program, load_program
    from crossfade.simulate import WorkloadError, parse_arm
    from crossfade.spec import read_document

    if output is not None and not output.parent.is_dir():
        _fail(f"cannot write {output}: no directory {output.parent}", 2)
    try:
        if is_program(read_document(file, str(file))):
            program = load_program(file)
            simulate = rps or any(c.rps for c in program.components)
            estimates = plandoc.estimate_program(program, rps=rps, runs=runs) if simulate else None
            document, title = plandoc.render_program(program, estimates, source=str(file)), program.name
        else:
            spec = load_spec(file)
            legacy_arm = parse_arm(legacy, label="--legacy") if legacy else None
            estimates = plandoc.estimate(spec, rps=rps, runs=runs, legacy=legacy_arm) if rps else None
            document = plandoc.render(spec, estimates)
            title = spec.name
    except SpecError as exc:
        _fail(_message(exc), 2)
    except WorkloadError as exc:
        _fail(str(exc), 2)
    if as_html:
        document = plandoc.to_html(document, f"Migration plan: {title}")
    if output is None:
        sys.stdout.write(document)
    else:
        _write(output, document)
        out.print(f"wrote {output}")


def demo(
    faulty: Annotated[bool, typer.Option("--faulty", help="Only the faulty candidate's story.")] = False,
    speed: Annotated[float, typer.Option("--speed", min=0.0, help="Simulated seconds per real second "
                                         "(0: as fast as possible).")] = 600.0,
    keep: Annotated[Path | None, typer.Option("--keep", help="Keep each story's database (FILE-1.db, "
                                              "FILE-2.db) to explore with status and history.")] = None,
    dashboard: Annotated[bool, typer.Option("--dashboard", help="Serve the web dashboard while the stories "
                                            "play (needs the server extra: pip install '.\\[server]' from a clone).")] = False,
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="The dashboard's port.")] = 8765,
) -> None:
    """Watch the controller run a bundled migration on simulated traffic: a healthy candidate shadows,
    ramps and completes; a faulty one is caught and rolled back. Under a minute; exit 0 when both end so."""
    from crossfade.demo import run_demo

    if dashboard:
        try:
            import crossfade.server  # noqa: F401 - the web stack the dashboard needs, or the hint to install it
        except ModuleNotFoundError as exc:
            _fail(f"--dashboard needs the server extra: {SERVER_EXTRA} ({exc})")
    if keep is not None and not keep.resolve().parent.is_dir():
        _fail(f"cannot keep the databases as {keep}: directory {keep.resolve().parent} does not exist", 2)
    target = None if keep is None else f"sqlite:///{keep.resolve().with_suffix('.db')}"
    # Lines of text are never cut when piped; the demo's panels are drawn to a page's width instead.
    console = out if out.is_terminal else Console(highlight=False, width=100)
    raise typer.Exit(run_demo(console, speed=speed, faulty_only=faulty, keep=target,
                              dashboard=port if dashboard else None))
