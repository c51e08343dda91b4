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

from crossfade.changes import ChangeAlarm, detect, final_look, planned_bake
from crossfade.events import (
    AWAITING_APPROVAL,
    PAUSED,
    ROLLING_BACK,
    RUNNING,
    VERDICT,
    Change,
    StageProgress,
    State,
    bake_end_change,
    baking,
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
from crossfade.telemetry import Cell, Window, check_cell, merge_windows

ACTOR = "controller"


@dataclass(frozen=True, slots=True)
class Assessment:
    """What the controller sees of the current stage at one moment, and what it waits for. Immutable."""

    judgement: Judgement
    firings: tuple[Firing, ...]
    samples: tuple[int, int]
    hold_left: float
    waiting_for: str
    # Why the evidence does not allow leaving yet though no gate fails; overdue once past max_stage_time;
    # blocked when something else (hold, samples, data, split) is waited for as well.
    undecided: str = ""
    overdue: bool = False
    blocked: bool = False
    # Gates whose candidate changed past their limit in its recent calls (`crossfade.changes`).
    changes: tuple[ChangeAlarm, ...] = ()
    baking: bool = False
    # What the bake's end still waits for once its time is up: the calls that would show a step in its last
    # interval (`crossfade.changes.final_look`), per gate.
    final_look: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able form for status displays."""
        return {
            "look": self.judgement.look,
            "gates": [g.to_dict() for g in self.judgement.gates],
            "triggers": [f.message for f in self.firings],
            "samples": {CANDIDATE: self.samples[0], LEGACY: self.samples[1]},
            "hold_left_s": self.hold_left,
            "waiting_for": self.waiting_for,
            "undecided": self.undecided,
            "overdue": self.overdue,
            "changes": [c.message for c in self.changes],
            **({"baking": True, "bake_left_s": self.hold_left, "final_look": list(self.final_look)}
               if self.baking else {}),
            "sample_ratio": None if self.judgement.sample_ratio is None else {
                "expected": self.judgement.sample_ratio.expected_fraction,
                "observed": self.judgement.sample_ratio.observed_fraction,
                "p_value": self.judgement.sample_ratio.p_value,
            },
        }


def look_number(spec: Spec, state: State, now: float, windows: Sequence[Window] = ()) -> int:
    """Which look at the current stage this is (1-based), counted in analysis intervals since the first window
    of the stage in which both arms had calls (since the stage's start when `windows` are not given).

    Counted from stage entry, the first looks, which get most of the latency gate's alpha (6 / pi^2 = 61% for
    look 1), saw an empty stage at low traffic and spent it on nothing.
    """
    entered = state.stage_entered_at if state.stage_entered_at is not None else now
    if not windows:
        return max(1, math.floor((now - entered) / spec.analysis.interval) + 1)
    starts: dict[str, float] = {}
    for w in windows:
        if w.stage == state.stage and w.start + w.length > entered and w.cell.calls:
            starts[w.arm] = min(starts.get(w.arm, math.inf), w.start)
    if CANDIDATE not in starts or LEGACY not in starts:
        return 1
    # The start of the first window with calls in both arms. Windows rolled up by hour start at or before the
    # data in them, so this only ever moves earlier and no look number is used twice.
    first = max(entered, starts[CANDIDATE], starts[LEGACY])
    return max(1, math.ceil((now - first) / spec.analysis.interval))


def stage_cells(state: State, windows: Sequence[Window]) -> dict[str, Cell]:
    """Per arm, the stage's telemetry since it was entered (a window that began just before is included)."""
    entered = state.stage_entered_at or 0.0
    return merge_windows(w for w in windows if w.stage == state.stage and w.start + w.length > entered)


def judged_now(spec: Spec, state: State) -> bool:
    """True when the current stage is judged: any stage but the last, and the last while it bakes."""
    return state.stage_index + 1 < len(spec.stages) or baking(spec, state)


def time_left(spec: Spec, state: State, now: float) -> float:
    """The current stage's hold (or, in the last stage, bake) time still to run, in seconds."""
    wanted = spec.bake if baking(spec, state) else (spec.stages[state.stage_index].hold or 0.0)
    return max(0.0, wanted - (now - (state.stage_entered_at or now)))


def judged_cells(spec: Spec, state: State, windows: Sequence[Window]) -> dict[str, Cell]:
    """The cells the gates judge: the stage's, with, during a bake without legacy calls, the legacy measured in
    the stage before (`State.baseline`) in legacy's place."""
    return _judged(spec, state, windows)[0]


def _judged(spec: Spec, state: State, windows: Sequence[Window]) -> tuple[dict[str, Cell], bool]:
    """`judged_cells`, and whether legacy's is the fixed baseline of a bake."""
    cells = stage_cells(state, windows)
    legacy = cells.get(LEGACY)
    if baking(spec, state) and (legacy is None or not legacy.calls) and state.baseline is not None:
        cells[LEGACY] = check_cell(state.baseline)
        return cells, True
    return cells, False


def stage_progress(spec: Spec, state: State, windows: Sequence[Window], now: float) -> StageProgress:
    """The current stage's hold (or bake) time left, calls per arm and the gates past their limit, as an
    operator's promote or approve checks them, with legacy's cell for the last stage's bake to judge against."""
    if not state.stage:
        return StageProgress(0.0, 0, 0)
    cells = judged_cells(spec, state, windows)
    past: tuple[str, ...] = ()
    if judged_now(spec, state) and holds_past_limit(spec, state) and CANDIDATE in cells and LEGACY in cells:
        judgement = judge(spec, cells, look=look_number(spec, state, now, windows), traffic=state.traffic,
                          shadowing=state.shadow > 0 or state.shadow_legacy > 0)
        past = tuple(g.message for g in judgement.past_limit)
    legacy = cells.get(LEGACY)
    hold_left = time_left(spec, state, now)
    return StageProgress(
        hold_left,
        cells[CANDIDATE].calls if CANDIDATE in cells else 0, legacy.calls if legacy is not None else 0,
        past_limit=past, legacy=legacy.to_dict() if legacy is not None and legacy.calls else None,
        final_look=_final_look(spec, state, windows, cells, hold_left, now),
    )


def _final_look(spec: Spec, state: State, windows: Sequence[Window], cells: dict[str, Cell], hold_left: float,
                now: float) -> tuple[str, ...]:
    """What a bake whose time is up still waits for before it ends (`crossfade.changes.final_look`)."""
    if not baking(spec, state) or hold_left > 0 or LEGACY not in cells:
        return ()
    entered = state.stage_entered_at if state.stage_entered_at is not None else now
    return tuple(final_look(spec, windows, cells[LEGACY], entered=entered,
                            since=entered + spec.bake - spec.analysis.interval, now=now))


def assess(spec: Spec, state: State, windows: Sequence[Window], now: float, *,
           unverified: Sequence[str] = ()) -> Assessment:
    """Judge the current stage and list what stands between it and the next.

    `unverified` names the routers whose data plane has not been seen at the current weight, each with
    what was seen ("nginx: serves 5% where the stage says 25%"); while there is one, nothing is promoted:
    the telemetry may not come from the split the stage is judged on.
    """
    cells, fixed = _judged(spec, state, windows)
    bake = baking(spec, state)
    # In a bake the reference is a fixed baseline: looks count from the bake's start.
    look = look_number(spec, state, now, () if bake else windows)
    judgement = judge(spec, cells, look=look, traffic=state.traffic,
                      shadowing=state.shadow > 0 or state.shadow_legacy > 0)
    firings = tuple(check_triggers(spec, windows, now))
    alarms = tuple(_changes(spec, state, windows, cells, now, fixed=fixed))
    stage = spec.stages[state.stage_index]
    calls = (cells[CANDIDATE].calls if CANDIDATE in cells else 0, cells[LEGACY].calls if LEGACY in cells else 0)
    hold_left = time_left(spec, state, now)
    waiting = []
    if hold_left > 0:
        waiting.append(f"{'bake' if bake else 'hold'}: {format_duration(hold_left)} left")
    final = _final_look(spec, state, windows, cells, hold_left, now)
    if final:
        waiting.append("final look over the bake's last calls: " + "; ".join(final))
    if min(calls) < stage.min_samples and not bake:
        waiting.append(f"samples: {calls[0]} candidate and {calls[1]} legacy of {stage.min_samples} per arm")
    if (not min(calls) or judgement.nodata) and not bake:
        waiting.append("data: " + ("; ".join(g.message for g in judgement.nodata) or "no calls on one arm yet"))
    if judgement.split_broken and spec.analysis.sample_ratio == "hold":
        ratio = judgement.sample_ratio
        waiting.append(f"sample ratio: {ratio.observed_fraction:.2%} of calls on the candidate where routing "
                       f"sends {ratio.expected_fraction:.2%} (p={ratio.p_value:.1g}); check routing and recording")
    if unverified:
        waiting.append("routers: " + "; ".join(unverified))
    blocked = bool(waiting)
    undecided = _undecided(spec, state, judgement)
    stage_time = now - (state.stage_entered_at or now)
    limit = spec.analysis.max_stage_time
    overdue = bool(undecided) and limit is not None and stage_time >= limit
    if undecided:
        after = (f"; {format_duration(max(limit - stage_time, 0.0))} left before on_inconclusive: "
                 f"{spec.analysis.on_inconclusive}" if limit is not None and not overdue else "")
        waiting.append(undecided + after)
    return Assessment(judgement, firings, calls, hold_left, "; ".join(waiting), undecided, overdue, blocked,
                      alarms, bake, final)


def _changes(spec: Spec, state: State, windows: Sequence[Window], cells: dict[str, Cell], now: float, *,
             fixed: bool) -> list[ChangeAlarm]:
    """Change detection over the stage's recent windows against legacy's cell (see `crossfade.changes`):
    alpha is spent over the stage's hold, or the bake and its final look; `fixed` when legacy's cell is the
    bake's baseline."""
    entered = state.stage_entered_at if state.stage_entered_at is not None else now
    planned = planned_bake(spec) if baking(spec, state) else (spec.stages[state.stage_index].hold or 0.0)
    return detect(spec, windows, cells, entered=entered, planned=planned, now=now, fixed=fixed)


def holds_past_limit(spec: Spec, state: State) -> bool:
    """Whether a gate's estimate past its limit (not yet failing) keeps the current stage from being left.

    An estimate past its limit is not a reason to fail (the bounds still straddle the limit) but it is not
    one to complete on either: at 2 calls/s a candidate with 3% errors against legacy's 1% and a +1 pp limit was
    promoted to 100% as INCONCLUSIVE in 85% of runs. So the stage is extended until the evidence decides
    (`analysis.hold_past_limit: every_stage`, the default). With `last_promotion`, only the stage before the
    last, the bake and shadow stages (whose candidate serves nobody: holding there costs users nothing) are
    extended, and a live earlier stage moves on once its hold has passed: held there, a stage too small to
    decide sat for hours (at 20 calls/s the 1% stage's 0.2 candidate calls/s held errors 1% -> 3% for the whole
    of 48% of 6.5-hour runs), while the next stage, with ten times the calls, fails it within its hold. Every
    stage's gates have their own alpha (`crossfade.judge.gate_alpha`), so how far a candidate gets changes no
    false-FAIL bound.
    """
    return (spec.analysis.hold_past_limit == "every_stage" or baking(spec, state) or state.traffic == 0
            or state.stage_index + 2 >= len(spec.stages))


def _undecided(spec: Spec, state: State, judgement: Judgement) -> str:
    """Why the evidence does not allow leaving the stage yet, though no gate fails ("" when it does): a gate
    not yet proven (`promote_when: proven`), or a gate past its limit where that holds (`holds_past_limit`)."""
    if spec.analysis.promote_when == "proven":
        unproven = [g.gate for g in judgement.gates if g.verdict not in ("PASS", "NODATA")]
        return "proof: " + ", ".join(unproven) + " not yet PASS" if unproven else ""
    past = judgement.past_limit
    if not past or not holds_past_limit(spec, state):
        return ""
    return "evidence: " + "; ".join(g.message for g in past)


def step(spec: Spec, state: State, windows: Sequence[Window], now: float, *,
         assessment: Assessment | None = None, unverified: Sequence[str] = ()) -> list[Change]:
    """The changes the controller makes now. Empty when nothing is due.

    `assessment`, when the caller has already made it (`assess` with the same arguments), is used as is.
    `unverified` lists the routers not yet verified at the current weight (see `assess`): no promotion waits
    on anything else while one is listed.
    """
    if state.status == ROLLING_BACK:
        return _ramp_down(spec, state, windows, now)
    if state.status not in (RUNNING, AWAITING_APPROVAL) or not judged_now(spec, state):
        return []
    a = assessment or assess(spec, state, windows, now, unverified=unverified)
    changes: list[Change] = []
    if a.judgement.summary() != state.verdicts:
        changes.append(_verdict_change(state, a.judgement))
        state = replace(state, verdicts=a.judgement.summary())
    if a.firings:
        failure = _on_failure(spec, state, "; ".join(f.message for f in a.firings))
        # Named in the payload so a notification can say a trigger fired, not only what followed.
        fired = Change(failure.type, failure.reason, {**failure.payload, "triggers": [f.message for f in a.firings]})
        return changes + [fired]
    if a.judgement.failed:
        return changes + [_on_failure(spec, state, "; ".join(g.message for g in a.judgement.failed))]
    if a.changes:
        failure = _on_failure(spec, state, "; ".join(c.message for c in a.changes))
        return changes + [Change(failure.type, failure.reason,
                                 {**failure.payload, "changes": [c.message for c in a.changes]})]
    if state.status == AWAITING_APPROVAL or a.hold_left > 0:
        return changes
    if a.baking:
        # Nothing else to wait for in data: a bake with no legacy to judge against still has its triggers and
        # change detection, and ends when its time is up and its final look has seen enough calls.
        return changes + ([] if a.final_look else _bake_end(spec, state, a, now))
    stage = spec.stages[state.stage_index]
    if not min(a.samples) or a.judgement.nodata:
        if spec.analysis.on_nodata == "pause":
            changes.append(Change(PAUSED, f"no data after the hold of stage {stage.name}: {a.waiting_for}",
                                  {"stage": state.stage}))
        return changes
    if a.blocked:
        return changes
    if a.undecided:
        if not a.overdue or spec.analysis.on_inconclusive == "hold":
            return changes
        overdue = (f"{stage.name}: still undecided after max_stage_time "
                   f"{format_duration(spec.analysis.max_stage_time or 0.0)} ({a.undecided})")
        if spec.analysis.on_inconclusive == "pause":
            return changes + [Change(PAUSED, f"{overdue}; on_inconclusive: pause", {"stage": state.stage})]
        reason = f"{overdue}; promoted by on_inconclusive: promote"
    else:
        reason = _promotion_reason(spec, state, a)
    if spec.stages[state.stage_index + 1].approval:
        changes.append(request_approval_change(state, spec, reason))
    else:
        legacy = stage_cells(state, windows).get(LEGACY)
        changes.append(promote_change(state, spec, reason,
                                      baseline=legacy.to_dict() if legacy is not None and legacy.calls else None))
    return changes


def _bake_end(spec: Spec, state: State, a: Assessment, now: float) -> list[Change]:
    """Once the bake has run its time and its final look with nothing failing, the migration completes, unless
    an estimate is still past its limit (then the bake is extended, as a stage is, within `max_stage_time`)."""
    if a.undecided and (not a.overdue or spec.analysis.on_inconclusive == "hold"):
        return []
    if a.undecided and spec.analysis.on_inconclusive == "pause":
        return [Change(PAUSED, f"bake of {state.stage}: still undecided after max_stage_time ({a.undecided}); "
                               "on_inconclusive: pause", {"stage": state.stage})]
    gates = ", ".join(f"{g.gate} {g.verdict}" for g in a.judgement.gates) or "no gates"
    waited = now - (state.stage_entered_at or now) - spec.bake
    final = f" and a final look of {format_duration(waited)}" if waited >= spec.analysis.interval else ""
    return [bake_end_change(state, spec, f"{state.stage}: bake {format_duration(spec.bake)}{final} passed, "
                                         f"{a.samples[0]} candidate calls, no regression ({gates})")]


def _promotion_reason(spec: Spec, state: State, a: Assessment) -> str:
    stage = spec.stages[state.stage_index]
    gates = ", ".join(f"{g.gate} {g.verdict}" for g in a.judgement.gates) or "no gates"
    held = f"hold {format_duration(stage.hold)} passed, " if stage.hold else ""
    past = a.judgement.past_limit
    reason = (f"{stage.name}: {held}{a.samples[0]} candidate and {a.samples[1]} legacy calls, "
              f"{'no gate fails' if past else 'no regression'} ({gates})")
    if past:
        # Only where `holds_past_limit` lets an estimate past its limit through: say so, and who decides.
        reason += (f"; {', '.join(g.gate for g in past)} past its limit but not surely above it, left to the next "
                   "stage to decide with more calls: " + "; ".join(g.message for g in past))
    return reason


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
    return rollback_change(state, reason, spec)


def _ramp_down(spec: Spec, state: State, windows: Sequence[Window], now: float) -> list[Change]:
    firings = check_triggers(spec, windows, now)
    if firings:
        reason = "during the gradual rollback: " + "; ".join(f.message for f in firings)
        return [rollback_change(state, reason, spec)]
    since = state.rollback_step_at if state.rollback_step_at is not None else now
    if now - since >= spec.rollback.every:
        return [rollback_step_change(state, spec, f"gradual rollback: next step after {format_duration(spec.rollback.every)}")]
    return []


def is_active(state: State) -> bool:
    """True when the controller has work to do for this migration."""
    return state.status in (RUNNING, AWAITING_APPROVAL, ROLLING_BACK)
