"""Per-arm call telemetry: counters and a latency sketch per thread, merged and flushed in aligned windows."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from crossfade.sketch import Buckets, Histogram, Sketch, histogram_from_dict


class Cell:
    """What one arm of one stage did during one window: counters and a latency histogram, merged by addition.

    The SDK records latency into a `Sketch`; a metric source or a client in another language may bring fixed
    `Buckets` instead, and a cell that merges both keeps the buckets (the coarser resolution is the true one).
    """

    __slots__ = (
        "calls", "errors", "fallbacks", "timeouts", "cost_sum", "cost_sq", "costed", "compared", "mismatches",
        "latency",
    )

    def __init__(self) -> None:
        self.calls = 0
        self.errors = 0
        self.fallbacks = 0
        self.timeouts = 0
        self.cost_sum = 0.0
        self.cost_sq = 0.0
        self.costed = 0
        self.compared = 0
        self.mismatches = 0
        self.latency: Histogram = Sketch()

    def add_cost(self, cost: float) -> None:
        """Record the cost of one call (any unit, the same for both arms)."""
        self.cost_sum += cost
        self.cost_sq += cost * cost
        self.costed += 1

    def merge(self, other: Cell) -> None:
        """Add another cell's counts into this one."""
        self.calls += other.calls
        self.errors += other.errors
        self.fallbacks += other.fallbacks
        self.timeouts += other.timeouts
        self.cost_sum += other.cost_sum
        self.cost_sq += other.cost_sq
        self.costed += other.costed
        self.compared += other.compared
        self.mismatches += other.mismatches
        mine, theirs = self.latency, other.latency
        if isinstance(mine, Sketch) and isinstance(theirs, Buckets):
            self.latency = theirs.copy() if not mine.count else Buckets.from_sketch(mine, theirs.bounds)
            if mine.count:
                self.latency.merge(theirs)
        else:
            mine.merge(theirs)  # type: ignore[arg-type]  # a sketch merges a sketch; buckets merge either

    @property
    def error_rate(self) -> float:
        """Errors per call; NaN with no calls."""
        return self.errors / self.calls if self.calls else math.nan

    @property
    def cost_mean(self) -> float:
        """Mean cost over the calls that reported one; NaN with none."""
        return self.cost_sum / self.costed if self.costed else math.nan

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able form."""
        return {
            "calls": self.calls, "errors": self.errors, "fallbacks": self.fallbacks, "timeouts": self.timeouts,
            "cost_sum": self.cost_sum, "cost_sq": self.cost_sq, "costed": self.costed,
            "compared": self.compared, "mismatches": self.mismatches, "latency": self.latency.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Cell:
        """The cell a `to_dict` form describes."""
        cell = cls()
        for name in ("calls", "errors", "fallbacks", "timeouts", "costed", "compared", "mismatches"):
            setattr(cell, name, int(data.get(name, 0)))
        cell.cost_sum = float(data.get("cost_sum", 0.0))
        cell.cost_sq = float(data.get("cost_sq", 0.0))
        cell.latency = histogram_from_dict(data.get("latency") or {})
        return cell

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Cell):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"Cell(calls={self.calls}, errors={self.errors}, fallbacks={self.fallbacks}, timeouts={self.timeouts})"


@dataclass(frozen=True, slots=True)
class Window:
    """One arm's cell for one stage of one migration over the aligned interval [start, start + length)."""

    migration: str
    stage: str
    arm: str
    start: float
    length: float
    cell: Cell


def arm_metrics(cell: Cell) -> dict[str, Any]:
    """One arm's figures for people and JSON: calls, errors, error rate, latency quantiles (seconds), cost.

    NaN and infinite values (an empty sketch, no cost) become None.
    """

    def finite(x: float) -> float | None:
        return None if math.isnan(x) or math.isinf(x) else x

    return {
        "calls": cell.calls, "errors": cell.errors,
        "error_rate": None if not cell.calls else cell.errors / cell.calls,
        "fallbacks": cell.fallbacks, "timeouts": cell.timeouts,
        "p50": finite(cell.latency.quantile(0.5)), "p95": finite(cell.latency.quantile(0.95)),
        "p99": finite(cell.latency.quantile(0.99)),
        "cost_mean": finite(cell.cost_mean), "cost_sum": finite(cell.cost_sum),
    }


def merge_windows(windows: Iterable[Window]) -> dict[str, Cell]:
    """Per arm, the sum of many windows' cells."""
    out: dict[str, Cell] = {}
    for w in windows:
        cell = out.get(w.arm)
        if cell is None:
            cell = out[w.arm] = Cell()
        cell.merge(w.cell)
    return out


def open_cell(counts: Mapping[str, int], cost: Mapping[str, float] | None, latency: Mapping[str, Any] | None
              ) -> Cell:
    """The cell an open telemetry window describes (counters, cost sums, explicit latency buckets in `s` or
    `ms`, not cumulative), as clients in any language post it; ValueError when the buckets do not fit."""
    cell = Cell()
    for name in ("calls", "errors", "fallbacks", "timeouts", "compared", "mismatches"):
        setattr(cell, name, int(counts.get(name, 0)))
    if cost is not None:
        cell.costed, cell.cost_sum, cell.cost_sq = int(cost["count"]), float(cost["sum"]), float(cost["sum_squares"])
    if latency is not None:
        scale = 0.001 if latency.get("unit") == "ms" else 1.0
        cell.latency = Buckets(tuple(float(b) * scale for b in latency["bounds"]), [int(n) for n in latency["counts"]],
                               float(latency["sum"]) * scale)
    return cell


