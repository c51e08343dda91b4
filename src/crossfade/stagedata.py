"""The current stage's telemetry, kept up to date by reading only what was written since the last look.

The controller looks at every migration every interval for hours. Re-reading (and re-parsing) every
window of the stage at each look costs time that grows with the stage's age and the number of processes
writing. `StageTelemetry` keeps, per migration, the windows it has read: each look fetches only newer
rows and adds them in (cells merge exactly by addition, so a window written by several processes, or
retried late, sums the same). Windows older than what any trigger looks back over are rolled up into
one window per hour, so what is kept, and merged at each look, stays flat in the stage's age.

A store that keeps totals (SQL) holds those hours too, and one total per window and arm for the windows that
ended since (the rows of a window merged, which is all any judge sees of them): the controller rolls rows
into them as it goes, and a first look (a controller that starts, `crossfade status`, a server's first scrape)
reads the totals and the rows not rolled yet instead of every row of the stage: a number of rows bounded by
the stay's hours, the windows of the detail horizon and the processes' rows of the last ROLL_EVERY + FRESH
seconds, whatever the stage's age.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from crossfade.backends.base import (
    Backend,
    IncrementalTelemetry,
    RolledUpStage,
    StageTotals,
)
from crossfade.events import State
from crossfade.spec import Spec
from crossfade.telemetry import ROLLUP, WINDOW_MARGIN, Cell, Window, stay_hour

__all__ = ["ROLLUP", "WINDOW_MARGIN", "StageTelemetry", "detail_horizon", "stage_windows"]
# Seconds after which a row id handed out to a writer is surely committed or abandoned (PostgreSQL hands ids
# out at insert and shows rows at commit, so a lower id can appear after a higher one; statements time out
# well before this).
SETTLE = 120.0
# A controller rolls a stage's old rows into the store's totals at most this often (seconds), and at most
# this many pages of rows at a time, so that no tick waits long on it (a stage never rolled up, after an
# upgrade, is caught up over a few ticks).
ROLL_EVERY = 300.0
ROLL_PAGES = 3
# Windows that ended more than this many seconds ago are rolled into per-window totals (rows that come later,
# from a slow or retrying process, are added to them by a later roll-up).
FRESH = 60.0


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
    """What was read of one migration's current stage.

    Every row with an id up to `low` has been read. Above it, `seen` holds the ids read so far (up to
    `top`): a row whose id was handed out before `top`'s but which committed later is found among them by
    its absence. `marks` remembers, by this process's clock, which `top` each read reached, so that `low`
    moves up to a `top` once no writer can still be committing below it (`SETTLE` seconds later).
    `rolled` is the generation of the store's totals the first look started from (None: it read every row):
    a late row is one neither read nor rolled into them. `roll_from` is the earliest end of a window among
    the rows read and not yet rolled up by this reader's controller: until the horizon passes it, a roll-up
    would find nothing to take.
    """

    position: tuple[object, ...]
    low: int = 0
    top: int = 0
    seen: set[int] = field(default_factory=set)
    marks: deque[tuple[float, int]] = field(default_factory=deque)
    rolled: int | None = None
    roll_from: float = float("inf")
    recent: dict[tuple[float, float, str], Cell] = field(default_factory=dict)
    # Per hour and arm: the merged cell and the end of the last window in it, so a rolled-up window claims
    # no time it has no data for (a sliding window that starts after it must not see it).
    hours: dict[tuple[float, str], tuple[Cell, float]] = field(default_factory=dict)


class StageTelemetry:
    """Per migration, the current stage's windows, read incrementally from a store that can (SQL), as rolled
    up by one that reads them so itself (a control plane's HTTP API), and whole from one that cannot (a
    simulation's memory)."""

    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._monotonic = monotonic
        self._kept: dict[str, _Kept] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()  # guards the dicts; each migration's reads hold its own lock
        self._rolled_at: dict[str, float] = {}

    def windows(self, backend: Backend, state: State, spec: Spec, now: float) -> list[Window]:
        """The stage's windows as the controller takes them: recent ones as written, older ones by hour."""
        if not state.stage or not isinstance(backend, IncrementalTelemetry):
            if state.stage and isinstance(backend, RolledUpStage):
                found = backend.stage_telemetry(state.name, stage=state.stage, entered=state.stage_entered_at)
                if found is not None:
                    return found
            return stage_windows(backend, state)
        entered = state.stage_entered_at if state.stage_entered_at is not None else float("-inf")
        position = (state.stage, entered, state.spec_version)
        with self._lock:
            lock = self._locks.setdefault(state.name, threading.Lock())
        with lock:
            with self._lock:
                kept = self._kept.get(state.name)
                fresh = kept is None or kept.position != position
                if fresh:
                    kept = self._kept[state.name] = _Kept(position)
            assert kept is not None
            cutoff = now - detail_horizon(spec)
            if fresh and isinstance(backend, StageTotals) and state.stage_entered_at is not None:
                news = self._first(backend, state.name, state.stage, kept, entered)
            else:
                news = self._news(backend, state.name, state.stage, kept)
            for w in news:
                if w.start < entered - WINDOW_MARGIN:
                    continue
                kept.roll_from = min(kept.roll_from, w.start + w.length)
                self._add(kept, w.start, w.length, w.arm, w.cell, cutoff, entered)
            for key in [k for k in kept.recent if k[0] + k[1] <= cutoff]:
                start, length, arm = key
                self._add(kept, start, length, arm, kept.recent.pop(key), cutoff, entered)
            return self._as_windows(state, kept)

    def _first(self, backend: StageTotals, name: str, stage: str, kept: _Kept, entered: float) -> list[Window]:
        """A first look through the store's totals: its hours as they are, and the rows not rolled into them."""
        snapshot = backend.stage_snapshot(name, stage=stage, entered=entered)
        for arm, hour, end, cell in snapshot.hours:
            kept.hours[(hour, arm)] = (cell, end)
        kept.rolled, kept.low, kept.top = snapshot.generation, snapshot.settled, snapshot.top
        kept.seen = {row_id for row_id, _ in snapshot.rows if row_id > kept.low}
        kept.marks.append((self._monotonic(), kept.top))
        return [*snapshot.windows, *(w for _, w in snapshot.rows)]

    def _news(self, backend: IncrementalTelemetry, name: str, stage: str, kept: _Kept) -> list[Window]:
        late: set[int] = set()
        if kept.top > kept.low:
            late = set(backend.telemetry_ids(name, stage=stage, after_id=kept.low, upto=kept.top,
                                             rolled_after=kept.rolled)) - kept.seen
        rows = backend.telemetry_rows(name, stage=stage, after_id=kept.top, also=late)
        for row_id, _ in rows:
            kept.seen.add(row_id)
            kept.top = max(kept.top, row_id)
        clock = self._monotonic()
        kept.marks.append((clock, kept.top))
        if kept.marks[0][0] <= clock - SETTLE:
            while kept.marks and kept.marks[0][0] <= clock - SETTLE:
                kept.low = max(kept.low, kept.marks.popleft()[1])
            kept.seen = {i for i in kept.seen if i > kept.low}
        return [w for _, w in rows]

    def roll_up(self, backend: Backend, state: State, spec: Spec, now: float) -> int:
        """As a controller, after its look: roll the stay's rows into the store's totals (when it keeps them):
        by hour those that no trigger or detector reads as written any more, by window those of the windows
        that ended FRESH seconds ago or more; at most every ROLL_EVERY seconds and ROLL_PAGES pages at a time.
        Returns the rows rolled up."""
        if not isinstance(backend, StageTotals) or not state.stage or state.stage_entered_at is None:
            return 0
        before, fresh_before = now - detail_horizon(spec), now - FRESH
        with self._lock:
            if self._rolled_at.get(state.name, float("-inf")) > now - ROLL_EVERY:
                return 0
            kept = self._kept.get(state.name)
        if kept is not None and kept.roll_from > fresh_before:
            # Every row of the stay passed through this reader (the first look's, then the news): none of
            # them is old enough yet, even for its window's total, so a roll-up (a write transaction) would
            # take nothing.
            return 0
        rolled = 0
        for _ in range(ROLL_PAGES):
            taken = backend.roll_up(state.name, stage=state.stage, entered=state.stage_entered_at, before=before,
                                    windows_before=fresh_before)
            rolled += taken
            if not taken:
                with self._lock:  # caught up: not again before ROLL_EVERY has passed
                    self._rolled_at[state.name] = now
                if kept is not None:
                    # What stays unrolled: the windows kept as written that ended less than FRESH ago.
                    kept.roll_from = min((start + length for start, length, _ in kept.recent
                                          if start + length > fresh_before), default=float("inf"))
                break
        return rolled

    def forget(self, name: str) -> None:
        """Drop what is kept of a migration (it ended, or this process no longer looks at it)."""
        with self._lock:
            self._kept.pop(name, None)
            self._locks.pop(name, None)
            self._rolled_at.pop(name, None)

    @staticmethod
    def _add(kept: _Kept, start: float, length: float, arm: str, cell: Cell, cutoff: float, entered: float) -> None:
        end = start + length
        if end > cutoff:
            kept.recent.setdefault((start, length, arm), Cell()).merge(cell)
        elif end > entered:  # a window wholly before the stage is not counted by the controller either
            hour = stay_hour(start, entered)
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
