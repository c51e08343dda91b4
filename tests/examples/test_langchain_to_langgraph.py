"""examples/langchain-to-langgraph runs as documented: real langchain-core and langgraph on a fake LLM, the
real controller process, sync, async and streaming call sites."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.examples import load_example

EXAMPLE = Path(__file__).parents[2] / "examples" / "langchain-to-langgraph"

pytest.importorskip("langgraph", reason="the example needs the test extra (pip install -e '.[test]')")




def test_a_healthy_graph_with_noise_cancellation_completes_in_20_of_20_runs(tmp_path):
    result = load_example("langchain-to-langgraph", "rollout").main(tmp_path, "healthy", 20, rate=200, deadline=240)
    assert result["ends"] == {"completed": 20}, result["runs"]
    for run in result["runs"].values():  # the tokens of every answer, served or shadowed, are its cost
        assert run["tokens"]["candidate"] == pytest.approx(run["tokens"]["legacy"], rel=0.25)
        assert 15 < run["tokens"]["legacy"] < 40


def test_a_graph_wrong_on_30_percent_of_answers_is_rolled_back_by_the_similarity_gate(tmp_path):
    result = load_example("langchain-to-langgraph", "rollout").main(tmp_path, "wrong")
    run = result["runs"]["assistant-langgraph"]
    assert run["status"] == "rolled_back" and run["stage"] in ("shadow", "canary")
    assert "similarity" in run["reason"] and "similarity.min" in run["failed"]


def test_a_graph_that_fails_on_some_questions_is_rolled_back_before_serving_anyone(tmp_path):
    result = load_example("langchain-to-langgraph", "rollout").main(tmp_path, "regression")
    run = result["runs"]["assistant-langgraph"]
    assert (run["status"], run["stage"], run["failed"]) == ("rolled_back", "shadow", ["error_rate"])
