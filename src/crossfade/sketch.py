"""Mergeable latency histograms: a sketch with 1% relative accuracy (log-spaced buckets, as in DDSketch), and
fixed buckets as Prometheus and OpenTelemetry keep them, whose width bounds what is known of each value."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any, Final

ALPHA: Final = 0.01
_GAMMA: Final = (1 + ALPHA) / (1 - ALPHA)
# Bucket of v: ceil(log_gamma(v)), computed as log2(v) / log2(gamma): `math.log2` takes one argument and
# costs a third of `math.log`, whose optional base makes each call parse an argument tuple.
_INV_LOG2_GAMMA: Final = 1.0 / math.log2(_GAMMA)
_log2 = math.log2
_ceil = math.ceil
# Values at or below this (one nanosecond, in seconds) count as zero: no clock here resolves less.
MIN_VALUE: Final = 1e-9


class Sketch:
    """Counts of values in buckets `(gamma^(i-1), gamma^i]`; any value is returned within 1% of itself.

    Merging adds counts bucket by bucket, so the sketch of many parts equals the sketch of the whole, and
    its size depends on the range of values (about 1,500 buckets from 1 ns to 3 hours), never on their number.
    """

    __slots__ = ("bins", "zeros", "count", "total")

    def __init__(self) -> None:
        self.bins: dict[int, int] = {}
        self.zeros = 0
        self.count = 0
        self.total = 0.0

    def add(self, value: float) -> None:
        """Record one value (seconds; values of 1 ns or less count as zero). The recording hot path."""
        self.count += 1
        self.total += value
        if value > MIN_VALUE:
            i = _ceil(_log2(value) * _INV_LOG2_GAMMA)
            bins = self.bins
            bins[i] = bins.get(i, 0) + 1
        else:
            self.zeros += 1

    def merge(self, other: Sketch) -> None:
        """Add another sketch's values into this one."""
        bins = self.bins
        if not bins:
            # Into an empty sketch (every merge of a stage's windows starts with one): a copy, in C.
            self.bins = dict(other.bins)
        else:
            for i, n in other.bins.items():
                bins[i] = bins.get(i, 0) + n
        self.zeros += other.zeros
        self.count += other.count
        self.total += other.total

    def copy(self) -> Sketch:
        """An independent sketch with the same contents."""
        out = Sketch()
        out.merge(self)
        return out

    @staticmethod
    def value_of(index: int) -> float:
        """The representative value of bucket `index`: within 1% of every value the bucket holds."""
        return 2.0 * _GAMMA**index / (_GAMMA + 1.0)

    def buckets(self) -> Iterator[tuple[float, int]]:
        """(representative value, count) in increasing order of value, the zero bucket first."""
        if self.zeros:
            yield 0.0, self.zeros
        for i in sorted(self.bins):
            yield self.value_of(i), self.bins[i]

    def value_at_rank(self, rank: int) -> float:
        """The value of the element at 0-based `rank` in sorted order (clamped to the recorded range)."""
        if self.count == 0:
            return math.nan
        rank = min(max(rank, 0), self.count - 1)
        seen = self.zeros
        if seen > rank:
            return 0.0
        # As `buckets()` walks them, with only the bucket found turned into a value: the controller reads a few
        # ranks of each arm at every look.
        bins = self.bins
        index = None
        for index in sorted(bins):
            seen += bins[index]
            if seen > rank:
                break
        return math.nan if index is None else self.value_of(index)

    def bounds_at_rank(self, rank: int) -> tuple[float, float]:
        """The range the element at 0-based `rank` surely lies in: its bucket's value within 1% either way."""
        value = self.value_at_rank(rank)
        return value / (1.0 + ALPHA), value / (1.0 - ALPHA)

    def quantile(self, q: float) -> float:
        """The q-quantile (lower: the element at rank floor(q * (n - 1))); NaN when empty."""
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile must be within [0, 1], got {q}")
        return self.value_at_rank(math.floor(q * (self.count - 1))) if self.count else math.nan

    @property
    def mean(self) -> float:
        """The exact mean of the recorded values; NaN when empty."""
        return self.total / self.count if self.count else math.nan

    def to_dict(self) -> dict[str, Any]:
        """A compact JSON-able form."""
        return {
            "bins": {str(i): n for i, n in self.bins.items()},
            "zeros": self.zeros,
            "count": self.count,
            "total": self.total,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Sketch:
        """The sketch a `to_dict` form describes."""
        out = cls()
        out.bins = {int(i): int(n) for i, n in data.get("bins", {}).items()}
        out.zeros = int(data.get("zeros", 0))
        out.count = int(data.get("count", 0))
        out.total = float(data.get("total", 0.0))
        return out

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sketch):
            return NotImplemented
        return (self.bins, self.zeros, self.count) == (other.bins, other.zeros, other.count) and math.isclose(self.total, other.total, rel_tol=1e-9, abs_tol=1e-12)

    def __repr__(self) -> str:
        return f"Sketch(count={self.count}, p50={self.quantile(0.5):.6g}, p99={self.quantile(0.99):.6g})"


