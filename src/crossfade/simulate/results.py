"""What a simulated migration did: its timeline, each controller look, its outcome; and summaries over many runs."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from crossfade.controller import Assessment
from crossfade.events import Event, State
from crossfade.simulate.draws import NORMAL
from crossfade.spec import format_duration
from crossfade.telemetry import Cell, Window

# Outcomes, as `--json` counts them.
OUTCOMES: Final = ("completed", "rolled_back", "paused", "running")


@dataclass(frozen=True, slots=True)
class TimelineEntry:
    """One line of a simulated migration's story: when (seconds into the run), where, who, what. Immutable."""

    elapsed: float
    stage: str | None
    kind: str
    actor: str
    text: str

    def __str__(self) -> str:
        return f"+{format_duration(round(self.elapsed))} {self.stage or '-'} {self.kind} ({self.actor}): {self.text}"


@dataclass(frozen=True, slots=True)
class SimTick:
    """What one controller look saw and did, handed to `on_tick` and `rollback_when`.

    `time` is the virtual epoch time and `elapsed` the seconds since the run began. `stage` is the stage the
    interval just ended ran in (the one judged); `cells` are its per-arm totals since it was entered, `last`
    its per-arm cells of that interval alone, and `windows` the stage's telemetry as the controller read it.
    `assessment` is the controller's view of that stage (None at the last stage, which is not judged).
    `state` is the migration after the look, and `events` what the look (and the simulation's approvals
    or rollbacks) appended.
    """

    time: float
    elapsed: float
    stage: str | None
    state: State
    assessment: Assessment | None
    cells: Mapping[str, Cell]
    last: Mapping[str, Cell]
    windows: tuple[Window, ...]
    events: tuple[Event, ...]


@dataclass(frozen=True, slots=True)
class SimResult:
    """How a simulated migration ended. Immutable.

    `outcome` is completed, rolled_back, paused or running (still going when the simulation's time ran out);
    `duration_s` the simulated seconds until it ended (or ran out); `stage` where it ended, `reason` why.
    `detected_s` is when the first corrective action (rollback, step back, pause) was taken, `exposed` the
    candidate calls served after the fault began (from the start without one) until then or the end, and
    `calls` the calls per arm in the whole run.
    """

    outcome: str
    duration_s: float
    stage: str | None
    reason: str
    detected_s: float | None = None
    exposed: int = 0
    calls: Mapping[str, int] = field(default_factory=dict)
    events: tuple[Event, ...] = ()
    timeline: tuple[TimelineEntry, ...] = ()

    def summary(self) -> str:
        """One sentence: "completed in 9h40m simulated", "rolled back at canary-10 after 14m: ..."."""
        took = format_duration(round(self.duration_s))
        if self.outcome == "completed":
            return f"completed in {took} simulated"
        where = f" at {self.stage}" if self.stage else ""
        if self.outcome == "rolled_back":
            return f"rolled back{where} after {took}: {self.reason}"
        if self.outcome == "paused":
            return f"paused{where} after {took}: {self.reason}"
        return f"still running{where} after {took}, when the simulation stopped: {self.reason}"

    def to_dict(self) -> dict[str, Any]:
        """The `detail` entry of `crossfade simulate --json`."""
        return {"outcome": self.outcome, "duration_s": self.duration_s, "stage": self.stage, "reason": self.reason}


def outcome_counts(results: Sequence[SimResult]) -> dict[str, int]:
    """How many results ended in each outcome, every outcome listed."""
    return {name: sum(1 for r in results if r.outcome == name) for name in OUTCOMES}


def median(values: Sequence[float]) -> float | None:
    """The median, or None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def wilson(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of a proportion."""
    if n == 0:
        return 0.0, 1.0
    z = NORMAL.inv_cdf(0.5 + confidence / 2)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)
