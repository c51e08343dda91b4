"""`crossfade demo`: a bundled migration run by the real controller on simulated traffic, shown live.

Two stories. A healthy candidate shadows legacy, ramps through every stage (the demo gives the one approval
the spec asks for) and completes; then a candidate that turns faulty part-way is caught by the gates and
rolled back. Each story runs in virtual time through the real SDK, backend and controller
(`crossfade.simulate`), paced so that a person can watch it, and ends with its audit log verified.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from crossfade.events import verify
from crossfade.judge import format_rate
from crossfade.routing import CANDIDATE, LEGACY
from crossfade.simulate import SimResult, SimTick, Workload, parse_arm, parse_fault, simulate
from crossfade.spec import Spec, format_duration, format_percent, load_spec

SPEC = """\
name: demo-pricing
description: Move cart pricing from the rules engine to the new pricing service
owner: payments-team
key: customer id
stages:
  - {name: shadow, traffic: 0%, shadow: 100%, hold: 10m}
  - {name: canary-1, traffic: 1%, hold: 15m, min_samples: 300}
  - {name: canary-10, traffic: 10%, hold: 20m}
  - {name: rollout-25, traffic: 25%, hold: 30m, approval: true}
  - {name: rollout-50, traffic: 50%, hold: 30m}
  - {name: complete, traffic: 100%}
gates:
  error_rate: {max_increase: 0.5%}
  latency: {quantile: p95, max_ratio: 1.2}
  cost: {max_ratio: 1.5}
triggers:
  - {metric: error_rate, above: 10%, window: 5m, min_samples: 100}
