"""Comparators, ignore paths, noise cancellation and the bounded runner, without a backend."""

from __future__ import annotations

import dataclasses
import threading
import time

import pytest

from crossfade.shadow import (
    ERROR_PATH,
    MISMATCH,
    NOISE,
    ComparisonLog,
    Comparator,
    Options,
    Outcome,
    ShadowRunner,
    add_counts,
    compile_path,
    verdict,
)


def paths(legacy, candidate, **options) -> list[str]:
    return [d.where for d in Comparator(Options(**options)).differences(Outcome(legacy), Outcome(candidate))]


@dataclasses.dataclass
class Line:
    sku: str
    etag: str


@dataclasses.dataclass
class Order:
    id: str
    lines: list[Line]


def test_equal_answers_have_no_differences_and_unequal_ones_name_the_field():
    assert paths({"a": 1, "b": [1, 2]}, {"a": 1, "b": [1, 2]}) == []
    assert paths({"a": 1, "b": [1, 2]}, {"a": 1, "b": [1, 3]}) == ["$.b[1]"]
    assert paths({"a": 1}, {"a": 1, "c": 2}) == ["$.c"]
    assert paths([1, 2], [1]) == ["$[1]"]
    assert paths(float("nan"), float("nan")) == []


def test_ignore_paths_work_on_nested_lists_of_dataclasses():
    old = Order("o-1", [Line("a", "e1"), Line("b", "e2")])
    new = Order("o-2", [Line("a", "x1"), Line("c", "x2")])
    assert paths(old, new) == ["$.id", "$.lines[0].etag", "$.lines[1].sku", "$.lines[1].etag"]
    assert paths(old, new, ignore=("$.id", "$.lines[*].etag")) == ["$.lines[1].sku"]
    assert paths(old, new, ignore=("$.id", "$.lines[*].etag", "$.lines[1]")) == []
    assert paths({"m": {"k": [{"t": 1}]}}, {"m": {"k": [{"t": 2}]}}, ignore=("$['m'].*[*].t",)) == []


def test_pydantic_models_compare_through_model_dump():
    pydantic = pytest.importorskip("pydantic")

    class Answer(pydantic.BaseModel):
        id: str
        total: int

    assert paths(Answer(id="1", total=5), Answer(id="2", total=5), ignore=("$.id",)) == []
    assert paths(Answer(id="1", total=5), Answer(id="1", total=6)) == ["$.total"]


def test_compare_clean_and_error_rules():
    assert paths("Hello ", "hello", clean=lambda s: s.strip().lower()) == []
    assert paths(1.0, 1.05, compare=lambda a, b: abs(a - b) < 0.1) == []
    assert paths(1.0, 2.0, compare=lambda a, b: abs(a - b) < 0.1) == ["$"]
    same = Comparator(Options())
    assert same.differences(Outcome(error=KeyError("x")), Outcome(error=KeyError("x"))) == []
    assert [d.path for d in same.differences(Outcome(error=KeyError("x")), Outcome(error=KeyError("y")))] == [
        ERROR_PATH]
    assert [d.path for d in same.differences(Outcome(1), Outcome(error=ValueError()))] == [ERROR_PATH]
    by_type = Comparator(Options(compare_errors=lambda a, b: type(a) is type(b)))
    assert by_type.differences(Outcome(error=KeyError("x")), Outcome(error=KeyError("y"))) == []


def test_bad_ignore_paths_are_refused_where_the_handle_is_made():
    with pytest.raises(ValueError, match=r"must start with \$"):
        Options(ignore=("id",))
    with pytest.raises(ValueError, match="cannot read path"):
        compile_path("$.items[?x]")


def test_verdict_sets_the_raw_rate_against_the_noise_rate():
    assert verdict(1000, 1000, 100, 100) == NOISE  # differs as often between two legacy runs
    assert verdict(1000, 10, 100, 0) == MISMATCH  # 1% against none
    assert verdict(1000, 10, 0, 0) == MISMATCH  # no noise sample: nothing to cancel
    assert verdict(1000, 110, 1000, 100) == NOISE  # 11% against 10%: within the relative threshold
    assert verdict(1_000_000, 2, 1000, 0) == NOISE  # 0.0002% is below the absolute threshold
    assert verdict(1000, 110, 1000, 100, relative=0.01) == MISMATCH


