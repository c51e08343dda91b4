"""Batch runs end to end on real databases: stages, gates, rollback with restore, retries, breaker, resume."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

import crossfade
from crossfade.backends.batch import BatchLedger
from crossfade.batch import BatchBusy, CircuitBreaker, MemoryStore, Retry, json_transform, open_store
from crossfade.routing import bucket, threshold
from tests.batch.records import SPEC, dump, seed, to_v2, valid_v2

WORKER = Path(__file__).with_name("worker.py")


def _v2(key: str, data: bytes) -> bytes:
    return to_v2(data)


@pytest.fixture
def cf(backend_url):
    client = crossfade.connect(backend_url, refresh=3600)
    yield client
    client.close()


def test_a_batch_migrates_every_record_stage_by_stage(cf, backend_url):
    original = seed(backend_url, 2000)
    report = cf.batch("records-v2", open_store(backend_url, table="records"), _v2, validate=valid_v2, spec=SPEC)
    assert report.status == "completed" and report.failed == () and report.transformed == 2000
    after = dump(backend_url)
    assert all(after[k] == to_v2(original[k]) for k in original)
    events = cf.migration("records-v2").history()
    assert [e.payload["stage"] for e in events if e.type == "promoted"] == ["half", "all"]
    # Each stage took the items whose bucket is below its threshold, as routing would for calls.
    ledger = BatchLedger(cf.backend())
    items = ledger.items("records-v2")
    canary = {k for k in original if bucket("records-v2", k) < threshold(0.20)}
    assert {k for k, r in items.items() if r.stage == "canary"} == canary
    assert ledger.snapshot_stats()["snapshots"] == 4000


def test_a_faulty_transform_is_rolled_back_at_the_first_stage_and_every_record_restored(cf, backend_url):
    original = seed(backend_url, 10_000)
    wrong = set(random.Random(3).sample(sorted(original), 300))

    def faulty(key: str, data: bytes) -> bytes:
        out = json.loads(to_v2(data))
        if key in wrong:
            out["tool"]["name"] = out["tool"]["name"].upper()  # the converter bug the validator catches
        return json.dumps(out, ensure_ascii=False).encode()

    report = cf.batch("records-v2", open_store(backend_url, table="records"), faulty, validate=valid_v2, spec=SPEC)
    assert report.status == "rolled_back"
    assert 0 < report.restored <= 2200  # only the canary's share was ever touched
    assert dump(backend_url) == original  # byte for byte, rows the batch never touched included
    history = cf.migration("records-v2").history()
    types = [e.type for e in history]
    assert "promoted" not in types and types[-2:] == ["rolled_back", "batch_restored"]
    rollback = next(e for e in history if e.type == "rolled_back")
    assert rollback.payload["from_stage"] == "canary" and "is above the allowed 1%" in rollback.reason
    assert rollback.reason.startswith("the validator refused ")


def test_transient_faults_are_retried_and_nothing_fails(cf, sqlite_url):
    store = MemoryStore({f"k{i}": json.dumps({"id": i, "version": 1, "name": f"n{i}", "title": "t",
                                              "params": []}).encode() for i in range(3000)})
    original = dict(store.items)
    rng = random.Random(5)
    lock = threading.Lock()

    def flaky(key: str, data: bytes) -> bytes:
        with lock:
            fault = rng.random() < 0.05
        if fault:
            raise ConnectionError("reset")
        return to_v2(data)

    report = cf.batch("records-v2", store, flaky, validate=valid_v2, spec=SPEC, concurrency=1000,
                      retry={ConnectionError: Retry(attempts=10, base=0.001, cap=0.01)})
    assert report.status == "completed" and report.failed == () and report.retries > 50
    assert store.items == {k: to_v2(v) for k, v in original.items()}


def test_a_second_run_of_a_batch_in_progress_is_refused_and_nothing_is_transformed_twice(cf, backend_url):
    store = MemoryStore({f"k{i}": json.dumps({"id": i, "version": 1, "name": f"n{i}", "title": "t",
                                              "params": []}).encode() for i in range(400)})
    original = dict(store.items)
    started, release = threading.Event(), threading.Event()
    seen: Counter[str] = Counter()
    lock = threading.Lock()

    def gated(key: str, data: bytes) -> bytes:
        with lock:
            seen[key] += 1
        started.set()
        assert release.wait(120), "the test never released the first run"
        return to_v2(data)

    reports: list[object] = []
    first = threading.Thread(target=lambda: reports.append(
        cf.batch("records-v2", store, gated, validate=valid_v2, spec=SPEC)))
    first.start()
    try:
        assert started.wait(120), "the first run never reached a transform"
        with crossfade.connect(backend_url, refresh=3600) as other, pytest.raises(BatchBusy, match="another process"):
            other.batch("records-v2", store, _v2)
    finally:
        release.set()
        first.join(120)
    assert len(reports) == 1 and reports[0].status == "completed" and reports[0].failed == ()
    assert store.items == {k: to_v2(v) for k, v in original.items()} and set(seen.values()) == {1}
    # The lease is given back at the end: the next run (nothing left to do) is not refused.
    assert cf.batch("records-v2", store, _v2).status == "completed"


def test_a_thousand_items_are_in_flight_at_once_with_a_coroutine_transform(cf, sqlite_url):
    import asyncio

    items = {f"k{i:04d}": b"1" for i in range(3000)}
    inside = {"now": 0, "most": 0}
    crowd: dict[str, asyncio.Event] = {}

    async def remote(key: str, data: bytes) -> bytes:
        gate = crowd.setdefault("full", asyncio.Event())
        inside["now"] += 1
        inside["most"] = max(inside["most"], inside["now"])
        if inside["now"] >= 1000:
            gate.set()
        try:
            # Each call waits until a thousand are waiting together (or, for the last few, a moment).
            await asyncio.wait_for(gate.wait(), timeout=0.5)
        except TimeoutError:
            pass
        inside["now"] -= 1
        return b"2"

    spec = {**SPEC, "stages": [{"name": "all", "traffic": "100%"}]}
    report = cf.batch("records-v2", items, remote, spec=spec, concurrency=1000)
    assert report.status == "completed" and set(items.values()) == {b"2"}
    assert inside["most"] == 1000


def test_a_slow_transform_is_rolled_back_by_a_latency_trigger(cf):
    import asyncio

    items = {f"k{i}": b"old" for i in range(400)}

    async def slow(key: str, data: bytes) -> bytes:
        await asyncio.sleep(0.03)
        return b"new"

    spec = {**SPEC, "triggers": [{"metric": "latency_p95", "above": "10ms", "min_samples": 50}]}
    report = cf.batch("records-v2", items, slow, spec=spec, concurrency=100, commit_every=50)
    assert report.status == "rolled_back" and report.restored > 0
    assert set(items.values()) == {b"old"}
    rollback = next(e for e in cf.migration("records-v2").history() if e.type == "rolled_back")
    assert rollback.reason.startswith("trigger latency_p95 > 10ms")


def test_the_breaker_stops_the_run_and_a_later_run_resumes(cf, sqlite_url):
    store = MemoryStore({f"k{i}": json.dumps({"id": i, "version": 1, "name": f"n{i}", "title": "t",
                                              "params": []}).encode() for i in range(1500)})
    down = threading.Event()
    down.set()

    def remote(key: str, data: bytes) -> bytes:
        if down.is_set():
            raise ConnectionError("service unavailable")
        return to_v2(data)

    report = cf.batch("records-v2", store, remote, spec=SPEC, retry={ConnectionError: Retry(attempts=2, base=0.001)},
                      breaker=CircuitBreaker(threshold=10, cooldown=0.01, probes=2))
    assert report.status == "paused" and "circuit breaker" in (report.stopped or "")
    assert report.transformed < 50  # it stopped trying, instead of failing every item
    down.clear()
    mig = cf.migration("records-v2")
    mig.resume("service is back")
    report = cf.batch("records-v2", store, remote)
    assert report.status == "completed"
    assert all(json.loads(v)["version"] == 2 for k, v in store.items.items() if k not in {f.key for f in report.failed})


def test_dry_run_writes_nothing_and_reports_failures(cf, sqlite_url):
    items = {f"k{i}": json.dumps({"n": i}).encode() for i in range(300)}
    before = dict(items)

    def half(d: dict) -> dict:
        if d["n"] % 100 == 7:
            raise KeyError("name")
        return {**d, "n2": d["n"] * 2}

    report = cf.batch("records-v2", items, json_transform(half), spec=SPEC, dry_run=True)
    assert items == before
    assert [f.key for f in report.failed] == ["k107", "k207", "k7"] and "KeyError" in report.failed[0].error
    assert cf.migration("records-v2").state().status == "draft"


def test_an_approval_stage_stops_the_run_until_approved(cf, sqlite_url):
    spec = {**SPEC, "stages": [{"name": "canary", "traffic": "10%"}, {"name": "all", "traffic": "100%",
                                                                     "approval": True}]}
    items = {f"k{i}": b'{"n": 1}' for i in range(500)}
    report = cf.batch("records-v2", items, json_transform(lambda d: {"n": 2}), spec=spec)
    assert report.status == "awaiting_approval" and "crossfade approve records-v2" in (report.stopped or "")
    assert 0 < sum(v == b'{"n": 2}' for v in items.values()) < 120
    cf.migration("records-v2").approve("looks right")
    report = cf.batch("records-v2", items, json_transform(lambda d: {"n": 2}))
    assert report.status == "completed" and set(items.values()) == {b'{"n": 2}'}


def test_a_spec_with_gates_that_compare_with_legacy_is_refused(cf, sqlite_url):
    spec = {"name": "plain", "stages": [{"name": "all", "traffic": "100%"}]}
    with pytest.raises(ValueError, match="gates.error_rate compares the candidate with legacy"):
        cf.batch("plain", {"a": b"1"}, lambda k, d: d, spec=spec)


def test_kill_9_at_ten_random_points_loses_nothing_and_transforms_nothing_twice(backend_url, tmp_path):
    original = seed(backend_url, 10_000)
    client = crossfade.connect(backend_url, refresh=3600)
    client.apply(SPEC)
    log = tmp_path / "transforms.log"
    rng = random.Random(11)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}  # the crossfade and tests this run imports
    kills = 0
    for point in range(10):
        # The worker stalls every transform after a random count (some recorded, some in flight) and says so;
        # the kill comes then, so ten kills fit in the records however slow the machine is.
        mark = tmp_path / f"stalled-{point}"
        proc = subprocess.Popen([sys.executable, str(WORKER), backend_url, str(log), str(point),
                                 str(rng.randint(100, 800)), str(mark)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while proc.poll() is None and not mark.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        if not mark.exists():
            proc.kill()
            _, stderr = proc.communicate(timeout=60)
            raise AssertionError(f"run {point} never reached its stall point: {stderr.decode()[-3000:]}")
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode in (0, -signal.SIGKILL), stderr.decode()[-3000:]
    final = subprocess.run([sys.executable, str(WORKER), backend_url, str(log), "99"], env=env,
                           capture_output=True, text=True, timeout=240)
    assert final.returncode == 0, final.stderr[-2000:]
    status, failed = final.stdout.split()[:2]
    assert kills == 10 and status == "completed" and failed == "0"
    after = dump(backend_url)
    # A second transform of any record would show: to_v2 refuses a v2 record, and the value would differ.
    assert after == {k: to_v2(v) for k, v in original.items()}
    runs = Counter(log.read_text().split())
    assert set(runs) == set(original)
    # A transform that was running when the process died left nothing behind (its result was never
    # recorded or written), so its item was transformed again from its original: at most the items in flight.
    again = sum(n - 1 for n in runs.values())
    assert again <= kills * 1000
    client.close()


def test_a_directory_of_json_files_becomes_toml_beside_them_and_a_rollback_removes_what_it_added(cf, tmp_path):
    from crossfade.convert import as_transform, as_validator, converter

    configs = tmp_path / "configs"
    for i in range(60):
        (configs / f"team{i % 3}").mkdir(parents=True, exist_ok=True)
        (configs / f"team{i % 3}" / f"agent{i}.json").write_text(json.dumps(
            {"model": "x", "maxTokens": 1000 + i, "permissions": {"allow": ["Edit"]}, "createdAt": "2025-01-02"}))
    (configs / "team0" / "agent0.toml").write_text("# hand-written, kept\n")
    conv = converter("json-to-toml", {"snake_case": True})
    source = open_store(str(configs), pattern="**/*.json")
    spec = {**SPEC, "stages": [{"name": "all", "traffic": "100%"}]}
    report = cf.batch("records-v2", source, as_transform(conv), target=open_store(str(configs)),
                      rename=lambda key: key.removesuffix(".json") + ".toml", validate=as_validator(conv), spec=spec)
    assert report.status == "completed" and report.written == 60
    assert "max_tokens = 1003" in (configs / "team0" / "agent3.toml").read_text()
    cf.migration("records-v2").rollback("back to JSON only")
    report = cf.batch("records-v2", source, as_transform(conv))
    assert report.restored == 60
    assert sorted(p.name for p in configs.rglob("*.toml")) == ["agent0.toml"]
    assert (configs / "team0" / "agent0.toml").read_text() == "# hand-written, kept\n"
