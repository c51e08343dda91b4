"""Simulation: synthetic traffic in virtual time through the real SDK and controller, and `crossfade simulate`."""

from __future__ import annotations

import hashlib
import json

import pytest
from typer.testing import CliRunner

from crossfade.cli import app
from crossfade.events import verify
from crossfade.simulate import (
    Fault,
    Latency,
    Workload,
    WorkloadError,
    parse_arm,
    parse_fault,
    simulate,
)
from crossfade.spec import load_spec

SPEC = {
    "name": "sim",
    "stages": [{"name": "canary", "traffic": "10%", "hold": "10m"}, {"name": "half", "traffic": "50%", "hold": "10m"},
               {"name": "full", "traffic": "100%"}],
    "gates": {"error_rate": {"max_increase": "1%"}},
    "analysis": {"interval": "1m"},
}
LEGACY = parse_arm("errors=1% latency=lognormal(50ms,0.4) cost=0.001")


def workload(candidate: str = "", **extra) -> Workload:
    return Workload(**{"rps": 100, "legacy": LEGACY, "candidate": parse_arm(candidate, base=LEGACY), "keys": 0,
                       **extra})


def test_a_healthy_candidate_completes_with_a_verified_log():
    result = simulate(SPEC, workload(), seed=1)
    assert result.outcome == "completed" and result.stage == "full"
    assert result.duration_s == 20 * 60  # two holds of 10 minutes, looked at every minute
    assert result.summary() == "completed in 20m simulated"
    assert [e.kind for e in result.timeline] == ["applied", "started", "promoted", "promoted"]
    assert verify(list(result.events)) is None
    assert result.calls["candidate"] > 0 and result.calls["legacy"] > result.calls["candidate"]


def test_a_worse_error_rate_is_rolled_back_by_the_error_rate_gate():
    result = simulate(SPEC, workload("errors=3%"), seed=2)
    assert result.outcome == "rolled_back" and result.stage in ("canary", "half")
    assert "candidate error rate" in result.reason and "is above the allowed +1.00 pp" in result.reason
    rolled = [e for e in result.timeline if e.kind == "rolled_back"]
    assert rolled and rolled[0].actor.startswith("controller")
    assert result.summary().startswith(f"rolled back at {result.stage} after ")
    assert 0 < result.detected_s == result.duration_s < 20 * 60


def test_a_step_fault_is_caught_after_it_happens():
    fault_at = 12 * 60  # two minutes into the 50% stage
    result = simulate(SPEC, workload("errors=6%", fault=Fault(fault_at)), seed=3)
    assert result.outcome == "rolled_back" and result.stage == "half"
    assert result.detected_s > fault_at
    assert "promoted" in [e.kind for e in result.timeline]  # it behaved until the fault
    assert 0 < result.exposed < result.calls["candidate"]  # only calls after the fault count as exposed


def test_a_drift_ramps_the_candidate_from_legacy_to_its_own_behaviour():
    w = workload("errors=5% latency=x2 cost=x3", fault=parse_fault("drift", "1h", "30m"))
    assert w.candidate_at(0) == LEGACY and w.candidate_at(3599) == LEGACY
    middle = w.candidate_at(3600 + 15 * 60)
    assert middle.errors == pytest.approx(0.03) and middle.latency.median == pytest.approx(0.075)
    assert middle.cost == pytest.approx(0.002)
    assert w.candidate_at(2 * 3600) == w.candidate


def test_the_same_seed_gives_the_same_run():
    one = simulate(SPEC, workload("errors=2.5%"), seed=11)
    two = simulate(SPEC, workload("errors=2.5%"), seed=11)
    assert [e.hash for e in one.events] == [e.hash for e in two.events]
    assert (one.outcome, one.duration_s, one.calls) == (two.outcome, two.duration_s, two.calls)


