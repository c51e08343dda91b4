"""Random draws of calls, errors, latencies and costs in aggregate, from the standard library only."""

from __future__ import annotations

import math
import random
from functools import lru_cache
from statistics import NormalDist
from typing import TYPE_CHECKING, Final

from crossfade.sketch import Sketch
from crossfade.telemetry import Cell

if TYPE_CHECKING:
    from crossfade.simulate.workload import Arm, Latency


NORMAL: Final = NormalDist()
LOG_GAMMA: Final = math.log(Sketch.value_of(1) / Sketch.value_of(0))  # the sketch's bucket growth
# Sketch.value_of by bucket index, computed once per bucket a run draws into.
_VALUES: dict[int, float] = {}


def binomial(rng: random.Random, n: int, p: float) -> int:
    """Binomial(n, p): exact by geometric skips below a mean of 30, normal with continuity above."""
    if n <= 0 or p <= 0.0:
        return 0
    if p >= 1.0:
        return n
    if p > 0.5:
        return n - binomial(rng, n, 1.0 - p)
    mean = n * p
    if mean < 30.0:
        log_q = math.log1p(-p)
        successes = position = 0
        while True:
            position += int(math.log(1.0 - rng.random()) / log_q) + 1
            if position > n:
                return successes
            successes += 1
    draw = round(rng.gauss(mean, math.sqrt(mean * (1.0 - p))))
    return min(max(draw, 0), n)


def poisson(rng: random.Random, mean: float) -> int:
    if mean <= 0:
        return 0
    if mean < 30.0:
        limit, k, product = math.exp(-mean), 0, rng.random()
        while product > limit:
            k += 1
            product *= rng.random()
        return k
    return max(0, round(rng.gauss(mean, math.sqrt(mean))))


@lru_cache(maxsize=256)
def _bucket_masses(median: float, sigma: float, cutoff: float | None) -> tuple[tuple[int, ...], tuple[float, ...], float]:
    """(sketch bucket indexes, probability of each, probability above `cutoff`) for a lognormal latency."""
    mu = math.log(median)
    if sigma == 0:
        if cutoff is not None and median > cutoff:
            return (), (), 1.0
        return (math.ceil(mu / LOG_GAMMA),), (1.0,), 0.0
    first = math.ceil((mu - 7.0 * sigma) / LOG_GAMMA)
    last = math.ceil((mu + 7.0 * sigma) / LOG_GAMMA)
    if cutoff is not None:
        last = min(last, math.ceil(math.log(cutoff) / LOG_GAMMA))
    indexes, masses = [], []
    below = NORMAL.cdf(((first - 1) * LOG_GAMMA - mu) / sigma)
    for i in range(first, last + 1):
        upper = NORMAL.cdf((i * LOG_GAMMA - mu) / sigma)
        if upper > below:
            indexes.append(i)
            masses.append(upper - below)
        below = upper
    above = 0.0 if cutoff is None else 1.0 - NORMAL.cdf((math.log(cutoff) - mu) / sigma)
    total = sum(masses)
    return tuple(indexes), tuple(m / total * (1.0 - above) for m in masses), above


def draw_latencies(rng: random.Random, latency: Latency, n: int, sketch: Sketch, cutoff: float | None) -> int:
    """Add `n` latencies to a sketch (multinomial over its buckets); returns how many passed `cutoff` instead."""
    indexes, masses, above = _bucket_masses(latency.median, latency.sigma, cutoff)
    over = binomial(rng, n, above) if above else 0
    left, mass_left = n - over, 1.0 - above
    # `binomial(rng, left, mass / mass_left)` per bucket, inlined: the same draws in the same order (a seeded run
    # is unchanged), without a call per bucket, which made this loop a quarter of an aggregate run.
    random_, log, log1p, gauss, sqrt = rng.random, math.log, math.log1p, rng.gauss, math.sqrt
    bins, values = sketch.bins, _VALUES
    added = 0
    total = sketch.total  # summed in the same order as `add_latency` would
    for i, mass in zip(indexes, masses):
        if left <= 0:
            break
        if mass >= mass_left:
            k = left
        else:
            p = mass / mass_left
            if p <= 0.0:
                k = 0
            elif p > 0.5:
                k = left - binomial(rng, left, 1.0 - p)
            elif left * p < 30.0:
                log_q = log1p(-p)
                k = position = 0
                while True:
                    position += int(log(1.0 - random_()) / log_q) + 1
                    if position > left:
                        break
                    k += 1
            else:
                mean = left * p
                k = min(max(round(gauss(mean, sqrt(mean * (1.0 - p)))), 0), left)
        if k:
            bins[i] = bins.get(i, 0) + k
            added += k
            value = values.get(i)
            if value is None:
                value = values[i] = Sketch.value_of(i)
            total += k * value
            left -= k
        mass_left -= mass
    sketch.count += added
    sketch.total = total
    return over


def add_latency(sketch: Sketch, index: int, count: int) -> None:
    """Add `count` values to one bucket of a sketch, as `count` calls of `Sketch.add` would."""
    sketch.bins[index] = sketch.bins.get(index, 0) + count
    sketch.count += count
    sketch.total += count * Sketch.value_of(index)


def draw_cost(rng: random.Random, arm: Arm, n: int, cell: Cell) -> None:
    """Add the cost of `n` calls: one by one when few, else the sum and sum of squares drawn jointly."""
    if n <= 0 or arm.cost <= 0:
        cell.costed += max(n, 0)
        return
    s = arm.cost_sigma
    if s == 0:
        cell.costed += n
        cell.cost_sum += n * arm.cost
        cell.cost_sq += n * arm.cost * arm.cost
        return
    mu = math.log(arm.cost) - s * s / 2.0
    if n < 50:
        for _ in range(n):
            cell.add_cost(arm.sample_cost(rng))
        return
    m1, m2, m3, m4 = (math.exp(k * mu + k * k * s * s / 2.0) for k in (1, 2, 3, 4))
    v11, v12, v22 = m2 - m1 * m1, m3 - m1 * m2, m4 - m2 * m2
    # Cholesky of the 2x2 covariance: the sum and the sum of squares move together, as they do.
    a = math.sqrt(v11)
    b = v12 / a
    c = math.sqrt(max(v22 - b * b, 0.0))
    z1, z2 = rng.gauss(0.0, 1.0), rng.gauss(0.0, 1.0)
    total = n * m1 + math.sqrt(n) * a * z1
    squares = n * m2 + math.sqrt(n) * (b * z1 + c * z2)
    cell.costed += n
    cell.cost_sum += max(total, 0.0)
    cell.cost_sq += max(squares, total * total / n if total > 0 else 0.0)
