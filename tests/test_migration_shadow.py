"""Shadow runs, comparisons and dual writes through the SDK, on real backends."""

from __future__ import annotations

import asyncio
import logging
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest
from conftest import wait_until

import crossfade
from crossfade.routing import CANDIDATE, LEGACY
from crossfade.shadow import MISMATCH, NOISE, verdict
from crossfade.telemetry import merge_windows


def shadow_threads():
    return [t for t in threading.enumerate() if t.name.startswith("crossfade-shadow")]


def shadowing(cf, name="m", stage=None, **spec):
    stage = stage or {"traffic": "0%", "shadow": "100%"}
    cf.apply({"name": name, "stages": [stage, {"traffic": "100%"}], **spec})
    mig = cf.migration(name)
    mig.start(actor="test")
    return mig


@pytest.fixture
def cf(tmp_path):
    client = crossfade.connect(f"sqlite:///{tmp_path / 'cf.db'}", refresh=0.05)
    yield client
    client.close()


def test_failing_hanging_and_overflowing_candidates_never_reach_the_caller_and_are_counted(cf):
    mig = shadowing(cf, shadow={"timeout": "50ms", "threads": 2, "max_pending": 4})
    release = threading.Event()

    def candidate(x):
        if x % 3 == 0:
            raise RuntimeError("candidate broke")
        if x % 3 == 1:
            release.wait(5)  # hangs far past the shadow timeout
        return x

    # Legacy takes a millisecond, so the workers keep up until both hang.
    answers = [mig.run(f"k{x}", lambda x: time.sleep(0.001) or x, candidate, x) for x in range(200)]
    assert answers == list(range(200))
    wait_until(lambda: cf.stats()["shadow_timeouts"] >= 2)
    stats = cf.stats()
    assert stats["shadow_dropped"] > 0, "two threads and four places cannot take 200 slow runs"
    release.set()
    wait_until(lambda: cf.stats()["shadow_runs"] + cf.stats()["shadow_dropped"] == 200)
    wait_until(lambda: cf.stats()["shadow_compared"] + cf.stats()["shadow_timeouts"] == cf.stats()["shadow_runs"])
    stats = cf.stats()
    assert stats["shadow_errors"] >= 1 and stats["internal_errors"] == 0
    # A run is counted once: compared, or timed out (by the sweep or when it returned), never both.
    assert stats["shadow_compared"] + stats["shadow_timeouts"] == stats["shadow_runs"]
    cf.flush(everything=True)
    totals = {r.path: r for r in cf.backend().comparisons("m")}[""]
    assert (totals["dropped"], totals["timeouts"]) == (stats["shadow_dropped"], stats["shadow_timeouts"])


def test_compared_and_mismatched_counts_land_on_the_candidate_cell_for_the_gate(cf):
    mig = shadowing(cf, shadow={"max_pending": 1000})
    for x in range(100):
        assert mig.run(x, lambda x: {"v": x}, lambda x: {"v": x if x % 10 else -1}, x) == {"v": x}
    wait_until(lambda: cf.stats()["shadow_compared"] == 100)
    cf.flush(everything=True)
    cells = merge_windows(cf.backend().windows("m"))
    assert (cells[CANDIDATE].compared, cells[CANDIDATE].mismatches) == (100, 10)
    # Each shadow run is also a call of the candidate (its own errors and execution time), so a shadow
    # stage can be judged on error rate and latency as well as on mismatches.
    assert cells[CANDIDATE].calls == cells[CANDIDATE].latency.count == 100
    assert cells[LEGACY].calls == 100
    fields = {r.path: r for r in cf.backend().comparisons("m")}
    assert fields["$.v"]["differing"] == 10
    examples = cf.backend().examples("m", path="$.v")
    assert examples and examples[0].detail["diff"][0]["where"] == "$.v"


def test_noise_cancellation_end_to_end(cf):
    mig = shadowing(cf, stage={"traffic": "0%", "shadow": "100%", "noise": "20%"}, shadow={"max_pending": 5000})
    flips = set(range(0, 3000, 100))  # the candidate differs on `total` in 1% of answers

    def legacy(i):
        return {"id": str(uuid.uuid4()), "total": i}

    def candidate(i):
        return {"id": str(uuid.uuid4()), "total": -i if i in flips else i}

    for i in range(3000):
        mig.run(i, legacy, candidate, i)
    wait_until(lambda: cf.stats()["shadow_compared"] == 3000, timeout=60)
    cf.flush(everything=True)
    rows = {r.path: r for r in cf.backend().comparisons("m")}
    totals = rows[""]
    assert totals["noise_compared"] > 0

    def judged(path):
        return verdict(totals["compared"], rows[path]["differing"], totals["noise_compared"],
                       rows[path]["noise_differing"])

    assert judged("$.id") == NOISE
    assert judged("$.total") == MISMATCH


