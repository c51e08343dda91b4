"""Change detection: the e-detector keeps its alpha on a candidate exactly at the limit, however long it looks,
and catches a step past the limit late in a stage on the recent calls alone."""

from __future__ import annotations

import random

from crossfade.changes import change_alpha, detect, spending_weight
from crossfade.spec import load_spec
from crossfade.telemetry import Cell, Window

# A generous alpha, so that a few hundred runs measure it: 40% x a 50% share = 20% for the one gate.
SPEC = load_spec({"name": "m", "stages": [{"traffic": "50%", "hold": "1h"}, {"traffic": "100%"}],
                  "gates": {"error_rate": {"max_increase": "1%"}},
                  "analysis": {"interval": "1m", "confidence": "60%", "change_share": "50%"}})
START = 1_000_000.0


def _cell(rng: random.Random, calls: int, rate: float) -> Cell:
    c = Cell()
    c.calls = calls
    c.errors = sum(rng.random() < rate for _ in range(calls))
    return c


def _run(rng: random.Random, rate_at, minutes: int = 60, calls: int = 200) -> int | None:
    """The minute of the first alarm (None: none) for a candidate whose error rate at minute m is rate_at(m),
    against a legacy at 1% with as many calls."""
    windows: list[Window] = []
    legacy = Cell()
    for m in range(minutes):
        t = START + 60 * m
        windows.append(Window("m", "s", "candidate", t, 60.0, _cell(rng, calls, rate_at(m))))
        legacy.merge(_cell(rng, calls, 0.01))
        if detect(SPEC, windows, {"legacy": legacy}, entered=START, planned=3600, now=t + 60):
            return m
    return None


def test_the_spending_weights_sum_to_one():
    total = sum(spending_weight(k, 60) for k in range(1, 200_000))
    assert 0.999 < total <= 1.0


def test_a_candidate_exactly_at_the_limit_alarms_no_more_often_than_its_share_of_alpha():
    rng = random.Random(1)
    runs = 300
    alarms = sum(_run(rng, lambda m: 0.02) is not None for _ in range(runs))
    assert change_alpha(SPEC) == 0.2
    # 20% allowed; the bound is conservative (Markov at each look), so far fewer alarm.
    assert alarms / runs <= 0.2, alarms


def test_a_step_past_the_limit_late_in_the_stage_is_caught_soon_after():
    rng = random.Random(2)
    caught = [_run(rng, lambda m: 0.01 if m < 40 else 0.05) for _ in range(20)]
    assert all(m is not None and 40 <= m < 55 for m in caught), caught


def test_nothing_is_detected_without_a_reference_or_with_change_detection_off():
    rng = random.Random(3)
    windows = [Window("m", "s", "candidate", START, 60.0, _cell(rng, 500, 0.5))]
    assert detect(SPEC, windows, {}, entered=START, planned=3600, now=START + 60) == []
    data = SPEC.to_dict()
    off = load_spec({**data, "analysis": {**data["analysis"], "change_share": 0}})
    legacy = _cell(rng, 5000, 0.01)
    assert detect(off, windows, {"legacy": legacy}, entered=START, planned=3600, now=START + 60) == []
    (alarm,) = detect(SPEC, windows, {"legacy": legacy}, entered=START, planned=3600, now=START + 60)
    assert alarm.gate == "error_rate" and alarm.message.startswith("change in error_rate: error rate ")