def test_drawing_calls_in_aggregate_matches_running_each_call():
    spec = {**SPEC, "stages": [{"name": "half", "traffic": "50%", "hold": "10m"}, {"name": "full", "traffic": "100%"}],
            "gates": {}, "fallback": {"timeout": "80ms"}}
    seen = {}
    for mode in ("calls", "aggregate"):
        def keep(tick, mode=mode):
            if tick.stage == "half":
                seen[mode] = tick.cells
        simulate(spec, workload("errors=3% latency=x1.2 cost=x2", rps=50, mode=mode), seed=5, on_tick=keep)
    for arm in ("candidate", "legacy"):
        calls, aggregate = seen["calls"][arm], seen["aggregate"][arm]
        assert aggregate.calls == pytest.approx(calls.calls, rel=0.05)
        assert aggregate.error_rate == pytest.approx(calls.error_rate, abs=0.015)
        assert aggregate.timeouts == pytest.approx(calls.timeouts, rel=0.1, abs=20)
        assert aggregate.latency.quantile(0.95) == pytest.approx(calls.latency.quantile(0.95), rel=0.05)
        assert aggregate.cost_mean == pytest.approx(calls.cost_mean, rel=0.05)
    # Candidate calls past the 80 ms timeout are errors, timeouts and fallbacks, as `mig.run` records them.
    candidate = seen["calls"]["candidate"]
    assert candidate.timeouts > 0 and candidate.fallbacks == candidate.errors


def test_approvals_follow_the_approve_policy():
    spec = {**SPEC, "stages": [{"name": "canary", "traffic": "10%", "hold": "5m"},
                               {"name": "full", "traffic": "100%", "approval": True}]}
    waiting = simulate(spec, workload(), seed=1, approve=None, until=3600)
    assert waiting.outcome == "running" and "awaiting approval" in waiting.reason
    approved = simulate(spec, workload(), seed=1, approve=600)
    kinds = [(e.kind, e.actor) for e in approved.timeline]
    assert ("approved", "simulation") in kinds and approved.outcome == "completed"
    requested = next(e.elapsed for e in approved.timeline if e.kind == "approval_requested")
    assert approved.duration_s == requested + 600


def test_ticks_show_the_controller_and_an_outside_judge_can_roll_back():
    ticks = []

    def judge(tick):
        return "p95 too high for the outside judge" if tick.elapsed >= 4 * 60 else None

    result = simulate(SPEC, workload(), seed=1, on_tick=ticks.append, rollback_when=judge)
    assert result.outcome == "rolled_back" and result.reason == "p95 too high for the outside judge"
    assert result.duration_s == 4 * 60 and [e.actor for e in result.timeline][-1] == "simulation"
    assert [t.elapsed for t in ticks] == [60.0, 120.0, 180.0, 240.0]
    first = ticks[0]
    assert first.stage == "canary" and first.assessment is not None
    assert first.assessment.judgement.gates[0].gate == "error_rate"
    assert first.cells["candidate"].calls == first.last["candidate"].calls > 0
    assert ticks[-1].cells["candidate"].calls > ticks[-1].last["candidate"].calls


def test_a_keyed_population_routes_by_the_popularity_of_its_keys():
    # 20 keys with Zipf popularity: the candidate's share of calls is the popularity of the keys the real
    # routing sends to it, not the stage's traffic.
    spec = {**SPEC, "stages": [{"name": "half", "traffic": "50%"}, {"name": "full", "traffic": "100%"}], "gates": {}}
    from crossfade.routing import bucket

    weights = {f"user-{i}": (i + 1) ** -1.1 for i in range(20)}
    expected = sum(w for k, w in weights.items() if bucket("sim", k) < 5000) / sum(weights.values())
    seen = []
    simulate(spec, workload(keys=20, rps=200, mode="aggregate"), seed=4, until=600, on_tick=seen.append)
    cells = seen[0].cells
    share = cells["candidate"].calls / (cells["candidate"].calls + cells["legacy"].calls)
    assert share == pytest.approx(expected, abs=0.03)


@pytest.mark.parametrize(("text", "base", "named"), [
    ("errors=3", LEGACY, "errors=3: 3 is not a fraction"),
    ("latency=x1.5", None, "latency=x1.5: a factor (x...) is relative to legacy"),
    ("latency=lognormal(50ms)", None, "latency=lognormal(50ms): write lognormal(MEDIAN,SIGMA)"),
    ("latency=lognormal(fast,0.4)", None, 'latency=lognormal(fast,0.4): "fast" is not a duration'),
    ("error=2%", None, "error=2%: unknown setting 'error'; did you mean 'errors'?"),
    ("errors=1% junk", None, "cannot read 'junk'"),
    ("cost=cheap", LEGACY, "cost=cheap: write a mean cost per call"),
])
def test_bad_arm_text_names_the_part_that_is_wrong(text, base, named):
    with pytest.raises(WorkloadError, match=None) as info:
        parse_arm(text, base=base, label="--candidate")
    assert named in str(info.value) and str(info.value).startswith("--candidate: ")


