"""The judge of custom metrics: orientation of floor gates, statistics per kind, triggers on custom metrics."""

from __future__ import annotations

import random

import pytest

from crossfade.judge import FAIL, INCONCLUSIVE, NODATA, PASS, check_triggers, enabled_gates, gate_alpha, judge
from crossfade.routing import CANDIDATE, LEGACY
from crossfade.spec import load_spec
from crossfade.telemetry import Cell, Window


def spec_with(metrics, triggers=()):
    return load_spec({"name": "m", "stages": [{"traffic": "10%"}, {"traffic": "100%"}], "gates": {},
                      "metrics": metrics, "triggers": list(triggers), "analysis": {"confidence": "99%"}})


def delivered(rate, n, seed):
    rng = random.Random(seed)
    cell = Cell()
    cell.calls = n
    for _ in range(n):
        cell.metric("sent", 1)
        if rng.random() < rate:
            cell.metric("delivered", 1)
    return cell


def verdicts(spec, candidate, legacy, look=5, traffic=0.1):
    return {g.gate: g for g in judge(spec, {CANDIDATE: candidate, LEGACY: legacy}, look=look, traffic=traffic).gates}


def test_a_floor_gate_fails_a_decrease_and_passes_an_increase():
    spec = spec_with({"delivery": {"rate": "delivered / sent", "min": "99%", "max_decrease": "0.5%"}})
    assert spec.metric("delivery").bad == "low", "inferred from floor gates"
    legacy = delivered(0.999, 5000, 1)
    worse = verdicts(spec, delivered(0.95, 5000, 2), legacy)
    assert worse["delivery.min"].verdict == FAIL and worse["delivery.min"].floor
    assert worse["delivery.max_decrease"].verdict == FAIL
    # A better candidate (every message delivered) is far past neither limit: it passes both.
    better = verdicts(spec, delivered(1.0, 5000, 3), legacy)
    assert better["delivery.min"].verdict == PASS and better["delivery.max_decrease"].verdict == PASS
    assert not any(g.past_limit for g in better.values())


def test_a_floor_estimate_below_its_limit_holds_the_stage_even_before_it_can_fail():
    spec = spec_with({"delivery": {"rate": "delivered / sent", "min": "99%"}})
    gate = verdicts(spec, delivered(0.97, 60, 4), delivered(0.999, 60, 5))["delivery.min"]
    assert gate.verdict == INCONCLUSIVE and gate.estimate < 0.99
    assert gate.past_limit, "below a floor is the harmful side: not promoted"
    above = verdicts(spec, delivered(1.0, 60, 6), delivered(0.999, 60, 7))["delivery.min"]
    assert not above.past_limit, "above a floor is not past it, though a ceiling's estimate there would be"


def scored(values, sketched=True, name="similarity"):
    cell = Cell()
    cell.calls = cell.compared = len(values)
    for v in values:
        cell.metric(name, v, sketched)
    return cell


def test_quantile_and_mean_floors_on_similarity_scores():
    rng = random.Random(8)
    healthy = [rng.uniform(0.9, 1.0) for _ in range(2000)]
    wrong = [rng.uniform(0.0, 0.3) if rng.random() < 0.3 else rng.uniform(0.9, 1.0) for _ in range(2000)]
    for metrics in ({"similarity": {"quantile": "p10", "min": 0.85}}, {"similarity": {"min": 0.85}}):
        spec = spec_with(metrics)
        ok = verdicts(spec, scored(healthy), Cell(), traffic=0.0)["similarity.min"]
        bad = verdicts(spec, scored(wrong), Cell(), traffic=0.0)["similarity.min"]
        assert (ok.verdict, bad.verdict) == (PASS, FAIL), metrics


def test_similarity_is_judged_only_where_answers_are_compared():
    spec = spec_with({"similarity": {"quantile": "p10", "min": 0.85}})
    calls = Cell()
    calls.calls = 100
    assert verdicts(spec, calls, calls, traffic=0.1) == {}, "no shadow runs, no scores: not judged (no NODATA hold)"
    shadowing = judge(spec, {CANDIDATE: calls, LEGACY: calls}, look=1, traffic=0.0, shadowing=True)
    assert [(g.gate, g.verdict) for g in shadowing.gates] == [("similarity.min", NODATA)]


