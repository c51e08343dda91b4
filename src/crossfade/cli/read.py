"""`crossfade status` and `mismatches`: where migrations stand now, per arm, gate and shadowed field."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from crossfade.backends.base import UnknownMigration
from crossfade.cli.common import (
    AsJson,
    Name,
    Url,
    _client,
    _colour,
    _fail,
    _message,
    _name,
    _print_state_line,
    _utc,
    err,
    out,
    shown,
)
from crossfade.client import Client
from crossfade.events import State
from crossfade.judge import format_rate
from crossfade.shadow import MISMATCH, ROOT, TOTALS, Example, add_counts, verdict
from crossfade.spec import ShadowSettings, SpecError, format_duration, format_percent
from crossfade.telemetry import arm_metrics


def _ms(seconds: float | None) -> str:
    if seconds is None or math.isnan(seconds):
        return "-"
    return f"{seconds * 1e6:.0f}us" if seconds < 0.001 else f"{seconds * 1000:.1f}ms"


def _stage_report(cf: Client, state: State) -> dict[str, Any]:
    """Per-arm metrics of the current stage and, for an active migration, the controller's view of it."""
    from crossfade.controller import assess, is_active, judged_now, stage_cells
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
    if spec.metrics:
        from crossfade.metricjudge import declared_figures

        report["metrics"] = declared_figures(spec, cells)
    if is_active(state) and judged_now(spec, state):
        report["controller"] = assess(spec, state, windows, cf.time()).to_dict()
    return report


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
                                     if k not in ("arms", "controller", "shadow", "source", "dual_writes_stopped",
                                                  "metrics")})
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
            streamed = any("first_chunk" in m for m in item["arms"].values())
            for column in ("arm", "calls", "error rate", "fallbacks", "p50", "p95", "p99", "cost/call",
                           *(("first chunk p50", "first chunk p99") if streamed else ())):
                table.add_column(column, justify="left" if column == "arm" else "right")
            for arm, m in item["arms"].items():
                first = m.get("first_chunk", {})
                table.add_row(
                    shown(arm), str(m["calls"]),
                    "-" if m["error_rate"] is None else format_rate(m["error_rate"]),
                    str(m["fallbacks"]),
                    *(_ms(m[q]) for q in ("p50", "p95", "p99")),
                    "-" if m["cost_mean"] is None else f"{m['cost_mean']:.6g}",
                    *((_ms(first.get(q)) for q in ("p50", "p99")) if streamed else ()),
                )
            if item["arms"]:
                out.print(table)
            elif state.stage:
                out.print("  no calls recorded in this stage yet")
            if item.get("metrics"):
                out.print(_custom_table(item["metrics"]))
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
                for change in view.get("changes", ()):
                    out.print(f"  [red]CHANGE[/red] {shown(change)}")
                if view.get("baking"):
                    out.print(f"  [bold]baking[/bold]: {format_duration(math.ceil(view['bake_left_s']))} left before "
                              "the migration completes; a failed gate, a change or a trigger meanwhile rolls back")
                if view["waiting_for"]:
                    out.print(f"  waiting for {shown(view['waiting_for'])}")


def _custom_table(metrics: dict[str, Any]) -> Table:
    """The declared custom metrics per arm: rates as percentages, counts, means and quantiles as numbers."""
    table = Table(box=None, pad_edge=False)
    for column in ("metric", "candidate", "legacy", "bad"):
        table.add_column(column, justify="left" if column == "metric" else "right")

    def value(kind: str, x: float | None) -> str:
        return "-" if x is None else format_rate(x) if kind == "rate" else f"{x:.6g}"

    for m in metrics.values():
        table.add_row(shown(m["label"]), value(m["kind"], m["candidate"]), value(m["kind"], m["legacy"]),
                      shown(m["bad"]))
    return table