def test_arm_text_reads_absolute_and_relative_parts():
    arm = parse_arm("errors=2.5% latency=const(20ms) cost=const(0.004)")
    assert (arm.errors, arm.latency, arm.cost, arm.cost_sigma) == (0.025, Latency(0.02), 0.004, 0.0)
    relative = parse_arm("latency=x1.5, cost=x2", base=LEGACY)
    assert relative.errors == LEGACY.errors and relative.cost == pytest.approx(0.002)
    assert relative.latency.quantile(0.95) == pytest.approx(1.5 * LEGACY.latency.quantile(0.95))
    assert parse_fault(None, None) is None and parse_fault("step", "2h") == Fault(7200.0)
    with pytest.raises(WorkloadError, match="--fault-over 1h: a step fault happens at once"):
        parse_fault("step", "2h", "1h")


runner = CliRunner()


def test_the_command_prints_the_timeline_and_outcome(tmp_path):
    spec = tmp_path / "m.yaml"
    spec.write_text(json.dumps(SPEC))
    result = runner.invoke(app, ["simulate", str(spec), "--rps", "100", "--keys", "0", "--candidate", "errors=3%"])
    assert result.exit_code == 0, result.output
    assert "started" in result.output and "rolled back at " in result.output and "candidate error rate" in result.output


def test_json_has_the_shape_the_issue_gives(tmp_path):
    spec = tmp_path / "m.yaml"
    spec.write_text(json.dumps(SPEC))
    result = runner.invoke(app, ["simulate", str(spec), "--rps", "100", "--keys", "0", "--runs", "3", "--seed", "7",
                                 "--jobs", "1", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert set(report) == {"runs", "outcomes", "median_duration_s", "detail"}
    assert report["runs"] == 3 and report["outcomes"] == {"completed": 3, "rolled_back": 0, "paused": 0, "running": 0}
    assert report["median_duration_s"] == 1200.0
    assert [set(d) for d in report["detail"]] == [{"outcome", "duration_s", "stage", "reason"}] * 3


@pytest.mark.parametrize(("args", "message"), [
    (["--candidate", "errors=3 latency=x1.5"], "--candidate: errors=3: 3 is not a fraction"),
    (["--legacy", "latency=x2"], "--legacy: latency=x2: a factor"),
    (["--fault", "drift", "--fault-at", "1h"], "--fault drift needs --fault-over"),
    (["--fault-at", "soon"], '--fault-at soon: "soon" is not a duration'),
    (["--until", "forever"], '--until forever: "forever" is not a duration'),
])
def test_bad_workload_text_is_one_clear_line_and_exit_2(tmp_path, args, message):
    spec = tmp_path / "m.yaml"
    spec.write_text(json.dumps(SPEC))
    result = runner.invoke(app, ["simulate", str(spec), *args])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)


def test_a_kept_database_holds_the_log_and_the_telemetry(tmp_path):
    from crossfade.backends.sql import SQLBackend

    url = f"sqlite:///{tmp_path / 'sim.db'}"
    result = simulate(SPEC, workload(), seed=1, database=url)
    kept = SQLBackend(url)
    try:
        assert [e.hash for e in kept.events("sim")] == [e.hash for e in result.events]
        assert sum(w.cell.calls for w in kept.windows("sim")) == sum(result.calls.values())
    finally:
        kept.close()


def test_a_shadow_stage_is_judged_on_shadow_runs_and_left():
    spec = {**SPEC, "stages": [{"name": "shadow", "traffic": "0%", "shadow": "100%", "hold": "5m"},
                               {"name": "full", "traffic": "100%"}]}
    healthy = simulate(spec, workload(mode="aggregate"), seed=1)
    assert healthy.outcome == "completed" and healthy.calls["candidate"] == 0  # shadow runs serve nobody
    worse = simulate(spec, workload("errors=5%", mode="aggregate"), seed=1)
    assert worse.outcome == "rolled_back" and worse.stage == "shadow" and "candidate error rate" in worse.reason


def test_the_init_example_spec_can_be_simulated_and_its_mismatch_gate_judged():
    from crossfade.spec import EXAMPLE

    healthy = simulate(EXAMPLE, workload(rps=50), seed=1)
    assert healthy.outcome == "completed", healthy.summary()
    differing = simulate(EXAMPLE, workload("mismatch=5%", rps=50), seed=1)
    assert differing.outcome == "rolled_back" and differing.stage == "shadow"
    assert "answers differ from legacy's" in differing.reason


def test_mismatch_is_a_candidate_setting_of_the_arm_text():
    assert parse_arm("mismatch=2%", base=LEGACY).mismatch == 0.02
    assert "mismatch=2%" in parse_arm("mismatch=2%", base=LEGACY).describe()
    with pytest.raises(WorkloadError, match="mismatch= is how often the candidate's answers differ"):
        parse_arm("mismatch=2%", label="--legacy")


def test_looks_do_not_grow_with_the_simulated_span_at_low_traffic():
    spec = {"name": "ci", "stages": [{"traffic": "10%", "hold": "2d"}, {"traffic": "50%", "hold": "3d"},
                                     {"traffic": "100%"}],
            "gates": {"error_rate": {"max_increase": "2%"}}, "analysis": {"interval": "1m"}}
    looks = []
    result = simulate(spec, workload(rps=0.06), seed=1, on_tick=looks.append)
    assert result.outcome == "completed" and result.duration_s >= 5 * 86400
    # 7,200 intervals of a minute; a look when the stage's age grew by 5%, and at the end of each hold.
    assert len(looks) < 400
    ends = [t.elapsed for t in looks]
    assert 2 * 86400 in ends  # the first hold ends on a look


def test_the_share_of_calls_a_stage_carries_depends_on_the_salt_and_is_reported(tmp_path):
    import yaml

    from crossfade.simulate import key_shares

    spec = {**SPEC, "salt": "some-name"}
    shares = key_shares(load_spec(spec), workload(keys=2000), salts=10)
    assert [s.stage for s in shares] == ["canary", "half"]
    canary = shares[0]
    assert canary.low <= canary.median <= canary.high and canary.low < canary.high
    assert 0.0 < canary.share < 1.0 and canary.traffic == 0.1
    assert key_shares(load_spec(spec), workload(keys=0)) == []
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(spec))
    result = runner.invoke(app, ["simulate", str(path), "--rps", "20", "--keys", "2000", "--until", "1m"])
    assert result.exit_code == 0, result.output
    assert "canary: 10% of keys carry" in result.output and "over 20 other salts" in result.output


