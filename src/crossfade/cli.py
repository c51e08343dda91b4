"""The `crossfade` command: write and check specs, move migrations, and read their state and history."""

from __future__ import annotations

import json
import math
import os
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from crossfade import __version__
from crossfade.backends import open_backend
from crossfade.backends.base import BackendError, InvalidURL, OutcomeUnknown, UnknownMigration, redact_url
from crossfade.client import DEFAULT_URL, Client
from crossfade.events import (
    ChainBreak,
    Event,
    State,
    TransitionError,
    spec_digest,
    verify,
    verify_snapshot,
    verify_specs,
)
from crossfade.judge import format_rate
from crossfade.shadow import MISMATCH, TOTALS, add_counts, verdict
from crossfade.spec import (
    EXAMPLE,
    ShadowSettings,
    SpecError,
    format_duration,
    format_percent,
    json_schema,
    load_spec,
)
from crossfade.telemetry import arm_metrics

app = typer.Typer(
    name="crossfade",
    help="Replace a running system without breaking it: staged, measured, reversible migrations.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
audit_app = typer.Typer(help="Check the tamper-evident event log.", no_args_is_help=True)
db_app = typer.Typer(help="Manage the backend's schema.", no_args_is_help=True)
token_app = typer.Typer(help="Manage the control plane's API tokens (on its database).", no_args_is_help=True)
app.add_typer(audit_app, name="audit")
app.add_typer(db_app, name="db")
app.add_typer(token_app, name="token")
notify_app = typer.Typer(help="Notifications: what was sent to whom, and test messages.", no_args_is_help=True)
app.add_typer(notify_app, name="notify")

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)
# Without a terminal (a pipe, a file, CI) Rich would cut tables to 80 columns: lines are as long as they need.
_UNCUT = 1_000


def _version(show: bool) -> None:
    if show:
        sys.stdout.write(f"crossfade {__version__}\n")
        raise typer.Exit()


@app.callback()
def _setup(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.", is_eager=True,
                                          callback=_version)] = False,
) -> None:
    for console in (out, err):
        if not console.is_terminal:
            console.width = _UNCUT

# Where crossfade comes from decides how its extra is installed: from PyPI, or from a clone of the repository.
SERVER_EXTRA = "pip install 'crossfade[server]' (from a clone of the repository: pip install '.[server]')"

