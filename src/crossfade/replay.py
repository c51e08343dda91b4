"""Replay: re-judge a migration's recorded windows under another spec, to tune gates on real data.

The recorded events say when each stage was entered and left; the recorded windows (read through the
migration's metric source) say what each arm did meanwhile. Replay walks each recorded stage look by look
at the other spec's interval, hands the windows closed by then to the same pure controller (`step`) with the
other spec's gates, triggers, analysis and stage settings (stages matched by name, else by position), and
reports when that spec would have promoted, held or rolled back. It cannot invent data: a stage is judged
only on the traffic it really had, and after the recorded end of a stage (or of the migration) nothing is
known, so "held" means "still waiting when the recording of that stage ends".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from crossfade.controller import assess, step
from crossfade.events import (
    ABORTED,
    APPROVAL_REQUESTED,
    PAUSED,
    PROMOTED,
    RESTARTED,
    ROLLBACK_STARTED,
    ROLLED_BACK,
    RUNNING,
    STARTED,
    STEPPED_BACK,
    Event,
    State,
    seal,
)
from crossfade.spec import Spec, format_duration
from crossfade.telemetry import Window

PROMOTE: Final = "promote"
ROLLBACK: Final = "rollback"
STEP_BACK: Final = "step back"
PAUSE: Final = "pause"
HOLD: Final = "hold"
# What acts on a failure: after one, the replayed migration and the recording part ways.
FAILURES: Final = frozenset({ROLLBACK, STEP_BACK, PAUSE})
_ENTRIES: Final = (STARTED, PROMOTED, RESTARTED, STEPPED_BACK)
_DECISIONS: Final = {APPROVAL_REQUESTED: PROMOTE, PROMOTED: PROMOTE, ROLLED_BACK: ROLLBACK,
                     ROLLBACK_STARTED: ROLLBACK, STEPPED_BACK: STEP_BACK, PAUSED: PAUSE, ABORTED: ROLLBACK}


@dataclass(frozen=True, slots=True)
class StagePeriod:
    """One recorded stay in a stage: when it began and ended, its split, and how the recording left it."""

    stage: str
    index: int
    traffic: float
    shadow: float
    shadow_legacy: float
    start: float
    end: float
    decision: str
    decided_at: float | None
    reason: str


@dataclass(frozen=True, slots=True)
class StageReplay:
    """What the other spec would have decided in one recorded stage, beside what was recorded."""

    period: StagePeriod
    decision: str
    decided_at: float | None
    reason: str

    def to_dict(self, origin: float) -> dict[str, Any]:
        """A JSON-able form, times in seconds since `origin` (the migration's start)."""
        p = self.period
        return {"stage": p.stage, "entered_s": p.start - origin, "recorded": {
            "decision": p.decision, "at_s": None if p.decided_at is None else p.decided_at - origin, "reason": p.reason},
            "replayed": {"decision": self.decision, "at_s": None if self.decided_at is None else self.decided_at - origin,
                         "reason": self.reason}}


@dataclass(frozen=True, slots=True)
class Replay:
    """A migration re-judged under another spec: stage by stage, and the first rollback of each side."""

    migration: str
    origin: float
    stages: tuple[StageReplay, ...]
    recorded: tuple[StagePeriod, ...]

    @property
    def recorded_failure(self) -> StagePeriod | None:
        """The recorded stage where the migration acted on a failure (rolled back, stepped back, paused)."""
        return next((p for p in self.recorded if p.decision in FAILURES), None)

    @property
    def replayed_failure(self) -> StageReplay | None:
        """The stage where the other spec would have acted on a failure, if within the recorded data."""
        return next((s for s in self.stages if s.decision in FAILURES), None)

    @property
    def recorded_end(self) -> float:
        """Where the recorded data ends."""
        return max((p.end for p in self.recorded), default=self.origin)

    def summary(self) -> str:
        """One sentence: would the other spec have rolled back earlier, later or not at all."""
        recorded, replayed = self.recorded_failure, self.replayed_failure

        def at(t: float | None) -> str:
            return f"+{format_duration((t or self.origin) - self.origin)}"

        if replayed is None:
            ending = f"would not have acted on a failure by {at(self.recorded_end)}, where the recording ends"
            if recorded is not None:
                return f"{ending}: later than the recorded {recorded.decision} at {at(recorded.decided_at)}, if at all"
            promoted = sum(s.decision == PROMOTE for s in self.stages)
            return f"{ending} (it would have promoted {promoted} of {len(self.stages)} recorded stages)"
        done = f"would have {_past(replayed.decision)} at {at(replayed.decided_at)} in {replayed.period.stage}"
        if recorded is None or recorded.decided_at is None or replayed.decided_at is None:
            return f"{done}, where the recording did not"
        gap = replayed.decided_at - recorded.decided_at
        than = f"than the recorded {recorded.decision} at {at(recorded.decided_at)} in {recorded.stage}"
        if gap < 0:
            return f"{done}, {format_duration(-gap)} earlier {than}"
        if gap > 0:
            return f"{done}, {format_duration(gap)} later {than}"
        return f"{done}, as recorded"


def _past(decision: str) -> str:
    return {ROLLBACK: "rolled back", STEP_BACK: "stepped back", PAUSE: "paused", PROMOTE: "promoted"}.get(
        decision, decision)


def stage_periods(events: Sequence[Event], now: float) -> list[StagePeriod]:
    """The recorded stays in stages of one migration's log, the last one open until `now` if still running."""
    periods: list[StagePeriod] = []
    state = State(events[0].migration) if events else State("")
    current: dict[str, Any] | None = None
    for event in events:
        state = state.apply(event)
        decision = _DECISIONS.get(event.type)
        if current is not None and decision is not None and current["decided_at"] is None and (
                event.type != PAUSED or event.actor.startswith("controller")):
            current.update(decision=decision, decided_at=event.time, reason=event.reason or event.type)
        if event.type in _ENTRIES or event.type in (ROLLED_BACK, ROLLBACK_STARTED, ABORTED):
            if current is not None:
                periods.append(StagePeriod(**{**current, "end": event.time}))
                current = None
            if event.type in _ENTRIES and state.status == RUNNING:
                current = {"stage": state.stage, "index": state.stage_index, "traffic": state.traffic,
                           "shadow": state.shadow, "shadow_legacy": state.shadow_legacy, "start": event.time,
                           "decision": HOLD, "decided_at": None, "reason": "still in this stage"}
    if current is not None:
        periods.append(StagePeriod(**{**current, "end": now}))
    return periods


def stay(migration: str, period: StagePeriod) -> State:
    """The state of `migration` during one recorded stay in a stage, as a metric source reads it."""
    return State(migration, status=RUNNING, stage=period.stage, stage_index=period.index, traffic=period.traffic,
                 shadow=period.shadow, shadow_legacy=period.shadow_legacy, stage_entered_at=period.start)


def replay(spec: Spec, migration: str, events: Sequence[Event], windows: Callable[[StagePeriod], list[Window]],
           now: float) -> Replay:
    """Re-judge every recorded stage of `migration` under `spec`, reading each stage's windows with `windows`."""
    periods = stage_periods(events, now)
    origin = periods[0].start if periods else now
    out = []
    for period in periods:
        result = _replay_stage(spec, migration, period, windows(period))
        out.append(result)
        if result.decision in FAILURES:
            break  # a rollback ends the migration: what was recorded afterwards never happens under this spec
    return Replay(migration, origin, tuple(out), tuple(periods))


def _stage_index(spec: Spec, period: StagePeriod) -> int:
    for index, stage in enumerate(spec.stages):
        if stage.name == period.stage:
            return index
    return min(period.index, len(spec.stages) - 1)


def _replay_stage(spec: Spec, migration: str, period: StagePeriod, windows: list[Window]) -> StageReplay:
    index = _stage_index(spec, period)
    if index + 1 >= len(spec.stages):
        return StageReplay(period, HOLD, None, f"{period.stage} is the last stage of this spec: nothing to judge")
    state = State(migration, status=RUNNING, stage_index=index, stage=period.stage, traffic=period.traffic,
                  shadow=period.shadow, shadow_legacy=period.shadow_legacy, stage_entered_at=period.start)
    interval = spec.analysis.interval
    look = 1
    t = period.start + interval
    while t <= period.end + 1e-9:
        # The controller at time t had the windows closed by then.
        seen = [w for w in windows if w.start + w.length <= t + 1e-9]
        changes = step(spec, state, seen, t)
        decided = next((c for c in changes if c.type in _DECISIONS), None)
        if decided is not None:
            return StageReplay(period, _DECISIONS[decided.type], t, decided.reason or decided.type)
        state = seal(state, changes, actor="replay", now=t)[0] if changes else state
        look += 1
        t = period.start + look * interval
    seen = [w for w in windows if w.start + w.length <= period.end + 1e-9]
    waiting = assess(spec, state, seen, period.end).waiting_for
    return StageReplay(period, HOLD, None, f"still waiting at the end of the recorded stage: {waiting or 'nothing'}")
