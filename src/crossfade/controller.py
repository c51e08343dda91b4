"""The controller: a pure state machine that turns a spec, a state and a stage's telemetry into events.

`step(spec, state, windows, now)` takes values and returns the changes to append; it reads no clock and
does no I/O, so the same code runs the live loop, the tests and a simulation that fast-forwards hours, and a
controller killed at any point resumes from the folded events with no lost or doubled transition.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from crossfade.events import (
    AWAITING_APPROVAL,
    PAUSED,
    ROLLING_BACK,
    RUNNING,
    VERDICT,
    Change,
    StageProgress,
    State,
    promote_change,
    request_approval_change,
    rollback_change,
    rollback_start_change,
    rollback_step_change,
    step_back_change,
)
from crossfade.judge import Firing, Judgement, check_triggers, judge
from crossfade.routing import CANDIDATE, LEGACY
from crossfade.spec import Spec, format_duration
from crossfade.telemetry import Cell, Window, merge_windows

ACTOR = "controller"


@dataclass(frozen=True, slots=True)
class Assessment:
    """What the controller sees of the current stage at one moment, and what it waits for. Immutable."""

    judgement: Judgement
    firings: tuple[Firing, ...]
    samples: tuple[int, int]
    hold_left: float
    waiting_for: str

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able form for status displays."""
        return {
            "look": self.judgement.look,
            "gates": [g.to_dict() for g in self.judgement.gates],
            "triggers": [f.message for f in self.firings],
            "samples": {CANDIDATE: self.samples[0], LEGACY: self.samples[1]},
            "hold_left_s": self.hold_left,
            "waiting_for": self.waiting_for,
            "sample_ratio": None if self.judgement.sample_ratio is None else {
                "expected": self.judgement.sample_ratio.expected_fraction,
                "observed": self.judgement.sample_ratio.observed_fraction,
                "p_value": self.judgement.sample_ratio.p_value,
            },
        }


def look_number(spec: Spec, state: State, now: float) -> int:
    """Which look at the current stage this is (1-based), counted in analysis intervals since its start."""
    entered = state.stage_entered_at if state.stage_entered_at is not None else now
    return max(1, math.floor((now - entered) / spec.analysis.interval) + 1)


def stage_cells(state: State, windows: Sequence[Window]) -> dict[str, Cell]:
    """Per arm, the stage's telemetry since it was entered (a window that began just before is included)."""
    entered = state.stage_entered_at or 0.0
    return merge_windows(w for w in windows if w.stage == state.stage and w.start + w.length > entered)


def stage_progress(spec: Spec, state: State, windows: Sequence[Window], now: float) -> StageProgress:
    """The current stage's hold time left and calls per arm, as an operator's promote or approve checks them."""
    if not state.stage:
        return StageProgress(0.0, 0, 0)
    cells = stage_cells(state, windows)
    stage = spec.stages[state.stage_index]
    return StageProgress(
        max(0.0, (stage.hold or 0.0) - (now - (state.stage_entered_at or now))),
        cells[CANDIDATE].calls if CANDIDATE in cells else 0, cells[LEGACY].calls if LEGACY in cells else 0,
    )


def assess(spec: Spec, state: State, windows: Sequence[Window], now: float, *,
           unverified: Sequence[str] = ()) -> Assessment:
    """Judge the current stage and list what stands between it and the next.

    `unverified` names the routers whose data plane has not been seen at the current weight, each with
    what was seen ("nginx: serves 5% where the stage says 25%"); while there is one, nothing is promoted:
    the telemetry may not come from the split the stage is judged on.
    """
    cells = stage_cells(state, windows)
    judgement = judge(spec, cells, look=look_number(spec, state, now), traffic=state.traffic,
                      shadowing=state.shadow > 0 or state.shadow_legacy > 0)
    firings = tuple(check_triggers(spec, windows, now))
    stage = spec.stages[state.stage_index]
    calls = (cells[CANDIDATE].calls if CANDIDATE in cells else 0, cells[LEGACY].calls if LEGACY in cells else 0)
    hold_left = max(0.0, (stage.hold or 0.0) - (now - (state.stage_entered_at or now)))
    waiting = []
    if hold_left > 0:
        waiting.append(f"hold: {format_duration(hold_left)} left")
    if min(calls) < stage.min_samples:
        waiting.append(f"samples: {calls[0]} candidate and {calls[1]} legacy of {stage.min_samples} per arm")
    if not min(calls) or judgement.nodata:
        waiting.append("data: " + ("; ".join(g.message for g in judgement.nodata) or "no calls on one arm yet"))
    if judgement.split_broken and spec.analysis.sample_ratio == "hold":
        ratio = judgement.sample_ratio
        waiting.append(f"sample ratio: {ratio.observed_fraction:.2%} of calls on the candidate where routing "
                       f"sends {ratio.expected_fraction:.2%} (p={ratio.p_value:.1g}); check routing and recording")
    if unverified:
        waiting.append("routers: " + "; ".join(unverified))
    if spec.analysis.promote_when == "proven":
        unproven = [g.gate for g in judgement.gates if g.verdict not in ("PASS", "NODATA")]
        if unproven:
            waiting.append("proof: " + ", ".join(unproven) + " not yet PASS")
    return Assessment(judgement, firings, calls, hold_left, "; ".join(waiting))