Url = Annotated[
    str | None,
    typer.Option("--url", help=f"Backend URL (default: $CROSSFADE_URL, else {DEFAULT_URL}).", show_default=False),
]
Name = Annotated[str, typer.Argument(help="The migration's name.")]
Actor = Annotated[str | None, typer.Option("--actor", help="Who acts (default: the OS user).")]
DryRun = Annotated[bool, typer.Option("--dry-run", help="Print the event it would write; write nothing.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]


# C0 and C1 controls, DEL, line and paragraph separators, bidirectional overrides, lone surrogates: what could
# move the cursor, rewrite the terminal or hide text, when it comes from someone else.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def shown(value: object) -> str:
    """Text from outside (a reason, an actor, a name, a path, an example) as it may be printed: control
    characters escaped (an ESC shows as \\x1b) and Rich markup inert (`[/x]` prints as itself)."""
    text = _UNPRINTABLE.sub(lambda m: m.group().encode("unicode_escape", "backslashreplace").decode(), str(value))
    return escape(text)


def shown_lines(value: object) -> str:
    """Like `shown`, keeping line breaks (for messages of several lines, such as a spec's problems)."""
    return "\n".join(shown(line) for line in str(value).split("\n"))


def _fail(message: str, code: int = 1) -> NoReturn:
    """Print one line to stderr and exit: 1 when refused, 2 for invalid input."""
    # Escaped: a message's own brackets (an extra such as crossfade[server], a path) are text, not markup;
    # control characters from others' text (a reason, a name) are shown escaped.
    err.print(f"[red]error:[/red] {shown_lines(message)}", soft_wrap=True)
    raise typer.Exit(code)


def _message(exc: BaseException) -> str:
    """An exception's text as written (a LookupError's str() would wrap it in quotes); a spec's one problem
    as its one line."""
    if isinstance(exc, SpecError) and len(exc.problems) == 1:
        return f"{exc.source}: {exc.problems[0]}"
    return exc.args[0] if len(exc.args) == 1 and isinstance(exc.args[0], str) else str(exc)


def _target(url: str | None, *, changes: bool = False) -> str:
    """The backend URL a command uses (--url, else $CROSSFADE_URL, else the default); exits 2 on an empty
    one, and, for a command that changes state (`changes`), on an in-memory database that would vanish."""
    if url is not None and not url.strip():
        _fail("--url is empty: give a backend URL (sqlite:///crossfade.db, postgresql://..., http://host:8765), "
              "or leave --url out to use $CROSSFADE_URL", 2)
    target = url or os.environ.get("CROSSFADE_URL") or DEFAULT_URL
    if changes and target.startswith("sqlite:") and target.removeprefix("sqlite:").lstrip("/") in ("", ":memory:"):
        _fail(f"{target} is an in-memory database: what this command writes would vanish when it exits; "
              "use a file, e.g. sqlite:///crossfade.db", 2)
    return target


def _open(url: str | None, *, changes: bool = False) -> Any:
    """The backend a command uses, or one line and exit 2 (a URL that names no store) or 1 (unreachable)."""
    try:
        # A control plane URL (http://...) authenticates with $CROSSFADE_TOKEN; the events name the token.
        return open_backend(_target(url, changes=changes), token=os.environ.get("CROSSFADE_TOKEN"))
    except InvalidURL as exc:
        _fail(_message(exc), 2)
    except BackendError as exc:
        _fail(_message(exc))


def _name(name: str | None) -> str | None:
    """A migration name given on the command line: an empty one is invalid input (exit 2)."""
    if name is not None and not name.strip():
        _fail("the migration name is empty: give one (crossfade status lists them)", 2)
    return name


@contextmanager
def _client(url: str | None, *, changes: bool = False) -> Iterator[Client]:
    """A client for one command, whose errors become one clear line and an exit code, not a traceback."""
    # The backend is opened first, so an unreachable one is this command's one error line, not a warning
    # from the SDK (which would route to legacy and go on) followed by the error.
    backend = _open(url, changes=changes)
    try:
        backend.states()
    except BackendError as exc:
        backend.close()
        _fail(_message(exc))
    client = Client(backend, refresh=3600, background=False)
    try:
        yield client
    except SpecError as exc:
        _fail(_message(exc), 2)
    except OutcomeUnknown as exc:
        # Never "failed": the change may have been written. Exit 3 tells a script to re-read, not to retry.
        err.print(f"[yellow]unknown:[/yellow] {shown_lines(exc)}", soft_wrap=True)
        raise typer.Exit(3) from None
    except (TransitionError, UnknownMigration, BackendError) as exc:
        _fail(_message(exc))
    finally:
        client.close()


def _print_event(event: Event, *, dry_run: bool = False) -> None:
    prefix = "[yellow]would write[/yellow] " if dry_run else ""
    detail = shown(", ".join(f"{k}={v}" for k, v in event.payload.items() if k not in ("digest",)))
    out.print(f"{prefix}{shown(event.migration)} #{event.seq} [bold]{shown(event.type)}[/bold] by {shown(event.actor)}"
              + (f": {shown(event.reason)}" if event.reason else "") + (f" ({detail})" if detail else ""))


# -- specs --------------------------------------------------------------------------------------


@app.command()
def init(
    path: Annotated[Path, typer.Argument(help="Where to write the example spec.")] = Path("migration.yaml"),
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
) -> None:
    """Write a commented example spec to start from."""
    if path.exists() and not force:
        _fail(f"{path} exists; pass --force to overwrite it, or name another file")
    _write(path, EXAMPLE)
    out.print(f"wrote {shown(path)}: edit it, then `crossfade validate {shown(path)}` and "
              f"`crossfade apply {shown(path)}`")


def _write(path: Path, text: str) -> None:
    """Write a file the user named; a missing directory is invalid input (2), another failure refused (1)."""
    if not path.parent.is_dir():
        _fail(f"cannot write {path}: directory {path.parent} does not exist", 2)
    try:
        path.write_text(text)
    except OSError as exc:
        _fail(f"cannot write {path}: {exc.strerror or exc}")


@app.command()
def validate(files: Annotated[list[Path], typer.Argument(help="Spec files to check.")]) -> None:
    """Check spec files; every problem of every file is reported at once."""
    failed = False
    for path in files:
        try:
            spec = load_spec(path)
        except SpecError as exc:
            failed = True
            err.print(shown_lines(exc), soft_wrap=True)
        else:
            out.print(f"{shown(path)}: ok ({spec.name}, {len(spec.stages)} stages)")
    if failed:
        raise typer.Exit(1)


@app.command()
def schema(telemetry: Annotated[bool, typer.Option("--telemetry", help="The schema of the open telemetry form "
                                                   "that POST /v1/telemetry takes from any language.")] = False
           ) -> None:
    """Print the JSON Schema of spec files (point your editor at it for completion)."""
    if telemetry:
        from importlib.resources import files

        sys.stdout.write(files("crossfade").joinpath("schemas/telemetry.schema.json").read_text())
        return
    sys.stdout.write(json.dumps(json_schema(), indent=2) + "\n")


@app.command()
def apply(
    file: Annotated[Path, typer.Argument(help="The spec file.")],
    url: Url = None,
    actor: Actor = None,
    dry_run: DryRun = False,
) -> None:
    """Store a spec (a new migration, or a new version of one); idempotent."""
    try:
        spec = load_spec(file)
    except SpecError as exc:
        _fail(_message(exc), 2)
    with _client(url, changes=True) as cf:
        event = cf.apply(spec, actor=actor, dry_run=dry_run)
        if event is None:
            out.print(f"{spec.name}: unchanged (this spec is already applied)")
        else:
            _print_event(event, dry_run=dry_run)


def _operation(name: str, url: str | None, act: Callable[[Any], Event], dry_run: bool, reason: str | None) -> None:
    _name(name)
    if reason is not None and not reason.strip():
        _fail("--reason is empty: say why (it goes into the audit log)", 2)
    with _client(url, changes=True) as cf:
        event = act(cf.migration(name))
        _print_event(event, dry_run=dry_run)
        if not dry_run:
            _print_state_line(cf.migration(name).state())


Reason = Annotated[str | None, typer.Option("--reason", help="Why; recorded in the audit log.")]
RequiredReason = Annotated[str, typer.Option("--reason", help="Why; required, recorded in the audit log.")]


@app.command()
def start(name: Name, reason: Reason = None, url: Url = None, actor: Actor = None, dry_run: DryRun = False) -> None:
    """Start a migration at its first stage."""
    _operation(name, url, lambda m: m.start(reason, actor=actor, dry_run=dry_run), dry_run, reason)


@app.command()
def promote(
    name: Name,
    reason: Reason = None,
    force: Annotated[bool, typer.Option("--force", help="Promote past a failing gate (recorded).")] = False,
    url: Url = None,
    actor: Actor = None,
    dry_run: DryRun = False,
) -> None:
    """Move a running migration to its next stage."""
    _operation(name, url, lambda m: m.promote(reason, actor=actor, force=force, dry_run=dry_run), dry_run, reason)


@app.command()
def pause(name: Name, reason: Reason = None, url: Url = None, actor: Actor = None, dry_run: DryRun = False) -> None:
    """Route every key to legacy and hold the stage."""
    _operation(name, url, lambda m: m.pause(reason, actor=actor, dry_run=dry_run), dry_run, reason)


@app.command()
def resume(name: Name, reason: Reason = None, url: Url = None, actor: Actor = None, dry_run: DryRun = False) -> None:
    """Return a paused migration to its stage's traffic."""
    _operation(name, url, lambda m: m.resume(reason, actor=actor, dry_run=dry_run), dry_run, reason)


@app.command()
def rollback(
    name: Name,
    reason: RequiredReason,
    url: Url = None,
    actor: Actor = None,
    dry_run: DryRun = False,
) -> None:
    """Send every key back to legacy at once."""
    _operation(name, url, lambda m: m.rollback(reason, actor=actor, dry_run=dry_run), dry_run, reason)


@app.command("step-back")
def step_back(
    name: Name,
    to: Annotated[str | None, typer.Option("--to", help="Return to the latest earlier stage at or below this "
                                           "traffic (10%); default: the stage before.")] = None,
    reason: Reason = None, url: Url = None, actor: Actor = None, dry_run: DryRun = False,
) -> None:
    """A partial rollback: return a running migration to an earlier stage, keeping that stage's traffic."""
    from crossfade.spec import parse_percent

    try:
        fraction = None if to is None else parse_percent(to)
    except ValueError as exc:
        _fail(f"--to {to!r}: {exc}", 2)
    _operation(name, url, lambda m: m.step_back(reason, to=fraction, actor=actor, dry_run=dry_run), dry_run, reason)


@app.command()
def approve(name: Name, reason: Reason = None, url: Url = None, actor: Actor = None, dry_run: DryRun = False) -> None:
    """Approve the stage a migration awaits: it is entered at once."""
    _operation(name, url, lambda m: m.approve(reason, actor=actor, dry_run=dry_run), dry_run, reason)


@app.command()
def abort(
    name: Name,
    reason: RequiredReason,
    url: Url = None,
    actor: Actor = None,
    dry_run: DryRun = False,
) -> None:
    """Give the attempt up: every key to legacy, nothing more until `restart`."""
    _operation(name, url, lambda m: m.abort(reason, actor=actor, dry_run=dry_run), dry_run, reason)


@app.command()
def restart(name: Name, reason: Reason = None, url: Url = None, actor: Actor = None, dry_run: DryRun = False) -> None:
    """Begin a new attempt at the first stage after a rollback or an abort (same salt, same buckets)."""
    _operation(name, url, lambda m: m.restart(reason, actor=actor, dry_run=dry_run), dry_run, reason)


@app.command("run-controller")
def run_controller(
    names: Annotated[list[str] | None, typer.Argument(help="Migrations to run (default: every active one).")] = None,
    url: Url = None,
    once: Annotated[bool, typer.Option("--once", help="One tick, then exit.")] = False,
    poll: Annotated[float, typer.Option("--poll", min=0.01, max=3600,
                                        help="Seconds between looks for due migrations.")] = 1.0,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="One tick: print the events it would write, "
                                          "write nothing.")] = False,
) -> None:
    """Run the controller: judge each active migration every analysis interval and act on it.

    Several may run against one backend: a lease per migration lets exactly one act. Stop with Ctrl-C.
    """
    import logging
    import signal
    import threading

    from crossfade.loop import ControllerLoop, NotificationOutbox

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    # Alembic narrates a schema creation at INFO; crossfade's own lines are the ones an operator reads.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    target = _target(url, changes=True)
    backend = _open(target, changes=True)
    loop = ControllerLoop(backend, names=names or None, on_tick=_print_dry_tick if dry_run else _print_tick,
                          dry_run=dry_run)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    # Notifications go out from wherever the controller runs (not in a dry run: it sends nothing).
    outbox = NotificationOutbox(backend, holder=loop.holder, link=os.environ.get("CROSSFADE_PUBLIC_URL"))
    # Its own pace, not the controller's --poll: a second is soon enough to tell people.
    notifier = threading.Thread(target=outbox.run, args=(stop,), kwargs={"poll": max(poll, 1.0)},
                                name="crossfade-notifier", daemon=True)
    try:
        if once or dry_run:
            loop.tick()
            loop.release()
            if not dry_run:
                outbox.pump()
                outbox.release()
        else:
            out.print(f"controller {shown(loop.holder)} on {shown(redact_url(target))}")
            notifier.start()
            loop.run(stop, poll=poll)
    except KeyboardInterrupt:
        loop.release()
    except BackendError as exc:
        _fail(_message(exc))
    finally:
        stop.set()
        if notifier.is_alive():
            notifier.join(timeout=15)
        backend.close()