def _program_status(file: Path, url: str | None, as_json: bool) -> None:
    from crossfade.program import load_program, program_progress

    try:
        program = load_program(file)
    except SpecError as exc:
        _fail(_message(exc), 2)
    with _client(url) as cf:
        report = program_progress(program, {s.name: s for s in cf.migrations()})
    if as_json:
        sys.stdout.write(json.dumps(report.to_dict(), indent=2) + "\n")
        return
    out.print(f"{shown(program.name)}: {report.percent:g}% done, {report.completed} of {len(report.components)} "
              "components completed")
    out.print(f"critical path: {shown(' -> '.join(report.critical_path))} "
              f"({format_duration(round(report.critical_seconds))} of holds)")
    table = Table(box=None, pad_edge=False)
    for column in ("phase", "component", "migration", "state", "done"):
        table.add_column(column, justify="right" if column in ("phase", "done") else "left")
    for r in report.components:
        marker = " *" if r.component in report.critical_path else ""
        table.add_row(str(r.phase), shown(r.component + marker), shown(r.migration), shown(r.describe()),
                      f"{r.done:.0%}")
    out.print(table)
    out.print("* on the critical path")


def _writes_stopped(cf: Client, state: State) -> dict[str, Any] | None:
    from crossfade.events import dual_writes_stopped

    if state.dual_write or state.stage is None:
        return None
    event = dual_writes_stopped(cf.migration(state.name).history())
    return None if event is None else {"seq": event.seq, "type": event.type, "time": event.time}


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
        examples = cf.backend().examples(name, stage=stage, path=path, limit=max(limit, settings.examples))
        examples = [e for e in examples if not _scored(e)]  # scored ones are listed as the lowest
        report.append({
            "path": path, "differing": differing, "rate": differing / compared if compared else None,
            "noise_differing": noise_differing,
            "noise_rate": noise_differing / noise_compared if noise_compared else None,
            "verdict": verdict(compared, differing, noise_compared, noise_differing,
                               relative=settings.noise_relative, absolute=settings.noise_absolute),
            "examples": [_example(e) for e in examples[:limit]],
        })
    # Graded comparisons keep the answers that scored lowest, mismatched or not: the ones to read first.
    scored = [e for e in cf.backend().examples(name, stage=stage, path=ROOT, limit=max(limit, settings.examples))
              if _scored(e)]
    lowest = sorted(scored, key=lambda e: e.detail["score"])[:limit]
    return {"migration": name, "stage": stage, "totals": totals, "fields": report,
            "similarity": _similarity(cf, name, stage), "lowest": [_example(e) for e in lowest]}


def _scored(example: Example) -> bool:
    """Whether a graded comparison kept the example (with its score)."""
    return isinstance(example.detail.get("score"), float)


def _example(example: Example) -> dict[str, Any]:
    """A kept example as `mismatches` shows it: where and when, and what was kept."""
    return {"stage": example.stage, "time": example.time, **example.detail}


def _similarity(cf: Client, name: str, stage: str | None) -> dict[str, Any] | None:
    """The candidate's graded comparison scores (count, mean, p10, p50, p90), None without any."""
    from crossfade.routing import CANDIDATE
    from crossfade.spec.metrics import SIMILARITY
    from crossfade.telemetry import merge_windows, tally_figures

    cell = merge_windows(cf.backend().windows(name, stage=stage)).get(CANDIDATE)
    tally = cell.metrics.get(SIMILARITY) if cell is not None else None
    return None if tally is None else tally_figures(tally)


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
        scores = report["similarity"]
        if scores:
            quantiles = ", ".join(f"{q} {scores[q]:.3f}" for q in ("p10", "p50", "p90") if scores.get(q) is not None)
            out.print(f"  graded comparisons: {scores['count']} scored, mean {scores['mean']:.3f}"
                      + (f", {quantiles}" if quantiles else ""))
            for example in report["lowest"]:
                out.print(f"[bold]score {example['score']:.3f}[/bold] at {_utc(example['time'])} "
                          f"({shown(example['stage'])}): args {shown(example.get('args'))} "
                          f"{shown(example.get('kwargs') or '')}")
                out.print(f"    legacy {shown(repr(example.get('legacy')))} -> "
                          f"candidate {shown(repr(example.get('candidate')))}")
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
                out.print(f"[bold]{shown(f['path'])}[/bold] at {_utc(example['time'])} "
                          f"({shown(example['stage'])}): args {shown(example.get('args'))} "
                          f"{shown(example.get('kwargs') or '')}")
                for d in example.get("diff", []):
                    out.print(f"    {shown(d.get('where'))}: legacy {shown(repr(d.get('legacy')))} -> "
                              f"candidate {shown(repr(d.get('candidate')))}")


def _rate(value: float | None) -> str:
    return "-" if value is None else format_percent(round(value, 6))
