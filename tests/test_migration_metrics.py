"""Custom metrics and graded comparisons through the SDK, judged by the real controller loop on SQLite."""

from __future__ import annotations

import difflib
import json
import math
import random
import subprocess
import sys
import threading
import time

import pytest
from conftest import wait_until

import crossfade
from crossfade.events import COMPLETED, ROLLED_BACK
from crossfade.loop import ControllerLoop
from crossfade.routing import CANDIDATE, LEGACY
from crossfade.telemetry import Cell, merge_windows


class ManualClock:
    """A clock the test moves by hand (the loop's and the client's)."""

    def __init__(self, now: float) -> None:
        self.t = now

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float, stop: threading.Event) -> None:
        self.t += seconds


class Bridge:
    """A message bridge: `send` hands a message to the far side, which acknowledges what it receives.

    The lossy one drops `loss` of the messages without a word: no exception, nothing at call time.
    """

    def __init__(self, loss: float, seed: int) -> None:
        self.loss = loss
        self.random = random.Random(seed)
        self.received: set[str] = set()

    def send(self, message_id: str) -> str:
        if self.random.random() >= self.loss:
            self.received.add(message_id)
        return "queued"

    def acked(self, message_id: str) -> bool:
        return message_id in self.received


BRIDGE_SPEC = {
    "name": "bridge",
    "stages": [{"traffic": "10%", "hold": "30s"}, {"traffic": "50%", "hold": "30s"}, {"traffic": "100%"}],
    "gates": {"error_rate": {"max_increase": "1%"}},
    "metrics": {"lost": {"kind": "count", "max": 0}, "delivery": {"rate": "delivered / sent", "min": "99%"}},
    "triggers": [{"metric": "lost", "above": 0, "window": "5m"}],
    "analysis": {"interval": "1s"},
}


def run_bridge(url: str, loss: float, seed: int, spec: dict) -> tuple[str, int, int, int]:
    """Messages through the SDK and the real controller loop until the migration ends or stalls: (final
    status, messages lost, messages sent, messages the candidate sent)."""
    clock = ManualClock(1_000_000.0)
    legacy_bridge, candidate_bridge = Bridge(0.0, seed), Bridge(loss, seed + 1)
    lost = sent = on_candidate = 0
    with crossfade.Client(url, clock=clock.now, background=False, window=1.0) as cf:
        cf.apply(spec)
        mig = cf.migration("bridge")
        mig.start(actor="test")
        loop = ControllerLoop(cf.backend(), clock=clock, holder="test")
        for second in range(400):
            cf.refresh()
            waiting = []
            for i in range(50):
                message = f"m{second}-{i}"
                decision = mig.decide(message)
                bridge = candidate_bridge if decision.arm == CANDIDATE else legacy_bridge
                with mig.observe(decision) as obs:
                    bridge.send(message)
                    obs.metric("sent")
                waiting.append((decision, bridge, message))
                sent += 1
                on_candidate += decision.arm == CANDIDATE
            # The far side's acknowledgements arrive later: known outcomes are recorded then.
            for decision, bridge, message in waiting:
                if bridge.acked(message):
                    mig.record(decision, "delivered")
                else:
                    mig.record(decision, "lost")
                    lost += 1
            cf.flush(everything=True)
            clock.t += 1.0
            loop.tick()
            state = mig.state()
            if state.status in (COMPLETED, ROLLED_BACK):
                return state.status, lost, sent, on_candidate
    return mig.state().status, lost, sent, on_candidate


def test_a_lossy_bridge_is_rolled_back_by_a_lost_trigger_before_one_percent_is_lost(sqlite_url):
    status, lost, sent, on_candidate = run_bridge(sqlite_url, 0.008, 7, BRIDGE_SPEC)
    assert status == ROLLED_BACK
    # Rolled back at the look after the first lost message: far less than 1% of the messages were lost.
    assert lost == 1 and lost / sent < 0.01 and on_candidate > 0
    # The reason names the trigger and the count, as a person reads it.
    with crossfade.Client(sqlite_url, background=False) as cf:
        reasons = [e.reason for e in cf.migration("bridge").history() if e.type == ROLLED_BACK]
    assert reasons and "trigger lost > 0" in reasons[0]


def test_a_faithful_bridge_completes_under_the_same_spec(sqlite_url):
    status, lost, _, _ = run_bridge(sqlite_url, 0.0, 7, BRIDGE_SPEC)
    assert (status, lost) == (COMPLETED, 0)