on_failure: rollback
rollback: {mode: immediate}
analysis: {interval: 1m, confidence: 99%}
fallback: {on_error: true, timeout: 2s}
"""

RPS = 100.0
LEGACY_ARM = "errors=1% latency=lognormal(80ms,0.4) cost=0.002"
HEALTHY_ARM = "errors=0.9% latency=x0.9 cost=x1.1"
FAULTY_ARM = "errors=4% latency=x1.6 cost=x1.1"
FAULT_AT = "40m"


@dataclass(frozen=True, slots=True)
class Story:
    """One run of the demo: its title, the workload, and the ending it is meant to show."""

    title: str
    workload: Workload
    expected: str


def stories(*, faulty_only: bool = False) -> list[Story]:
    """The healthy story, then the faulty one (or only the faulty one)."""
    legacy = parse_arm(LEGACY_ARM, label="legacy")
    healthy = Story("a healthy candidate", Workload(rps=RPS, legacy=legacy, keys=20_000,
                                                   candidate=parse_arm(HEALTHY_ARM, base=legacy)), "completed")
    faulty = Story(f"a candidate that turns faulty after {FAULT_AT}",
                   Workload(rps=RPS, legacy=legacy, keys=20_000, candidate=parse_arm(FAULTY_ARM, base=legacy),
                            fault=parse_fault("step", FAULT_AT)), "rolled_back")
    return [faulty] if faulty_only else [healthy, faulty]


def run_demo(console: Console, *, speed: float = 600.0, faulty_only: bool = False, keep: str | None = None,
             seed: int = 7, dashboard: int | None = None,
             linger: Callable[[str], None] | None = None) -> int:
    """Play the stories at `speed` simulated seconds per real second; 0 when each ends as it should.

    `keep`: a `sqlite:///...db` URL; each story's database is kept beside it (`-1.db`, `-2.db`).
    `dashboard`: a port to serve the dashboard on while the stories play (0: any free port); the stories are
    then paced even when the output is not a terminal, and after the last one `linger(url)` runs (by default
    it waits for Ctrl-C on a terminal) before the server stops.
    """
    spec = load_spec(SPEC, source_name="demo-pricing.yaml")
    console.print(f"[bold]crossfade demo[/bold]: {spec.description}")
    console.print(f"every call: [cyan]mig.run(customer_id, rules_engine, pricing_service, cart)[/cyan] at "
                  f"{RPS:g} calls/s; legacy: {LEGACY_ARM}")
    scratch = tempfile.TemporaryDirectory(prefix="crossfade-demo-") if dashboard is not None and keep is None else None
    base = keep if keep is not None else (f"sqlite:///{scratch.name}/demo.db" if scratch is not None else None)
    ok = True
    url, stop = None, None
    try:
        for number, story in enumerate(stories(faulty_only=faulty_only), start=1):
            database = None if base is None else base.replace(".db", f"-{number}.db")
            if dashboard is not None and database is not None:
                if stop is not None:
                    stop()
                url, stop = _serve(database, dashboard if url is None else int(url.rsplit(":", 1)[1].strip("/")))
                console.print(f"dashboard: [link={url}]{url}[/link] (story {number})")
            result = _play(console, spec, story, speed=speed, seed=seed + number, database=database,
                           paced=dashboard is not None)
            ok &= _summarise(console, story, result, database if keep is not None else None)
        if url is not None:
            (linger or _wait_for_interrupt(console))(url)
    finally:
        if stop is not None:
            stop()
        if scratch is not None:
            scratch.cleanup()
    return 0 if ok else 1


def _serve(database: str, port: int) -> tuple[str, Callable[[], None]]:
    from crossfade.backends.sql import SQLBackend
    from crossfade.server import serve_in_background

    SQLBackend(database).close()  # create the empty store the simulation will fill
    # The simulation's own controller drives the migration in virtual time: the server only shows it.
    return serve_in_background(database, port, open_reads=True, controller=False)


def _wait_for_interrupt(console: Console) -> Callable[[str], None]:
    def wait(url: str) -> None:
        if not sys.stdin.isatty():
            return
        console.print(f"the dashboard stays at {url}; press Ctrl-C to stop")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass

    return wait


def _play(console: Console, spec: Spec, story: Story, *, speed: float, seed: int, database: str | None,
          paced: bool = False) -> SimResult:
    console.rule(f"[bold]{story.title}[/bold]: candidate {story.workload.candidate.describe()}")
    interval = spec.analysis.interval
    notes: list[str] = []
    with Live(_view(spec, None, notes), console=console, refresh_per_second=8, transient=False) as live:

        def on_tick(tick: SimTick) -> None:
            for event in tick.events:
                if event.type == "verdict":
                    # Only the latest verdicts: a gate flipping between PASS and INCONCLUSIVE would push the
                    # story's transitions out of view.
                    notes[:] = [n for n in notes if " verdicts: " not in n]
                notes.append(_note(tick, event.type, event.actor, event.reason or ""))
            live.update(_view(spec, tick, notes))
            if speed > 0 and (paced or console.is_terminal):
                time.sleep(interval / speed)

        result = simulate(spec, story.workload, seed=seed, on_tick=on_tick, database=database)
    console.print()
    return result


def _note(tick: SimTick, kind: str, actor: str, reason: str) -> str:
    when = format_duration(round(tick.elapsed))
    if kind == "verdict":
        return f"+{when} verdicts: {reason}"
    who = "the demo, as an operator" if actor == "simulation" else actor.split("@")[0]
    return f"+{when} [bold]{kind}[/bold] by {who}: {reason}"


def _ladder(spec: Spec, tick: SimTick | None) -> Text:
    text = Text()
    current = tick.state.stage if tick is not None else None
    status = tick.state.status if tick is not None else "draft"
    for i, stage in enumerate(spec.stages):
        label = f" {stage.name} {format_percent(stage.traffic)}" + (" (approval)" if stage.approval else "") + " "
        if stage.name == current:
            style = {"rolled_back": "bold white on red", "completed": "bold white on green"}.get(
                status, "bold black on yellow")
        else:
            style = "dim"
        text.append(label, style=style)
        if i + 1 < len(spec.stages):
            text.append(" > ", style="dim")
    return text


def _view(spec: Spec, tick: SimTick | None, notes: Sequence[str]) -> Panel:
    parts: list = [_ladder(spec, tick)]
    if tick is not None:
        state = tick.state
        split = Text(f"{state.status}, +{format_duration(round(tick.elapsed))} simulated; candidate traffic "
                     f"{format_percent(state.traffic)}" + (f", shadow {format_percent(state.shadow)}"
                                                            if state.shadow else ""))
        parts.append(split)
        arms = Table(box=None, pad_edge=False, title_justify="left")
        for column in ("arm", "calls", "error rate", "p95"):
            arms.add_column(column, justify="left" if column == "arm" else "right")
        for arm in (LEGACY, CANDIDATE):
            cell = tick.cells.get(arm)
            if cell is None or not cell.calls:
                arms.add_row(arm, "0", "-", "-")
                continue
            arms.add_row(arm, str(cell.calls), format_rate(cell.errors / cell.calls),
                         f"{cell.latency.quantile(0.95) * 1000:.0f}ms")
        parts.append(arms)
        if tick.assessment is not None:
            gates = Table(box=None, pad_edge=False)
            gates.add_column("gate")
            gates.add_column("verdict")
            gates.add_column("estimate (interval) against the limit")
            for g in tick.assessment.judgement.gates:
                colour = {"PASS": "green", "FAIL": "red", "INCONCLUSIVE": "yellow"}.get(g.verdict, "dim")
                gates.add_row(g.gate, f"[{colour}]{g.verdict}[/{colour}]", _numbers(g))
            parts.append(gates)
            if tick.assessment.waiting_for and state.status in ("running", "awaiting_approval"):
                parts.append(Text(f"waiting for {tick.assessment.waiting_for}", style="dim"))
    parts.extend(Text.from_markup(n) for n in notes[-6:])
    return Panel(Group(*parts), title=spec.name, border_style="blue")


def _numbers(g) -> str:
    if g.estimate is None:
        return "no data yet"
    if g.gate == "error_rate":
        return f"{g.estimate * 100:+.2f} pp ({_pp(g.lower)}..{_pp(g.upper)}) vs +{g.limit * 100:g} pp"
    return f"x{g.estimate:.2f} ({_x(g.lower)}..{_x(g.upper)}) vs x{g.limit:g}"


def _pp(x: float | None) -> str:
    return "-inf" if x is None or x == float("-inf") else f"{x * 100:+.2f}"


def _x(x: float | None) -> str:
    return "inf" if x is None or x == float("inf") else f"{x:.2f}"


def _summarise(console: Console, story: Story, result: SimResult, database: str | None) -> bool:
    problem = verify(list(result.events))
    as_meant = result.outcome == story.expected
    colour = "green" if as_meant else "red"
    console.print(f"[{colour}]{result.summary()}[/{colour}]")
    if result.detected_s is not None and story.expected == "rolled_back":
        console.print(f"  caught {format_duration(round(result.detected_s - _fault_at()))} after the fault began, "
                      f"with {result.exposed} candidate calls served meanwhile (each failed call fell back to legacy)")
    console.print("  audit log: " + ("[green]intact[/green]" if problem is None else f"[red]{problem}[/red]")
                  + f" ({len(result.events)} events, hash-chained)")
    if database is not None:
        console.print(f"  kept: crossfade status --url {database}   crossfade history demo-pricing --url {database}")
    return as_meant and problem is None


def _fault_at() -> float:
    fault = parse_fault("step", FAULT_AT)
    return fault.at if fault is not None else 0.0