def test_mean_ratio_gates_bound_each_side():
    rng = random.Random(9)

    def tokens(scale):
        cell = Cell()
        cell.calls = 3000
        for _ in range(3000):
            cell.metric("tokens", rng.expovariate(1 / scale))
        return cell

    spec = spec_with({"tokens": {"max_ratio": 1.2}})
    assert verdicts(spec, tokens(150), tokens(100))["tokens.max_ratio"].verdict == FAIL
    assert verdicts(spec, tokens(100), tokens(100))["tokens.max_ratio"].verdict == PASS
    floor = spec_with({"tokens": {"min_ratio": 0.8}})
    assert verdicts(floor, tokens(50), tokens(100))["tokens.min_ratio"].verdict == FAIL
    assert verdicts(floor, tokens(150), tokens(100))["tokens.min_ratio"].verdict == PASS


def test_a_count_fails_as_soon_as_its_total_passes_max():
    spec = spec_with({"lost": {"kind": "count", "max": 0}})
    calls = Cell()
    calls.calls = 10
    assert verdicts(spec, calls, calls)["lost.max"].verdict == PASS
    calls.metric("lost", 1)
    gate = verdicts(spec, calls, Cell())["lost.max"]
    assert (gate.verdict, gate.estimate) == (FAIL, 1.0) and "lost total 1 is above the allowed 0" in gate.message


def test_custom_gates_share_the_alpha():
    spec = spec_with({"lost": {"kind": "count", "max": 0}, "delivery": {"rate": "delivered / sent", "min": "99%"}})
    assert enabled_gates(spec) == ["lost.max", "delivery.min"]
    assert gate_alpha(spec) == pytest.approx(0.01 * (1 - spec.analysis.change_share) / 2)  # change detection has its share


def test_an_identical_candidate_is_rarely_failed_by_a_rate_floor_at_its_limit():
    """A candidate exactly at the limit, looked at 20 times: failed at most about alpha of the time."""
    spec = spec_with({"delivery": {"rate": "delivered / sent", "min": "99%"}})
    failed = 0
    for run in range(200):
        rng = random.Random(run)
        cell = Cell()
        for look in range(1, 21):
            for _ in range(50):
                cell.calls += 1
                cell.metric("sent", 1)
                if rng.random() < 0.99:
                    cell.metric("delivered", 1)
            if verdicts(spec, cell, Cell(), look=look)["delivery.min"].verdict == FAIL:
                failed += 1
                break
    assert failed <= 6  # alpha 1%: 2 expected of 200; 6 or more has probability below 2%


def windows(cell):
    return [Window("m", "s", CANDIDATE, 0.0, 10.0, cell)]


def test_triggers_on_custom_metrics_fire_above_and_below():
    spec = spec_with({"lost": {"kind": "count"}, "delivery": {"rate": "delivered / sent"}},
                     [{"metric": "lost", "above": 0}, {"metric": "delivery", "below": "99%"}])
    quiet = delivered(1.0, 500, 10)
    assert check_triggers(spec, windows(quiet), 10.0) == []
    quiet.metric("lost", 1)
    fired = check_triggers(spec, windows(quiet), 10.0)
    assert [f.trigger.metric for f in fired] == ["lost"]
    assert fired[0].message.startswith("trigger lost > 0 over 5m fired: candidate lost total 1")
    lossy = delivered(0.9, 500, 11)
    assert [f.trigger.metric for f in check_triggers(spec, windows(lossy), 10.0)] == ["delivery"]
    # One lost in five is 80%, below 99%, but five calls are not enough to be sure (p = 0.049 > 1%).
    few = Cell()
    few.calls = 5
    for i in range(5):
        few.metric("sent", 1)
        if i:
            few.metric("delivered", 1)
    assert check_triggers(spec, windows(few), 10.0) == []


def test_quantile_gates_compare_the_arms_sketches_on_either_side():
    rng = random.Random(13)

    def waits(scale):
        cell = Cell()
        cell.calls = 3000
        for _ in range(3000):
            cell.metric("queue_time", rng.expovariate(1 / scale), True)
        return cell

    spec = spec_with({"queue_time": {"quantile": "p90", "max_ratio": 1.3, "max_increase": 0.5}})
    slow = verdicts(spec, waits(2.0), waits(1.0))
    assert slow["queue_time.max_ratio"].verdict == FAIL and slow["queue_time.max_increase"].verdict == FAIL
    same = verdicts(spec, waits(1.0), waits(1.0))
    assert same["queue_time.max_ratio"].verdict == PASS and same["queue_time.max_increase"].verdict == PASS
    floor = spec_with({"queue_time": {"quantile": "p90", "max_decrease": 0.5}})
    assert verdicts(floor, waits(0.5), waits(1.0))["queue_time.max_decrease"].verdict == FAIL
    assert verdicts(floor, waits(1.5), waits(1.0))["queue_time.max_decrease"].verdict == PASS