class Buckets:
    """Counts of values in fixed buckets `(bounds[i-1], bounds[i]]`, the last one open to +inf, as a Prometheus
    histogram or an OpenTelemetry explicit-bucket histogram holds them.

    A value is only known to lie within its bucket, so `bounds_at_rank` answers the bucket's edges and every
    interval built on it is as wide as the buckets make it. Values are non-negative: the first bucket starts
    at 0. Merging histograms with other bounds keeps only the bounds both share (no count is split).
    """

    __slots__ = ("bounds", "counts", "count", "total")

    def __init__(self, bounds: tuple[float, ...], counts: list[int] | None = None, total: float = 0.0) -> None:
        if any(not (b > 0.0 and math.isfinite(b)) for b in bounds) or list(bounds) != sorted(set(bounds)):
            raise ValueError(f"bucket bounds must be finite, positive and increasing, got {list(bounds)}")
        counts = list(counts) if counts is not None else [0] * (len(bounds) + 1)
        if len(counts) != len(bounds) + 1 or any(n < 0 for n in counts):
            raise ValueError(f"{len(bounds) + 1} non-negative bucket counts expected (one per bound and +Inf), "
                             f"got {counts}")
        self.bounds = bounds
        self.counts = counts
        self.count = sum(counts)
        self.total = total

    def add(self, value: float) -> None:
        """Record one value into its bucket."""
        index = 0
        while index < len(self.bounds) and value > self.bounds[index]:
            index += 1
        self.counts[index] += 1
        self.count += 1
        self.total += value

    def edges(self, index: int) -> tuple[float, float]:
        """The lower and upper edge of bucket `index` (0 below the first, +inf above the last bound)."""
        lower = self.bounds[index - 1] if index > 0 else 0.0
        upper = self.bounds[index] if index < len(self.bounds) else math.inf
        return lower, upper

    def _bucket_at_rank(self, rank: int) -> tuple[int, int]:
        """The bucket holding the element at 0-based `rank` (clamped) and how many elements lie below it."""
        rank = min(max(rank, 0), self.count - 1)
        below = 0
        for index, n in enumerate(self.counts):
            if below + n > rank:
                return index, below
            below += n
        return len(self.counts) - 1, below

    def value_at_rank(self, rank: int) -> float:
        """An estimate of the element at `rank`: interpolated within its bucket, as `histogram_quantile` does
        (the last finite bound for the open bucket); NaN when empty."""
        if self.count == 0:
            return math.nan
        index, below = self._bucket_at_rank(rank)
        lower, upper = self.edges(index)
        if math.isinf(upper):
            return lower
        position = (min(max(rank, 0), self.count - 1) - below + 0.5) / self.counts[index]
        return lower + (upper - lower) * position

    def bounds_at_rank(self, rank: int) -> tuple[float, float]:
        """The edges of the bucket holding the element at `rank`: all that is known of it."""
        if self.count == 0:
            return math.nan, math.nan
        return self.edges(self._bucket_at_rank(rank)[0])

    def quantile(self, q: float) -> float:
        """The q-quantile (the element at rank floor(q * (n - 1)), interpolated); NaN when empty."""
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile must be within [0, 1], got {q}")
        return self.value_at_rank(math.floor(q * (self.count - 1))) if self.count else math.nan

    @property
    def mean(self) -> float:
        """The mean from the recorded sum (NaN when empty or when no sum was given)."""
        return self.total / self.count if self.count else math.nan

    def buckets(self) -> Iterator[tuple[float, int]]:
        """(upper edge, count) of every non-empty bucket, in increasing order: values in one bucket are ties."""
        for index, n in enumerate(self.counts):
            if n:
                yield self.edges(index)[1], n

    def coarsened(self, bounds: tuple[float, ...]) -> Buckets:
        """The same counts over `bounds`, a subset of this histogram's bounds."""
        out = Buckets(bounds, total=self.total)
        for index, n in enumerate(self.counts):
            upper = self.edges(index)[1]
            target = next((i for i, b in enumerate(bounds) if upper <= b), len(bounds))
            out.counts[target] += n
        out.count = self.count
        return out

    @classmethod
    def from_sketch(cls, sketch: Sketch, bounds: tuple[float, ...]) -> Buckets:
        """A sketch's values binned into `bounds` (each within the sketch's 1% of its bucket)."""
        out = cls(bounds)
        for value, n in sketch.buckets():
            index = next((i for i, b in enumerate(bounds) if value <= b), len(bounds))
            out.counts[index] += n
        out.count = sketch.count
        out.total = sketch.total
        return out

    def merge(self, other: Buckets | Sketch) -> None:
        """Add another histogram's values; with other bounds, both are first coarsened to the shared ones."""
        if isinstance(other, Sketch):
            other = Buckets.from_sketch(other, self.bounds)
        if other.bounds != self.bounds:
            shared = tuple(sorted(set(self.bounds) & set(other.bounds)))
            mine = self.coarsened(shared)
            self.bounds, self.counts = shared, mine.counts
            other = other.coarsened(shared)
        for index, n in enumerate(other.counts):
            self.counts[index] += n
        self.count += other.count
        self.total += other.total

    def copy(self) -> Buckets:
        """An independent histogram with the same contents."""
        return Buckets(self.bounds, list(self.counts), self.total)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able form; `bounds` tells it from a sketch's form."""
        return {"bounds": list(self.bounds), "counts": list(self.counts), "total": self.total}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Buckets:
        """The histogram a `to_dict` form describes."""
        return cls(tuple(float(b) for b in data["bounds"]), [int(n) for n in data["counts"]],
                   float(data.get("total", 0.0)))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Buckets):
            return NotImplemented
        return (self.bounds, self.counts) == (other.bounds, other.counts) and (
            self.total == other.total or math.isclose(self.total, other.total, rel_tol=1e-9, abs_tol=1e-12))

    def __repr__(self) -> str:
        return f"Buckets(count={self.count}, bounds={len(self.bounds)})"


Histogram = Sketch | Buckets


def histogram_from_dict(data: Mapping[str, Any]) -> Histogram:
    """A sketch or fixed-bucket histogram from its `to_dict` form (fixed buckets carry `bounds`)."""
    return Buckets.from_dict(data) if "bounds" in data else Sketch.from_dict(data)
