"""The current stage's telemetry, kept up to date by reading only what was written since the last look.

The controller looks at every migration every interval for hours. Re-reading (and re-parsing) every
window of the stage at each look costs time that grows with the stage's age and the number of processes
writing. `StageTelemetry` keeps, per migration, the windows it has read: each look fetches only newer
rows and adds them in (cells merge exactly by addition, so a window written by several processes, or
retried late, sums the same). Windows older than what any trigger looks back over are rolled up into
one window per hour, so what is kept, and merged at each look, stays flat in the stage's age.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from crossfade.backends.base import Backend, IncrementalTelemetry
from crossfade.events import State
from crossfade.spec import Spec
from crossfade.telemetry import Cell, Window

# How far before a stage's entry telemetry windows are read: a window that began before the stage was
# entered may hold its first calls (windows are 10 s by default; a minute covers any sensible setting).
WINDOW_MARGIN = 60.0
ROLLUP = 3600.0


def stage_windows(backend: Backend, state: State) -> list[Window]:
    """The telemetry of the current stage, read whole: from `WINDOW_MARGIN` before it was entered."""
    if not state.stage:
        return []
    since = state.stage_entered_at
    return backend.windows(state.name, stage=state.stage, since=None if since is None else since - WINDOW_MARGIN)


def detail_horizon(spec: Spec) -> float:
    """How far back (seconds) windows are kept as written: past every trigger's window and `for`, plus a
    few looks; older ones are rolled up by hour, which nothing that looks at a sliding window reads."""
    interval = spec.analysis.interval
    reach = max((t.window + (t.for_ or 0.0) for t in spec.triggers), default=0.0)
    return max(ROLLUP, reach + 4 * interval + 600.0)


@dataclass
class _Kept:
    """What was read of one migration's current stage."""

    position: tuple[object, ...]
    after_id: int = 0
    recent: dict[tuple[float, float, str], Cell] = field(default_factory=dict)
    # Per hour and arm: the merged cell and the end of the last window in it, so a rolled-up window claims
    # no time it has no data for (a sliding window that starts after it must not see it).
    hours: dict[tuple[float, str], tuple[Cell, float]] = field(default_factory=dict)


class StageTelemetry:
    """Per migration, the current stage's windows, read incrementally from a store that can (SQL), and
    whole from one that cannot (a control plane's HTTP API, a simulation's memory)."""

    def __init__(self) -> None:
        self._kept: dict[str, _Kept] = {}
        self._lock = threading.Lock()

    def windows(self, backend: Backend, state: State, spec: Spec, now: float) -> list[Window]:
        """The stage's windows as the controller takes them: recent ones as written, older ones by hour."""
        if not state.stage or not isinstance(backend, IncrementalTelemetry):
            return stage_windows(backend, state)
        entered = state.stage_entered_at if state.stage_entered_at is not None else float("-inf")
        position = (state.stage, entered, state.spec_version)
        with self._lock:
            kept = self._kept.get(state.name)
            if kept is None or kept.position != position:
                kept = self._kept[state.name] = _Kept(position)
            rows, kept.after_id = backend.telemetry_since(state.name, stage=state.stage, after_id=kept.after_id)
            cutoff = now - detail_horizon(spec)
            for w in rows:
                if w.start < entered - WINDOW_MARGIN:
                    continue
                self._add(kept, w.start, w.length, w.arm, w.cell, cutoff, entered)
            for key in [k for k in kept.recent if k[0] + k[1] <= cutoff]:
                start, length, arm = key
                self._add(kept, start, length, arm, kept.recent.pop(key), cutoff, entered)
            return self._as_windows(state, kept)

    def forget(self, name: str) -> None:
        """Drop what is kept of a migration (it ended, or this process no longer looks at it)."""
        with self._lock:
            self._kept.pop(name, None)

    @staticmethod
    def _add(kept: _Kept, start: float, length: float, arm: str, cell: Cell, cutoff: float, entered: float) -> None:
        end = start + length
        if end > cutoff:
            kept.recent.setdefault((start, length, arm), Cell()).merge(cell)
        elif end > entered:  # a window wholly before the stage is not counted by the controller either
            # Hours counted from the stage's entry, so no hour straddles it.
            origin = entered if entered != float("-inf") else 0.0
            hour = max(origin + (start - origin) // ROLLUP * ROLLUP, origin)
            merged, last = kept.hours.get((hour, arm)) or (Cell(), end)
            merged.merge(cell)
            kept.hours[(hour, arm)] = (merged, max(last, end))

    @staticmethod
    def _as_windows(state: State, kept: _Kept) -> list[Window]:
        assert state.stage is not None
        windows = [Window(state.name, state.stage, arm, start, end - start, _copy(cell))
                   for (start, arm), (cell, end) in kept.hours.items()]
        windows += [Window(state.name, state.stage, arm, start, length, _copy(cell))
                    for (start, length, arm), cell in kept.recent.items()]
        windows.sort(key=lambda w: (w.start, w.arm))
        return windows


def _copy(cell: Cell) -> Cell:
    """A cell the caller may merge into without changing what is kept."""
    out = Cell()
    out.merge(cell)
    return out
