"""The controller, driven by hand through hours of synthetic telemetry: promotion, approval, failure
policies, gradual rollback, NODATA, and the fold of what it writes."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from crossfade.controller import assess, step
from crossfade.events import State, apply_change, fold, seal, start_change, verify
from crossfade.spec import load_spec
from crossfade.telemetry import Cell, Window


def spec(**overrides):
    base = {
        "name": "m",
        "stages": [{"name": "canary", "traffic": "10%", "hold": "10m", "min_samples": 200},
                   {"name": "half", "traffic": "50%", "hold": "10m", "approval": True},
                   {"name": "full", "traffic": "100%"}],
        "gates": {"error_rate": {"max_increase": "1%"}},
        "analysis": {"interval": "1m"},
    }
    return load_spec({**base, **overrides})


class Run:
    """A migration driven by the pure controller over virtual minutes, with telemetry made per minute."""

    def __init__(self, spec, *, candidate_errors=0.01, rps=20.0, seed=7):
        self.spec = spec
        self.rng = random.Random(seed)
        self.candidate_errors = candidate_errors
        self.rps = rps
        self.now = 1_000_000.0
        self.windows: list[Window] = []
        self.events = []
        self.state = State(spec.name)
        self._write([apply_change(self.state, spec, 1)], "test")
        self._write([start_change(self.state, spec)], "test")

    def _write(self, changes, actor):
        self.state, events = seal(self.state, changes, actor=actor, now=self.now)
        self.events += events

    def traffic_minute(self):
        for arm, share, rate in (("candidate", self.state.traffic, self.candidate_errors),
                                 ("legacy", 1 - self.state.traffic, 0.01)):
            c = Cell()
            c.calls = int(self.rps * 60 * share)
            c.errors = sum(self.rng.random() < rate for _ in range(c.calls))
            for _ in range(c.calls):
                c.latency.add(self.rng.lognormvariate(-3, 0.3))
            if c.calls:
                self.windows.append(Window("m", self.state.stage, arm, self.now, 60.0, c))

    def minutes(self, n):
        for _ in range(n):
            if self.state.status in ("running", "awaiting_approval", "rolling_back"):
                self.traffic_minute()
            self.now += 60
            changes = step(self.spec, self.state, self.windows, self.now)
            if changes:
                self._write(changes, "controller")
        return self

    def types(self):
        return [e.type for e in self.events if e.type != "verdict"]


def test_a_healthy_candidate_is_promoted_after_the_hold_and_waits_for_approval():
    run = Run(spec()).minutes(9)
    assert run.state.stage == "canary"  # the hold is 10 minutes
    run.minutes(3)
    assert run.types()[-1] == "approval_requested"
    assert run.state.status == "awaiting_approval" and run.state.stage == "canary"
    run.minutes(30)
    assert run.state.status == "awaiting_approval"  # it waits for a person
    promoted = [e for e in run.events if e.type == "approval_requested"][0]
    assert "no regression" in promoted.reason and "candidate and" in promoted.reason


def test_a_router_not_verified_at_the_weight_holds_the_promotion_and_nothing_else():
    run = Run(spec()).minutes(12)
    assert run.state.status == "awaiting_approval"
    held = Run(spec())
    held.minutes(9)
    pending = ["nginx: nginx runs another config; wanted 10.00% candidate (stage canary)"]
    for _ in range(20):
        held.traffic_minute()
        held.now += 60
        changes = step(held.spec, held.state, held.windows, held.now, unverified=pending)
        if changes:
            held._write(changes, "controller")
    assert held.state.status == "running" and held.state.stage == "canary"
    a = assess(held.spec, held.state, held.windows, held.now, unverified=pending)
    assert a.waiting_for == "routers: " + pending[0]
    # A failing gate still rolls back at once: an unverified router holds promotions, never rollbacks.
    bad = Run(spec(), candidate_errors=0.08)
    for _ in range(15):
        bad.traffic_minute()
        bad.now += 60
        changes = step(bad.spec, bad.state, bad.windows, bad.now, unverified=pending)
        if changes:
            bad._write(changes, "controller")
    assert bad.state.status == "rolled_back"


def test_min_samples_hold_a_stage_past_its_hold():
    run = Run(spec(), rps=0.2).minutes(12)
    assert run.state.stage == "canary" and run.state.status == "running"
    assert "samples:" in assess(run.spec, run.state, run.windows, run.now).waiting_for


def test_a_regression_is_rolled_back_at_once_with_the_gate_sentence():
    run = Run(spec(), candidate_errors=0.08).minutes(15)
    assert run.state.status == "rolled_back"
    rolled = [e for e in run.events if e.type == "rolled_back"][0]
    assert "candidate error rate" in rolled.reason and "is above the allowed +1.00 pp" in rolled.reason
    assert rolled.actor == "controller"
    verdict = [e for e in run.events if e.type == "verdict"][-1]
    assert verdict.payload["gates"][0]["verdict"] == "FAIL" and verdict.payload["gates"][0]["lower"] > 0.01


def test_verdict_events_are_written_only_when_a_verdict_changes():
    run = Run(spec()).minutes(8)
    verdicts = [e for e in run.events if e.type == "verdict"]
    assert 1 <= len(verdicts) <= 3
    assert len({tuple(g["verdict"] for g in e.payload["gates"]) for e in verdicts}) == len(verdicts)


def gradual(**extra):
    return spec(
        stages=[{"name": "big", "traffic": "80%", "hold": "1h"}, {"name": "full", "traffic": "100%"}],
        rollback={"mode": "gradual", "steps": ["50%", "25%", "10%", "0%"], "every": "5m"},
        **extra,
    )


def test_a_gradual_rollback_walks_its_steps():
    run = Run(gradual(), candidate_errors=0.08).minutes(20)
    steps = [(e.type, e.payload.get("traffic")) for e in run.events if e.type.startswith("rollback")]
    assert steps[0] == ("rollback_started", 0.5)
    assert [t for _, t in steps[1:]] == [0.25, 0.1]
    assert run.state.status == "rolled_back" and run.types()[-1] == "rolled_back"
    started = [e.time for e in run.events if e.type.startswith("roll")]
    assert all(b - a >= 300 for a, b in zip(started, started[1:]))


def test_a_trigger_during_the_ramp_down_drops_to_zero_at_once():
    s = gradual(triggers=[{"metric": "error_rate", "above": "20%", "window": "2m", "min_samples": 10}])
    run = Run(s, candidate_errors=0.08).minutes(3)
    assert run.state.status == "rolling_back" and run.state.traffic == 0.5
    run.candidate_errors = 0.6
    run.minutes(2)
    assert run.state.status == "rolled_back" and run.state.traffic == 0.0
    final = [e for e in run.events if e.type == "rolled_back"][0]
    assert final.reason.startswith("during the gradual rollback: trigger error_rate > 20%")
    assert len([e for e in run.events if e.type == "rollback_step"]) == 0


def test_step_back_returns_to_the_previous_stage_and_pause_pauses():
    s = spec(stages=[{"name": "a", "traffic": "10%", "hold": "5m"}, {"name": "b", "traffic": "50%", "hold": "1h"},
                     {"name": "c", "traffic": "100%"}], on_failure="step_back")
    run = Run(s).minutes(7)
    assert run.state.stage == "b"
    run.candidate_errors = 0.1
    run.minutes(10)
    assert "stepped_back" in run.types() and run.state.stage in ("a", "b")
    paused = Run(spec(on_failure="pause"), candidate_errors=0.1).minutes(15)
    assert paused.state.status == "paused" and paused.types()[-1] == "paused"


def test_nodata_holds_and_never_rolls_back():
    run = Run(spec(), rps=0.0).minutes(60)
    assert run.state.status == "running" and run.state.stage == "canary"
    assert "rolled_back" not in run.types()
    paused = Run(spec(analysis={"interval": "1m", "on_nodata": "pause"}), rps=0.0).minutes(15)
    assert paused.state.status == "paused" and "no data after the hold" in paused.events[-1].reason


def test_a_migration_completes_when_it_enters_the_last_stage():
    s = spec(stages=[{"traffic": "20%", "hold": "2m"}, {"traffic": "100%"}])
    run = Run(s).minutes(5)
    assert run.state.status == "completed"
    assert step(s, run.state, run.windows, run.now + 3600) == []


def test_what_the_controller_writes_folds_back_to_its_state_and_verifies():
    run = Run(gradual(), candidate_errors=0.08).minutes(30)
    assert fold("m", run.events) == run.state
    assert verify(run.events, head=(run.state.seq, run.state.head)) is None


def _skewed(run, share):
    """Telemetry where the candidate gets `share` of the calls whatever its traffic (popular keys)."""
    for arm, part in (("candidate", share), ("legacy", 1 - share)):
        c = Cell()
        c.calls = int(2000 * part)
        c.errors = int(c.calls * 0.01)
        for _ in range(c.calls):
            c.latency.add(0.05)
        run.windows.append(Window("m", run.state.stage, arm, run.now, 60.0, c))


def test_a_broken_sample_ratio_is_reported_and_holds_only_when_asked():
    s = spec(stages=[{"name": "a", "traffic": "10%", "hold": "1m"}, {"traffic": "100%"}])
    run = Run(s)
    _skewed(run, 0.05)
    run.now += 120
    a = assess(s, run.state, run.windows, run.now)
    assert a.judgement.split_broken and a.to_dict()["sample_ratio"]["observed"] == 0.05
    assert step(s, run.state, run.windows, run.now)[-1].type == "promoted"
    held = spec(stages=[{"name": "a", "traffic": "10%", "hold": "1m"}, {"traffic": "100%"}],
                analysis={"interval": "1m", "sample_ratio": "hold"})
    assert "sample ratio: 5.00% of calls on the candidate" in assess(held, run.state, run.windows, run.now).waiting_for
    assert all(c.type == "verdict" for c in step(held, run.state, run.windows, run.now))


def _undecided_run(*between, **analysis):
    """A stage whose error-rate estimate (+2 pp) is past its +1 pp limit with too few calls to fail it, before
    the stages `between` and the full one."""
    run = Run(spec(stages=[{"name": "canary", "traffic": "10%", "hold": "10m"}, *between,
                           {"name": "full", "traffic": "100%"}],
                   analysis={"interval": "1m", **analysis}))
    candidate, legacy = Cell(), Cell()
    candidate.calls, candidate.errors = 200, 6
    legacy.calls, legacy.errors = 2000, 20
    run.windows = [Window("m", "canary", "candidate", run.now, 60.0, candidate),
                   Window("m", "canary", "legacy", run.now, 60.0, legacy)]
    return run


def test_a_stage_is_not_left_while_an_estimate_is_past_its_limit():
    run = _undecided_run()
    now = run.now + 3 * 3600
    a = assess(run.spec, run.state, run.windows, now)
    assert [g.verdict for g in a.judgement.gates] == ["INCONCLUSIVE"] and a.undecided
    assert "evidence: candidate error rate +2.00 pp" in a.waiting_for
    assert "is past, but not yet surely above, the allowed +1.00 pp" in a.waiting_for
    assert [c.type for c in step(run.spec, run.state, run.windows, now) if c.type != "verdict"] == []


def test_an_earlier_stage_past_its_limit_moves_on_and_says_the_next_stage_decides():
    # Held in a stage too small to decide, errors 1% -> 3% at 20 calls/s sat in the 1% stage for the whole of
    # 54% of 6.5-hour runs; the next stage, with ten times the calls, fails it.
    half = {"name": "half", "traffic": "50%", "hold": "10m"}
    run = _undecided_run(half, hold_past_limit="last_promotion")
    now = run.now + 11 * 60
    a = assess(run.spec, run.state, run.windows, now)
    assert [g.verdict for g in a.judgement.gates] == ["INCONCLUSIVE"] and not a.undecided
    (promoted,) = [c for c in step(run.spec, run.state, run.windows, now) if c.type != "verdict"]
    assert promoted.type == "promoted" and "no gate fails (error_rate INCONCLUSIVE)" in promoted.reason
    assert "error_rate past its limit but not surely above it, left to the next stage to decide" in promoted.reason
    held = _undecided_run(half)  # every_stage, the default
    assert "evidence: candidate error rate +2.00 pp" in assess(held.spec, held.state, held.windows, now).waiting_for
    assert [c.type for c in step(held.spec, held.state, held.windows, now) if c.type != "verdict"] == []


def test_a_shadow_stage_past_its_limit_is_held_even_where_live_stages_move_on():
    # Held in shadow, the candidate serves nobody: moving on would put a candidate past its limit before users.
    half = {"name": "half", "traffic": "50%", "hold": "10m"}
    run = _undecided_run(half, hold_past_limit="last_promotion")
    shadow = replace(run.state, traffic=0.0, shadow=1.0)
    now = run.now + 11 * 60
    assert "evidence: candidate error rate +2.00 pp" in assess(run.spec, shadow, run.windows, now).waiting_for
    assert [c.type for c in step(run.spec, shadow, run.windows, now) if c.type != "verdict"] == []


def test_on_inconclusive_decides_after_the_maximum_stage_time():
    for policy, expected in (("pause", "paused"), ("promote", "promoted"), ("hold", None)):
        run = _undecided_run(max_stage_time="1h", on_inconclusive=policy)
        early = assess(run.spec, run.state, run.windows, run.now + 30 * 60)
        assert "30m left before on_inconclusive: " + policy in early.waiting_for
        assert [c.type for c in step(run.spec, run.state, run.windows, run.now + 30 * 60)
                if c.type != "verdict"] == []
        changes = [c for c in step(run.spec, run.state, run.windows, run.now + 61 * 60) if c.type != "verdict"]
        if expected is None:
            assert changes == []
            continue
        (change,) = changes
        assert change.type == expected and "still undecided after max_stage_time 1h" in change.reason


def test_a_clear_regression_at_2_calls_per_second_is_not_promoted():
    # The reproduction: errors 1% -> 3% against a +1 pp limit completed with the last verdict
    # "+2.36 pp (CS +0.73..+4.02 pp) may exceed the allowed +1.00 pp".
    from crossfade.simulate import Workload, parse_arm, simulate

    legacy = parse_arm("errors=1% latency=lognormal(50ms,0.4) cost=0.001", label="legacy")
    workload = Workload(rps=2, legacy=legacy, candidate=parse_arm("errors=3%", base=legacy), mode="aggregate")
    result = simulate(BENCH_SPEC, workload, seed=8000)
    assert result.outcome != "completed", result.summary()


BENCH_SPEC = {
    "name": "bench",
    "stages": [{"name": "canary-1", "traffic": "1%", "hold": "15m"},
               {"name": "canary-10", "traffic": "10%", "hold": "30m"},
               {"name": "rollout-50", "traffic": "50%", "hold": "1h"}, {"name": "complete", "traffic": "100%"}],
    "gates": {"error_rate": {"max_increase": "1%"}, "latency": {"quantile": "p95", "max_ratio": 1.25},
              "cost": {"max_ratio": 1.5}},
    "analysis": {"interval": "1m", "confidence": "99%"},
}


def test_latency_looks_are_counted_from_the_first_data_in_both_arms():
    from crossfade.controller import look_number

    run = Run(spec())
    entered = run.now
    # The candidate's first call comes 30 minutes into the stage: looks before it judged nothing.
    c, l = Cell(), Cell()
    c.calls = l.calls = 5
    windows = [Window("m", "canary", "legacy", entered, 60.0, l),
               Window("m", "canary", "candidate", entered + 1800, 60.0, c)]
    assert look_number(run.spec, run.state, entered + 1800 + 60, windows) == 1
    assert look_number(run.spec, run.state, entered + 1800 + 180, windows) == 3
    assert look_number(run.spec, run.state, entered + 1800 + 60) == 32  # counted from entry, as before
    assert look_number(run.spec, run.state, entered + 600, windows[:1]) == 1


# -- bake and change detection (issue 10, item 8) ----------------------------------------------


def _baked(**overrides):
    return spec(stages=[{"name": "canary", "traffic": "50%", "hold": "10m"}, {"name": "full", "traffic": "100%"}],
                bake="30m", **overrides)


def test_the_last_stage_bakes_before_the_migration_completes():
    run = Run(_baked()).minutes(12)
    assert run.state.stage == "full" and run.state.status == "running"
    entry = [e for e in run.events if e.type == "promoted"][-1]
    assert entry.payload["bake"] == 1800 and not entry.payload["final"]
    assert entry.payload["baseline"]["calls"] > 5000  # legacy's cell of the stage left, to judge against
    a = assess(run.spec, run.state, run.windows, run.now)
    assert a.baking and a.to_dict()["baking"] and "bake: " in a.waiting_for
    assert [g.verdict for g in a.judgement.gates] in (["PASS"], ["INCONCLUSIVE"])  # judged against the baseline
    run.minutes(20)
    assert run.state.status == "running"
    # The bake's time is up; its end waits for a final look over calls enough to show a step in its last minute.
    run.minutes(12)
    a = assess(run.spec, run.state, run.windows, run.now)
    assert run.state.status == "running" and a.final_look and "final look" in a.waiting_for
    assert a.to_dict()["final_look"] == list(a.final_look) and a.final_look[0].startswith("error_rate: ")
    # An operator's plain promote waits for the final look as the controller does.
    from crossfade.controller import stage_progress
    from crossfade.events import TransitionError, operation

    progress = stage_progress(run.spec, run.state, run.windows, run.now)
    with pytest.raises(TransitionError, match="the bake's final look waits for calls \\(error_rate: "):
        operation("promote", run.state, run.spec, progress=progress)
    run.minutes(30)
    assert run.state.status == "completed" and run.types()[-1] == "baked"
    assert "bake 30m and a final look of " in run.events[-1].reason
    assert fold("m", run.events) == run.state
    assert verify(run.events, head=(run.state.seq, run.state.head)) is None


def test_a_fault_during_the_bake_is_rolled_back():
    run = Run(_baked()).minutes(12)
    assert run.state.stage == "full"
    run.candidate_errors = 0.03
    run.minutes(30)
    assert run.state.status == "rolled_back", run.types()
    assert run.events[-1].payload["from_stage"] == "full"


def test_a_fault_late_in_a_long_stage_is_caught_by_change_detection():
    # Errors step from 1% to 3% 2.5 hours into a 4-hour stage: the whole stage's estimate stays within the
    # +1 pp limit for long, diluted by the good hours; the candidate's recent calls alone are not.
    s = spec(stages=[{"name": "half", "traffic": "50%", "hold": "4h"}, {"name": "full", "traffic": "100%"}])
    run = Run(s, rps=20).minutes(150)
    assert run.state.stage == "half" and run.state.status == "running"
    run.candidate_errors = 0.03
    run.minutes(90)
    rolled = [e for e in run.events if e.type == "rolled_back"]
    assert rolled and rolled[0].payload.get("changes"), run.types()
    assert rolled[0].reason.startswith("change in error_rate: error rate ")


def test_without_change_detection_the_same_late_fault_is_diluted():
    s = spec(stages=[{"name": "half", "traffic": "50%", "hold": "4h"}, {"name": "full", "traffic": "100%"}],
             analysis={"interval": "1m", "change_share": "0%"})
    run = Run(s, rps=20).minutes(150)
    run.candidate_errors = 0.03
    run.minutes(30)
    assert run.state.status == "running"  # the gate has not caught it 30 minutes on


def test_an_operator_promote_is_refused_while_an_estimate_is_past_its_limit_unless_forced():
    from crossfade.controller import stage_progress
    from crossfade.events import TransitionError, operation

    run = _undecided_run()
    now = run.now + 3 * 3600
    progress = stage_progress(run.spec, run.state, run.windows, now)
    assert progress.past_limit and "+2.00 pp" in progress.past_limit[0]
    try:
        operation("promote", run.state, run.spec, progress=progress)
    except TransitionError as exc:
        assert "past its limit: candidate error rate +2.00 pp" in str(exc) and "promote --force" in str(exc)
    else:
        raise AssertionError("a promote past a limit was allowed")
    (forced,) = operation("promote", run.state, run.spec, progress=progress, force=True)
    assert forced.type == "promoted" and forced.payload["forced"]
    assert any("past its limit" in u for u in forced.payload["unmet"])


def test_an_operator_promote_during_the_bake_completes_only_when_the_bake_is_over_or_forced():
    from crossfade.controller import stage_progress
    from crossfade.events import TransitionError, operation

    run = Run(_baked()).minutes(12)
    progress = stage_progress(run.spec, run.state, run.windows, run.now)
    assert 0 < progress.hold_left <= 1800
    try:
        operation("promote", run.state, run.spec, progress=progress)
    except TransitionError as exc:
        assert "is baking" in str(exc) and "the bake has" in str(exc)
    else:
        raise AssertionError("a promote during the bake was allowed")
    (done,) = operation("promote", run.state, run.spec, progress=progress, force=True)
    assert done.type == "baked" and done.payload["final"] and done.payload["forced"]