def test_a_random_legacy_field_is_noise_and_a_field_differing_in_one_percent_is_a_mismatch():
    import random
    import uuid

    log = ComparisonLog(window=10.0)
    comparator = Comparator(Options())
    rng = random.Random(7)
    for i in range(5000):
        legacy = {"id": str(uuid.uuid4()), "total": i}
        candidate = {"id": str(uuid.uuid4()), "total": i + 1 if rng.random() < 0.01 else i}
        again = {"id": str(uuid.uuid4()), "total": i} if i % 10 == 0 else None
        noise = None if again is None else comparator.differences(Outcome(legacy), Outcome(again))
        log.record("m", "s", comparator.differences(Outcome(legacy), Outcome(candidate)), noise,
                   relative=0.2, absolute=0.0003)
    rows, _ = log.collect(everything=True)
    # The records may straddle a window boundary (a slow machine): rows of one path add up across windows.
    by_path: dict[str, dict[str, int]] = {}
    for r in rows:
        add_counts(by_path.setdefault(r.path, {}), r.counts)
    totals = by_path[""]
    assert totals["compared"] == 5000 and totals["noise_compared"] == 500

    def judged(path):
        row = by_path[path]
        return verdict(totals["compared"], row.get("differing", 0), totals["noise_compared"],
                       row.get("noise_differing", 0))

    assert judged("$.id") == NOISE
    assert 20 < by_path["$.total"]["differing"] < 80 and judged("$.total") == MISMATCH


def test_the_runner_drops_work_when_full_and_never_queues_without_bound():
    gate = threading.Event()
    done = []
    runner = ShadowRunner(threads=2, max_pending=3, timeout=5.0)
    accepted = [runner.submit(lambda p, slot: (gate.wait(5), done.append(p)), i) for i in range(20)]
    # At most three wait; the two workers may or may not have taken theirs out of the queue yet.
    assert 3 <= sum(accepted) <= 5 and accepted[:3] == [True] * 3 and not any(accepted[6:])
    gate.set()
    cancelled = runner.close(drain=5.0)
    assert len(done) + cancelled == sum(accepted), "every accepted run is either done or cancelled by close"
    assert not [t for t in threading.enumerate() if t.name.startswith("crossfade-shadow")]


def test_a_hung_run_is_claimed_as_a_timeout_once():
    hung = []
    release = threading.Event()
    runner = ShadowRunner(threads=1, max_pending=1, timeout=0.05, on_hang=hung.append)
    slots = []
    runner.submit(lambda p, slot: (slots.append(slot), release.wait(5)), "payload")
    deadline = time.monotonic() + 5
    while not hung and time.monotonic() < deadline:
        time.sleep(0.02)
        runner.sweep()
    assert hung == ["payload"] and runner.sweep() == 0
    assert runner.claim_timeout(slots[0]) is False
    release.set()
    runner.close(drain=5.0)


def test_wait_returns_once_every_run_handed_over_before_it_has_finished():
    gate = threading.Event()
    done = []
    runner = ShadowRunner(threads=3, max_pending=100, timeout=30.0)
    try:
        for i in range(20):
            assert runner.submit(lambda p, slot: (gate.wait(10), done.append(p)), i)
        assert runner.wait(0.05) is False and len(done) == 0, "the runs are held at the gate: not finished"
        gate.set()
        assert runner.wait(10.0) is True
        assert sorted(done) == list(range(20)), "wait returned with every earlier run done"
        # A wait that gave up leaves the runner working, and a later one still sees the runs before it.
        assert runner.submit(lambda p, slot: done.append(p), 20) and runner.wait(10.0) and done[-1] == 20
    finally:
        gate.set()
        runner.close()


def test_workers_start_one_at_a_time_never_all_on_the_first_call():
    """A spec asking for many threads must not start them all on the request path of one call."""
    release = threading.Event()
    runner = ShadowRunner(threads=64, max_pending=1000, timeout=5.0)
    try:
        assert runner.submit(lambda payload, slot: release.wait(5), None)
        assert len(runner._workers) == 1
        for _ in range(10):
            runner.submit(lambda payload, slot: release.wait(5), None)
        assert 1 < len(runner._workers) <= 11
    finally:
        release.set()
        runner.close()