def test_shadow_legacy_compares_after_the_switch(cf):
    mig = shadowing(cf, stage={"traffic": "100%", "shadow_legacy": "100%"})
    served = []
    assert [mig.run(i, lambda i: i, lambda i: served.append(i) or i, i) for i in range(20)] == list(range(20))
    assert served == list(range(20))
    wait_until(lambda: cf.stats()["shadow_compared"] == 20)
    assert cf.stats()["shadow_mismatches"] == 0


def test_options_on_the_handle_and_per_call_site(cf):
    shadowing(cf)
    plain = cf.migration("m")
    assert cf.migration("m") is plain
    ignoring = cf.migration("m", ignore=["$.id", "$.items[*].etag"])
    assert ignoring is not plain and ignoring is cf.migration("m", ignore=["$.id", "$.items[*].etag"])
    old = {"id": 1, "items": [{"sku": "a", "etag": "x"}]}
    new = {"id": 2, "items": [{"sku": "a", "etag": "y"}]}
    ignoring.run("k", lambda: old, lambda: new)
    wait_until(lambda: cf.stats()["shadow_compared"] == 1)
    assert cf.stats()["shadow_mismatches"] == 0
    loose = plain.with_options(compare=lambda a, b: a["items"][0]["sku"] == b["items"][0]["sku"])
    loose.run("k", lambda: old, lambda: new)
    plain.run("k", lambda: old, lambda: new)
    wait_until(lambda: cf.stats()["shadow_compared"] == 3)
    assert cf.stats()["shadow_mismatches"] == 1


def test_redact_runs_on_examples_before_they_are_kept(cf):
    shadowing(cf)
    mig = cf.migration("m", redact=lambda ex: {**ex, "args": ["<redacted>"] * len(ex["args"])})
    mig.run("k", lambda card: {"ok": True}, lambda card: {"ok": False}, "4111-1111-1111-1111")
    wait_until(lambda: cf.stats()["shadow_compared"] == 1)
    cf.flush(everything=True)
    [example] = cf.backend().examples("m")
    assert example.detail["args"] == ["<redacted>"] and "4111" not in str(example.detail)


def test_a_writes_call_site_is_never_shadowed_and_says_so_once(cf, caplog):
    mig = shadowing(cf)
    candidate_calls = []
    with caplog.at_level(logging.ERROR, logger="crossfade"):

        @mig.route(candidate=lambda order: candidate_calls.append(order), writes=True)
        def save(order):
            return "saved"

        for i in range(5):
            assert save(i) == "saved"
        writer = mig.with_options(writes=True)
        assert writer.run("k", lambda: 1, lambda: candidate_calls.append("run")) == 1
    time.sleep(0.1)
    assert candidate_calls == []
    assert cf.stats()["shadow_refused_writes"] == 6 and cf.stats()["shadow_runs"] == 0
    refusals = [r for r in caplog.records if "writes=True" in r.getMessage()]
    assert len(refusals) == 2, "one error per call site, not per call"


def test_a_failing_candidate_write_never_fails_or_loses_the_legacy_write(cf):
    mig = shadowing(cf, stage={"traffic": "0%", "dual_write": True}, dual_write_retry={"attempts": 3})
    legacy_rows, tries = [], []

    def legacy_write(row):
        legacy_rows.append(row)
        return f"id-{row}"

    def candidate_write(row):
        tries.append(row)
        raise ConnectionError("new store down")

    assert [mig.write(i, legacy_write, candidate_write, i) for i in range(10)] == [f"id-{i}" for i in range(10)]
    assert legacy_rows == list(range(10)) and len(tries) == 30
    stats = cf.stats()
    assert (stats["dual_writes"], stats["dual_write_divergences"]) == (10, 10)
    cf.flush(everything=True)
    assert {r.path: r for r in cf.backend().comparisons("m")}[""]["divergent"] == 10
    assert cf.backend().examples("m", path="$write")


def test_a_failing_authoritative_write_reaches_the_caller_and_the_other_side_is_not_written(cf):
    mig = shadowing(cf, stage={"traffic": "0%", "dual_write": True})
    written = []

    def legacy_write(row):
        raise ValueError("constraint violated")

    with pytest.raises(ValueError, match="constraint violated"):
        mig.write("k", legacy_write, written.append, 1)
    assert written == []


