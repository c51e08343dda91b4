"""What the API and the dashboard show of a migration: its ladder, per-arm figures, verdicts and series."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from crossfade.backends.base import Backend, UnknownMigration
from crossfade.controller import assess, is_active, stage_cells
from crossfade.events import AWAITING_APPROVAL, VERDICT, State
from crossfade.metrics import SourceError, create_source, source_name
from crossfade.replay import stage_periods, stay
from crossfade.spec import Spec, format_duration
from crossfade.metricjudge import declared_figures
from crossfade.telemetry import Window, arm_metrics

# How far back the dashboard's charts reach by default, and how many events are searched for the last verdict.
SERIES_SECONDS = 3600.0
VERDICT_LOOKBACK = 200


def current(backend: Backend, name: str) -> State:
    """The migration's state; UnknownMigration when no spec was ever applied under this name."""
    state = backend.state(name)
    if state is None:
        raise UnknownMigration(f"no migration named {name!r}; apply a spec first (PUT /v1/migrations/{name})")
    return state


def detail(backend: Backend, state: State, spec: Spec, now: float, windows: Sequence[Window],
           source_error: str | None = None) -> dict[str, Any]:
    """The migration page from the stage's `windows`: state, spec, ladder, per-arm figures, the controller's
    view, the last verdict; `source_error` when the metric source could not be read (no view then)."""
    cells = stage_cells(state, windows) if state.stage else {}
    controller = None
    if state.stage and is_active(state) and state.stage_index + 1 < len(spec.stages) and source_error is None:
        controller = assess(spec, state, windows, now).to_dict()
    pending = None
    if state.status == AWAITING_APPROVAL and state.stage_index + 1 < len(spec.stages):
        nxt = spec.stages[state.stage_index + 1]
        pending = {"stage": state.stage, "next_stage": nxt.name, "next_traffic": nxt.traffic}
    return {
        "state": state.to_dict(),
        "spec": spec.to_dict(),
        "stages": [{"name": s.name, "traffic": s.traffic, "shadow": s.shadow, "hold": s.hold,
                    "hold_text": None if s.hold is None else format_duration(s.hold), "approval": s.approval}
                   for s in spec.stages],
        "arms": {arm: arm_metrics(cell) for arm, cell in sorted(cells.items())},
        "controller": controller,
        "last_verdict": last_verdict(backend, state),
        "triggers": [{"metric": t.metric, "above": t.above, "window": t.window, "min_samples": t.min_samples,
                      "for": t.for_, **({} if t.below is None else {"below": t.below})} for t in spec.triggers],
        "metrics": declared_figures(spec, cells),
        "pending_approval": pending,
        "source": {"name": source_name(spec.source)[0], "error": source_error},
    }


def last_verdict(backend: Backend, state: State) -> dict[str, Any] | None:
    """The newest verdict event of the current stage, with every gate's numbers; None if it has none."""
    events = backend.events(state.name, after=max(0, state.seq - VERDICT_LOOKBACK))
    for event in reversed(events):
        if event.type == VERDICT and event.payload.get("stage") == state.stage:
            return event.to_dict()
        if event.payload.get("stage_index") is not None and event.type != VERDICT:
            break  # the stage was entered after this point: older verdicts belong to another stage
    return None


def series(backend: Backend, name: str, since: float, spec: Spec | None = None, now: float | None = None
           ) -> dict[str, Any]:
    """Per arm and window (stages kept apart), calls, error rate and p50/p95/p99, oldest first, read through
    the spec's metric source (the stored telemetry by default; nothing while the source cannot be read)."""
    if spec is None or spec.source is None or now is None:
        windows = backend.windows(name, since=since)
    else:
        windows = _sourced_windows(backend, name, since, spec, now)
    return {
        "window": windows[0].length if windows else None,
        "points": [{"start": w.start, "arm": w.arm, "stage": w.stage, **{k: v for k, v in arm_metrics(w.cell).items()
                    if k in ("calls", "errors", "error_rate", "p50", "p95", "p99")}} for w in windows],
    }


def _sourced_windows(backend: Backend, name: str, since: float, spec: Spec, now: float) -> list[Window]:
    """The windows of every stay in a stage since `since`, each read through the source over its own time."""
    source = create_source(spec.source)
    windows: list[Window] = []
    try:
        for period in stage_periods(backend.events(name), now):
            if period.end > since:
                windows += [w for w in source.windows(backend, stay(name, period), spec, period.end)
                            if since <= w.start < period.end]
    except SourceError:
        return []
    return sorted(windows, key=lambda w: (w.start, w.arm))
