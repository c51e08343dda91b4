"""A batch's pure decisions: which items a stage takes, which specs it can judge, what follows a stage."""

from __future__ import annotations

import pytest

from crossfade.batch.plan import after_stage, check_spec, stage_limit, stage_of
from crossfade.events import State, seal, start_change
from crossfade.judge import judge
from crossfade.routing import bucket
from crossfade.spec import load_spec
from crossfade.telemetry import Cell

SPEC = load_spec({"name": "b", "stages": [{"name": "canary", "traffic": "10%"}, {"name": "all", "traffic": "100%",
                                                                              "approval": True}],
                  "gates": {"mismatch_rate": {"max": "1%"}}})


def _started():
    state, _ = seal(State("b"), [start_change(State("b", salt="b"), SPEC)], actor="t", now=0.0)
    return state


def test_a_stage_takes_the_items_below_its_threshold_and_keeps_the_earlier_ones():
    keys = [f"k{i}" for i in range(5000)]
    canary = {k for k in keys if stage_of("b", k, 1000)}
    assert canary == {k for k in keys if bucket("b", k) < 1000}
    assert 400 < len(canary) < 600
    assert canary <= {k for k in keys if stage_of("b", k, 5000)}


def test_the_stage_limit_is_the_stage_traffic_in_buckets():
    assert stage_limit(SPEC, _started()) == 1000


def test_gates_that_need_legacy_calls_are_refused_with_what_to_write():
    with pytest.raises(ValueError, match="gates.latency .*latency_p95"):
        check_spec(load_spec({"name": "b", "stages": [{"name": "a", "traffic": "100%"}],
                              "gates": {"latency": {"max_ratio": 1.5}}}))
    with pytest.raises(ValueError, match="triggers\\[0\\].metric cost_ratio"):
        check_spec(load_spec({"name": "b", "stages": [{"name": "a", "traffic": "100%"}], "gates": {},
                              "triggers": [{"metric": "cost_ratio", "above": 2}]}))
    check_spec(SPEC)


def test_a_bake_is_refused_since_nothing_comes_after_a_batch_s_last_items():
    with pytest.raises(ValueError, match="batch migration b: bake 1h judges .* remove bake:"):
        check_spec(load_spec({**SPEC.to_dict(), "bake": "1h"}))


def test_a_clean_stage_asks_for_the_approval_the_next_stage_needs():
    cell = Cell()
    cell.calls = cell.compared = 2000
    state = _started()
    changes = after_stage(SPEC, state, judge(SPEC, {"candidate": cell}, look=1, traffic=0.1), (), {"written": 2000})
    assert [c.type for c in changes] == ["verdict", "approval_requested"]
    assert "2000 written" in changes[-1].reason


def test_a_failing_gate_rolls_the_batch_back():
    cell = Cell()
    cell.calls = cell.compared = 2000
    cell.mismatches = 100
    changes = after_stage(SPEC, _started(), judge(SPEC, {"candidate": cell}, look=1, traffic=0.1), (), {})
    assert [c.type for c in changes] == ["verdict", "rolled_back"]
    assert changes[-1].reason.startswith("the validator refused 5.00% of 2000 items (99")
    assert "above the allowed 1%" in changes[-1].reason