def test_async_shadow_runs_on_the_loop_and_leaves_no_task_after_close(tmp_path):
    async def scenario():
        cf = crossfade.connect(f"sqlite:///{tmp_path / 'a.db'}", refresh=0.05)
        mig = shadowing(cf, shadow={"timeout": "50ms", "max_pending": 8})

        async def legacy(x):
            return x

        async def candidate(x):
            if x % 2:
                await asyncio.sleep(10)  # past the timeout: cancelled and counted
            return x + 1

        assert [await mig.arun(i, legacy, candidate, i) for i in range(6)] == list(range(6))
        await asyncio.sleep(0.2)
        stats = cf.stats()
        assert stats["shadow_timeouts"] == 3 and stats["shadow_compared"] == 3 and stats["shadow_mismatches"] == 3
        many = [mig.arun(i, legacy, candidate, 1) for i in range(50)]
        await asyncio.gather(*many)
        assert cf.stats()["shadow_dropped"] > 0, "at most eight pending tasks"
        await cf.aclose()
        return asyncio.all_tasks() - {asyncio.current_task()}

    assert asyncio.run(scenario()) == set()
    assert shadow_threads() == []


def test_close_leaves_no_shadow_thread(tmp_path):
    before = set(threading.enumerate())
    cf = crossfade.connect(f"sqlite:///{tmp_path / 'c.db'}", refresh=0.05)
    mig = shadowing(cf)
    for i in range(50):
        mig.run(i, lambda i: i, lambda i: time.sleep(0.001) or i, i)
    assert shadow_threads()
    cf.close()
    assert set(threading.enumerate()) <= before


def test_comparisons_round_trip_through_postgres(postgres_url):
    with crossfade.connect(postgres_url, refresh=0.05) as cf:
        mig = shadowing(cf, shadow={"examples": 3})
        for i in range(10):
            mig.run(i, lambda i: {"a": i}, lambda i: {"a": -i - 1}, i)
        wait_until(lambda: cf.stats()["shadow_compared"] == 10)
        cf.flush(everything=True)
        assert {r.path: r["differing"] for r in cf.backend().comparisons("m")} == {"": 10, "$.a": 10}
        assert len(cf.backend().examples("m", path="$.a")) == 3, "only the newest `examples` are kept"


def test_a_cost_function_records_the_cost_of_served_and_shadowed_answers(cf):
    mig = shadowing(cf, shadow={"max_pending": 1000})
    priced = cf.migration("m", cost=lambda answer: answer["tokens"] * 0.001)
    for x in range(50):
        priced.run(x, lambda x: {"tokens": 10}, lambda x: {"tokens": 30}, x)
    wait_until(lambda: cf.stats()["shadow_compared"] == 50)
    cf.flush(everything=True)
    cells = merge_windows(cf.backend().windows("m"))
    assert (cells[LEGACY].costed, round(cells[LEGACY].cost_sum, 9)) == (50, 0.5)
    assert (cells[CANDIDATE].costed, round(cells[CANDIDATE].cost_sum, 9)) == (50, 1.5)
    assert mig.options.cost is None  # the plain handle keeps its own options


def test_a_failing_cost_function_is_counted_not_raised(cf):
    mig = cf.migration("m", cost=lambda answer: answer["missing"])
    shadowing(cf)
    assert mig.run(1, lambda: {"v": 1}, lambda: {"v": 2}) == {"v": 1}
    assert cf.stats()["recording_errors"] >= 1


def test_an_idempotency_key_lets_a_dual_written_store_drop_retried_duplicates(cf):
    mig = shadowing(cf, stage={"traffic": "0%", "dual_write": True}, dual_write_retry={"attempts": 3})
    legacy_store: list[str] = []
    new_store: dict[str, str] = {}
    unkeyed: list[str] = []
    keys_seen: list[str] = []

    def legacy_write(message: str, idempotency_key: str | None = None) -> str:
        legacy_store.append(message)
        return message

    def candidate_write(message: str, idempotency_key: str | None = None) -> str:
        # The bridge: the write lands, then the answer is lost every other time, so the SDK retries it.
        keys_seen.append(idempotency_key or "")
        if idempotency_key is None:
            unkeyed.append(message)
        else:
            new_store.setdefault(idempotency_key, message)  # a unique index on the key
        if len(keys_seen) % 2:
            raise ConnectionError("answer lost")
        return message

    for i in range(20):
        mig.write(i, legacy_write, candidate_write, f"m{i}", idempotency_key=f"msg-{i}")
    assert sorted(new_store.values()) == sorted(legacy_store) and len(keys_seen) == 40
    for i in range(20):
        mig.write(i, legacy_write, candidate_write, f"u{i}")
    assert len(unkeyed) == 40  # without a key, every retried write is stored twice
    mig.write(99, legacy_write, candidate_write, "fresh", idempotency_key=True)
    assert len(keys_seen[-1]) == 32 and keys_seen[-1] == keys_seen[-2]  # one random key, reused by the retry