def _print_tick(tick: Any) -> None:
    for event in tick.events:
        _print_event(event)


def _print_dry_tick(tick: Any) -> None:
    for event in tick.events:
        if event.type == "verdict":
            out.print(f"[yellow]would write[/yellow] {event.migration} #{event.seq} [bold]verdict[/bold] by "
                      f"{event.actor}")
            for gate in event.payload["gates"]:
                out.print(f"      {_colour(gate['verdict'])} {escape(gate['message'])}")
            continue
        _print_event(event, dry_run=True)
    if not tick.events:
        out.print(f"{shown(tick.migration)}: nothing to do now" + (f" (waiting for {shown(tick.assessment.waiting_for)})"
                                                             if tick.assessment and tick.assessment.waiting_for else ""))


@app.command()
def simulate(
    file: Annotated[Path, typer.Argument(help="The spec file to simulate.")],
    rps: Annotated[float, typer.Option("--rps", min=0.001, max=1e7, help="Calls per second.")] = 200.0,
    legacy: Annotated[str, typer.Option(
        "--legacy", help='Legacy\'s behaviour, e.g. "errors=1% latency=lognormal(50ms,0.4) cost=0.001".')] = "",
    candidate: Annotated[str, typer.Option(
        "--candidate", help='The candidate\'s, e.g. "errors=3% latency=x1.5 cost=x2" (x: times legacy; '
                            "default: as legacy).")] = "",
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


def _seconds(option: str, text: str) -> float:
    from crossfade.spec import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise ValueError(f"{option} {text}: {exc}") from None


@app.command()
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


# -- reading ------------------------------------------------------------------------------------


def _print_state_line(state: State) -> None:
    stage = f"stage {shown(state.stage)} ({state.stage_index + 1})" if state.stage else "not started"
    out.print(f"{shown(state.name)}: [bold]{shown(state.status)}[/bold], {stage}, candidate traffic "
              f"{format_percent(state.traffic)}")
    for router, status, candidate, detail in state.routers:
        colour = "green" if status == "verified" else "red" if status == "failed" else "yellow"
        out.print(f"  router {router}: [{colour}]{status}[/{colour}] at {format_percent(candidate)} candidate"
                  + (f" ({detail})" if detail else ""))


def _ms(seconds: float) -> str:
    if math.isnan(seconds):
        return "-"
    return f"{seconds * 1e6:.0f}us" if seconds < 0.001 else f"{seconds * 1000:.1f}ms"


def _stage_report(cf: Client, state: State) -> dict[str, Any]:
    """Per-arm metrics of the current stage and, for an active migration, the controller's view of it."""
    from crossfade.controller import assess, is_active, stage_cells
    from crossfade.metrics import SourceError, read_stage, source_name
    from crossfade.metrics.telemetry import TelemetrySource
    from crossfade.stagedata import StageTelemetry

    if not state.stage:
        return {"arms": {}}
    spec = cf.migration(state.name).spec()
    source: dict[str, Any] = {"name": source_name(spec.source)[0], "error": None}
    try:
        # As the controller reads it: windows older than the triggers' reach rolled up by hour, so the gates
        # are judged on a few rows per hour instead of one per process and window.
        windows = read_stage(cf.backend(), state, spec, cf.time(), telemetry=TelemetrySource(StageTelemetry()))
    except SourceError as exc:
        source["error"] = str(exc)
        return {"arms": {}, "source": source}
    cells = stage_cells(state, windows)
    report: dict[str, Any] = {"arms": {arm: arm_metrics(c) for arm, c in sorted(cells.items())}, "source": source}
    if is_active(state) and state.stage_index + 1 < len(spec.stages):
        report["controller"] = assess(spec, state, windows, cf.time()).to_dict()
    return report


@app.command()
def status(name: Annotated[str | None, typer.Argument(help="One migration (default: all).")] = None,
           url: Url = None, as_json: AsJson = False,
           program: Annotated[Path | None, typer.Option("--program", help="A program file: each component's "
                                                        "phase, status, stage and traffic.")] = None) -> None:
    """Stage, traffic and, per arm, calls, error rate, p50/p95/p99 latency and cost for the current stage;
    for an active migration, each gate's verdict and what the stage waits for."""
    _name(name)
    if program is not None:
        _program_status(program, url, as_json)
        return
    with _client(url) as cf:
        states = [cf.migration(name).state()] if name is not None else cf.migrations()
        report = [{**state.to_dict(), **_stage_report(cf, state), "shadow": _shadow_totals(cf, state),
                   "dual_writes_stopped": _writes_stopped(cf, state)} for state in states]
        if as_json:
            sys.stdout.write(json.dumps(report if name is None else report[0], indent=2) + "\n")
            return
        if not report:
            out.print("no migrations yet: `crossfade init` writes an example spec, `crossfade apply FILE` stores it")
            return
        for item in report:
            state = State.from_dict({k: v for k, v in item.items()
                                     if k not in ("arms", "controller", "shadow", "source", "dual_writes_stopped")})
            _print_state_line(state)
            source = item.get("source") or {}
            if source.get("error"):
                out.print(f"  [red]SOURCE[/red] metric source {escape(source['name'])} failed: "
                          f"{escape(source['error'])}: the stage holds (no promotion, no rollback) until it answers")
            stopped = item["dual_writes_stopped"]
            if stopped:
                err.print(f"  [yellow]warning:[/yellow] dual writes stopped at event {stopped['seq']} "
                          f"({stopped['type']}, {_utc(stopped['time'])}): the store that is not authoritative now "
                          "has missed every write since; backfill it before `crossfade restart`, or set "
                          "`dual_write_after_rollback: true` to keep both written", soft_wrap=True)
            table = Table(box=None, pad_edge=False)
            for column in ("arm", "calls", "error rate", "fallbacks", "p50", "p95", "p99", "cost/call"):
                table.add_column(column, justify="left" if column == "arm" else "right")
            for arm, m in item["arms"].items():
                table.add_row(
                    shown(arm), str(m["calls"]),
                    "-" if m["error_rate"] is None else format_rate(m["error_rate"]),
                    str(m["fallbacks"]),
                    *(_ms(m[q] if m[q] is not None else math.nan) for q in ("p50", "p95", "p99")),
                    "-" if m["cost_mean"] is None else f"{m['cost_mean']:.6g}",
                )
            if item["arms"]:
                out.print(table)
            elif state.stage:
                out.print("  no calls recorded in this stage yet")
            sh = item["shadow"]
            if sh:
                out.print(f"  shadow: {sh.get('compared', 0)} compared, {sh.get('differing', 0)} differing "
                          f"(`crossfade mismatches {shown(state.name)}`), {sh.get('dropped', 0)} dropped, "
                          f"{sh.get('timeouts', 0)} timed out")
                if sh.get("refused"):
                    out.print(f"  [yellow]note:[/yellow] {sh['refused']} calls of writes=True call sites were not "
                              "shadowed although the stage asks for it; migrate writes with mig.write() in a "
                              "dual_write stage")
                if sh.get("dual_writes"):
                    out.print(f"  dual writes: {sh['dual_writes']}, diverged: {sh.get('divergent', 0)}")
            view = item.get("controller")
            if view:
                for gate in view["gates"]:
                    out.print(f"  {_colour(gate['verdict'])} {shown(gate['gate'])}: {shown(gate['message'])}")
                for firing in view["triggers"]:
                    out.print(f"  [red]TRIGGER[/red] {shown(firing)}")
                if view["waiting_for"]:
                    out.print(f"  waiting for {shown(view['waiting_for'])}")


def _program_status(file: Path, url: str | None, as_json: bool) -> None:
    from crossfade.program import load_program, progress

    try:
        program = load_program(file)
    except SpecError as exc:
        _fail(_message(exc), 2)
    with _client(url) as cf:
        rows = progress(program, {s.name: s for s in cf.migrations()})
    if as_json:
        sys.stdout.write(json.dumps({"program": program.name, "components": [
            {"component": r.component, "migration": r.migration, "phase": r.phase, "status": r.status,
             "stage": r.stage, "traffic": r.traffic} for r in rows]}, indent=2) + "\n")
        return
    done = sum(r.status == "completed" for r in rows)
    out.print(f"{shown(program.name)}: {done} of {len(rows)} components completed")
    table = Table(box=None, pad_edge=False)
    for column in ("phase", "component", "migration", "status", "stage", "traffic"):
        table.add_column(column, justify="right" if column in ("phase", "traffic") else "left")
    for r in rows:
        table.add_row(str(r.phase), shown(r.component), shown(r.migration), shown(r.status), shown(r.stage or "-"),
                      format_percent(r.traffic))
    out.print(table)


def _writes_stopped(cf: Client, state: State) -> dict[str, Any] | None:
    from crossfade.events import dual_writes_stopped

    if state.dual_write or state.stage is None:
        return None
    event = dual_writes_stopped(cf.migration(state.name).history())
    return None if event is None else {"seq": event.seq, "type": event.type, "time": event.time}


def _colour(verdict: str) -> str:
    colour = {"PASS": "green", "FAIL": "red", "INCONCLUSIVE": "yellow"}.get(verdict, "dim")
    return f"[{colour}]{shown(verdict):<12}[/{colour}]"


def _shadow_totals(cf: Client, state: State) -> dict[str, int]:
    """The shadow runs' totals in the current stage (compared, differing, dropped, ...)."""
    if not state.stage:
        return {}
    for row in cf.backend().comparisons(state.name, stage=state.stage):
        if row.path == TOTALS:
            return dict(row.counts)
    return {}


def shadow_report(cf: Client, name: str, stage: str | None, *, limit: int = 3) -> dict[str, Any]:
    """Per field path of a stage: differing counts and rates against legacy and against legacy's own noise,
    the verdict, and the newest examples; plus the shadow runs' totals."""
    state = cf.backend().state(name)
    spec = cf._spec(name, state.spec_version) if state is not None else None
    settings = spec.shadow if spec is not None else ShadowSettings()
    rows = cf.backend().comparisons(name, stage=stage)
    totals: dict[str, int] = {}
    for row in rows:
        if row.path == TOTALS:
            add_counts(totals, row.counts)
    fields: dict[str, dict[str, int]] = {}
    for row in rows:
        if row.path != TOTALS:
            add_counts(fields.setdefault(row.path, {}), row.counts)
    compared, noise_compared = totals.get("compared", 0), totals.get("noise_compared", 0)
    report = []
    for path, counts in sorted(fields.items(), key=lambda kv: -kv[1].get("differing", 0)):
        differing, noise_differing = counts.get("differing", 0), counts.get("noise_differing", 0)
        report.append({
            "path": path, "differing": differing, "rate": differing / compared if compared else None,
            "noise_differing": noise_differing,
            "noise_rate": noise_differing / noise_compared if noise_compared else None,
            "verdict": verdict(compared, differing, noise_compared, noise_differing,
                               relative=settings.noise_relative, absolute=settings.noise_absolute),
            "examples": [{"stage": e.stage, "time": e.time, **e.detail}
                         for e in cf.backend().examples(name, stage=stage, path=path, limit=limit)],
        })
    return {"migration": name, "stage": stage, "totals": totals, "fields": report}


@app.command()
def render(
    name: Name,
    router: Annotated[str, typer.Option("--router", help="Which of the spec's routers (istio, gateway_api, nginx).")],
    stage: Annotated[str | None, typer.Option("--stage", help="Render this stage (default: where the migration "
                                               "stands now).")] = None,
    url: Url = None,
) -> None:
    """Print what a router would apply (Kubernetes manifests, an nginx config), for GitOps or review."""
    from crossfade.registry import ProviderConfigError
    from crossfade.routers import ROUTERS, Renders, RouterError, Target, create

    with _client(url) as cf:
        mig = cf.migration(name)
        state, spec = mig.state(), mig.spec()
        entries = [(i, e) for i, e in enumerate(spec.routers) if isinstance(e, dict) and router in e]
        if not entries:
            named = ", ".join(next(iter(e)) for e in spec.routers if isinstance(e, dict)) or "none"
            _fail(f"the spec of {name} names no {router} router (it names: {named}); add it to the spec, e.g. "
                  f"routers: [{{{router}: {{...}}}}], and apply it (known routers: {', '.join(ROUTERS.names())})", 2)
        try:
            provider = create(entries[0][1], f"routers[{entries[0][0]}]")
            target = Target.for_stage(spec, stage) if stage else Target.from_state(state, spec)
        except KeyError as exc:
            _fail(str(exc).strip("'\""), 2)
        except ProviderConfigError as exc:
            _fail(str(exc), 2)
        if not isinstance(provider, Renders):
            _fail(f"the {router} router has nothing to render: it applies no files", 2)
        try:
            sys.stdout.write(provider.render(target))
        except RouterError as exc:
            _fail(str(exc))


@app.command()
def proxy(
    name: Name,
    legacy: Annotated[str, typer.Option("--legacy", help="The legacy upstream's base URL, e.g. http://127.0.0.1:8001.")],
    candidate: Annotated[str, typer.Option("--candidate", help="The candidate upstream's base URL.")],
    key: Annotated[str, typer.Option("--key", help="Where the sticky key is: header:NAME, cookie:NAME or query:NAME.")],
    listen: Annotated[str, typer.Option("--listen", help="host:port to serve on.")] = "127.0.0.1:8080",
    ignore: Annotated[list[str] | None, typer.Option("--ignore", help="A path left out of the comparison, "
                                                     "e.g. '$.body.request_id' (repeatable).")] = None,
    compare_header: Annotated[list[str] | None, typer.Option("--compare-header", help="A response header "
                                                             "compared (repeatable; default content-type).")] = None,
    timeout: Annotated[float, typer.Option("--timeout", min=0.001, help="Seconds to wait for an upstream.")] = 30.0,
    url: Url = None,
) -> None:
    """Serve a reverse proxy that routes each request to legacy or candidate by its sticky key, falls back,
    mirrors and compares as the stage says, and records telemetry as the SDK does (needs crossfade[proxy])."""
    try:
        from crossfade.proxy import KeySource, ProxySettings
        from crossfade.proxy.run import serve as serve_proxy
    except ImportError as exc:
        _fail(f"crossfade proxy needs the proxy extra: pip install 'crossfade[proxy]' ({exc.name} is missing)")
    from crossfade.shadow import compile_path

    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        _fail(f"--listen {listen!r}: expected host:port, e.g. 127.0.0.1:8080", 2)
    try:
        settings = ProxySettings(legacy, candidate, KeySource.parse(key),
                                 tuple(compare_header) if compare_header else ("content-type",), timeout)
        for path in ignore or ():
            compile_path(path)
    except ValueError as exc:
        _fail(str(exc), 2)
    with _client(url) as cf:
        if cf.backend().state(name) is None:
            raise UnknownMigration(f"no migration named {name!r}; apply its spec first (crossfade apply FILE)")
        out.print(f"crossfade proxy for {name} on http://{listen}: legacy {legacy}, candidate {candidate}, key {key}")
        serve_proxy(cf, name, settings, host=host, port=int(port), ignore=tuple(ignore or ()))


@app.command()
def mismatches(
    name: Name,
    stage: Annotated[str | None, typer.Option("--stage", help="One stage (default: every stage).")] = None,
    limit: Annotated[int, typer.Option("--limit", min=0, help="Examples shown per field.")] = 3,
    url: Url = None,
    as_json: AsJson = False,
) -> None:
    """Where shadow answers differ: per field path, counts, rates, mismatch or noise, and examples."""
    with _client(url) as cf:
        if cf.backend().state(name) is None:
            raise UnknownMigration(f"no migration named {name!r}")
        report = shadow_report(cf, name, stage, limit=limit)
        if as_json:
            sys.stdout.write(json.dumps(report, indent=2, default=str) + "\n")
            return
        t = report["totals"]
        out.print(f"{shown(name)}: {t.get('compared', 0)} shadow comparisons ({t.get('differing', 0)} differing), "
                  f"{t.get('noise_compared', 0)} noise samples; {t.get('dropped', 0)} dropped, "
                  f"{t.get('timeouts', 0)} timed out, {t.get('refused', 0)} refused (writes=True), "
                  f"{t.get('divergent', 0)} of {t.get('dual_writes', 0)} dual writes diverged")
        if not report["fields"]:
            out.print("  no field differs")
            return
        table = Table(box=None, pad_edge=False)
        for column in ("field", "differing", "rate", "noise rate", "verdict"):
            table.add_column(column, justify="left" if column in ("field", "verdict") else "right")
        for f in report["fields"]:
            table.add_row(shown(f["path"]), str(f["differing"]), _rate(f["rate"]), _rate(f["noise_rate"]),
                          f"[red]{shown(f['verdict'])}[/red]" if f["verdict"] == MISMATCH else shown(f["verdict"]))
        out.print(table)
        for f in report["fields"]:
            for example in f["examples"]:
                out.print(f"[bold]{shown(f['path'])}[/bold] at {_utc(example['time'])} ({shown(example['stage'])}): "
                          f"args {shown(example.get('args'))} {shown(example.get('kwargs') or '')}")
                for d in example.get("diff", []):
                    out.print(f"    {shown(d.get('where'))}: legacy {shown(repr(d.get('legacy')))} -> "
                              f"candidate {shown(repr(d.get('candidate')))}")


def _rate(value: float | None) -> str:
    return "-" if value is None else format_percent(round(value, 6))


@app.command()
def history(name: Name, url: Url = None, as_json: AsJson = False) -> None:
    """Every event of a migration, oldest first."""
    with _client(url) as cf:
        events = cf.migration(name).history()
        if not events:
            raise UnknownMigration(f"no migration named {name!r}")
        if as_json:
            sys.stdout.write(json.dumps([e.to_dict() for e in events], indent=2) + "\n")
            return
        for e in events:
            head = f"#{e.seq:<4} {_utc(e.time)}  [bold]{shown(e.type):<18}[/bold] by {shown(e.actor)}"
            if e.type == "verdict":
                out.print(head)
                for g in e.payload["gates"]:
                    out.print(f"      {_colour(g['verdict'])} {shown(g['message'])}")
                continue
            detail = shown(", ".join(f"{k}={_show(v)}" for k, v in e.payload.items() if k != "digest"))
            out.print(head + (f": {shown(e.reason)}" if e.reason else "") + (f" [dim]({detail})[/dim]" if detail else ""))


@app.command()
def replay(
    name: Name,
    spec_file: Annotated[Path, typer.Option("--spec", help="The spec to judge the recorded windows under.")],
    url: Url = None,
    as_json: AsJson = False,
) -> None:
    """Re-judge a past or running migration's recorded windows under another spec: stage by stage, when it
    would have promoted, held or rolled back, beside what was recorded. Tune gates on real data."""
    from crossfade.metrics import SourceError, create_source
    from crossfade.replay import replay as rejudge
    from crossfade.replay import stay

    try:
        other = load_spec(spec_file)
    except SpecError as exc:
        _fail(str(exc), 2)
    with _client(url) as cf:
        mig = cf.migration(name)
        events = mig.history()
        if not events:
            raise UnknownMigration(f"no migration named {name!r}; `crossfade status` lists them")
        recorded = mig.spec()
        if not any(e.type == "started" for e in events):
            _fail(f"{name} was never started: there are no recorded windows to replay")
        source = create_source(recorded.source)
        backend = cf.backend()
        try:
            result = rejudge(other, name, events, lambda p: [
                w for w in source.windows(backend, stay(name, p), recorded, p.end) if w.start < p.end], cf.time())
        except SourceError as exc:
            _fail(f"cannot read the recorded windows of {name}: {exc}")
        def at(t: float | None) -> float | None:
            return None if t is None else t - result.origin

        if as_json:
            recorded, replayed = result.recorded_failure, result.replayed_failure
            sys.stdout.write(json.dumps({
                "migration": name, "spec": str(spec_file), "summary": result.summary(),
                "recorded_failure": None if recorded is None else {
                    "decision": recorded.decision, "stage": recorded.stage, "at_s": at(recorded.decided_at)},
                "replayed_failure": None if replayed is None else {
                    "decision": replayed.decision, "stage": replayed.period.stage, "at_s": at(replayed.decided_at)},
                "recorded_end_s": result.recorded_end - result.origin,
                "stages": [s.to_dict(result.origin) for s in result.stages]}, indent=2) + "\n")
            return
        table = Table(box=None, pad_edge=False)
        for column in ("stage", "entered", "recorded", f"under {spec_file.name}"):
            table.add_column(column)

        def when(t: float | None) -> str:
            return "-" if t is None else f"+{format_duration(t - result.origin)}"

        for s in result.stages:
            table.add_row(escape(s.period.stage), when(s.period.start),
                          f"{s.period.decision} at {when(s.period.decided_at)}" if s.period.decided_at else "held",
                          f"{s.decision} at {when(s.decided_at)}" if s.decided_at else "held")
        out.print(table)
        for s in result.stages:
            out.print(f"  {escape(s.period.stage)}: {escape(s.reason)}")
        out.print(f"{escape(name)} under {escape(str(spec_file))}: {escape(result.summary())}")


def _show(value: Any) -> str:
    return format_percent(value) if isinstance(value, float) and 0 <= value <= 1 else str(value)


def _utc(t: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


@audit_app.command("verify")
def audit_verify(
    name: Name,
    url: Url = None,
    expect: Annotated[str | None, typer.Option(
        "--expect", help="SEQ:HASH of a head recorded earlier outside the database (see the README): the log "
                         "must still hold that event with that hash.")] = None,
    as_json: AsJson = False,
) -> None:
    """Check a migration's hash chain, that the state snapshot routing reads is the fold of its events, and
    that every stored spec version matches the digest its event recorded; exit 1 naming the first problem.

    Prints the head (SEQ:HASH): keep it outside the database, and pass it back as --expect to detect a
    rewritten history, which an unkeyed chain alone cannot.
    """
    anchor = None
    if expect is not None:
        seq_text, _, hash_text = expect.partition(":")
        if not seq_text.isdigit() or not re.fullmatch(r"[0-9a-f]{64}", hash_text):
            _fail("--expect takes SEQ:HASH as audit verify printed it, e.g. 12:3f2a...(64 hex digits)", 2)
        anchor = (int(seq_text), hash_text)
    with _client(url) as cf:
        backend = cf.backend()
        state = backend.state(name)
        events = backend.events(name)
        if state is None and not events:
            raise UnknownMigration(f"no migration named {name!r}")
        problem = (verify(events, head=(state.seq, state.head) if state is not None else None)
                   or verify_snapshot(events, state) or verify_specs(events, lambda v: _stored_digest(backend, name, v))
                   or (_check_anchor(events, anchor) if anchor is not None else None))
        head = f"{events[-1].seq}:{events[-1].hash}" if events else "0:"
        if as_json:
            sys.stdout.write(json.dumps({"migration": name, "events": len(events), "ok": problem is None,
                                         "head": head, "first_bad_event": None if problem is None else problem.seq,
                                         "problem": None if problem is None else problem.problem}) + "\n")
        elif problem is None:
            out.print(f"{shown(name)}: audit log intact ({len(events)} events; the state snapshot and every stored "
                      f"spec match them); head {head}")
        else:
            err.print(f"[red]{shown(name)}: audit log BROKEN at {shown(problem)}[/red]")
        if problem is not None:
            raise typer.Exit(1)


def _stored_digest(backend: Any, name: str, version: int) -> str | None:
    data = backend.spec(name, version)
    return None if data is None else spec_digest(data)


def _check_anchor(events: list[Event], anchor: tuple[int, str]) -> ChainBreak | None:
    seq, digest = anchor
    if seq > len(events):
        return ChainBreak(seq, f"the recorded head {seq} is beyond the log's end ({len(events)}): events were removed")
    if events[seq - 1].hash != digest:
        return ChainBreak(seq, "differs from the head recorded outside the database: history was rewritten")
    return None


@db_app.command("upgrade")
def db_upgrade(
    url: Url = None,
    init_empty: Annotated[bool, typer.Option(
        "--init-empty", help="Make an existing empty (0-byte) SQLite file a new store; crossfade never leaves "
                             "one, so it is refused otherwise.")] = False,
) -> None:
    """Bring the backend's schema to this version of crossfade."""
    from crossfade.backends.sql import upgrade

    target = _target(url, changes=True)
    if target.startswith(("http:", "https:")):
        _fail("db upgrade needs a database URL (sqlite:///... or postgresql://...), not a control plane", 2)
    try:
        before, after = upgrade(target, init_empty=init_empty)
    except InvalidURL as exc:
        _fail(_message(exc), 2)
    except BackendError as exc:
        _fail(_message(exc))
    out.print(f"schema at {after}" + ("" if before == after else f" (was {before or 'empty'})"))


@db_app.command("prune")
def db_prune(
    older_than: Annotated[str, typer.Option("--older-than", help="Delete telemetry, shadow comparisons and "
                                                                   "examples that ended longer ago than this "
                                                                   "(e.g. 30d), except the stages running now.")],
    compact_after: Annotated[str, typer.Option("--compact-after", help="Merge each window's rows (one a process) "
                                                                       "into one once it is this old.")] = "1h",
    url: Url = None,
) -> None:
    """Keep the store bounded: merge old windows' per-process rows into one, and delete what is past retention.

    Run it daily (cron, a Kubernetes CronJob). Merging is exact (cells add up); what a running stage's
    controller reads is never deleted."""
    import time

    from crossfade.backends.sql import SQLBackend
    from crossfade.controller import is_active

    try:
        retention, compaction = _seconds("--older-than", older_than), _seconds("--compact-after", compact_after)
    except ValueError as exc:
        _fail(str(exc), 2)
    target = url or os.environ.get("CROSSFADE_URL") or DEFAULT_URL
    if not target.startswith(("sqlite:", "postgresql:", "postgresql+psycopg:", "postgres:")):
        _fail(f"db prune works on the store itself (sqlite:/// or postgresql://), not a {target.split(':')[0]} URL", 2)
    now = time.time()
    try:
        backend = SQLBackend(target)
        try:
            running = [(s.name, s.stage) for s in backend.states() if s.stage and is_active(s)]
            before, after = backend.compact_telemetry(before=now - compaction)
            removed = backend.prune(before=now - retention, keep=running)
        finally:
            backend.close()
    except BackendError as exc:
        _fail(str(exc))
    out.print(f"compacted {before} telemetry rows into {after}; deleted {removed['telemetry']} telemetry rows, "
              f"{removed['comparisons']} comparison rows and {removed['examples']} examples older than {older_than}")


@app.command()
def serve(
    url: Url = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port to listen on.")] = 8765,
    open_reads: Annotated[bool, typer.Option(
        "--open-reads", help="Let callers on loopback read (GET) without a token, when the Host header is "
                             "localhost, 127.0.0.1, [::1] or an --allowed-host.")] = False,
    allowed_host: Annotated[list[str] | None, typer.Option(
        "--allowed-host", help="Another Host name under which --open-reads answers (repeatable).")] = None,
    trusted_proxy: Annotated[list[str] | None, typer.Option(
        "--trusted-proxy", help="Address of a reverse proxy whose X-Forwarded-For is believed (repeatable); "
                                "without one, the connection's own address is the client's.")] = None,
    max_connections: Annotated[int | None, typer.Option(
        "--max-connections", min=1, help="Open connections allowed (default: 1000, and 64 below the process's "
                                         "descriptor limit).")] = None,
    no_controller: Annotated[bool, typer.Option(
        "--no-controller", help="Serve the API only; run the controller elsewhere.")] = False,
) -> None:
    """Run the control plane: HTTP API, SDK routing feed, dashboard at /, /metrics, and the controller loop.

    Needs the server extra (`pip install 'crossfade[server]'`). Several replicas may share one database: a lease per migration
    lets one controller act. Stop with Ctrl-C.
    """
    target = _target(url, changes=True)
    if target.startswith(("http:", "https:")):
        _fail("serve needs a database URL (sqlite:///... or postgresql://...), not another control plane", 2)
    try:
        from crossfade.server import Limits
        from crossfade.server import serve as run_server
    except ModuleNotFoundError as exc:
        _fail(f"the control plane needs its extra: {SERVER_EXTRA} ({exc})")
    _open(target, changes=True).close()  # a wrong or unreachable URL is one line before anything is served
    where = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    out.print(f"crossfade control plane on {where}: dashboard at {where}/ (sign in with a token), API at "
              f"{where}/v1, metrics at {where}/metrics (they need a viewer token"
              + (", except from loopback)" if open_reads else ")") + "; Ctrl-C stops it")
    limits = Limits() if max_connections is None else Limits(max_connections=max_connections)
    try:
        run_server(target, host=host, port=port, open_reads=open_reads, controller=not no_controller,
                   allowed_hosts=allowed_host or (), trusted_proxies=trusted_proxy or (), limits=limits)
    except InvalidURL as exc:
        _fail(_message(exc), 2)
    except BackendError as exc:
        _fail(_message(exc))


def _token_backend(url: str | None, *, changes: bool) -> Any:
    target = _target(url, changes=changes)
    if target.startswith(("http:", "https:")):
        _fail("tokens are managed on the control plane's database: pass its sqlite:// or postgresql:// URL", 2)
    return _open(target, changes=changes)


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Option("--name", help="Who or what holds it; the actor of the events it causes.")],
    role: Annotated[str, typer.Option("--role", help="viewer, sdk, operator or admin.")] = "viewer",
    migration: Annotated[list[str] | None, typer.Option(
        "--migration", help="Bind the token to this migration (repeatable): it may send telemetry and "
                            "comparisons for these only. Default: every migration.")] = None,
    url: Url = None,
) -> None:
    """Make a token and print it once: only its hash is stored."""
    import time

    from crossfade.tokens import ROLES, new_token, token_hash

    if role not in ROLES:
        _fail(f"unknown role {role!r}: use one of {', '.join(ROLES)}", 2)
    if not name.strip() or len(name) > 200 or any(not ch.isprintable() for ch in name):
        _fail("--name must be printable text of 1 to 200 characters", 2)
    from crossfade.spec import NAME_PATTERN

    bound = migration or []
    bad = [m for m in bound if not re.fullmatch(NAME_PATTERN, m)]
    if bad:
        _fail(f"--migration {shown(bad[0])!s} is not a migration name ([a-z0-9-], 1 to 63 characters)", 2)
    secret = new_token()
    backend = _token_backend(url, changes=True)
    try:
        backend.create_token(name, role, token_hash(secret), time.time(), migrations=bound)
    except BackendError as exc:
        _fail(_message(exc))
    finally:
        backend.close()
    sys.stdout.write(secret + "\n")
    err.print(f"token {shown(repr(name))} ({role}) created; it is shown only this once")


