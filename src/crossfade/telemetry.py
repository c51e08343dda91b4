"""Per-arm call telemetry: counters and a latency sketch per thread, merged and flushed in aligned windows."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from crossfade.sketch import _INV_LOG2_GAMMA, ALPHA, MIN_VALUE, Buckets, Histogram, Sketch, histogram_from_dict
from crossfade.spec.units import MAX_METRICS, valid_metric_name

MAX_COUNT: Final = 2**53
"""The largest count a cell may hold: exact as a float and in every JSON reader."""
LATENCY_BINS: Final = range(-1100, 1100)
"""Sketch bucket indexes a cell may use: from 1 ns (below it values count as zero) to about 20 years."""
MAX_BINS: Final = len(LATENCY_BINS)
_COUNTS: Final = ("calls", "errors", "fallbacks", "timeouts", "costed", "compared", "mismatches")
_SUMS: Final = ("cost_sum", "cost_sq")
_CELL_KEYS: Final = frozenset((*_COUNTS, *_SUMS, "latency", "metrics", "first_chunk"))
_SKETCH_KEYS: Final = frozenset(("bins", "zeros", "count", "total"))
METRIC_BINS: Final = range(-1100, 2100)
"""Sketch bucket indexes a custom metric's sketch may use: values from 1e-9 to 1e18 (larger are capped)."""
MAX_METRIC_VALUE: Final = 1e18
_TALLY_KEYS: Final = frozenset(("count", "sum", "sum_squares", "sketch"))


class Tally:
    """One custom metric of one cell: how many values, their sum and sum of squares (a mean and its variance),
    and, for a metric judged by a quantile, a sketch of the values. Merged by addition, like the cell."""

    __slots__ = ("count", "total", "squares", "sketch")

    def __init__(self) -> None:
        self.count = 0
        self.total = 0.0
        self.squares = 0.0
        self.sketch: Sketch | None = None

    def add(self, value: float, sketched: bool = False) -> None:
        """Record one value. A sketch is for non-negative values: 1e-9 or less counts as zero, above 1e18 as 1e18."""
        self.count += 1
        self.total += value
        self.squares += value * value
        if sketched:
            sketch = self.sketch
            if sketch is None:
                sketch = self.sketch = Sketch()
            sketch.add(min(value, MAX_METRIC_VALUE))

    def merge(self, other: Tally) -> None:
        """Add another tally into this one. A sketch holds the values of the parts that kept one: a process
        running an older spec may not have, so a sketch may count fewer values than the tally."""
        self.count += other.count
        self.total += other.total
        self.squares += other.squares
        if other.sketch is not None:
            if self.sketch is None:
                self.sketch = Sketch()
            self.sketch.merge(other.sketch)

    @property
    def mean(self) -> float:
        """The mean value; NaN with none."""
        return self.total / self.count if self.count else math.nan

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able form."""
        out: dict[str, Any] = {"count": self.count, "sum": self.total, "sum_squares": self.squares}
        if self.sketch is not None:
            out["sketch"] = self.sketch.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Tally:
        """The tally a `to_dict` form describes (unchecked: see `check_cell`)."""
        tally = cls()
        tally.count = int(data.get("count", 0))
        tally.total = float(data.get("sum", 0.0))
        tally.squares = float(data.get("sum_squares", 0.0))
        if data.get("sketch") is not None:
            tally.sketch = Sketch.from_dict(data["sketch"])
        return tally

    def __repr__(self) -> str:
        return f"Tally(count={self.count}, mean={self.mean:.6g})"




class Cell:
    """What one arm of one stage did during one window: counters and a latency histogram, merged by addition.

    The SDK records latency into a `Sketch`; a metric source or a client in another language may bring fixed
    `Buckets` instead, and a cell that merges both keeps the buckets (the coarser resolution is the true one).
    """

    __slots__ = (
        "calls", "errors", "fallbacks", "timeouts", "cost_sum", "cost_sq", "costed", "compared", "mismatches",
        "latency", "metrics", "first_chunk",
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
        self.metrics: dict[str, Tally] = {}
        # Streams' latency to their first chunk (`latency` is to their end); None where no stream was timed.
        self.first_chunk: Histogram | None = None

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
        self.latency = _merged(self.latency, other.latency)
        if other.first_chunk is not None:
            self.first_chunk = _merged(self.first_chunk if self.first_chunk is not None else Sketch(),
                                       other.first_chunk)
        if other.metrics:
            metrics = self.metrics
            for name, tally in other.metrics.items():
                own = metrics.get(name)
                if own is None:
                    own = metrics[name] = Tally()
                own.merge(tally)

    def time_first_chunk(self, seconds: float) -> None:
        """Record a stream's latency to its first chunk."""
        if self.first_chunk is None:
            self.first_chunk = Sketch()
        self.first_chunk.add(seconds)

    def metric(self, name: str, value: float, sketched: bool = False) -> None:
        """Record one value of the custom metric `name` (its sketch too when `sketched`); at most MAX_METRICS
        names per cell, further ones are dropped (ValueError, which the recorder counts)."""
        tally = self.metrics.get(name)
        if tally is None:
            if len(self.metrics) >= MAX_METRICS:
                raise ValueError(f"more than {MAX_METRICS} custom metrics in one cell")
            tally = self.metrics[name] = Tally()
        tally.add(value, sketched)

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
            # Left out when empty: cells of call sites without custom metrics stay as they were.
            **({"metrics": {name: t.to_dict() for name, t in self.metrics.items()}} if self.metrics else {}),
            **({} if self.first_chunk is None else {"first_chunk": self.first_chunk.to_dict()}),
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
        cell.metrics = {name: Tally.from_dict(t) for name, t in (data.get("metrics") or {}).items()}
        if data.get("first_chunk") is not None:
            cell.first_chunk = histogram_from_dict(data["first_chunk"])
        return cell

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Cell):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"Cell(calls={self.calls}, errors={self.errors}, fallbacks={self.fallbacks}, timeouts={self.timeouts})"