def test_awrite_passes_the_idempotency_key_too(cf):
    mig = shadowing(cf, stage={"traffic": "0%", "dual_write": True})
    got: list[str | None] = []

    async def write(x: int, idempotency_key: str | None = None) -> int:
        got.append(idempotency_key)
        return x

    assert asyncio.run(mig.awrite(1, write, write, 5, idempotency_key="k-1")) == 5
    assert got == ["k-1", "k-1"]


def test_a_failing_authoritative_candidate_write_is_answered_by_legacy_and_tried_again_as_the_other_side(cf):
    mig = shadowing(cf, stage={"traffic": "0%", "dual_write": True}, dual_write_retry={"attempts": 2}, allow=["k"])
    legacy_rows, tries = [], []

    def legacy_write(row, idempotency_key=None):
        legacy_rows.append((row, idempotency_key))
        return f"legacy-{row}"

    def candidate_write(row, idempotency_key=None):
        tries.append((row, idempotency_key))
        raise ConnectionError("the new path died mid-flight")

    assert mig.write("k", legacy_write, candidate_write, 1, idempotency_key="m-1") == "legacy-1"
    assert legacy_rows == [(1, "m-1")] and tries == [(1, "m-1")] * 3, "once as authoritative, twice as the other"
    assert cf.stats()["dual_write_divergences"] == 1

    async def awrite_legacy(row, idempotency_key=None):
        return legacy_write(row, idempotency_key)

    async def awrite_candidate(row, idempotency_key=None):
        return candidate_write(row, idempotency_key)

    assert asyncio.run(mig.awrite("k", awrite_legacy, awrite_candidate, 2, idempotency_key="m-2")) == "legacy-2"
    assert legacy_rows[-1] == (2, "m-2") and tries[-3:] == [(2, "m-2")] * 3
    cf.flush(everything=True)
    cells = merge_windows(cf.backend().windows("m"))
    assert (cells[CANDIDATE].calls, cells[CANDIDATE].errors, cells[CANDIDATE].fallbacks) == (2, 2, 2)


def test_without_fallback_a_failing_authoritative_candidate_write_reaches_the_caller(cf):
    mig = shadowing(cf, stage={"traffic": "0%", "dual_write": True}, fallback={"on_error": False}, allow=["k"])
    written = []

    def candidate_write(row):
        raise ConnectionError("down")

    with pytest.raises(ConnectionError):
        mig.write("k", written.append, candidate_write, 1)
    assert written == []


class VirtualClock:
    """A clock the test moves: the arms advance it by their latency, the controller loop by its interval."""

    def __init__(self) -> None:
        self.t = 1_000_000.0

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float, stop: threading.Event) -> None:
        self.t += seconds


UUID_SPEC = {
    "name": "m",
    "stages": [{"name": "shadow", "traffic": "0%", "shadow": "100%"}, {"traffic": "100%"}],
    "shadow": {"noise": "10%", "max_pending": 5000},  # once, for every shadowing stage
    "gates": {"mismatch_rate": {"max": "2%"}, "latency": {"quantile": "p95", "max_ratio": 1.2}},
    "analysis": {"interval": "1s"},
}


async def _uuid_migration(cf, clock, name, *, wrong_every: int = 0, calls: int = 3000, batch: int = 50) -> list[str]:
    """The minimal reproduction: answers carry a fresh uuid on every call of either arm, the candidate is
    faster; the controller looks after every batch. Returns the types of the events it appended."""
    from crossfade.loop import ControllerLoop

    cf.apply({**UUID_SPEC, "name": name})
    mig = cf.migration(name)
    mig.start(actor="test")
    loop = ControllerLoop(cf.backend(), clock=clock, names=[name])

    async def legacy(i):
        clock.t += 0.002
        return {"id": str(uuid.uuid4()), "answer": i}

    async def candidate(i):
        clock.t += 0.001
        wrong = wrong_every and i % wrong_every == 0
        return {"id": str(uuid.uuid4()), "answer": -i if wrong else i}

    for start in range(0, calls, batch):
        for i in range(start, start + batch):
            assert (await mig.arun(i, legacy, candidate, i))["answer"] == i
        while cf.stats()["shadow_pending"]:
            await asyncio.sleep(0)
        clock.t += 1.0
        cf.flush(everything=True)
        loop.tick()
        cf.refresh()
        if mig.state().status != "running":
            break
    return [e.type for e in mig.history()]