@token_app.command("list")
def token_list(url: Url = None, as_json: AsJson = False) -> None:
    """Every token's name, role and dates (never the token itself)."""
    backend = _token_backend(url, changes=False)
    try:
        records = backend.tokens()
    except BackendError as exc:
        _fail(_message(exc))
    finally:
        backend.close()
    rows = [{"name": t.name, "role": t.role, "created_at": t.created_at, "revoked_at": t.revoked_at}
            for t in records]
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    table = Table(box=None, pad_edge=False)
    for column in ("name", "role", "created", "revoked"):
        table.add_column(column)
    for r in rows:
        table.add_row(shown(r["name"]), shown(r["role"]), _utc(r["created_at"]),
                      "-" if r["revoked_at"] is None else _utc(r["revoked_at"]))
    out.print(table if rows else "no tokens yet: crossfade token create --role ROLE --name NAME")


@token_app.command("revoke")
def token_revoke(name: Annotated[str, typer.Argument(help="The token's name.")], url: Url = None) -> None:
    """Revoke a token; the server refuses it within seconds."""
    import time

    backend = _token_backend(url, changes=True)
    try:
        count = backend.revoke_token(name, time.time())
    except BackendError as exc:
        _fail(_message(exc))
    finally:
        backend.close()
    if not count:
        _fail(f"no active token named {name!r} (crossfade token list shows them)")
    out.print(f"revoked {shown(name)}")


