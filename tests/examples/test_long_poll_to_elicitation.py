"""examples/long-poll-to-elicitation runs as documented: the real mcp package, the real controller process."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.examples import load_example

EXAMPLE = Path(__file__).parents[2] / "examples" / "long-poll-to-elicitation"

pytest.importorskip("mcp", reason="the example needs the test extra (pip install -e '.[test]')")




def test_the_switch_under_load_completes_with_no_error_and_no_message_lost(tmp_path):
    result = load_example("long-poll-to-elicitation", "rollout").main(tmp_path, "switch")
    assert result["status"] == "completed"
    assert result["stages"] == ["canary", "rollout-5", "rollout-25", "rollout-50", "all"]
    assert (result["errors"], result["lost"]) == (0, 0) and result["sent"] > 500
    assert result["via"]["elicitation"] > 0 and result["via"]["long-poll"] > 0
    assert result["duplicates"] > 0, "dual writes delivered both ways; the inboxes kept one copy of each"
    assert result["stats"]["dual_write_divergences"] == 0


def test_a_lossy_bridge_is_rolled_back_by_the_lost_trigger_before_one_percent_is_lost(tmp_path):
    result = load_example("long-poll-to-elicitation", "rollout").main(tmp_path, "lossy")
    assert result["status"] == "rolled_back" and result["reason"].startswith("trigger lost > 0")
    assert result["stage"] in ("rollout-25", "rollout-50"), "the dual-write stages lose nothing, so pass"
    assert 1 <= result["lost"] < 0.01 * result["sent"]
    assert result["errors"] == 0


def test_the_new_path_killed_mid_flight_loses_no_message(tmp_path):
    result = load_example("long-poll-to-elicitation", "rollout").main(tmp_path, "chaos")
    assert result["killed_at"] == "rollout-5" and result["in_flight_at_kill"] > 0, "killed with deliveries under way"
    assert (result["errors"], result["lost"]) == (0, 0)
    assert result["stats"]["dual_write_divergences"] > 0, "the dead path's side of each dual write, recorded"
    assert result["status"] == "rolled_back", "the candidate's errors rolled it back"
