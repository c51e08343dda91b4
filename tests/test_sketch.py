"""The latency sketch: 1% relative accuracy on hard distributions, exact merging, bounded size."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crossfade.sketch import Sketch

QUANTILES = (0.01, 0.1, 0.5, 0.9, 0.95, 0.99, 0.999)


def _exact(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[math.floor(q * (len(ordered) - 1))]


def _lognormal(rng: random.Random, n: int) -> list[float]:
    return [rng.lognormvariate(math.log(0.05), 0.6) for _ in range(n)]


def _bimodal(rng: random.Random, n: int) -> list[float]:
    return [rng.gauss(0.010, 0.001) if rng.random() < 0.7 else rng.gauss(0.800, 0.05) for _ in range(n)]


def _heavy_tailed(rng: random.Random, n: int) -> list[float]:
    return [0.001 * rng.paretovariate(1.1) for _ in range(n)]


@pytest.mark.parametrize("make", [_lognormal, _bimodal, _heavy_tailed], ids=["lognormal", "bimodal", "pareto"])
def test_quantiles_are_within_one_percent_of_exact(make):
    values = [abs(v) for v in make(random.Random(7), 100_000)]
    sketch = Sketch()
    for v in values:
        sketch.add(v)
    for q in QUANTILES:
        exact = _exact(values, q)
        assert abs(sketch.quantile(q) - exact) <= 0.01 * exact, q


def test_merging_parts_equals_the_sketch_of_the_whole():
    rng = random.Random(3)
    values = _lognormal(rng, 20_000) + [0.0] * 10
    whole = Sketch()
    for v in values:
        whole.add(v)
    parts = [Sketch() for _ in range(7)]
    for i, v in enumerate(values):
        parts[i % 7].add(v)
    merged = Sketch()
    for part in parts:
        merged.merge(part)
    assert merged == whole
    assert [merged.quantile(q) for q in QUANTILES] == [whole.quantile(q) for q in QUANTILES]


@given(st.lists(st.floats(min_value=0, max_value=1e4), max_size=200), st.integers(min_value=0, max_value=200))
def test_merge_is_exact_for_any_split(values, cut):
    whole, left, right = Sketch(), Sketch(), Sketch()
    for v in values:
        whole.add(v)
    for v in values[:cut]:
        left.add(v)
    for v in values[cut:]:
        right.add(v)
    left.merge(right)
    assert left == whole


def test_size_depends_on_the_range_not_the_count():
    sketch = Sketch()
    rng = random.Random(1)
    for _ in range(200_000):
        sketch.add(rng.uniform(0.001, 10.0))
    assert len(sketch.bins) < 500


def test_round_trips_through_its_dict_form():
    sketch = Sketch()
    for v in _bimodal(random.Random(5), 1000):
        sketch.add(abs(v))
    assert Sketch.from_dict(sketch.to_dict()) == sketch


def test_empty_sketch_answers_nan():
    assert math.isnan(Sketch().quantile(0.5))
    assert math.isnan(Sketch().mean)


# -- fixed buckets (Prometheus, OpenTelemetry) --------------------------------------------------


BOUNDS = (0.001, 0.002, 0.004, 0.008)


@given(st.lists(st.floats(min_value=0.0, max_value=0.02, allow_nan=False), min_size=1, max_size=200))
def test_fixed_buckets_hold_every_value_between_the_edges_they_answer(values):
    from crossfade.sketch import Buckets

    h = Buckets(BOUNDS)
    for v in values:
        h.add(v)
    ordered = sorted(values)
    for rank, value in enumerate(ordered):
        low, high = h.bounds_at_rank(rank)
        assert low <= value <= high
        assert low <= h.value_at_rank(rank) <= high


@given(st.lists(st.floats(min_value=0.0, max_value=0.02, allow_nan=False), max_size=100),
       st.lists(st.floats(min_value=0.0, max_value=0.02, allow_nan=False), max_size=100))
def test_merging_buckets_of_other_bounds_keeps_only_the_shared_edges_and_every_count(a, b):
    from crossfade.sketch import Buckets

    x, y = Buckets(BOUNDS), Buckets((0.002, 0.005, 0.008))
    for v in a:
        x.add(v)
    for v in b:
        y.add(v)
    x.merge(y)
    assert x.bounds == (0.002, 0.008) and x.count == len(a) + len(b) == sum(x.counts)
    ordered = sorted(a + b)
    for rank, value in enumerate(ordered):
        low, high = x.bounds_at_rank(rank)
        assert low <= value <= high


def test_buckets_take_a_sketch_and_survive_their_dict_form():
    from crossfade.sketch import Buckets, histogram_from_dict

    sketch = Sketch()
    for v in (0.0005, 0.0015, 0.003, 0.003, 0.05):
        sketch.add(v)
    h = Buckets.from_sketch(sketch, BOUNDS)
    assert h.counts == [1, 1, 2, 0, 1] and h.count == 5 and h.total == pytest.approx(sketch.total)
    assert histogram_from_dict(h.to_dict()) == h
    assert isinstance(histogram_from_dict(sketch.to_dict()), Sketch)
    assert h.bounds_at_rank(4) == (0.008, math.inf) and h.value_at_rank(4) == 0.008
    with pytest.raises(ValueError, match="increasing"):
        Buckets((0.002, 0.001))
    with pytest.raises(ValueError, match="5 non-negative bucket counts"):
        Buckets(BOUNDS, [1, 2])