def test_the_loss_is_invisible_without_custom_metrics(sqlite_url):
    """What the issue saw: the built-in gates alone promote a bridge that loses messages."""
    spec = {k: v for k, v in BRIDGE_SPEC.items() if k not in ("metrics", "triggers")}
    status, lost, _, _ = run_bridge(sqlite_url, 0.008, 7, spec)
    assert status == COMPLETED and lost > 0


# --- graded comparisons ------------------------------------------------------------------------------------

ANSWERS = [
    "The refund was issued to the original card and should arrive within five business days.",
    "Your order shipped this morning and the tracking number is in the confirmation email.",
    "We could not verify the address, so the parcel is held at the depot for pickup.",
    "The subscription renews monthly; you can cancel at any time from the account page.",
]


def similarity(legacy: str, candidate: str) -> float:
    """A graded comparator: normalised text similarity in [0, 1]."""
    return difflib.SequenceMatcher(None, legacy.lower(), candidate.lower()).ratio()


def llm_like(wrong: float, seed: int):
    """An LLM-ish candidate: rewords every answer a little (never equal to legacy's), wrong in `wrong` of them."""
    rng = random.Random(seed)
    lock = threading.Lock()

    def answer(question: int) -> str:
        with lock:
            draw = rng.random()
        if draw < wrong:
            return "I am sorry, I cannot help with that request."
        return ANSWERS[question % len(ANSWERS)].replace("The ", "the ").rstrip(".") + "!"

    return answer


SIMILARITY_SPEC = {
    "name": "answers",
    "stages": [{"name": "shadow", "traffic": "0%", "shadow": "100%", "hold": "20s"}, {"traffic": "100%"}],
    "gates": {"error_rate": {"max_increase": "1%"}, "mismatch_rate": {"max": "50%"}},
    "metrics": {"similarity": {"quantile": "p10", "min": 0.85}},
    "shadow": {"max_pending": 1000},
    "analysis": {"interval": "1s"},
}


def run_answers(url: str, wrong: float, seed: int) -> tuple[str, crossfade.Client]:
    clock = ManualClock(2_000_000.0)
    with crossfade.Client(url, clock=clock.now, background=False, window=1.0) as cf:
        cf.apply(SIMILARITY_SPEC)
        mig = cf.migration("answers").with_options(compare=similarity)
        mig.start(actor="test")
        loop = ControllerLoop(cf.backend(), clock=clock, holder="test")
        candidate = llm_like(wrong, seed)
        done = 0
        for second in range(120):
            cf.refresh()
            for i in range(20):
                question = second * 20 + i
                mig.run(f"user-{question}", lambda q: ANSWERS[q % len(ANSWERS)], candidate, question)
            done += 20
            wait_until(lambda: cf.stats()["shadow_compared"] + cf.stats()["shadow_timeouts"] >= done)
            cf.flush(everything=True)
            clock.t += 1.0
            loop.tick()
            status = mig.state().status
            if status in (COMPLETED, ROLLED_BACK):
                return status, cf
        return mig.state().status, cf


def test_a_candidate_whose_answers_score_low_is_rolled_back_by_the_similarity_gate(sqlite_url):
    status, _ = run_answers(sqlite_url, 0.3, 1)
    assert status == ROLLED_BACK
    with crossfade.Client(sqlite_url, background=False) as cf:
        reasons = [e.reason for e in cf.migration("answers").history() if e.type == ROLLED_BACK]
        cells = merge_windows(cf.backend().windows("answers"))
        examples = cf.backend().examples("answers")
    assert "similarity p10" in reasons[0] and "below the least allowed 0.85" in reasons[0]
    scores = cells[CANDIDATE].metrics["similarity"]
    assert scores.count == cells[CANDIDATE].compared and scores.sketch.count == scores.count
    assert "similarity" not in cells[LEGACY].metrics
    # Scores below shadow.mismatch_below (0.5) are mismatches, and their examples carry the score.
    assert 0 < cells[CANDIDATE].mismatches < cells[CANDIDATE].compared
    assert any(e.detail["score"] < 0.5 for e in examples)
    # `crossfade mismatches` shows the score distribution and the lowest-scoring examples first.
    from typer.testing import CliRunner

    from crossfade.cli import app

    report = json.loads(CliRunner().invoke(app, ["mismatches", "answers", "--json", "--url", sqlite_url]).output)
    assert report["similarity"]["count"] == scores.count and report["similarity"]["p10"] < 0.85
    shown = [e["score"] for e in report["lowest"]]
    assert shown == sorted(shown) and shown[0] == min(e.detail["score"] for e in examples)
    text = CliRunner().invoke(app, ["mismatches", "answers", "--url", sqlite_url]).output
    assert "graded comparisons:" in text and "score 0." in text


