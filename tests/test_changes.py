"""Change detection: the e-detector keeps its alpha on a candidate exactly at the limit, however long it looks,
catches a step past the limit late in a stage on the recent calls alone, and a bake's final look waits for
the calls that show a step in its last minute."""

from __future__ import annotations

import random

from crossfade.changes import (
    change_alpha,
    detect,
    final_look,
    planned_bake,
    spending_weight,
    ville_block,
)
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


# -- a bake: a fixed reference (the legacy measured before it) and its final look ----------------------------

BAKED = load_spec({**SPEC.to_dict(), "bake": "1h"})
BASELINE = _cell(random.Random(4), 20_000, 0.01)


def _bake(rng: random.Random, rate_at, minutes: int = 120, calls: int = 200) -> int | None:
    """The minute of the first alarm in a bake judged against BASELINE (None: none)."""
    windows: list[Window] = []
    for m in range(minutes):
        t = START + 60 * m
        windows.append(Window("m", "s", "candidate", t, 60.0, _cell(rng, calls, rate_at(m))))
        if detect(BAKED, windows, BASELINE, entered=START, planned=planned_bake(BAKED), now=t + 60, fixed=True):
            return m
    return None


def test_the_ville_blocks_spend_all_of_alpha_and_cover_every_slot():
    shares = {}
    for k in range(1, 100_000):
        covered, share = ville_block(k, 60)
        assert k <= covered
        shares[covered] = share
    assert 0.999 < sum(shares.values()) <= 1.0 and shares[60] == 0.75


def test_against_a_fixed_reference_a_candidate_at_the_limit_alarms_no_more_often_than_its_share():
    rng = random.Random(5)
    runs = 300
    # Legacy's true rate 1% + the allowed 1%, for two hours: the bake and its longest final look.
    alarms = sum(_bake(rng, lambda m: 0.02) is not None for _ in range(runs))
    assert change_alpha(BAKED) == 0.1
    assert alarms / runs <= 0.1, alarms


def test_a_step_past_the_limit_late_in_a_bake_is_caught_within_ten_minutes():
    rng = random.Random(6)
    fixed = [_bake(rng, lambda m: 0.01 if m < 40 else 0.05) for _ in range(20)]
    assert all(m is not None and 40 <= m < 50 for m in fixed), fixed


def test_the_final_look_waits_for_the_calls_that_show_a_step_in_the_last_minute():
    rng = random.Random(7)
    windows = [Window("m", "s", "candidate", START + 60 * m, 60.0, _cell(rng, 1000, 0.01)) for m in range(60)]
    since = START + 59 * 60

    def left(now):
        return final_look(BAKED, windows, BASELINE, entered=START, since=since, now=now)

    (waiting,) = left(START + 3600)
    assert waiting.startswith("error_rate: 1,000 of ")
    needed = int(waiting.split(" of ")[1].split()[0].replace(",", ""))
    assert 2_000 < needed < 60_000
    windows += [Window("m", "s", "candidate", START + 3600 + 60 * m, 60.0, _cell(rng, 1000, 0.01))
                for m in range(needed // 1000)]
    assert left(START + 3600 + 60 * (needed // 1000)) == []
    # At most as long again as the bake, whatever the traffic.
    assert final_look(BAKED, windows[:60], BASELINE, entered=START, since=since, now=START + 7200) == []