def test_a_spec_judged_from_prometheus_is_simulated_on_its_simulated_traffic_all_the_same():
    # No Prometheus answers at this address: the simulation judges what it simulates, whatever the source.
    prometheus = {**SPEC, "source": {"prometheus": {"url": "http://127.0.0.1:1", "preset": "istio"}}}
    for candidate, seed in (("", 1), ("errors=3%", 2)):
        plain, sourced = simulate(SPEC, workload(candidate), seed=seed), simulate(prometheus, workload(candidate), seed=seed)
        assert (sourced.outcome, sourced.stage, sourced.duration_s, sourced.reason) == (
            plain.outcome, plain.stage, plain.duration_s, plain.reason)


def test_a_run_in_memory_decides_as_a_run_on_a_kept_database(tmp_path):
    # Events, states and leases live in memory unless a database is kept: the same seed decides the same.
    spec = {**SPEC, "triggers": [{"metric": "error_rate", "above": "4%", "window": "5m"}]}
    for candidate in ("", "errors=6%"):
        kept = simulate(spec, workload(candidate), seed=3, database=f"sqlite:///{tmp_path / f'k{len(candidate)}.db'}")
        memory = simulate(spec, workload(candidate), seed=3)
        assert [(e.type, e.time, e.reason) for e in memory.events] == [(e.type, e.time, e.reason) for e in kept.events]
        assert (memory.outcome, memory.stage, memory.reason) == (kept.outcome, kept.stage, kept.reason)
        assert verify(list(memory.events)) is None and verify(list(kept.events)) is None


def test_at_low_traffic_looks_are_sized_by_calls_not_by_the_simulated_days():
    def looks(hold: str) -> int:
        spec = {"name": "ci", "stages": [{"traffic": "10%", "hold": hold}, {"traffic": "50%", "hold": hold},
                                         {"traffic": "100%"}],
                "gates": {"error_rate": {"max_increase": "2%"}}}
        seen = []
        result = simulate(spec, workload(rps=0.06, mode="aggregate"), seed=1, on_tick=seen.append)
        assert result.outcome == "completed"
        return len(seen)

    # 30 s looks would be 2 x 2,880 for holds of a day and 8 x that for 8 days; a look waits for ~100 calls,
    # then for the stage's age to grow by a quarter: 8 times the days cost a few looks more per stage.
    short, long = looks("1d"), looks("8d")
    assert short < 40 and long < short + 2 * 12