def test_the_lowest_scoring_answers_are_kept_though_none_is_a_mismatch(sqlite_url):
    """A similarity gate on p10 judges answers above mismatch_below: the user must be able to read them."""
    with crossfade.Client(sqlite_url, background=False) as cf:
        cf.apply({"name": "m", "stages": [{"traffic": "0%", "shadow": "100%"}, {"traffic": "100%"}],
                  "shadow": {"examples": 3, "max_pending": 1000}})
        mig = cf.migration("m").with_options(compare=lambda a, b: 0.6 + (b % 40) / 100)
        mig.start(actor="test")
        for i in range(200):
            mig.run(f"k{i}", lambda i: i, lambda i: i, i)
        wait_until(lambda: cf.stats()["shadow_compared"] >= 200)
        cf.flush(everything=True)
        assert cf.stats()["shadow_mismatches"] == 0
        kept = sorted(e.detail["score"] for e in cf.backend().examples("m"))
    # Only scores among the 3 lowest when seen are kept, and the newest 3 of them wait for the flush: the last
    # one kept is a 0.60 (once three are in, nothing else is), the lowest score of all.
    assert len(kept) == 3 and kept[0] == 0.6


def test_a_healthy_reworded_candidate_completes_though_no_answer_is_equal(sqlite_url):
    status, _ = run_answers(sqlite_url, 0.0, 2)
    assert status == COMPLETED
    with crossfade.Client(sqlite_url, background=False) as cf:
        cells = merge_windows(cf.backend().windows("answers"))
    assert cells[CANDIDATE].mismatches == 0 and cells[CANDIDATE].metrics["similarity"].count > 0


@pytest.mark.parametrize("bad", [1.5, -0.1, float("nan")])
def test_a_score_outside_zero_to_one_is_counted_never_raised(sqlite_url, bad):
    with crossfade.Client(sqlite_url, background=False) as cf:
        cf.apply({"name": "m", "stages": [{"traffic": "0%", "shadow": "100%"}, {"traffic": "100%"}]})
        mig = cf.migration("m").with_options(compare=lambda a, b: bad)
        mig.start(actor="test")
        assert mig.run("k", lambda: "a", lambda: "b") == "a"
        wait_until(lambda: cf.stats()["internal_errors"] + cf.stats().get("shadow_compared", 0) >= 1)
        assert cf.stats()["shadow_compared"] == 0


# --- recording -----------------------------------------------------------------------------------------------


def test_every_way_of_recording_lands_in_the_arm_and_stage_cell(sqlite_url):
    with crossfade.Client(sqlite_url, background=False) as cf:
        cf.apply({"name": "m", "stages": [{"traffic": "50%"}, {"traffic": "100%"}],
                  "metrics": {"tokens": {"quantile": "p90", "max_ratio": 2}}})
        mig = cf.migration("m", metrics=lambda answer: {"tokens": len(answer)})
        mig.start(actor="test")
        decisions = []
        for i in range(200):
            mig.run(f"k{i}", lambda: "legacy", lambda: "candidate!")
            d = mig.decide(f"o{i}")
            with mig.observe(d) as obs:
                obs.metric("sent")
                obs.metric("Bad Name", 1)  # dropped and counted, never raised
                obs.metric("tokens", float("inf"))  # likewise
            decisions.append(d)
        for d in decisions:
            mig.record(d, "acked", 1)
        mig.record(decisions[0], "acked", "many")  # not a number: counted
        errors = cf.stats()["recording_errors"]
        cf.flush(everything=True)
        cells = merge_windows(cf.backend().windows("m"))
    assert errors == 401
    by_arm = {arm: sum(d.arm == arm for d in decisions) for arm in (CANDIDATE, LEGACY)}
    for arm, size in ((CANDIDATE, 10), (LEGACY, 6)):
        tokens = cells[arm].metrics["tokens"]
        assert tokens.mean == size and tokens.sketch is not None, "declared as a quantile: sketched"
        assert cells[arm].metrics["sent"].count == cells[arm].metrics["acked"].count == by_arm[arm]
        assert cells[arm].metrics["sent"].sketch is None, "not declared as a quantile: no sketch"


PROCESS = """
import json, random, sys
import crossfade
rng = random.Random(int(sys.argv[2]))
recorded = []
with crossfade.Client(sys.argv[1], background=False) as cf:
    mig = cf.migration("m")
    cf.refresh()
    for i in range(500):
        d = mig.decide(f"{sys.argv[2]}-{i}")
        value = round(rng.uniform(0, 100), 3)
        mig.record(d, "tokens", value)
        recorded.append((d.arm, value))
    cf.flush(everything=True)
print(json.dumps(recorded))
"""