@pytest.fixture
def virtual(tmp_path):
    # A hundred migrations commit thousands of times: on tmpfs where there is one, so the test waits on
    # no disk flushes (it is the same SQLite file either way).
    shm = Path("/dev/shm")
    with tempfile.TemporaryDirectory(dir=shm if shm.is_dir() else tmp_path) as where:
        clock = VirtualClock()
        with crossfade.Client(f"sqlite:///{where}/cf.db", clock=clock.now, background=False, window=1.0) as cf:
            yield cf, clock


def test_a_healthy_candidate_whose_answers_carry_a_uuid_is_never_rolled_back(virtual):
    # Every comparison differs in `id`, and so does every noise sample: before the stage's noise rate was
    # known these counted as mismatches and the 2% gate rolled the candidate back in most runs.
    for run in range(100):
        events = asyncio.run(_uuid_migration(*virtual, f"m{run}"))
        assert "rolled_back" not in events and "rollback_started" not in events, f"run {run}: {events}"
        assert events[-1] == "promoted", f"run {run} never left the shadow stage: {events}"


def test_a_real_difference_beside_the_uuid_is_still_caught(virtual):
    events = asyncio.run(_uuid_migration(*virtual, "m", wrong_every=10))
    assert "rolled_back" in events or "rollback_started" in events


def test_comparisons_wait_for_the_noise_rate_and_processes_share_it(tmp_path):
    url = f"sqlite:///{tmp_path / 'cf.db'}"
    spec = {**UUID_SPEC, "shadow": {"noise": "100%", "noise_samples": 30, "max_pending": 5000}, "gates": {}}
    with crossfade.connect(url, refresh=60) as first, crossfade.connect(url, refresh=60) as second:
        first.apply(spec)
        first.migration("m").start(actor="test")
        first.refresh()
        second.refresh()
        answer = lambda: {"id": str(uuid.uuid4())}  # noqa: E731

        # The first process takes 20 noise samples: not yet enough, so nothing is judged.
        for i in range(20):
            first.migration("m").run(i, answer, answer)
        wait_until(lambda: first.stats()["shadow_compared"] == 20)
        assert first.stats()["shadow_held"] == 20 and first.stats()["shadow_mismatches"] == 0
        first.flush(everything=True)
        # The second takes 10 more: with the first's 20, read from the backend, the noise rate is known.
        for i in range(10):
            second.migration("m").run(i, answer, answer)
        wait_until(lambda: second.stats()["shadow_compared"] == 10)
        second.flush(everything=True)
        assert second.stats()["shadow_held"] == 0
        first.flush(everything=True)  # reads the second's samples: its held comparisons are judged now
        assert first.stats()["shadow_held"] == 0
        first.flush(everything=True)
        second.flush(everything=True)
        cells = merge_windows(first.backend().windows("m"))
        assert (cells[CANDIDATE].compared, cells[CANDIDATE].mismatches) == (30, 0)


def test_a_comparator_named_in_the_spec_compares_call_sites_that_pass_none(cf):
    mig = shadowing(cf, shadow={"compare": {"equal": {"ignore": ["$.id"]}}})
    mig.run("a", lambda: {"id": 1, "total": 5}, lambda: {"id": 2, "total": 5})
    mig.run("b", lambda: {"id": 1, "total": 5}, lambda: {"id": 2, "total": 6})
    wait_until(lambda: cf.stats()["shadow_compared"] == 2)
    assert cf.stats()["shadow_mismatches"] == 1


def test_wait_for_shadows_returns_with_every_shadow_run_compared(cf):
    mig = shadowing(cf, shadow={"threads": 2, "max_pending": 500})
    for i in range(300):
        mig.run(i, lambda i: i, lambda i: -i if i == 7 else i, i)
    assert cf.wait_for_shadows(timeout=30)
    stats = cf.stats()
    assert (stats["shadow_compared"], stats["shadow_mismatches"], stats["shadow_pending"]) == (300, 1, 0)


def test_await_shadows_returns_with_every_async_shadow_run_compared(cf):
    mig = shadowing(cf)

    async def legacy(i):
        await asyncio.sleep(0)
        return i

    async def calls():
        for i in range(100):
            await mig.arun(i, legacy, legacy, i)
        return await cf.await_shadows(timeout=30)

    assert asyncio.run(calls())
    assert cf.stats()["shadow_compared"] == 100
