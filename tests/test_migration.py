"""The SDK on real backends: routing, run/arun/route/observe, fallback, operations and never breaking the caller."""

from __future__ import annotations

import asyncio
import inspect
import itertools
import multiprocessing
import os
import shutil
import sys
import threading
import time

import pytest
from conftest import wait_until

import crossfade
import crossfade.backends.sql
import crossfade.events
from crossfade.routing import CANDIDATE, LEGACY, bucket
from crossfade.telemetry import merge_windows

STAGES = [{"traffic": "10%"}, {"traffic": "50%"}, {"traffic": "100%"}]


def totals(client, name):
    client.flush(everything=True)
    return merge_windows(client.backend().windows(name))


@pytest.fixture
def cf(tmp_path):
    client = crossfade.connect(f"sqlite:///{tmp_path / 'cf.db'}", refresh=0.1)
    yield client
    client.close()


def started(cf, name="m", stages=STAGES, **spec):
    cf.apply({"name": name, "stages": stages, **spec})
    mig = cf.migration(name)
    mig.start(actor="test")
    return mig


def test_connect_uses_crossfade_url(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'env.db'}"
    monkeypatch.setenv("CROSSFADE_URL", url)
    with crossfade.connect() as client:
        assert client.url == url
    assert (tmp_path / "env.db").exists()


def test_unknown_draft_paused_and_rolled_back_migrations_route_to_legacy(cf):
    assert cf.migration("nope").decide("k").arm == LEGACY
    cf.apply({"name": "m", "stages": [{"traffic": "100%"}]})
    mig = cf.migration("m")
    assert mig.decide("k") == crossfade.Decision(LEGACY, False, "", -1, "draft")
    mig.start()
    assert mig.decide("k").arm == CANDIDATE and mig.state().status == "completed"
    mig.rollback("bad answers")
    assert mig.decide("k").arm == LEGACY


def test_a_change_through_a_handle_is_seen_by_the_next_decision(cf):
    mig = started(cf)
    key = next(k for k in range(1000) if 1000 <= bucket("m", k) < 5000)
    assert mig.decide(key).arm == LEGACY
    mig.promote(reason="canary healthy")
    assert mig.decide(key).arm == CANDIDATE
    mig.pause()
    assert mig.decide(key).arm == LEGACY
    mig.resume()
    assert mig.decide(key).arm == CANDIDATE


def test_other_clients_see_a_change_within_the_refresh_interval(tmp_path):
    url = f"sqlite:///{tmp_path / 'cf.db'}"
    with crossfade.connect(url, refresh=0.1) as a, crossfade.connect(url, refresh=0.1) as b:
        started(a, stages=[{"traffic": "100%"}])
        wait_until(lambda: b.migration("m").decide("k").arm == CANDIDATE)
        a.migration("m").rollback("regression")
        wait_until(lambda: b.migration("m").decide("k").arm == LEGACY)


def test_run_calls_the_routed_arm_and_records_it(cf):
    mig = started(cf, stages=[{"traffic": "50%"}, {"traffic": "100%"}])
    answers = [mig.run(f"user-{i}", lambda x: ("legacy", x), lambda x: ("candidate", x), i) for i in range(2000)]
    for i, (arm, x) in enumerate(answers):
        assert x == i and arm == mig.decide(f"user-{i}").arm
    cells = totals(cf, "m")
    assert cells["candidate"].calls == sum(a == "candidate" for a, _ in answers)
    assert cells["legacy"].calls == sum(a == "legacy" for a, _ in answers)
    assert cells["legacy"].latency.count == cells["legacy"].calls


def test_a_legacy_exception_reaches_the_caller_unchanged_and_counts_as_an_error(cf):
    mig = started(cf, stages=[{"traffic": "100%"}], deny=["vip"])
    boom = KeyError("legacy's own bug")

    def legacy():
        raise boom

    with pytest.raises(KeyError) as caught:
        mig.run("vip", legacy, lambda: "never")
    assert caught.value is boom
    assert totals(cf, "m")["legacy"].errors == 1