class CellError(ValueError):
    """A cell that cannot be what one arm did in one window: its counts are out of range or contradict."""


def _count(value: object, where: str) -> int:
    # JSON from other languages may spell a whole number 5.0; anything else is not a count.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CellError(f"{where} must be a whole number, got {type(value).__name__}")
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        raise CellError(f"{where} must be a whole number, got {value!r}")
    if not 0 <= value <= MAX_COUNT:
        raise CellError(f"{where} must be between 0 and 2^53, got {value:.0f}")
    return int(value)


def _finite(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise CellError(f"{where} must be a finite number, got {value!r}")
    return float(value)


def _merged(mine: Histogram, theirs: Histogram) -> Histogram:
    """Two histograms added: a sketch merges a sketch; with fixed buckets on either side, the buckets."""
    if isinstance(mine, Sketch) and isinstance(theirs, Buckets):
        merged = theirs.copy() if not mine.count else Buckets.from_sketch(mine, theirs.bounds)
        if mine.count:
            merged.merge(theirs)
        return merged
    mine.merge(theirs)  # type: ignore[arg-type]
    return mine


def check_cell(data: object) -> Cell:
    """The cell a `to_dict` form describes, checked fully; CellError saying what is wrong otherwise.

    Every cell from outside the process (posted by a host, read back from the store) passes here, so that
    no reader meets a count out of range, errors above calls, or a latency bucket no clock can produce.
    Missing keys are zero, and a cell without a latency sketch is one whose calls were not timed.
    """
    if not isinstance(data, Mapping):
        raise CellError(f"a cell is a mapping, got {type(data).__name__}")
    unknown = sorted(str(k) for k in data if k not in _CELL_KEYS)
    if unknown:
        raise CellError(f"unknown field(s) {', '.join(unknown)}; a cell has {', '.join(sorted(_CELL_KEYS))}")
    if data.get("first_chunk") is not None:
        first = check_cell({"calls": data.get("calls", 0), "latency": data["first_chunk"]}).latency
        cell = check_cell({k: v for k, v in data.items() if k != "first_chunk"})
        cell.first_chunk = first
        return cell
    cell = Cell()
    for name in _COUNTS:
        value = data.get(name, 0)
        setattr(cell, name, value if type(value) is int and 0 <= value <= MAX_COUNT else _count(value, name))
    cell.cost_sum = _finite(data.get("cost_sum", 0.0), "cost_sum")
    cell.cost_sq = _finite(data.get("cost_sq", 0.0), "cost_sq")
    if data.get("metrics"):
        cell.metrics = _check_metrics(data["metrics"])
    latency = data.get("latency") or {}
    if not isinstance(latency, Mapping):
        raise CellError(f"latency is a sketch mapping, got {type(latency).__name__}")
    if "bounds" in latency:
        cell.latency = _check_buckets(latency)
        _consistent(cell)
        return cell
    unknown = sorted(str(k) for k in latency if k not in _SKETCH_KEYS)
    if unknown:
        raise CellError(f"unknown latency field(s) {', '.join(unknown)}; a sketch has bins, zeros, count, total")
    bins = latency.get("bins") or {}
    if not isinstance(bins, Mapping) or len(bins) > MAX_BINS:
        raise CellError(f"latency.bins is a mapping of at most {MAX_BINS} bucket indexes to counts")
    sketch = cell.latency
    try:
        parsed = {int(key): n for key, n in bins.items()}
    except (TypeError, ValueError):
        raise CellError(f"latency.bins: {sorted(map(str, bins))[:3]} are not all bucket indexes") from None
    if len(parsed) != len(bins):
        raise CellError("latency.bins: a bucket index appears twice")
    if parsed and (min(parsed) < LATENCY_BINS.start or max(parsed) >= LATENCY_BINS.stop):
        outside = min(parsed) if min(parsed) < LATENCY_BINS.start else max(parsed)
        raise CellError(f"latency.bins: bucket {outside} is outside {LATENCY_BINS.start}..{LATENCY_BINS.stop - 1}")
    # Readers check every stored row at every look: whole counts in range take the quick way.
    if all(type(n) is int and 0 <= n <= MAX_COUNT for n in parsed.values()):
        sketch.bins = parsed
    else:
        sketch.bins = {index: _count(n, f"latency.bins[{index}]") for index, n in parsed.items()}
    sketch.zeros = _count(latency.get("zeros", 0), "latency.zeros")
    sketch.count = _count(latency.get("count", 0), "latency.count")
    sketch.total = _finite(latency.get("total", 0.0), "latency.total")
    _consistent(cell)
    return cell


def _check_metrics(data: object) -> dict[str, Tally]:
    """A cell's custom metrics, checked: bounded names and number, counts in range, sums that can be sums."""
    if not isinstance(data, Mapping) or len(data) > MAX_METRICS:
        raise CellError(f"metrics is a mapping of at most {MAX_METRICS} metric names to tallies")
    out: dict[str, Tally] = {}
    for name, item in data.items():
        if not valid_metric_name(name):
            raise CellError(f"metrics: {str(name)[:80]!r} is not a metric name (lowercase letters, digits and _, "
                            "at most 63, starting with a letter)")
        where = f"metrics.{name}"
        if not isinstance(item, Mapping):
            raise CellError(f"{where} is a mapping of count, sum, sum_squares and sketch")
        unknown = sorted(str(k) for k in item if k not in _TALLY_KEYS)
        if unknown:
            raise CellError(f"unknown field(s) {', '.join(unknown)} in {where}; a tally has count, sum, "
                            "sum_squares, sketch")
        tally = Tally()
        tally.count = _count(item.get("count", 0), f"{where}.count")
        tally.total = _finite(item.get("sum", 0.0), f"{where}.sum")
        tally.squares = _finite(item.get("sum_squares", 0.0), f"{where}.sum_squares")
        if tally.squares < 0 or (tally.count == 0 and (tally.total or tally.squares)):
            raise CellError(f"{where}: sum_squares must be 0 or more, and both sums 0 when count is 0")
        # Cauchy-Schwarz: sum^2 <= count * sum_squares for any values (with room for rounding).
        if tally.total * tally.total > tally.count * tally.squares * (1 + 1e-6) + 1e-9:
            raise CellError(f"{where}: sum ({tally.total!r}) and sum_squares ({tally.squares!r}) cannot both hold "
                            f"for {tally.count} values")
        if item.get("sketch") is not None:
            tally.sketch = _check_sketch(item["sketch"], f"{where}.sketch", METRIC_BINS)
            if tally.sketch.count > tally.count:
                raise CellError(f"{where}.sketch.count ({tally.sketch.count}) exceeds count ({tally.count})")
        out[name] = tally
    return out


def _check_sketch(data: object, where: str, indexes: range) -> Sketch:
    """A sketch's `to_dict` form, checked: bucket indexes within `indexes`, counts that add up."""
    if not isinstance(data, Mapping):
        raise CellError(f"{where} is a sketch mapping, got {type(data).__name__}")
    unknown = sorted(str(k) for k in data if k not in _SKETCH_KEYS)
    if unknown:
        raise CellError(f"unknown field(s) {', '.join(unknown)} in {where}; a sketch has bins, zeros, count, total")
    bins = data.get("bins") or {}
    if not isinstance(bins, Mapping) or len(bins) > len(indexes):
        raise CellError(f"{where}.bins is a mapping of at most {len(indexes)} bucket indexes to counts")
    try:
        parsed = {int(key): n for key, n in bins.items()}
    except (TypeError, ValueError):
        raise CellError(f"{where}.bins: {sorted(map(str, bins))[:3]} are not all bucket indexes") from None
    if len(parsed) != len(bins):
        raise CellError(f"{where}.bins: a bucket index appears twice")
    if parsed and (min(parsed) < indexes.start or max(parsed) >= indexes.stop):
        outside = min(parsed) if min(parsed) < indexes.start else max(parsed)
        raise CellError(f"{where}.bins: bucket {outside} is outside {indexes.start}..{indexes.stop - 1}")
    sketch = Sketch()
    sketch.bins = {index: _count(n, f"{where}.bins[{index}]") for index, n in parsed.items()}
    sketch.zeros = _count(data.get("zeros", 0), f"{where}.zeros")
    sketch.count = _count(data.get("count", 0), f"{where}.count")
    sketch.total = _finite(data.get("total", 0.0), f"{where}.total")
    if sketch.count != sketch.zeros + sum(sketch.bins.values()):
        raise CellError(f"{where}.count ({sketch.count}) is not zeros plus the bins' counts")
    if sketch.total < 0 or (sketch.count == 0 and sketch.total != 0):
        raise CellError(f"{where}.total ({sketch.total!r}) must be 0 or more, and 0 with no values")
    return sketch


def _check_buckets(latency: Mapping[str, Any]) -> Buckets:
    """Fixed latency buckets (a metric source's, or a client's in another language), checked."""
    unknown = sorted(str(k) for k in latency if k not in ("bounds", "counts", "total"))
    if unknown:
        raise CellError(f"unknown latency field(s) {', '.join(unknown)}; fixed buckets have bounds, counts, total")
    bounds, counts = latency.get("bounds"), latency.get("counts")
    if not isinstance(bounds, list) or not isinstance(counts, list) or len(bounds) > MAX_BINS:
        raise CellError(f"latency.bounds and latency.counts are lists (at most {MAX_BINS} bounds)")
    try:
        buckets = Buckets(tuple(_finite(b, "latency.bounds") for b in bounds),
                          [_count(n, "latency.counts") for n in counts], _finite(latency.get("total", 0.0), "latency.total"))
    except ValueError as exc:
        raise CellError(f"latency: {exc}") from None
    if buckets.total < 0 or (buckets.count == 0 and buckets.total != 0):
        raise CellError(f"latency.total ({buckets.total!r}) must be 0 or more, and 0 with no values")
    return buckets


def _consistent(cell: Cell) -> None:
    sketch = cell.latency
    if isinstance(sketch, Buckets):
        if sketch.count > cell.calls:
            raise CellError(f"latency counts ({sketch.count}) exceed calls ({cell.calls}); each timed call is a call")
        _counts_consistent(cell)
        return
    if sketch.count != sketch.zeros + sum(sketch.bins.values()):
        raise CellError(f"latency.count ({sketch.count}) is not zeros plus the bins' counts "
                        f"({sketch.zeros + sum(sketch.bins.values())})")
    if sketch.count > cell.calls:
        raise CellError(f"latency.count ({sketch.count}) exceeds calls ({cell.calls}); each timed call is a call")
    if sketch.total < 0 or (sketch.count == 0 and sketch.total != 0):
        raise CellError(f"latency.total ({sketch.total!r}) must be 0 or more, and 0 with no values")
    # A bucket holds values up to 1 / (1 - ALPHA) of its representative value (1.0101x, not 1.01x): one call
    # at the top of its bucket was refused with 1.01, and the window it was in with it.
    if sketch.bins and sketch.total > sketch.count * Sketch.value_of(max(sketch.bins)) / (1 - ALPHA) * (1 + 1e-9):
        raise CellError(f"latency.total ({sketch.total!r}) exceeds count times the largest bucket's value")
    _counts_consistent(cell)


def _counts_consistent(cell: Cell) -> None:
    for name in ("errors", "fallbacks", "timeouts"):
        if getattr(cell, name) > cell.calls:
            raise CellError(f"{name} ({getattr(cell, name)}) exceed calls ({cell.calls})")
    if cell.mismatches > cell.compared:
        raise CellError(f"mismatches ({cell.mismatches}) exceed compared ({cell.compared})")
    if cell.cost_sq < 0 or (cell.costed == 0 and (cell.cost_sum or cell.cost_sq)):
        raise CellError("cost_sq must be 0 or more, and both cost sums 0 when costed is 0")


@dataclass(frozen=True, slots=True)
class Window:
    """One arm's cell for one stage of one migration over the aligned interval [start, start + length).

    `key` identifies the window as its sender wrote it (process, window, part): a store keeps one row per
    key, so a write retried after a lost answer is not counted twice. None for windows merged on reading.
    """

    migration: str
    stage: str
    arm: str
    start: float
    length: float
    cell: Cell
    key: str | None = None


def arm_metrics(cell: Cell) -> dict[str, Any]:
    """One arm's figures for people and JSON: calls, errors, error rate, latency quantiles (seconds), cost,
    and for streamed calls the quantiles of their latency to the first chunk.

    NaN and infinite values (an empty sketch, no cost) become None.
    """

    def finite(x: float) -> float | None:
        return None if math.isnan(x) or math.isinf(x) else x

    first = cell.first_chunk
    return {
        "calls": cell.calls, "errors": cell.errors,
        "error_rate": None if not cell.calls else cell.errors / cell.calls,
        "fallbacks": cell.fallbacks, "timeouts": cell.timeouts,
        "p50": finite(cell.latency.quantile(0.5)), "p95": finite(cell.latency.quantile(0.95)),
        "p99": finite(cell.latency.quantile(0.99)),
        "cost_mean": finite(cell.cost_mean), "cost_sum": finite(cell.cost_sum),
        **({"metrics": {name: tally_figures(t) for name, t in sorted(cell.metrics.items())}} if cell.metrics else {}),
        **({"first_chunk": {f"p{round(q * 100)}": finite(first.quantile(q)) for q in (0.5, 0.95, 0.99)}}
           if first is not None and first.count else {}),
    }


def tally_figures(tally: Tally) -> dict[str, Any]:
    """One custom metric's figures for people and JSON: count, sum, mean, and quantiles when sketched."""

    def finite(x: float) -> float | None:
        return None if math.isnan(x) or math.isinf(x) else x

    out: dict[str, Any] = {"count": tally.count, "sum": finite(tally.total), "mean": finite(tally.mean)}
    if tally.sketch is not None and tally.sketch.count:
        out.update({f"p{round(q * 100)}": finite(tally.sketch.quantile(q)) for q in (0.1, 0.5, 0.9)})
    return out


# How far before a stage's entry telemetry windows are read: a window that began before the stage was
# entered may hold its first calls (windows are 10 s by default; a minute covers any sensible setting).
WINDOW_MARGIN: Final = 60.0
ROLLUP: Final = 3600.0
"""Seconds of a stage's stay that old windows are rolled up into, counted from its entry."""


def in_stay(start: float, length: float, entered: float) -> bool:
    """Whether a window counts for a stay entered at `entered`: it began at most WINDOW_MARGIN before the
    entry and ended after it."""
    return start >= entered - WINDOW_MARGIN and start + length > entered


def stay_hour(start: float, entered: float) -> float:
    """The start of the hour of a stay (counted from its entry, so no hour straddles it) a window falls in."""
    origin = entered if entered != float("-inf") else 0.0
    return max(origin + (start - origin) // ROLLUP * ROLLUP, origin)


def merge_windows(windows: Iterable[Window]) -> dict[str, Cell]:
    """Per arm, the sum of many windows' cells."""
    out: dict[str, Cell] = {}
    for w in windows:
        cell = out.get(w.arm)
        if cell is None:
            cell = out[w.arm] = Cell()
        cell.merge(w.cell)
    return out


def open_cell(counts: Mapping[str, int], cost: Mapping[str, float] | None, latency: Mapping[str, Any] | None,
              metrics: Mapping[str, Mapping[str, float]] | None = None,
              first_chunk: Mapping[str, Any] | None = None) -> Cell:
    """The cell an open telemetry window describes (counters, cost sums, explicit latency buckets in `s` or
    `ms`, not cumulative, for whole calls and for streams' first chunks, custom metrics' count, sum and sum of
    squares), as clients in any language post it; OpenWindowError naming the histogram whose buckets do not
    fit."""
    cell = Cell()
    for name, values in (metrics or {}).items():
        tally = cell.metrics[name] = Tally()
        tally.count, tally.total, tally.squares = int(values["count"]), float(values["sum"]), float(values["sum_squares"])
    for name in ("calls", "errors", "fallbacks", "timeouts", "compared", "mismatches"):
        setattr(cell, name, int(counts.get(name, 0)))
    if cost is not None:
        cell.costed, cell.cost_sum, cell.cost_sq = int(cost["count"]), float(cost["sum"]), float(cost["sum_squares"])
    for field, histogram in (("latency", latency), ("first_chunk", first_chunk)):
        if histogram is None:
            continue
        scale = 0.001 if histogram.get("unit") == "ms" else 1.0
        try:
            buckets = Buckets(tuple(float(b) * scale for b in histogram["bounds"]),
                              [int(n) for n in histogram["counts"]], float(histogram["sum"]) * scale)
        except ValueError as exc:
            raise OpenWindowError(field, str(exc)) from None
        setattr(cell, field, buckets)
    return cell


class OpenWindowError(ValueError):
    """An open telemetry window's histogram whose buckets do not fit; `field` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


SEP = "\x1f"  # cannot occur in migration or stage names, which are [a-z0-9-]


def cell_key(migration: str, stage: str, arm: str) -> str:
    """The key of one arm of one stage: a str, whose hash Python caches, so lookups cost no allocation."""
    return f"{migration}{SEP}{stage}{SEP}{arm}"


# No monotonic time lies in [1, -2^63), every one after -2^63 (and after -inf, in seconds).
_NO_WINDOW: Final = (1, -(1 << 63), None, -math.inf)
_log2 = math.log2
_ceil = math.ceil
_SLOT: Final = -LATENCY_BINS.start
"""`_OpenCell.counts[i + _SLOT]` counts latency bucket i; slot 0, below every bucket a value above MIN_VALUE can
reach, counts the zeros."""


class _OpenCell(Cell):
    """A cell of a recorder's window. `add_call` counts a call in `counts`, a list by latency bucket (see
    `_SLOT`), grown as buckets are reached, and its seconds in `seconds`: updating a list slot costs a third of
    updating a dict entry. `collect` moves both into the cell's calls and latency sketch (see `_settle`)."""

    __slots__ = ("counts", "seconds")

    def __init__(self) -> None:
        super().__init__()
        self.counts: list[int] = []
        self.seconds = 0.0


def _count_in(counts: list[int], slot: int) -> None:
    """Count one call in `counts[slot]`, the list grown to hold it (the first call in a slower bucket)."""
    counts.extend([0] * (slot + 1 - len(counts)))
    counts[slot] += 1


class _ThreadCells:
    """One thread's cells by window index, whether it is writing one now, and windows taken while it was."""

    __slots__ = ("thread", "windows", "writing", "held", "held_mark", "current")

    def __init__(self, thread: threading.Thread) -> None:
        self.thread = thread
        self.windows: dict[int, dict[str, _OpenCell]] = {}
        # While the thread is between `cell` and `done` (when it may hold a window the flusher has taken): the
        # time that write was made for, an object of its own, so that a later write is told from it by
        # identity; None between writes. (A store of an object it already has costs the hot path nothing.)
        self.writing: object = None
        self.held: list[tuple[int, dict[str, _OpenCell]]] = []
        self.held_mark: object = None
        # The monotonic range [since, until) of the window last written, its cells, and `until` in seconds (for
        # `add_call`): a call inside it needs neither a division of two large integers nor a look-up to find
        # its window. The flusher sets it back to _NO_WINDOW whenever it takes windows, so no write begun after
        # that reaches a window taken.
        self.current: tuple[int, int, dict[str, _OpenCell] | None, float] = _NO_WINDOW


def _settle(cell: _OpenCell) -> None:
    """Move the calls `add_call` counted by bucket into the cell's calls and latency sketch."""
    counts = cell.counts
    if not counts:
        return
    sketch = cell.latency
    bins = sketch.bins  # type: ignore[attr-defined]
    calls = zeros = counts[0]
    for slot in range(1, len(counts)):
        n = counts[slot]
        if n:
            index = slot - _SLOT
            bins[index] = bins.get(index, 0) + n
            calls += n
    sketch.zeros += zeros  # type: ignore[attr-defined]
    sketch.count += calls
    sketch.total += cell.seconds
    cell.calls += calls
    cell.counts = []
    cell.seconds = 0.0


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
        # The same clock in seconds, for `add_call`: arithmetic on floats costs a fraction of that on integers
        # past 2^30 (a monotonic time in ns), on the hot path of every call.
        self.seconds: Callable[[], float] = (
            time.monotonic if monotonic is time.monotonic_ns else lambda: monotonic() / 1e9
        )
        self._offset_ns = 0
        self.resync()
        self._local = threading.local()
        self._buffers: list[_ThreadCells] = []
        self._lock = threading.Lock()  # guards the list of buffers, taken once per thread, never per call
        self._collecting = threading.Lock()  # one collector at a time: a window held back is handed on once

    def resync(self) -> None:
        """Re-read the wall clock's offset from the monotonic one (NTP may have moved it)."""
        self._offset_ns = self._clock() - self.monotonic()
        for buffer in getattr(self, "_buffers", ()):
            buffer.current = _NO_WINDOW  # each thread finds its window afresh, through the new offset

    def _enter(self, buffer: _ThreadCells, now_ns: int) -> dict[str, _OpenCell]:
        """The calling thread's cells of the window holding monotonic `now_ns`, remembered with its range."""
        window_ns = self._window_ns
        index = (now_ns + self._offset_ns) // window_ns
        since = index * window_ns - self._offset_ns
        windows = buffer.windows
        cells = windows.get(index)
        if cells is None:
            cells = windows[index] = {}
        # `until` in seconds as time.monotonic() derives it from the ns, so no time at or past the window's end
        # in ns reads as before it in seconds.
        buffer.current = (since, since + window_ns, cells, (since + window_ns) / 1e9)
        if windows.get(index) is not cells:
            # The flusher took the window between the look-up and the line above, and its reset of `current`
            # may have come first: this write is held by its mark, but the next must look the window up again.
            buffer.current = _NO_WINDOW
        return cells

    def cell(self, now_ns: int, key: str) -> Cell:
        """The calling thread's cell for `key` (see `cell_key`) in the window holding monotonic `now_ns`.

        The thread writes into it, then calls `done()` (in a `finally`); nothing else in between.
        """
        try:
            buffer = self._local.buffer
        except AttributeError:
            buffer = self._register()
        buffer.writing = now_ns
        since, until, cells, _ = buffer.current
        if not since <= now_ns < until:
            cells = self._enter(buffer, now_ns)
        cell = cells.get(key)  # type: ignore[union-attr]
        if cell is None:
            cell = cells[key] = _OpenCell()  # type: ignore[index]
        return cell

    def done(self) -> None:
        """The calling thread has finished writing the cell `cell` gave it."""
        self._local.buffer.writing = None

    def add_call(self, key: str, start: float, end: float, answer: object = None) -> None:
        """Count one answered call of `key` (see `cell_key`) that ran from `start` to `end`, times read from
        `seconds` (its `answer` is not looked at: the signature is `Migration._count_with_metrics`'s, so `run`
        calls either one the same way).

        The same as `cell(end in ns, key)`, `calls += 1`, `latency.add(end - start)` and `done()`: this is the
        hot path of every call `run` serves. `end` is the time just read: a thread's calls end in the order of
        its clock, so only the window's end needs checking. The call is counted in its cell's `counts`, which
        `collect` moves into the cell's calls and latency (see `_OpenCell`).
        """
        try:
            buffer = self._local.buffer
        except AttributeError:
            buffer = self._register()
        buffer.writing = end
        try:
            _, _, cells, until = buffer.current
            if end >= until:
                cells = self._enter(buffer, round(end * 1e9))
            try:
                cell = cells[key]  # type: ignore[index]
            except KeyError:
                cell = cells[key] = _OpenCell()  # type: ignore[index]
            # Sketch.add's bucket (`bucket_of`), inline: one Python call less per call.
            value = end - start
            cell.seconds += value
            slot = _ceil(_log2(value) * _INV_LOG2_GAMMA) + _SLOT if value > MIN_VALUE else 0
            try:
                cell.counts[slot] += 1
            except IndexError:
                _count_in(cell.counts, slot)
        finally:
            buffer.writing = None

    def add_call_with_metrics(self, key: str, start: float, end: float, cost: float | None,
                              metrics: Sequence[tuple[str, float]], sketched: Container[str]) -> None:
        """`add_call`, with the call's cost (unless None) and its custom metrics, `metric(name, value, name in
        sketched)` for each, in the same cell. ValueError past MAX_METRICS names in a cell."""
        cell = self.cell(round(end * 1e9), key)
        try:
            cell.calls += 1
            cell.latency.add(end - start)
            if cost is not None:
                cell.add_cost(cost)
            for name, value in metrics:
                cell.metric(name, value, name in sketched)
        finally:
            self.done()

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
            if popped:
                buffer.current = _NO_WINDOW  # no write begun from here on reaches a window taken
            mark = buffer.writing  # read after the pops (and the line above)
            if taken:
                buffer.held.extend(taken)
                buffer.held_mark = mark
            # The write under way at the last pop, still under way: it may still hold a window taken.
            if not buffer.held or (mark is not None and mark is buffer.held_mark and not everything
                                   and buffer.thread.is_alive()):
                continue
            for index, cells in buffer.held:
                for key, cell in cells.items():
                    _settle(cell)
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
