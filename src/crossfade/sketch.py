"""A mergeable latency histogram with 1% relative accuracy (log-spaced buckets, as in DDSketch)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any, Final

ALPHA: Final = 0.01
_GAMMA: Final = (1 + ALPHA) / (1 - ALPHA)
_INV_LOG_GAMMA: Final = 1.0 / math.log(_GAMMA)
_log = math.log
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
            i = _ceil(_log(value) * _INV_LOG_GAMMA)
            bins = self.bins
            bins[i] = bins.get(i, 0) + 1
        else:
            self.zeros += 1

    def merge(self, other: Sketch) -> None:
        """Add another sketch's values into this one."""
        bins = self.bins
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
        seen = 0
        value = math.nan
        for value, n in self.buckets():
            seen += n
            if seen > rank:
                break
        return value

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