SEP = "\x1f"  # cannot occur in migration or stage names, which are [a-z0-9-]


def cell_key(migration: str, stage: str, arm: str) -> str:
    """The key of one arm of one stage: a str, whose hash Python caches, so lookups cost no allocation."""
    return f"{migration}{SEP}{stage}{SEP}{arm}"


class _ThreadCells:
    """One thread's cells by window index, whether it is writing one now, and windows taken while it was."""

    __slots__ = ("thread", "windows", "writing", "held", "held_mark")

    def __init__(self, thread: threading.Thread) -> None:
        self.thread = thread
        self.windows: dict[int, dict[str, Cell]] = {}
        # Odd while the thread is between `cell` and `done`: it may hold a window the flusher has taken.
        self.writing = 0
        self.held: list[tuple[int, dict[str, Cell]]] = []
        self.held_mark = 0


class Recorder:
    """Per-thread, lock-free buffers of cells by window; `collect` hands closed windows to the flusher.

    Each thread writes only into its own windows, between `cell` (which marks it as writing) and `done`.
    The flusher takes a closed window out with `dict.pop`, atomic under the GIL, and hands it on only once
    it has seen its thread outside a write, or starting a later one, after the pop: a write begun before the
    pop has then ended, and one begun after it cannot reach the window. So every count is flushed exactly
    once, however long a thread is descheduled mid-write (its window waits for it). A thread that records
    into a window already taken starts that window afresh; the backend adds the two up.
    Windows are aligned to wall-clock time so that every process cuts them alike; the hot path derives the
    window from the monotonic time it already read, through an offset that `resync` keeps current.
    """

    def __init__(
        self,
        window: float = 10.0,
        *,
        grace: float = 1.0,
        clock: Callable[[], int] = time.time_ns,
        monotonic: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        if window <= 0:
            raise ValueError(f"telemetry window must be positive, got {window}")
        self.window = window
        self.grace = grace
        self._window_ns = round(window * 1e9)
        self._clock = clock
        self.monotonic = monotonic
        self._offset_ns = 0
        self.resync()
        self._local = threading.local()
        self._buffers: list[_ThreadCells] = []
        self._lock = threading.Lock()  # guards the list of buffers, taken once per thread, never per call
        self._collecting = threading.Lock()  # one collector at a time: a window held back is handed on once

    def resync(self) -> None:
        """Re-read the wall clock's offset from the monotonic one (NTP may have moved it)."""
        self._offset_ns = self._clock() - self.monotonic()

    def cell(self, now_ns: int, key: str) -> Cell:
        """The calling thread's cell for `key` (see `cell_key`) in the window holding monotonic `now_ns`.

        The thread writes into it, then calls `done()` (in a `finally`); nothing else in between.
        """
        try:
            buffer = self._local.buffer
        except AttributeError:
            buffer = self._register()
        buffer.writing += 1
        index = (now_ns + self._offset_ns) // self._window_ns
        cells = buffer.windows.get(index)
        if cells is None:
            cells = buffer.windows[index] = {}
        cell = cells.get(key)
        if cell is None:
            cell = cells[key] = Cell()
        return cell

    def done(self) -> None:
        """The calling thread has finished writing the cell `cell` gave it."""
        self._local.buffer.writing += 1

    def now(self) -> int:
        """The monotonic time, in the unit `cell` takes."""
        return self.monotonic()

    def _register(self) -> _ThreadCells:
        buffer = self._local.buffer = _ThreadCells(threading.current_thread())
        with self._lock:
            self._buffers.append(buffer)
        return buffer

    def collect(self, *, everything: bool = False) -> list[Window]:
        """Take the windows that have closed (all of them with `everything`), merged across threads.

        With `everything` (at close) a window is taken even from a thread caught mid-write.
        """
        with self._collecting:
            return self._collect(everything)

    def _collect(self, everything: bool) -> list[Window]:
        cutoff = math.inf if everything else (self._clock() - round(self.grace * 1e9)) // self._window_ns
        merged: dict[tuple[int, str], Cell] = {}
        with self._lock:
            buffers = list(self._buffers)
            # A finished thread's buffer can go once it is empty; it can never be written again.
            self._buffers = [b for b in buffers if b.thread.is_alive() or b.windows or b.held]
        for buffer in buffers:
            # The very dict popped is kept, even empty: its thread may be about to put its cell in it.
            popped = [(i, buffer.windows.pop(i, None)) for i in list(buffer.windows) if i + 1 <= cutoff]
            taken = [(i, cells) for i, cells in popped if cells is not None]
            mark = buffer.writing  # read after the pops
            if taken:
                buffer.held.extend(taken)
                buffer.held_mark = mark
            # Odd and unchanged since the last pop: the write under way then may still hold a window taken.
            if not buffer.held or (mark % 2 and mark == buffer.held_mark and not everything
                                   and buffer.thread.is_alive()):
                continue
            for index, cells in buffer.held:
                for key, cell in cells.items():
                    if (index, key) in merged:
                        merged[(index, key)].merge(cell)
                    else:
                        merged[(index, key)] = cell
            buffer.held = []
        windows = []
        for (index, key), cell in sorted(merged.items(), key=lambda kv: kv[0]):
            migration, stage, arm = key.split(SEP)
            windows.append(Window(migration, stage, arm, index * self._window_ns / 1e9, self.window, cell))
        return windows

    def reset(self) -> None:
        """Forget every buffer: in a forked child, the parent's unflushed counts are the parent's to send."""
        self._local = threading.local()
        self._lock = threading.Lock()
        self._collecting = threading.Lock()
        self._buffers = []
        self.resync()