LOSSY_SPEC = {
    "name": "bridge",
    "stages": [{"traffic": "10%", "hold": "10m"}, {"traffic": "50%", "hold": "10m"}, {"traffic": "100%"}],
    "metrics": {"lost": {"kind": "count"}, "tokens": {"quantile": "p50", "max_ratio": 1.2}},
    "triggers": [{"metric": "lost", "above": 0}],
}


@pytest.mark.parametrize("mode", ["calls", "aggregate"])
def test_custom_metrics_in_the_workload_grammar_are_judged(mode):
    legacy = parse_arm("errors=1% latency=lognormal(50ms,0.4) tokens=800")
    lossy = parse_arm("lost=0.8%", base=legacy)
    assert lossy.describe().endswith("tokens=800 lost=0.8%")
    assert parse_arm(lossy.describe(), base=legacy) == lossy
    spec = load_spec(LOSSY_SPEC)
    rolled = simulate(spec, Workload(rps=20, legacy=legacy, candidate=lossy, mode=mode), seed=1)
    assert rolled.outcome == "rolled_back" and "trigger lost > 0" in rolled.summary()
    costly = simulate(spec, Workload(rps=20, legacy=legacy, candidate=parse_arm("tokens=1000", base=legacy),
                                     mode=mode), seed=1)
    assert costly.outcome == "rolled_back" and "tokens p50" in costly.summary()
    healthy = simulate(spec, Workload(rps=20, legacy=legacy, candidate=legacy, mode=mode), seed=1)
    assert healthy.outcome == "completed"


def test_a_custom_metric_value_that_is_not_a_number_is_named():
    with pytest.raises(WorkloadError, match="lost=lots: 'lots' is neither a share of calls"):
        parse_arm("lost=lots")


def test_a_custom_metric_no_declared_metric_reads_is_refused():
    legacy = parse_arm("losst=1%")
    with pytest.raises(WorkloadError, match="the workload records losst, which no metric under the spec's metrics: "
                                            "reads .they read: lost, tokens."):
        simulate(load_spec(LOSSY_SPEC), Workload(rps=20, legacy=legacy, candidate=legacy), seed=1)


def test_the_command_line_simulates_custom_metrics_and_names_a_misspelt_one(tmp_path):
    path = tmp_path / "bridge.yaml"
    path.write_text(json.dumps(LOSSY_SPEC))
    ran = CliRunner().invoke(app, ["simulate", str(path), "--candidate", "lost=0.8%", "--rps", "20"])
    assert ran.exit_code == 0 and "trigger lost > 0" in ran.output
    slip = CliRunner().invoke(app, ["simulate", str(path), "--candidate", "losst=0.8%", "--rps", "20"])
    assert slip.exit_code == 2 and "the workload records losst" in slip.output and "Traceback" not in slip.output


# -- late faults (issue 10, item 8) --------------------------------------------------------------

# The README's decision-quality spec: the last promotion is due at 1h45m, the bake ends at 2h45m.
BENCH_SPEC = """\
name: bench
stages:
  - {name: canary-1, traffic: 1%, hold: 15m}
  - {name: canary-10, traffic: 10%, hold: 30m}
  - {name: rollout-50, traffic: 50%, hold: 1h}
  - {name: complete, traffic: 100%}
gates:
  error_rate: {max_increase: 1%}
  latency: {quantile: p95, max_ratio: 1.25}
  cost: {max_ratio: 1.5}
analysis: {interval: 1m, confidence: 99%}
bake: 1h
"""


# The benchmark's spec with live earlier stages moving on past an undecided limit (the next stage decides).
MOVING_ON = BENCH_SPEC.replace("analysis: {interval: 1m, confidence: 99%}",
                               "analysis: {interval: 1m, confidence: 99%, hold_past_limit: last_promotion}")


def _caught(candidate: str, at: str | None, seeds: range, rps: float = 20, spec: str = BENCH_SPEC
            ) -> tuple[int, list[str]]:
    """How many of the seeded runs rolled back after the fault began, and the outcomes of the others."""
    fault = parse_fault("step", at) if at is not None else None
    caught, others = 0, []
    for seed in seeds:
        result = simulate(spec, workload(candidate, rps=rps, mode="aggregate", fault=fault), seed=seed)
        if result.outcome == "rolled_back" and result.detected_s >= (fault.at if fault else 0.0):
            caught += 1
        else:
            others.append(f"seed {seed}: {result.summary()}")
    return caught, others