def test_two_processes_windows_merge_exactly(sqlite_url):
    with crossfade.Client(sqlite_url, background=False) as cf:
        cf.apply({"name": "m", "stages": [{"traffic": "50%"}, {"traffic": "100%"}],
                  "metrics": {"tokens": {"quantile": "p50", "max_ratio": 1.5}}})
        cf.migration("m").start(actor="test")
    runs = [subprocess.run([sys.executable, "-c", PROCESS, sqlite_url, str(seed)], capture_output=True, text=True,
                           check=True, timeout=120) for seed in (1, 2)]
    expected = {CANDIDATE: Cell(), LEGACY: Cell()}
    for run in runs:
        for arm, value in json.loads(run.stdout):
            expected[arm].metric("tokens", value, True)
    with crossfade.Client(sqlite_url, background=False) as cf:
        cells = merge_windows(cf.backend().windows("m"))
    for arm in (CANDIDATE, LEGACY):
        got, want = cells[arm].metrics["tokens"], expected[arm].metrics["tokens"]
        assert got.count == want.count > 0
        assert math.isclose(got.total, want.total, rel_tol=1e-12)
        assert math.isclose(got.squares, want.squares, rel_tol=1e-12)
        assert got.sketch == want.sketch


def test_custom_metrics_are_shown_in_status_the_api_and_prometheus(control_plane, sqlite_url):
    from typer.testing import CliRunner

    from crossfade.cli import app

    with crossfade.Client(sqlite_url, background=False) as cf:
        cf.apply({"name": "shown", "stages": [{"traffic": "50%"}, {"traffic": "100%"}],
                  "metrics": {"delivery": {"rate": "delivered / sent", "min": "99%"}}})
        mig = cf.migration("shown")
        mig.start(actor="test")
        for i in range(200):
            d = mig.decide(f"k{i}")
            with mig.observe(d) as obs:
                obs.metric("sent")
            if d.arm == LEGACY or i % 10:
                mig.record(d, "delivered")
        cf.flush(everything=True)
    result = CliRunner().invoke(app, ["status", "shown", "--json", "--url", sqlite_url])
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output)["metrics"]["delivery"]
    assert figures["legacy"] == 1.0 and 0.85 < figures["candidate"] < 0.95 and figures["bad"] == "low"
    text = CliRunner().invoke(app, ["status", "shown", "--url", sqlite_url]).output
    assert "delivery (delivered / sent)" in text and "delivery.min" in text
    status, detail, _ = control_plane.call("GET", "/v1/migrations/shown", role="viewer")
    assert status == 200 and detail["metrics"]["delivery"]["candidate"] == figures["candidate"]
    assert detail["arms"]["candidate"]["metrics"]["sent"]["count"] > 0
    assert any(g["gate"] == "delivery.min" for g in detail["controller"]["gates"])
    exposition = control_plane.call("GET", "/metrics", role="viewer")[1]
    assert 'crossfade_arm_metric{arm="legacy",metric="delivery",migration="shown",stage="stage-1"} 1.0' in exposition
    assert 'crossfade_arm_metric_values_total{arm="legacy",metric="sent"' in exposition
    assert 'crossfade_gate_limit{gate="delivery.min",migration="shown"} 0.99' in exposition


def test_custom_metrics_posted_in_the_open_telemetry_form_are_stored_and_checked(control_plane):
    now = time.time()
    spec = {"name": "open", "stages": [{"traffic": "50%"}, {"traffic": "100%"}]}
    assert control_plane.call("PUT", "/v1/migrations/open", {"spec": spec})[0] == 200
    assert control_plane.call("POST", "/v1/migrations/open/start", {"reason": "test"})[0] == 200
    window = {"migration": "open", "stage": "stage-1", "arm": "candidate", "start": now - 5, "length": 10,
              "counts": {"calls": 100}, "metrics": {"lost": {"count": 2, "sum": 2, "sum_squares": 2}}}
    status, body, _ = control_plane.call("POST", "/v1/telemetry", {"windows": [window]}, role="sdk")
    assert status == 200, body
    stored = control_plane.backend.windows("open")[0].cell.metrics["lost"]
    assert (stored.count, stored.total) == (2, 2.0)
    hostile = {**window, "metrics": {"lost": {"count": 2, "sum": 200, "sum_squares": 2}}}
    status, body, _ = control_plane.call("POST", "/v1/telemetry", {"windows": [hostile]}, role="sdk")
    assert status == 422 and "cannot both hold" in json.dumps(body)
    bad_name = {**window, "metrics": {"Lost": {"count": 1, "sum": 1, "sum_squares": 1}}}
    assert control_plane.call("POST", "/v1/telemetry", {"windows": [bad_name]}, role="sdk")[0] == 422