def _notifications(cf: Client, migration: str | None, limit: int) -> list[dict[str, Any]]:
    backend = cf.backend()
    if hasattr(backend, "request"):  # a control plane: ask its API
        return backend.request("GET", "/v1/notifications", query={"migration": migration, "limit": limit})[1]
    outbox = getattr(backend, "outbox", None)
    return [] if outbox is None else [d.to_dict() for d in outbox.list(migration, limit=limit)]


@notify_app.command("status")
def notify_status(
    name: Annotated[str | None, typer.Argument(help="One migration (default: all).")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000, help="How many, newest first.")] = 20,
    url: Url = None, as_json: AsJson = False,
) -> None:
    """Each notification queued from the event log: to whom, of what, delivered, pending (why, next try) or failed."""
    with _client(url) as cf:
        if name:
            cf.migration(name).state()  # an unknown name is an error, not an empty list
        rows = _notifications(cf, name, limit)
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    if not rows:
        out.print("no notifications yet (targets are the spec's `notify:`; `crossfade notify test NAME` sends one)")
        return
    table = Table(box=None, pad_edge=False)
    for column in ("migration", "event", "kind", "target", "status", "tries", "when / next", "last error"):
        table.add_column(column)
    for r in rows:
        when = _utc(r["delivered_at"]) if r["status"] == "delivered" else f"next {_utc(r['next_at'])}"
        colour = {"delivered": "green", "pending": "yellow", "failed": "red"}[r["status"]]
        table.add_row(r["migration"], str(r["seq"]), r["kind"], r["target"], f"[{colour}]{r['status']}[/{colour}]",
                      str(r["attempts"]), when, r["last_error"] or "")
    out.print(table)