def test_100k_calls_with_a_failing_and_hanging_candidate_never_raise_and_count_exactly(cf):
    """30% of candidate calls raise, 5% hang past the timeout: the caller only ever sees answers, and the
    recorded counts equal what the callers observed, call for call."""
    cf.close()
    client = crossfade.Client(cf.url, refresh=0.1, candidate_threads=128)
    mig = started(client, stages=[{"traffic": "100%"}], fallback={"on_error": True, "timeout": "10ms"})
    n, callers = 100_000, 8
    kind = {i: "hang" if i % 20 == 0 else "raise" if i % 10 in (1, 3, 5) else "ok" for i in range(n)}
    fell_back: list[int] = []
    escaped: list[BaseException] = []

    def candidate(i):
        if kind[i] == "hang":
            time.sleep(0.04)
        elif kind[i] == "raise":
            raise RuntimeError("candidate bug")
        return "candidate"

    def legacy(i):
        fell_back.append(i)
        return "legacy"

    def caller(block):
        for i in range(block * n // callers, (block + 1) * n // callers):
            try:
                mig.run(i, legacy, candidate, i)
            except BaseException as exc:  # noqa: BLE001 - the test is that nothing escapes
                escaped.append(exc)

    threads = [threading.Thread(target=caller, args=(b,)) for b in range(callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    cell = totals(client, "m")["candidate"]
    client.close()

    counts = {k: sum(1 for i in fell_back if kind[i] == k) for k in ("hang", "raise", "ok")}
    assert escaped == []
    assert counts["raise"] == 30_000  # every raise was answered by legacy
    # A hung call is answered by legacy, unless its caller was itself held by the scheduler until the
    # candidate's late answer had arrived, in which case that answer is used rather than wasted.
    assert counts["hang"] > 4_500
    assert cell.calls == n
    assert cell.fallbacks == cell.errors == len(fell_back)
    # A healthy call the scheduler held past the timeout is a real timeout too; a raise is never one,
    # unless the scheduler held it past the timeout before it could raise.
    assert counts["hang"] + counts["ok"] <= cell.timeouts <= counts["hang"] + counts["ok"] + counts["raise"]


def test_without_fallback_the_candidate_error_reaches_the_caller(cf):
    mig = started(cf, stages=[{"traffic": "100%"}], fallback={"on_error": False})

    def candidate():
        raise ValueError("new code bug")

    with pytest.raises(ValueError, match="new code bug"):
        mig.run("k", lambda: "legacy", candidate)
    cell = totals(cf, "m")["candidate"]
    assert (cell.errors, cell.fallbacks) == (1, 0)


def test_a_saturated_candidate_pool_falls_back_at_once(tmp_path):
    client = crossfade.Client(f"sqlite:///{tmp_path / 'cf.db'}", candidate_threads=2)
    mig = started(client, stages=[{"traffic": "100%"}], fallback={"timeout": "5s"})
    release = threading.Event()
    blockers = [threading.Thread(target=mig.run, args=(i, lambda: "legacy", release.wait)) for i in range(2)]
    for t in blockers:
        t.start()
    wait_until(lambda: client._slots._value == 0)
    started_at = time.monotonic()
    assert mig.run("k", lambda: "legacy", lambda: "candidate") == "legacy"
    assert time.monotonic() - started_at < 5  # it did not wait for the 5 s timeout
    release.set()
    for t in blockers:
        t.join()
    assert totals(client, "m")["candidate"].timeouts == 1
    client.close()


def test_arun_falls_back_on_candidate_errors_and_cancels_on_timeout(cf):
    mig = started(cf, stages=[{"traffic": "100%"}], fallback={"timeout": "50ms"}, deny=["d"])
    cancelled = []

    async def legacy(x):
        return ("legacy", x)

    async def slow(x):
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(x)
            raise

    async def broken(x):
        raise RuntimeError("candidate bug")

    async def ok(x):
        return ("candidate", x)

    async def main():
        assert await mig.arun("a", legacy, ok, 1) == ("candidate", 1)
        assert await mig.arun("a", legacy, broken, 2) == ("legacy", 2)
        assert await mig.arun("a", legacy, slow, 3) == ("legacy", 3)

        async def legacy_bug(x):
            raise LookupError("legacy bug")

        with pytest.raises(LookupError):
            await mig.arun("d", legacy_bug, ok, 4)

    asyncio.run(main())
    assert cancelled == [3]
    cells = totals(cf, "m")
    assert (cells["candidate"].calls, cells["candidate"].errors, cells["candidate"].timeouts) == (3, 2, 1)
    assert cells["legacy"].errors == 1


def test_route_decorates_functions_coroutines_and_methods(cf):
    mig = started(cf, stages=[{"traffic": "100%"}], deny=["legacy-user"])

    def answer_v2(question, user):
        return f"v2:{question}"

    @mig.route(candidate=answer_v2, key="user.id")
    def answer(question, user):
        """Answer a question."""
        return f"v1:{question}"

    class User:
        def __init__(self, id):
            self.id = id

    assert answer("q", User("u1")) == "v2:q"
    assert answer("q", user=User("legacy-user")) == "v1:q"
    assert answer.__name__ == "answer" and answer.__doc__ == "Answer a question."
    assert list(inspect.signature(answer).parameters) == ["question", "user"]

    class Pricing:
        def price_v2(self, cart):
            return ("v2", cart["customer"])

        @mig.route(candidate=price_v2, key=lambda self, cart: cart["customer"])
        def price(self, cart):
            return ("v1", cart["customer"])

    assert Pricing().price({"customer": "c1"}) == ("v2", "c1")
    assert Pricing().price({"customer": "legacy-user"}) == ("v1", "legacy-user")

    async def fetch_v2(user_id):
        return "v2"

    @mig.route(candidate=fetch_v2)
    async def fetch(user_id):
        return "v1"

    assert inspect.iscoroutinefunction(fetch)
    assert asyncio.run(fetch("u")) == "v2" and asyncio.run(fetch("legacy-user")) == "v1"


def test_a_failing_key_function_sends_the_call_to_legacy(cf):
    mig = started(cf, stages=[{"traffic": "100%"}])

    @mig.route(candidate=lambda user: "v2", key="user.id")
    def handler(user):
        return "v1"

    assert handler(None) == "v1"
    assert cf.stats()["key_errors"] == 1


def test_route_rejects_a_key_that_names_no_parameter(cf):
    mig = cf.migration("m")
    with pytest.raises(TypeError, match="has no parameter 'customer'"):
        mig.route(candidate=lambda cart: 1, key="customer")(lambda cart: 0)


def test_observe_records_cost_errors_and_lets_exceptions_through(cf):
    mig = started(cf, stages=[{"traffic": "100%"}])
    decision = mig.decide("k")
    with mig.observe(decision) as obs:
        obs.cost(0.002)
    with mig.observe(decision) as obs:
        obs.error()
    with pytest.raises(ZeroDivisionError), mig.observe(decision):
        1 / 0
    cell = totals(cf, "m")["candidate"]
    assert (cell.calls, cell.errors, cell.costed, cell.cost_sum) == (3, 2, 1, 0.002)


def test_operations_record_actor_and_reason_and_dry_run_writes_nothing(cf):
    mig = started(cf)
    would = mig.promote("looks good", actor="alice", dry_run=True)
    assert would.type == "promoted" and mig.state().stage == "stage-1"
    event = mig.promote("looks good", actor="alice")
    assert (event.actor, event.reason, event.payload["stage"]) == ("alice", "looks good", "stage-2")
    assert [e.type for e in mig.history()] == ["applied", "started", "promoted"]
    assert mig.history()[0].actor  # defaults to the OS user


def test_operations_on_an_unknown_migration_say_how_to_create_it(cf):
    with pytest.raises(crossfade.UnknownMigration, match="apply a spec first"):
        cf.migration("ghost").start()


def test_apply_is_idempotent_and_keeps_every_version(cf):
    spec = {"name": "m", "stages": STAGES}
    assert cf.apply(spec) is not None
    assert cf.apply(spec) is None
    changed = cf.apply({**spec, "owner": "payments"})
    assert changed.payload["version"] == 2
    assert cf.backend().spec("m", 1)["owner"] == "" and cf.backend().spec("m")["owner"] == "payments"


def test_two_writers_can_never_both_move_a_migration(tmp_path):
    url = f"sqlite:///{tmp_path / 'cf.db'}"
    with crossfade.connect(url) as a, crossfade.connect(url) as b:
        started(a)
        for _ in range(5):
            barrier = threading.Barrier(2)
            results = []

            def promote(client):
                barrier.wait()
                try:
                    results.append(client.migration("m").promote())
                except Exception as exc:  # noqa: BLE001 - every outcome is asserted on below
                    results.append(exc)

            threads = [threading.Thread(target=promote, args=(c,)) for c in (a, b)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert all(isinstance(r, crossfade.Event | crossfade.ConflictError | crossfade.TransitionError)
                       for r in results), results
            if a.migration("m").state().status == "completed":
                a.migration("m").rollback("again")
                a.migration("m").restart()
        events = a.migration("m").history()
    # Whoever read the state first, no stage was ever left twice in one attempt: a writer that lost the race
    # got ConflictError, and one that read after the winner's write promoted from the next stage.
    attempt, left = 0, set()
    for e in events:
        if e.type in ("started", "restarted"):
            attempt, left = attempt + 1, set()
        elif e.type == "promoted":
            assert e.payload["from_stage"] not in left, events
            left.add(e.payload["from_stage"])
    assert crossfade.events.verify(events) is None


def _record_in_child(url, name, n):
    client = crossfade.connect(url, refresh=0.2)
    mig = client.migration(name)
    wait_until(lambda: mig.decide("x").stage == "stage-1")
    for i in range(n):
        mig.run(f"{os.getpid()}-{i}", lambda: "l", lambda: "c")
    client.close()


@pytest.mark.parametrize("which", ["sqlite", "postgres"])
def test_four_processes_recording_into_one_backend_add_up_exactly(which, tmp_path, request):
    url = f"sqlite:///{tmp_path / 'cf.db'}" if which == "sqlite" else request.getfixturevalue("postgres_url")
    with crossfade.connect(url) as client:
        started(client, stages=[{"traffic": "30%"}, {"traffic": "100%"}])
        ctx = multiprocessing.get_context("spawn")
        procs = [ctx.Process(target=_record_in_child, args=(url, "m", 5000)) for _ in range(4)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(120)
        assert [p.exitcode for p in procs] == [0, 0, 0, 0]
        cells = totals(client, "m")
        assert cells["legacy"].calls + cells["candidate"].calls == 20_000
        assert cells["legacy"].latency.count + cells["candidate"].latency.count == 20_000


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX-only")
def test_a_forked_child_keeps_working_and_sends_only_its_own_counts(cf):
    mig = started(cf, stages=[{"traffic": "100%"}])
    for i in range(10):
        mig.run(i, lambda: "l", lambda: "c")
    pid = os.fork()
    if pid == 0:  # child: record 5 calls, flush them through its own fresh thread and backend
        try:
            for i in range(5):
                mig.run(i, lambda: "l", lambda: "c")
            cf.close()
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert totals(cf, "m")["candidate"].calls == 15


def test_when_the_sqlite_file_disappears_calls_go_on_then_turn_to_legacy_then_recover(tmp_path):
    path = tmp_path / "cf.db"
    client = crossfade.Client(f"sqlite:///{path}", refresh=0.05, stale_after=0.5)
    mig = started(client, stages=[{"traffic": "100%"}])
    saved = tmp_path / "saved.db"
    shutil.copy(path, saved)
    path.unlink()
    wait_until(lambda: client.stats()["refresh_failures"] > 0)
    assert not client.stats()["stale"] and mig.decide("k").arm == CANDIDATE  # the last table still serves
    assert mig.run("k", lambda: "legacy", lambda: "candidate") == "candidate"
    wait_until(lambda: client.stats()["stale"])
    assert mig.decide("k").reason == "routing table stale"
    assert mig.run("k", lambda: "legacy", lambda: "candidate") == "legacy"
    assert not path.exists()  # never silently re-created empty
    shutil.copy(saved, path)
    wait_until(lambda: mig.decide("k").arm == CANDIDATE)
    client.close()


class Proxy:
    """A loopback TCP proxy to PostgreSQL that the test can stop and start, as a server going away."""

    def __init__(self, target_port: int) -> None:
        import socket

        self.target_port = target_port
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.server.close()
        self.running = False
        self.sockets: list = []

    def start(self) -> None:
        import socket

        self.server = socket.create_server(("127.0.0.1", self.port))
        self.running = True
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket

        while self.running:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a, b) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.close()
                except OSError:
                    pass

    def stop(self) -> None:
        import socket

        self.running = False
        try:  # on Linux only a shutdown wakes the thread blocked in accept(); close() alone does not
            self.server.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.server.close()
        for s in self.sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
                s.close()
            except OSError:
                pass
        self.sockets = []


def test_when_postgres_goes_away_calls_go_on_then_turn_to_legacy_then_recover(postgres_url):
    from sqlalchemy.engine import make_url

    target = make_url(postgres_url)
    proxy = Proxy(target.port or 5432)
    proxy.start()
    url = target.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    client = crossfade.Client(url, refresh=0.05, stale_after=0.5)
    mig = started(client, stages=[{"traffic": "100%"}])
    proxy.stop()
    wait_until(lambda: client.stats()["refresh_failures"] > 0)
    assert mig.run("k", lambda: "legacy", lambda: "candidate") in ("candidate", "legacy")
    wait_until(lambda: client.stats()["stale"])
    assert mig.run("k", lambda: "legacy", lambda: "candidate") == "legacy"
    proxy.start()
    wait_until(lambda: mig.decide("k").arm == CANDIDATE)
    client.close()
    proxy.stop()


def test_an_unreachable_backend_at_startup_routes_to_legacy_and_never_raises(tmp_path):
    client = crossfade.connect("postgresql://postgres@127.0.0.1:1/none", refresh=0.05)
    mig = client.migration("m")
    assert mig.run("k", lambda: "legacy", lambda: "candidate") == "legacy"
    with pytest.raises(crossfade.BackendUnavailable):
        mig.start()
    client.close()


def test_telemetry_is_kept_while_the_backend_is_away_up_to_its_bound_then_the_oldest_is_dropped(tmp_path):
    path = tmp_path / "cf.db"
    now = time.time()  # a clock that stands still: every call falls in one window, however slow the machine
    client = crossfade.Client(f"sqlite:///{path}", refresh=3600, max_pending_windows=1, clock=lambda: now)
    mig = started(client, stages=[{"traffic": "100%"}])
    for i in range(7):
        mig.run(i, lambda: "l", lambda: "c")
    moved = path.rename(tmp_path / "away.db")
    for _ in range(10):  # however many ticks the outage lasts, the window waits
        assert client.flush(everything=True) == 0
    assert client.stats()["pending_windows"] == 1 and client.stats()["dropped_windows"] == 0
    mig.run(8, lambda: "l", lambda: "c")
    assert client.flush(everything=True) == 0
    assert (client.stats()["dropped_windows"], client.stats()["dropped_calls"]) == (1, 7)
    moved.rename(path)
    assert client.flush() == 1 and client.stats()["pending_windows"] == 0
    assert sum(w.cell.calls for w in client.backend().windows("m")) == 1
    client.close()


def test_import_crossfade_does_not_load_the_sql_stack_the_cli_or_a_server():
    code = ("import sys, crossfade; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'sqlalchemy', 'alembic', 'typer', 'rich', 'psycopg', 'uvicorn', 'fastapi', 'starlette', "
            "'httpx', 'prometheus_client', 'pydantic', 'anyio', 'http', 'openfeature', 'smtplib'}))")
    import subprocess

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_decide_accepts_str_int_and_uuid_keys(cf):
    import uuid

    mig = started(cf, stages=[{"traffic": "50%"}, {"traffic": "100%"}])
    u = uuid.uuid4()
    assert mig.decide(u) == mig.decide(str(u))
    assert mig.decide(12) == mig.decide("12")
    assert all(d.bucket == bucket("m", k) for k, d in zip(itertools.count(), map(mig.decide, range(100))))


class VerdictFirst(crossfade.backends.sql.SQLBackend):
    """A real SQL backend with a second writer that records a verdict just before our next append."""

    armed = False

    def append(self, migration, expected_seq, events, *, state, spec=None):
        if self.armed:
            self.armed = False
            other = self.state(migration)
            verdict = crossfade.events.Change("verdict", "error_rate PASS",
                                              {"stage": other.stage, "gates": [{"gate": "error_rate",
                                                                                "verdict": "PASS"}]})
            after, written = crossfade.events.seal(other, [verdict], actor="controller", now=time.time())
            super().append(migration, other.seq, written, state=after)
        return super().append(migration, expected_seq, events, state=state, spec=spec)


def test_a_command_is_retried_when_only_a_verdict_was_written_meanwhile(tmp_path):
    backend = VerdictFirst(f"sqlite:///{tmp_path / 'cf.db'}")
    with crossfade.Client(backend, refresh=3600) as cf:
        started(cf)
        backend.armed = True
        event = cf.migration("m").rollback("p95 doubled")
        history = cf.migration("m").history()
    assert event.type == "rolled_back" and [e.type for e in history][-2:] == ["verdict", "rolled_back"]


def test_a_command_conflicts_when_the_migration_moved_meanwhile(tmp_path):
    url = f"sqlite:///{tmp_path / 'cf.db'}"

    class PromoteFirst(crossfade.backends.sql.SQLBackend):
        armed = False

        def append(self, migration, expected_seq, events, *, state, spec=None):
            if self.armed:
                self.armed = False
                with crossfade.connect(url, refresh=3600) as other:
                    other.migration(migration).promote("someone else")
            return super().append(migration, expected_seq, events, state=state, spec=spec)

    backend = PromoteFirst(url)
    with crossfade.Client(backend, refresh=3600) as cf:
        started(cf)
        backend.armed = True
        with pytest.raises(crossfade.ConflictError):
            cf.migration("m").promote("me too")
        assert cf.migration("m").state().stage == "stage-2"


def test_the_sdk_enters_an_approval_stage_only_by_approve_or_a_recorded_force(cf):
    mig = started(cf, stages=[{"traffic": "10%", "hold": "1h"}, {"traffic": "50%", "approval": True},
                              {"traffic": "100%"}])
    with pytest.raises(crossfade.events.TransitionError, match="the hold has 1h left"):
        started(cf, "n", stages=[{"traffic": "10%", "hold": "1h"}, {"traffic": "100%"}]).promote()
    with pytest.raises(crossfade.events.TransitionError, match="needs an approval; run `crossfade approve m`"):
        mig.promote()
    with pytest.raises(crossfade.events.TransitionError, match="not awaiting approval"):
        mig.approve()
    assert mig.state().stage == "stage-1"
    event = mig.promote("deadline", force=True)
    assert (event.payload["forced"], event.payload["approval_bypassed"]) == (True, True)
    assert event.payload["unmet"] == ["the hold has 1h left"]
    assert mig.state().stage == "stage-2"
