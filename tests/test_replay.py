"""Replay: a recorded migration re-judged under another spec, stage by stage, on its own windows."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

import crossfade
from crossfade.cli import app
from crossfade.replay import PROMOTE, ROLLBACK, stage_periods

runner = CliRunner()


@pytest.fixture(scope="module")
def faulty_demo(tmp_path_factory) -> str:
    """The demo's faulty story, recorded in a SQLite file by the simulation, as `crossfade demo --keep` does."""
    from crossfade.demo import SPEC, stories
    from crossfade.simulate import simulate

    url = f"sqlite:///{tmp_path_factory.mktemp('replay') / 'demo.db'}"
    result = simulate(SPEC, stories(faulty_only=True)[0].workload, seed=1, database=url)
    assert result.outcome == "rolled_back"
    return url


def _replay(url: str, tmp_path, text: str) -> dict:
    spec = tmp_path / "other.yaml"
    spec.write_text(text)
    run = runner.invoke(app, ["replay", "demo-pricing", "--spec", str(spec), "--url", url, "--json"])
    assert run.exit_code == 0, run.output
    return json.loads(run.output)


def test_the_recorded_spec_replays_to_exactly_what_was_recorded(faulty_demo, tmp_path):
    from crossfade.demo import SPEC

    same = _replay(faulty_demo, tmp_path, SPEC)
    assert same["replayed_failure"] == same["recorded_failure"] and same["recorded_failure"]["decision"] == ROLLBACK
    for stage in same["stages"]:
        assert stage["replayed"]["decision"] == stage["recorded"]["decision"]
        assert stage["replayed"]["at_s"] == stage["recorded"]["at_s"]


def test_a_tighter_spec_rolls_the_demos_faulty_migration_back_earlier_and_a_looser_one_later(faulty_demo, tmp_path):
    from crossfade.demo import SPEC

    tighter = _replay(faulty_demo, tmp_path, SPEC.replace("max_increase: 0.5%", "max_increase: 0.2%")
                      .replace("max_ratio: 1.2}", "max_ratio: 1.1}"))
    recorded = tighter["recorded_failure"]["at_s"]
    assert tighter["replayed_failure"]["decision"] == ROLLBACK
    # The recording's change detection may already have acted at the first look after the fault: then the
    # tighter spec acts as recorded, never later.
    assert tighter["replayed_failure"]["at_s"] <= recorded
    assert ("earlier than the recorded" if tighter["replayed_failure"]["at_s"] < recorded else "as recorded") \
        in tighter["summary"]
    looser = _replay(faulty_demo, tmp_path, SPEC.replace("max_increase: 0.5%", "max_increase: 2.5%")
                     .replace("max_ratio: 1.2}", "max_ratio: 1.8}").replace("above: 10%", "above: 30%"))
    # The recording ends at its rollback: a looser spec has not acted by then, so it would act later, if at all.
    assert looser["replayed_failure"] is None and looser["recorded_end_s"] >= recorded
    assert "later than the recorded rollback" in looser["summary"]
    # The recording ends early in its third stage (change detection caught the fault a look after it began):
    # the looser spec promotes the first two and has not decided the third by then.
    decisions = [s["replayed"]["decision"] for s in looser["stages"]]
    assert decisions[:2] == [PROMOTE] * 2 and ROLLBACK not in decisions
    shown = runner.invoke(app, ["replay", "demo-pricing", "--spec", str(tmp_path / "other.yaml"), "--url", faulty_demo])
    assert shown.exit_code == 0 and "later than the recorded rollback" in shown.output.replace("\n", " ")


def test_stage_periods_follow_the_log_and_what_ended_each_stage(sqlite_url):
    cf = crossfade.connect(sqlite_url)
    cf.apply({"name": "m", "stages": [{"name": "a", "traffic": "10%"}, {"name": "b", "traffic": "50%"},
                                      {"name": "c", "traffic": "100%"}]})
    mig = cf.migration("m")
    mig.start()
    mig.promote("looks fine")
    mig.rollback("the pager went off")
    periods = stage_periods(mig.history(), now=1e12)
    assert [(p.stage, p.decision) for p in periods] == [("a", PROMOTE), ("b", ROLLBACK)]
    assert periods[1].reason == "the pager went off" and periods[0].end == periods[1].start
    cf.close()
