"""The client: fork safety of its engine, connections and locks, its recorder's exact counts, no credential in
any log line, and telemetry that waits for a control plane through its restarts."""

from __future__ import annotations

import logging
import os
import select
import signal
import threading

import pytest

import crossfade
from crossfade.telemetry import merge_windows

pytestmark = pytest.mark.skipif(not hasattr(os, "fork") or not hasattr(os, "pidfd_open"),
                                reason="fork and pidfd_open are Linux-only")

CHILD_DEADLINE_S = 60.0


def _exited_within(pid: int, deadline: float) -> int | None:
    """The child's exit status once it ends, or None (after killing it) if it runs past `deadline` seconds."""
    fd = os.pidfd_open(pid)
    try:
        ready, _, _ = select.select([fd], [], [], deadline)
    finally:
        os.close(fd)
    if not ready:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        return None
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def test_two_hundred_forks_of_a_busy_sqlite_client_never_hang(tmp_path):
    # The parent's refresh thread reads the database every 10 ms and another thread keeps calling, so forks land
    # while the parent's threads are inside SQLite, its pool or crossfade's own locks.
    url = f"sqlite:///{tmp_path / 'cf.db'}"
    cf = crossfade.Client(url, refresh=0.01, window=0.05)
    cf.apply({"name": "m", "stages": [{"traffic": "50%"}, {"traffic": "100%"}]})
    mig = cf.migration("m")
    mig.start(actor="test")
    stop = threading.Event()

    parent_calls = [0]

    def caller() -> None:
        while not stop.is_set():
            mig.run(parent_calls[0], lambda: "l", lambda: "c")
            parent_calls[0] += 1

    busy = threading.Thread(target=caller)
    busy.start()
    hung, failed, children = 0, 0, 200
    try:
        for _ in range(children):
            pid = os.fork()
            if pid == 0:  # the child: its own calls, flushed through its own engine and thread
                code = 1
                try:
                    for i in range(5):
                        mig.run(i, lambda: "l", lambda: "c")
                    cf.close()
                    code = 0
                finally:
                    os._exit(code)
            status = _exited_within(pid, CHILD_DEADLINE_S)
            hung += status is None
            failed += status not in (None, 0)
    finally:
        stop.set()
        busy.join()
    cf.close()
    assert (hung, failed) == (0, 0)
    # Every child's five calls reached the store beside the parent's own, none lost, none doubled.
    with crossfade.Client(url, background=False) as reader:
        cells = merge_windows(reader.backend().windows("m"))
    assert sum(c.calls for c in cells.values()) == parent_calls[0] + 5 * children


def test_processes_flush_each_at_its_own_point_of_the_window(tmp_path):
    """Hundreds of app processes close their windows at the same instants; each flushes at its own offset
    into the next window, so the writes reach the store spread over the window, not in one burst."""
    from crossfade.client import Client

    url = f"sqlite:///{tmp_path / 'cf.db'}"
    now = [1_800_000_000.0]
    first_writes = []
    for seed in range(20):
        with Client(url, clock=lambda: now[0], background=False, window=10.0) as cf:
            cf.apply({"name": f"m{seed}", "stages": [{"traffic": "50%"}, {"traffic": "100%"}]})
            cf.migration(f"m{seed}").start()
            cf._tick()  # the first look flushes at once
            cf.migration(f"m{seed}").run("k", lambda: 1, lambda: 1)
            # Walk through the next two windows in 0.5 s steps: the window closes at +10 s; when is it written?
            start = now[0]
            written = None
            while written is None and now[0] < start + 25:
                now[0] += 0.5
                cf._tick()
                if cf.backend().windows(f"m{seed}"):
                    written = now[0] - start
            assert written is not None and 11 <= written <= 19.5  # closed at 10 s, collected 1 s later, + offset
            first_writes.append(written)
            now[0] = start + 100
    # Twenty processes flushed at many different points of the window, not all in its first second.
    assert len({round(w) for w in first_writes}) >= 5


def test_no_password_reaches_a_log_line_or_an_error(caplog):
    url = "postgresql://app:hunter2-s3cret@127.0.0.1:1/db?sslpassword=hunter3"
    with caplog.at_level(logging.DEBUG):
        client = crossfade.connect(url, refresh=0.05)
        mig = client.migration("m")
        assert mig.run("k", lambda: "legacy", lambda: "candidate") == "legacy"
        try:
            mig.start()
        except crossfade.BackendUnavailable as exc:
            error = str(exc)
        client.close()
    text = caplog.text + error + repr(client.url) + str(client.stats())
    assert "hunter2" not in text and "hunter3" not in text
    assert "app:***@127.0.0.1:1" in caplog.text


def test_telemetry_waits_out_three_server_restarts_and_is_counted_once(sqlite_url):
    """The control plane goes away three times while the host keeps serving calls; nothing is lost or
    doubled once it is back."""
    from conftest import start_control_plane, wait_until

    from crossfade.server import serve_in_background

    plane, stop = start_control_plane(sqlite_url)
    port = int(plane.url.rsplit(":", 1)[1])
    operator = crossfade.connect(plane.url, token=plane.tokens["operator"], refresh=3600)
    operator.apply({"name": "m", "stages": [{"traffic": "50%"}, {"traffic": "100%"}]})
    operator.migration("m").start()
    operator.close()
    host = crossfade.connect(plane.url, token=plane.tokens["sdk"], refresh=3600, window=0.2)
    mig = host.migration("m")
    calls = 0
    try:
        # The server tells its hosts of the start just after answering it: the host may first see the draft.
        wait_until(lambda: mig.decide(0).stage == "stage-1")
        for _ in range(3):
            for i in range(50):
                mig.run(i, lambda: "l", lambda: "c")
            calls += 50
            stop()  # the server goes down with windows unsent
            for i in range(50):
                mig.run(i, lambda: "l", lambda: "c")
            calls += 50
            for _ in range(8):  # many more ticks than the old retry budget of 5
                host.flush(everything=True)
            assert host.stats()["pending_windows"] > 0 and host.stats()["dropped_windows"] == 0
            _, stop = serve_in_background(plane.backend, port)
        host.flush(everything=True)
        assert host.stats()["pending_windows"] == 0 and host.stats()["dropped_calls"] == 0
        assert sum(w.cell.calls for w in plane.backend.windows("m")) == calls
    finally:
        host.close()
        stop()
        plane.backend.close()


def test_a_drafts_calls_are_not_filed_and_its_first_stage_is(sqlite_url):
    """A draft has no stage: its calls go to legacy unrecorded, never as windows the backend must refuse."""
    host = crossfade.connect(sqlite_url, refresh=3600, window=0.2)
    try:
        host.apply({"name": "m", "stages": [{"traffic": "50%"}, {"traffic": "100%"}]})
        mig = host.migration("m")
        assert mig.decide(0).stage == ""
        assert [mig.run(i, lambda: "l", lambda: "c") for i in range(20)] == ["l"] * 20
        assert host.flush(everything=True) == 0
        mig.start()
        for i in range(20):
            mig.run(i, lambda: "l", lambda: "c")
        assert host.flush(everything=True) > 0
        assert sum(w.cell.calls for w in host.backend().windows("m")) == 20
        assert host.stats()["rejected_windows"] == 0
    finally:
        host.close()