def step(spec: Spec, state: State, windows: Sequence[Window], now: float, *,
         assessment: Assessment | None = None, unverified: Sequence[str] = ()) -> list[Change]:
    """The changes the controller makes now. Empty when nothing is due.

    `assessment`, when the caller has already made it (`assess` with the same arguments), is used as is.
    `unverified` lists the routers not yet verified at the current weight (see `assess`): no promotion waits
    on anything else while one is listed.
    """
    if state.status == ROLLING_BACK:
        return _ramp_down(spec, state, windows, now)
    if state.status not in (RUNNING, AWAITING_APPROVAL) or state.stage_index + 1 >= len(spec.stages):
        return []
    a = assessment or assess(spec, state, windows, now, unverified=unverified)
    changes: list[Change] = []
    if a.judgement.summary() != state.verdicts:
        changes.append(_verdict_change(state, a.judgement))
        state = replace(state, verdicts=a.judgement.summary())
    if a.firings:
        return changes + [_on_failure(spec, state, "; ".join(f.message for f in a.firings))]
    if a.judgement.failed:
        return changes + [_on_failure(spec, state, "; ".join(g.message for g in a.judgement.failed))]
    if state.status == AWAITING_APPROVAL or a.hold_left > 0:
        return changes
    stage = spec.stages[state.stage_index]
    if not min(a.samples) or a.judgement.nodata:
        if spec.analysis.on_nodata == "pause":
            changes.append(Change(PAUSED, f"no data after the hold of stage {stage.name}: {a.waiting_for}",
                                  {"stage": state.stage}))
        return changes
    if a.waiting_for:
        return changes
    reason = _promotion_reason(spec, state, a)
    if spec.stages[state.stage_index + 1].approval:
        changes.append(request_approval_change(state, spec, reason))
    else:
        changes.append(promote_change(state, spec, reason))
    return changes


def _promotion_reason(spec: Spec, state: State, a: Assessment) -> str:
    stage = spec.stages[state.stage_index]
    gates = ", ".join(f"{g.gate} {g.verdict}" for g in a.judgement.gates) or "no gates"
    held = f"hold {format_duration(stage.hold)} passed, " if stage.hold else ""
    return f"{stage.name}: {held}{a.samples[0]} candidate and {a.samples[1]} legacy calls, no regression ({gates})"


def _verdict_change(state: State, judgement: Judgement) -> Change:
    ratio = judgement.sample_ratio
    payload = {
        "stage": state.stage,
        "look": judgement.look,
        "gates": [g.to_dict() for g in judgement.gates],
        "sample_ratio": None if ratio is None else {"p_value": ratio.p_value, "expected": ratio.expected_fraction,
                                                    "observed": ratio.observed_fraction},
        "latency_shift": None if judgement.latency_shift is None else {
            "effect": judgement.latency_shift.effect, "p_value": judgement.latency_shift.p_value},
    }
    summary = ", ".join(f"{g.gate} {g.verdict}" for g in judgement.gates)
    return Change(VERDICT, summary, payload)


def _on_failure(spec: Spec, state: State, reason: str) -> Change:
    if spec.on_failure == "pause":
        return Change(PAUSED, reason, {"stage": state.stage})
    if spec.on_failure == "step_back" and state.stage_index > 0:
        return step_back_change(state, spec, reason)
    if spec.rollback.mode == "gradual":
        return rollback_start_change(state, spec, reason)
    return rollback_change(state, reason)


def _ramp_down(spec: Spec, state: State, windows: Sequence[Window], now: float) -> list[Change]:
    firings = check_triggers(spec, windows, now)
    if firings:
        reason = "during the gradual rollback: " + "; ".join(f.message for f in firings)
        return [rollback_change(state, reason)]
    since = state.rollback_step_at if state.rollback_step_at is not None else now
    if now - since >= spec.rollback.every:
        return [rollback_step_change(state, spec, f"gradual rollback: next step after {format_duration(spec.rollback.every)}")]
    return []


def is_active(state: State) -> bool:
    """True when the controller has work to do for this migration."""
    return state.status in (RUNNING, AWAITING_APPROVAL, ROLLING_BACK)
