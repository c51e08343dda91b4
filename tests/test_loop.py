"""The controller loop on real backends: leases, two controllers at once, and kill -9 at random points."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time

import crossfade
from crossfade.backends.sql import SQLBackend
from crossfade.events import fold, verify
from crossfade.loop import ControllerLoop


class ManualClock:
    """A clock the test moves by hand."""

    def __init__(self, now: float) -> None:
        self.t = now

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float, stop: threading.Event) -> None:
        self.t += seconds


def test_a_lease_is_held_renewed_expires_and_is_released(backend_url):
    backend = SQLBackend(backend_url)
    assert backend.acquire_lease("controller:m", "a", 30, now=100.0)
    assert not backend.acquire_lease("controller:m", "b", 30, now=110.0)
    assert backend.acquire_lease("controller:m", "a", 30, now=120.0)  # renewed until 150
    assert not backend.acquire_lease("controller:m", "b", 30, now=149.0)
    assert backend.acquire_lease("controller:m", "b", 30, now=151.0)  # a's lease expired
    backend.release_lease("controller:m", "a")  # not a's any more: nothing happens
    assert not backend.acquire_lease("controller:m", "a", 30, now=152.0)
    backend.release_lease("controller:m", "b")
    assert backend.acquire_lease("controller:m", "a", 30, now=153.0)
    backend.close()


def test_many_leases_are_taken_at_once_each_as_it_would_be_alone(backend_url):
    backend = SQLBackend(backend_url)
    assert backend.acquire_lease("controller:x", "b", 30, now=100.0)
    assert backend.acquire_leases({"controller:m": 30, "controller:x": 30, "controller:y": 5}, "a",
                                  now=110.0) == {"controller:m", "controller:y"}  # x is b's until 130
    # a renews its own (y even after it expired), and takes x once b's lease has expired
    assert backend.acquire_leases({"controller:m": 30, "controller:x": 30, "controller:y": 30}, "a",
                                  now=131.0) == {"controller:m", "controller:x", "controller:y"}
    assert not backend.acquire_lease("controller:x", "b", 30, now=140.0)
    assert backend.acquire_leases({"controller:x": 30}, "b", now=140.0) == set()
    assert backend.lease_holders("controller:", 140.0) == ["a"]
    assert backend.acquire_leases({}, "a", now=140.0) == set()
    backend.close()


def test_two_holders_taking_the_same_leases_at_once_never_both_win_one(backend_url):
    backends = [SQLBackend(backend_url) for _ in range(2)]
    names = {f"controller:m{i}": 30.0 for i in range(1200)}  # more than one statement's worth
    won: dict[str, set[str]] = {}
    go = threading.Barrier(2)

    def take(holder, backend):
        go.wait()
        won[holder] = backend.acquire_leases(names, holder, 100.0)

    threads = [threading.Thread(target=take, args=(h, b)) for h, b in zip("ab", backends)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not won["a"] & won["b"] and won["a"] | won["b"] == set(names)
    for backend in backends:
        backend.close()


def _healthy_traffic(cf, name, n=400):
    mig = cf.migration(name)
    for i in range(n):
        mig.run(f"user-{i}", lambda: "legacy", lambda: "candidate")
    cf.flush(everything=True)


SPEC = {
    "name": "m",
    "stages": [{"traffic": "20%", "hold": "1s"}, {"traffic": "50%", "hold": "1s"}, {"traffic": "100%"}],
    "gates": {"error_rate": {"max_increase": "5%"}},
    "analysis": {"interval": "1s"},
}


def test_two_controllers_on_one_backend_exactly_one_acts(backend_url):
    clock = ManualClock(time.time())
    with crossfade.Client(backend_url, clock=clock.now, background=False) as cf:
        cf.apply(SPEC)
        cf.migration("m").start()
        backend = cf.backend()
        a = ControllerLoop(backend, clock=clock, holder="a")
        b = ControllerLoop(backend, clock=clock, holder="b")
        for _ in range(8):
            cf.refresh()
            _healthy_traffic(cf, "m")
            clock.t += 1.0
            first, second = (a, b) if random.random() < 0.5 else (b, a)
            first.tick()
            second.tick()
        events = cf.migration("m").history()
    # Never both at once: the lease lets one act. Once each has seen the other, the migration is the
    # assignee's alone: the actor changes at most once (the hand-over when the second replica appears).
    actors = [e.actor for e in events if e.actor.startswith("controller")]
    assert sum(1 for x, y in zip(actors, actors[1:]) if x != y) <= 1
    assert [e.type for e in events if e.type != "verdict"][-2:] == ["promoted", "promoted"]
    assert fold("m", events).status == "completed"


def test_a_loop_that_lets_go_hands_the_lease_over_at_once(sqlite_url):
    clock = ManualClock(1_000_000.0)
    with crossfade.Client(sqlite_url, clock=clock.now, background=False) as cf:
        cf.apply(SPEC)
        cf.migration("m").start()
        a = ControllerLoop(cf.backend(), clock=clock, holder="a")
        b = ControllerLoop(cf.backend(), clock=clock, holder="b")
        assert a.tick()[0].skipped is None
        assert all(t.skipped for t in b.tick())  # a holds it (or b leaves it to a, its replica)
        a.release()
        clock.t += 1.0
        assert b.tick()[0].skipped is None


def test_an_operator_change_between_read_and_append_is_not_overwritten(sqlite_url):
    clock = ManualClock(1_000_000.0)
    with crossfade.Client(sqlite_url, clock=clock.now, background=False) as cf:
        cf.apply(SPEC)
        mig = cf.migration("m")
        mig.start()
        _healthy_traffic(cf, "m")
        backend = cf.backend()
        stale = backend.state("m")
        mig.pause("incident elsewhere")
        clock.t += 2.0
        tick = ControllerLoop(backend, clock=clock).tick_one(stale, clock.t)
        assert tick.events == () and "conflict" in tick.skipped
        assert mig.state().status == "paused"


def _transitions_are_single(events):
    """Within each attempt, stages only move forward one at a time: no transition was doubled or lost."""
    attempt_stages: list[int] = []
    for e in events:
        if e.type in ("started", "restarted"):
            attempt_stages = [e.payload["stage_index"]]
        elif e.type == "promoted":
            assert e.payload["stage_index"] == attempt_stages[-1] + 1, f"promotion #{e.seq} skips or repeats"
            attempt_stages.append(e.payload["stage_index"])


def test_kill_9_at_random_points_loses_and_doubles_nothing(tmp_path):
    url = f"sqlite:///{tmp_path / 'cf.db'}"
    spec = {
        "name": "k",
        "stages": [{"traffic": f"{t}%", "hold": "300ms"} for t in (5, 10, 20, 30, 40, 50, 60, 70, 80, 90)]
        + [{"traffic": "100%"}],
        "gates": {"error_rate": {"max_increase": "20%"}},
        "analysis": {"interval": "100ms"},
    }
    rng = random.Random(2024)
    stop = threading.Event()
    with crossfade.Client(url, refresh=0.05, window=0.1) as cf:
        cf.apply(spec)
        mig = cf.migration("k")
        mig.start()

        def traffic():
            i = 0
            while not stop.is_set():
                mig.run(f"user-{i % 5000}", lambda: "legacy", lambda: "candidate")
                i += 1
                if i % 200 == 0:
                    time.sleep(0.005)

        generator = threading.Thread(target=traffic, daemon=True)
        generator.start()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        command = [sys.executable, "-m", "crossfade", "run-controller", "--url", url, "--poll", "0.05"]
        try:
            # Bounded by progress, not by a count of kills: each controller is killed at a random point after
            # it has written 1 to 4 events of its own, so however slowly a loaded machine starts it, every
            # life moves the migration, and the test ends after 10 promotions (and at least 10 kills).
            kills, promotions = 0, 0
            while kills < 10 or promotions < 10:
                kills += 1
                state = mig.state()
                if state.status == "completed":  # keep the controller busy: another attempt
                    mig.rollback("test: next attempt")
                    mig.restart()
                    state = mig.state()
                controller = subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                                              stderr=subprocess.DEVNULL, text=True)
                assert controller.stdout.readline().startswith("controller ")
                goal = state.seq + rng.randint(1, 4)
                deadline = time.monotonic() + 60
                while mig.state().seq < goal and mig.state().status != "completed":
                    assert time.monotonic() < deadline, f"controller #{kills} wrote nothing for 60 s"
                    time.sleep(0.02)
                time.sleep(rng.uniform(0.0, 0.1))
                controller.send_signal(signal.SIGKILL)
                controller.wait()
                controller.stdout.close()
                promotions = sum(e.type == "promoted" for e in mig.history())
        finally:
            stop.set()
            generator.join()
        backend = cf.backend()
        events = backend.events("k")
        state = backend.state("k")
    assert sum(e.type == "promoted" for e in events) >= 10  # the controller really worked between kills
    assert fold("k", events) == state
    assert verify(events, head=(state.seq, state.head)) is None
    _transitions_are_single(events)


def _shadow_run(url, candidate_fails):
    spec = {
        "name": "s",
        "stages": [{"name": "shadow", "traffic": "0%", "shadow": "100%"}, {"traffic": "50%"}, {"traffic": "100%"}],
        "gates": {"error_rate": {"max_increase": "2%"}, "mismatch_rate": {"max": "5%"}},
        "shadow": {"max_pending": 5000},
    }
    with crossfade.connect(url, refresh=3600) as cf:
        cf.apply(spec)
        mig = cf.migration("s")
        mig.start()

        def candidate(i):
            if candidate_fails and i % 4 == 0:
                raise RuntimeError("candidate bug")
            return {"total": i}

        for i in range(2000):
            assert mig.run(i, lambda i: {"total": i}, candidate, i) == {"total": i}
        deadline = time.monotonic() + 30
        # shadow_compared is counted after a run is recorded (shadow_runs when it starts).
        while cf.stats()["shadow_compared"] < 2000 and time.monotonic() < deadline:
            time.sleep(0.02)
        cf.flush(everything=True)
        ControllerLoop(cf.backend()).tick()
        cells = {w.arm: w.cell for w in cf.backend().windows("s")}
        return mig.state(), mig.history(), cells


def test_a_shadow_stage_is_judged_on_the_shadow_runs_and_left_when_healthy(sqlite_url):
    state, _, cells = _shadow_run(sqlite_url, candidate_fails=False)
    assert cells["candidate"].calls == 2000 and cells["candidate"].compared == 2000
    assert (state.status, state.stage) == ("running", "stage-2")


def test_a_shadow_stage_rolls_back_a_candidate_that_fails_in_the_shadow(sqlite_url):
    state, events, cells = _shadow_run(sqlite_url, candidate_fails=True)
    assert cells["candidate"].errors == 500
    assert state.status == "rolled_back"
    assert "candidate error rate +25.00 pp" in events[-1].reason


def test_replicas_share_the_migrations_and_take_over_a_dead_ones_share(backend_url):
    from crossfade.client import Client
    from crossfade.loop import REPLICA_TTL

    t0 = 1_800_000_000.0
    with Client(backend_url, clock=lambda: t0, background=False) as cf:
        for i in range(40):
            cf.apply({**SPEC, "name": f"tool-{i}"})
            cf.migration(f"tool-{i}").start()
    clock = ManualClock(t0 + 1)
    a = ControllerLoop(SQLBackend(backend_url), clock=clock, holder="replica-a")
    b = ControllerLoop(SQLBackend(backend_url), clock=clock, holder="replica-b")
    try:
        a.tick()  # alone so far: it takes everything
        b.tick()  # b joins: it waits for the leases of its share, which a hands over once it sees b
        clock.t += 1
        a.tick()
        b.tick()
        clock.t += 1
        first = {t.migration for t in a.tick() if t.skipped is None}
        second = {t.migration for t in b.tick() if t.skipped is None}
        assert not first & second and len(first | second) == 40
        assert 10 <= len(first) <= 30, (len(first), len(second))  # an even share, give or take the hash
        # b dies without a word: once its replica lease and its migrations' leases expire, a takes all.
        clock.t += max(REPLICA_TTL, 3 * 1.0) + 1
        taken = {t.migration for t in a.tick() if t.skipped is None}
        assert len(taken) == 40
    finally:
        for loop in (a, b):
            loop.backend.close()


def test_a_pass_takes_its_leases_at_once_and_writes_no_roll_up_that_would_take_nothing(backend_url):
    import sqlalchemy as sa

    from crossfade.client import Client
    from crossfade.spec import load_spec
    from crossfade.stagedata import detail_horizon
    from crossfade.telemetry import Cell, Window

    t0 = 1_800_000_000.0
    spec = {**SPEC, "stages": [{"name": "canary", "traffic": "20%", "hold": "30d"}, {"traffic": "100%"}]}
    with Client(backend_url, clock=lambda: t0, background=False) as cf:
        for i in range(12):
            cf.apply({**spec, "name": f"tool-{i}"})
            cf.migration(f"tool-{i}").start()
    backend = SQLBackend(backend_url)
    cell = Cell()
    cell.calls = 10
    backend.write_windows([Window(f"tool-{i}", "canary", arm, t0, 10.0, cell)
                           for i in range(12) for arm in ("legacy", "candidate")])
    statements: list[str] = []
    sa.event.listen(backend.engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    clock = ManualClock(t0 + 1)
    loop = ControllerLoop(backend, clock=clock, holder="a")
    try:
        for _ in range(2):  # the first look at each stage, then its news
            statements.clear()
            assert len([t for t in loop.tick() if t.skipped is None]) == 12
            leases = [s for s in statements if "crossfade_leases" in s]
            # its own heartbeat (a read and a write), who is alive, and every migration's lease at once: not a
            # statement per migration
            assert len(leases) <= 4, leases
            # no window is near the horizon yet: a roll-up would take nothing, so none is written
            assert not [s for s in statements if "crossfade_rollups" in s and not s.lstrip().startswith("SELECT")]
            clock.t += 1
        # once the windows are past the horizon, the pass rolls them up after all
        clock.t = t0 + detail_horizon(load_spec(spec)) + 20
        loop.tick()
        with backend.engine.connect() as conn:
            assert conn.scalar(sa.text("SELECT COUNT(*) FROM crossfade_telemetry WHERE rolled = 0")) == 0
    finally:
        backend.close()


def test_no_promotion_until_every_router_verifies_and_a_rollback_is_retried_until_it_does(sqlite_url):
    from tests.routers.kube_api import serve

    with serve() as (api, url):
        spec = {**SPEC, "routers": [{"gateway_api": {"parent": "public", "server": url,
                                                     "legacy": {"name": "v1", "port": 80},
                                                     "candidate": {"name": "v2", "port": 80}}}]}
        clock = ManualClock(time.time())
        api.accept_routes = False  # no gateway serves the route yet
        with crossfade.Client(sqlite_url, clock=clock.now, background=False) as cf:
            cf.apply(spec)
            mig = cf.migration("m")
            mig.start()
            loop = ControllerLoop(cf.backend(), clock=clock, holder="a")
            for _ in range(6):
                cf.refresh()
                _healthy_traffic(cf, "m")
                clock.t += 1.0
                ticks = loop.tick()
            state = mig.state()
            assert state.stage_index == 0, "promoted although the router never verified the weight"
            assert "no gateway has accepted this generation" in ticks[-1].assessment.waiting_for
            failed = [e for e in mig.history() if e.type == "router_failed"]
            assert len(failed) == 1, "one event per distinct failure, not one per tick"
            assert failed[0].payload["candidate"] == 0.2 and failed[0].payload["router"] == "gateway_api"
            assert state.routers == (("gateway_api", "failed", 0.2, failed[0].reason),)

            api.accept_routes = True
            for _ in range(3):
                cf.refresh()
                _healthy_traffic(cf, "m")
                clock.t += 1.0
                loop.tick()
            assert mig.state().stage_index >= 1
            synced = [e for e in mig.history() if e.type == "router_synced"]
            assert synced[0].payload["candidate"] == 0.2 and synced[0].payload["verification"] == "verified"

            # A rollback while the API is down is retried at every poll until the route says 0%.
            stop_api_writes = api.interfere
            stop_api_writes(10_000)
            mig.rollback("test: roll back while the API refuses writes")
            for _ in range(3):
                clock.t += 0.5
                loop.tick()
            assert mig.state().routers[0][1] == "failed"
            assert "still conflicting" in mig.state().routers[0][3]
            api.interfere(0)
            clock.t += 0.5
            loop.tick()
            assert mig.state().routers[0][:3] == ("gateway_api", "verified", 0.0)
            route = api.get("httproutes", "m")
            assert [r["weight"] for r in route["spec"]["rules"][-1]["backendRefs"]] == [10_000, 0]


def test_an_unreachable_metric_source_holds_the_stage_says_so_once_and_recovers(sqlite_url):
    from typer.testing import CliRunner

    from crossfade.cli import app

    down = {**SPEC, "source": {"prometheus": {"url": "http://127.0.0.1:1", "timeout": "1s", "queries": {
        "calls": 'requests_total{arm="$arm"}', "errors": 'errors_total{arm="$arm"}'}}}}
    cf = crossfade.connect(sqlite_url)
    cf.apply(down)
    mig = cf.migration("m")
    mig.start()
    cf.refresh()

    def failing():
        raise RuntimeError("candidate down")

    # Stored telemetry that would roll the candidate back, were it the source the spec names.
    for i in range(400):
        try:
            mig.run(f"user-{i}", lambda: "legacy", failing)
        except RuntimeError:
            pass
    cf.flush(everything=True)
    backend = SQLBackend(sqlite_url)
    clock = ManualClock(time.time() + 5)
    loop = ControllerLoop(backend, clock=clock, holder="a")
    first = loop.tick()
    assert [e.type for t in first for e in t.events] == ["source_failed"]
    assert "cannot be read" in first[0].events[0].reason and "holding" in first[0].skipped
    clock.t += 10
    assert [e.type for t in loop.tick() for e in t.events] == []  # said once per outage, and still holding
    assert backend.state("m").status == "running" and backend.state("m").verdicts == ()
    assert "Connection refused" in backend.state("m").source_error
    # Another loop (a restart) knows from the state that the outage was already said.
    assert [e.type for t in ControllerLoop(backend, clock=clock, holder="a").tick() for e in t.events] == []
    shown = CliRunner().invoke(app, ["status", "m", "--url", sqlite_url])
    assert shown.exit_code == 0 and "metric source prometheus failed" in shown.output
    assert "no promotion, no rollback" in shown.output
    # The spec now reads the stored telemetry: the source answers, and the evidence rolls the candidate back.
    cf.apply(SPEC)
    clock.t += 10
    events = [e.type for t in loop.tick() for e in t.events]
    assert events[0] == "source_recovered" and "rolled_back" in events
    assert backend.state("m").source_error is None
    assert verify(backend.events("m")) is None
    backend.close()
    cf.close()


# -- the notification outbox ---------------------------------------------------------------------------


def _notifying(spec, receiver, **target):
    return {**spec, "notify": [{"name": "hook", "webhook": {"url": receiver.url + "/hook", "secret_env": "HOOK_KEY"},
                                **target}]}


def test_a_receiver_down_for_an_hour_gets_every_notification_after(sqlite_url, receiver, monkeypatch):
    from crossfade.backends.outbox import DELIVERED, PENDING
    from crossfade.loop import BACKOFF_CAP, NotificationOutbox

    monkeypatch.setenv("HOOK_KEY", "k")
    clock = ManualClock(1_000_000.0)
    with crossfade.Client(sqlite_url, clock=clock.now, background=False) as cf:
        cf.apply(_notifying(SPEC, receiver))
        mig = cf.migration("m")
        mig.start()
        mig.pause("incident elsewhere")
        mig.resume()
        mig.rollback("bad answers reported")
        outbox = NotificationOutbox(cf.backend(), clock=clock)
        receiver.down = True
        outage_ends = clock.t + 3600
        while clock.t < outage_ends:
            outbox.pump()
            clock.t += 30
        pending = outbox.store.list(status=PENDING)
        assert {(d.kind, d.seq) for d in pending} == {("paused", 3), ("rolled_back", 5)}
        # Doubling from 5 s, capped at 5 min: about 16 tries in the hour, not 120.
        assert all(12 <= d.attempts <= 20 and "answered 503" in d.last_error for d in pending)
        receiver.down = False
        back = clock.t
        while len(outbox.store.list(status=DELIVERED)) < 2:
            outbox.pump()
            clock.t += 30
            assert clock.t - back <= BACKOFF_CAP + 30, "not delivered within one capped backoff of the return"
    keys = {headers["Idempotency-Key"] for _, headers, _ in receiver.received}
    assert keys == {d.key for d in pending}


def test_queueing_twice_sends_once_and_old_history_is_not_replayed(backend_url, receiver, monkeypatch):
    from crossfade.loop import NotificationOutbox

    monkeypatch.setenv("HOOK_KEY", "k")
    clock = ManualClock(1_000_000.0)
    with crossfade.Client(backend_url, clock=clock.now, background=False) as cf:
        cf.apply(SPEC)
        mig = cf.migration("m")
        mig.start()
        mig.rollback("before anyone was told")
        mig.restart()
        cf.apply(_notifying(SPEC, receiver, events=["rolled_back"]))  # notify: added after the first rollback
        mig.pause("not subscribed")
        mig.rollback("after")
        a = NotificationOutbox(cf.backend(), clock=clock, holder="a")
        b = NotificationOutbox(cf.backend(), clock=clock, holder="b")
        assert a.enqueue(clock.t) == 1
        assert b.enqueue(clock.t) == 0
        assert len(a.deliver(clock.t)) == 1 and b.deliver(clock.t) == []  # b does not hold the notifier lease
    [(_, headers, body)] = receiver.wait_for(1)
    assert b'"reason": "after"' in body and headers["Idempotency-Key"].startswith("m:7:")


def test_a_test_message_reaches_a_target_and_an_unknown_one_is_named(sqlite_url, receiver, monkeypatch):
    import pytest

    from crossfade.loop import NotificationOutbox
    from crossfade.notify import UnknownTarget

    monkeypatch.setenv("HOOK_KEY", "k")
    with crossfade.Client(sqlite_url, background=False) as cf:
        cf.apply(_notifying(SPEC, receiver))
        outbox = NotificationOutbox(cf.backend())
        outbox.test("m", "hook")
        with pytest.raises(UnknownTarget, match="m has no notify target 'slack'; its targets: hook"):
            outbox.test("m", "slack")
        outbox.pump()
    [(_, _, body)] = receiver.wait_for(1)
    assert b"crossfade test notification for m to hook" in body


def test_a_loop_reads_into_the_telemetry_reader_it_is_given(sqlite_url):
    # A control plane's controller and API share one reader, so an operator's promote reads only the rows
    # flushed since the controller's last look. Shown with a store that loses its rows after the look: the
    # reader the loop was given holds what the loop read, and a reader of its own finds nothing.
    import sqlalchemy as sa

    from crossfade.spec import load_spec
    from crossfade.stagedata import StageTelemetry

    clock = ManualClock(1_000_000.0)
    with crossfade.Client(sqlite_url, clock=clock.now, background=False) as cf:
        cf.apply(SPEC)
        cf.migration("m").start()
        _healthy_traffic(cf, "m")
        backend = cf.backend()
        shared = StageTelemetry()
        assert ControllerLoop(backend, clock=clock, telemetry=shared).tick()[0].skipped is None
        with backend.engine.begin() as conn:
            conn.execute(sa.text("DELETE FROM crossfade_telemetry"))
        state = backend.state("m")
        spec = load_spec(backend.spec("m", state.spec_version))
        assert sum(w.cell.calls for w in shared.windows(backend, state, spec, clock.t)) == 400
        assert StageTelemetry().windows(backend, state, spec, clock.t) == []