@pytest.mark.parametrize("at", ["2h44m", "1h44m"], ids=["bake's last minute", "last judged stage's last minute"])
def test_a_step_past_the_limit_in_the_last_minute_is_rolled_back(at):
    # Before the bake's final look, a step in its last minutes completed (24 of 60 caught 10 minutes before
    # its end); one in the last judged stage's last minute is judged by the bake.
    caught, missed = _caught("errors=3%", at, range(20))
    assert caught >= 19, missed


def test_the_final_look_fails_no_identical_candidate():
    caught, others = _caught("", None, range(10))
    assert caught == 0 and all("completed" in o for o in others), others


@pytest.mark.parametrize(("candidate", "rps", "runs"), [("errors=3%", 20, 20), ("errors=3%", 2, 10),
                                                        ("latency=x1.5", 2, 10)])
def test_a_regression_past_a_limit_is_rolled_back_not_held_in_a_stage_too_small_to_decide(candidate, rps, runs):
    # Held wherever its estimate was past the limit (every_stage, the default), errors 1% -> 3% at 20 calls/s sat
    # in the 1% stage (0.2 candidate calls/s) for the whole of 48% of 6.5-hour runs, and at 2 calls/s errors and
    # p95 x1.5 in 65%; with last_promotion the next stage decides.
    caught, missed = _caught(candidate, None, range(runs), rps=rps, spec=MOVING_ON)
    assert caught >= runs - 1, missed


def test_a_candidate_exactly_at_the_error_limit_is_not_failed_in_the_stages_it_now_reaches():
    caught, others = _caught("errors=2%", None, range(10), spec=MOVING_ON)
    assert caught == 0, others


def test_a_trigger_held_for_a_while_can_fire_at_low_traffic():
    # At 0.2 calls/s a look spans 8 intervals or more; a span's calls all landed in its last interval, so the
    # trigger's window ending one interval earlier (its `for`) was empty and it never fired.
    spec = {**SPEC, "gates": {}, "stages": [{"name": "canary", "traffic": "50%", "hold": "3h"},
                                            {"name": "full", "traffic": "100%"}],
            "triggers": [{"metric": "error_rate", "above": "5%", "window": "5m", "for": "5m"}]}
    result = simulate(spec, workload("errors=60%", rps=0.2, mode="aggregate"), seed=1, until=3 * 3600)
    assert result.outcome == "rolled_back" and "held for 5m" in result.reason, result.summary()




@pytest.mark.parametrize(("rps", "candidate", "seed", "pinned"), [
    # Re-pinned with the bake's final look (it lengthens this 2 calls/s bake), the same before and after the
    # speed-up: measured on both.
    (2, "", 7, ("completed", "complete", None, 18454, {"candidate": 18454, "legacy": 8649}, "943dc3e5cc5ef368")),
    (20, "errors=3%", 3, ("rolled_back", "canary-10", 4680.0, 7109, {"candidate": 7109, "legacy": 86373},
                          "08975985f05ba584")),
    (200, "latency=x1.5", 5, ("rolled_back", "canary-1", 240.0, 446, {"candidate": 446, "legacy": 47276},
                              "6585825a840b95c3")),
    (200, "cost=x1.5", 2, ("completed", "complete", None, 1123603, {"candidate": 1123603, "legacy": 1397443},
                           "55595f5b3dbe3d5e")),
])
def test_a_seeded_aggregate_run_draws_and_decides_as_pinned(rps, candidate, seed, pinned):
    """Draw for draw and look for look, as measured before the aggregate mode was made faster: a speed-up must
    not change a seeded run (the digest covers every look's per-arm counts, latency buckets and sums, and cost sums).
    A change to the judge or the controller may change these on purpose; then re-pin them in that change."""
    digest = hashlib.sha256()

    def keep(tick):
        for arm, c in sorted(tick.last.items()):
            digest.update(repr((tick.elapsed, tick.stage, arm, c.calls, c.errors, c.timeouts,
                                sorted(c.latency.bins.items()), c.latency.total, c.cost_sum, c.cost_sq)).encode())

    load = Workload(rps=rps, legacy=LEGACY, candidate=parse_arm(candidate, base=LEGACY), keys=0, mode="aggregate")
    result = simulate(BENCH_SPEC, load, seed=seed, on_tick=keep)
    assert (result.outcome, result.stage, result.detected_s, result.exposed, result.calls,
            digest.hexdigest()[:16]) == pinned
    if rps == 20:
        # Without an observer the run is the same (the benchmark's crossfade judge runs without one).
        bare = simulate(BENCH_SPEC, load, seed=seed)
        assert (bare.outcome, bare.detected_s, bare.calls) == pinned[0:1] + pinned[2:3] + pinned[4:5]