@notify_app.command("test")
def notify_test(
    name: Name,
    target: Annotated[str | None, typer.Option("--target", help="One target (default: every target).")] = None,
    url: Url = None,
) -> None:
    """Queue a test message to the migration's notification targets; the control plane delivers it."""
    from crossfade.loop import NotificationOutbox
    from crossfade.notify import UnknownTarget, targets

    with _client(url) as cf:
        spec = cf.migration(name).spec()
        names = [target] if target else [t.name for t in targets(spec.notify)]
        if not names:
            _fail(f"{name} has no notification targets: add one under `notify:` in its spec")
        backend = cf.backend()
        for each in names:
            try:
                if hasattr(backend, "request"):
                    backend.request("POST", "/v1/notifications/test", {"migration": name, "target": each})
                else:
                    NotificationOutbox(backend).test(name, each)
            except UnknownTarget as exc:
                _fail(str(exc).strip("'\""))
            out.print(f"{name}: test message queued for {each}; `crossfade notify status {name}` shows its delivery")


Out = Annotated[Path | None, typer.Option("--out", "-o", help="Write to this file instead of stdout.")]


def _emit(text: str, path: Path | None) -> None:
    if path is None:
        sys.stdout.write(text)
        return
    _write(path, text)
    out.print(f"wrote {path}")


@app.command()
def grafana(name: Annotated[str | None, typer.Argument(help="Show this migration by default.")] = None,
            output: Out = None) -> None:
    """Write a Grafana dashboard (JSON) over the control plane's /metrics: traffic, error rate, latency against
    legacy, cost, mismatches, gates with intervals against limits, rollbacks, notifications."""
    from crossfade.grafana import dashboard
    from crossfade.spec import NAME_PATTERN

    if name is not None and not re.fullmatch(NAME_PATTERN, name):
        _fail(f"{name!r} is not a migration name (lower-case letters, digits and '-', like checkout-pricing)", 2)
    _emit(json.dumps(dashboard(name), indent=2) + "\n", output)


@app.command()
def alerts(output: Out = None) -> None:
    """Write Prometheus alerting rules (YAML) over /metrics: rollbacks, failing gates, controller lag, a stale
    routing feed, failing routers and metric sources, notifications not getting out."""
    import yaml

    from crossfade.alerts import rules

    _emit(yaml.safe_dump(rules(), sort_keys=False, width=120), output)


@app.command()
def demo(
    faulty: Annotated[bool, typer.Option("--faulty", help="Only the faulty candidate's story.")] = False,
    speed: Annotated[float, typer.Option("--speed", min=0.0, help="Simulated seconds per real second "
                                         "(0: as fast as possible).")] = 600.0,
    keep: Annotated[Path | None, typer.Option("--keep", help="Keep each story's database (FILE-1.db, "
                                              "FILE-2.db) to explore with status and history.")] = None,
    dashboard: Annotated[bool, typer.Option("--dashboard", help="Serve the web dashboard while the stories "
                                            "play (needs crossfade[server]).")] = False,
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


# The batch and convert commands live in their own module; it reads this one's helpers, so it comes last.
from crossfade import cli_batch  # noqa: E402

app.add_typer(cli_batch.batch_app, name="batch")
app.command("convert")(cli_batch.convert)


def main() -> None:
    """Entry point of the `crossfade` console script."""
    app()


if __name__ == "__main__":
    main()
