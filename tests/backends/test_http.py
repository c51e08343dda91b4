"""The SDK over the HTTP backend against a real control plane: same behaviour, no database credentials."""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path

import pytest

import crossfade
from crossfade.routing import CANDIDATE, LEGACY, bucket

SPAWN = multiprocessing.get_context("spawn")
STAGES = [{"name": "canary", "traffic": "30%"}, {"name": "all", "traffic": "100%"}]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def wait_until(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"condition not met within {timeout}s"
        time.sleep(0.02)


def test_connect_to_a_control_plane_runs_the_same_sdk_with_a_token(control_plane):
    operator = crossfade.connect(control_plane.url, token=control_plane.tokens["operator"], refresh=0.2)
    event = operator.apply({"name": "m", "stages": STAGES})
    assert event.actor == "operator-user"  # the server sealed it: the actor is the token's name
    mig = operator.migration("m")
    assert mig.start("go").actor == "operator-user"
    assert mig.state().stage == "canary" and [e.type for e in mig.history()] == ["applied", "started"]
    app = crossfade.connect(control_plane.url, token=control_plane.tokens["sdk"], refresh=0.2)
    handle = app.migration("m")
    keys = range(200)
    answers = [handle.run(k, lambda: LEGACY, lambda: CANDIDATE) for k in keys]
    assert answers == [CANDIDATE if bucket("m", k) < 3000 else LEGACY for k in keys]
    app.flush(everything=True)
    stored = control_plane.backend.windows("m")
    assert sum(w.cell.calls for w in stored) == 200  # telemetry went through the API into the store
    assert sum(w.cell.calls for w in operator.migration("m").windows()) == 200
    with pytest.raises(crossfade.BackendError, match="role sdk"):
        handle.pause()  # an sdk token routes and reports; moving migrations takes an operator
    app.close()
    operator.close()


def test_errors_come_back_as_the_sdks_own_exceptions(control_plane):
    cf = crossfade.connect(control_plane.url, token=control_plane.tokens["operator"])
    with pytest.raises(crossfade.SpecError) as bad:
        cf.apply({"name": "m", "stages": [{"traffic": "10%"}, {"traffic": "5%"}]}, actor=None)
    assert "traffic" in str(bad.value)
    with pytest.raises(crossfade.UnknownMigration):
        cf.migration("nope").start()
    cf.apply({"name": "m", "stages": STAGES})
    cf.migration("m").start()
    with pytest.raises(crossfade.TransitionError, match="already running"):
        cf.migration("m").start()
    cf.close()


def test_an_absent_server_means_legacy_and_never_an_exception_in_the_caller(tmp_path):
    from conftest import start_control_plane

    plane, stop = start_control_plane(f"sqlite:///{tmp_path / 'cf.db'}")
    operator = crossfade.connect(plane.url, token=plane.tokens["operator"])
    operator.apply({"name": "m", "stages": [{"traffic": "100%"}]})
    operator.migration("m").start()
    operator.close()
    app = crossfade.Client(plane.url, token=plane.tokens["sdk"], refresh=0.05, stale_after=0.5)
    mig = app.migration("m")
    wait_until(lambda: mig.decide("k").arm == CANDIDATE)
    stop()
    assert mig.run("k", lambda: "legacy", lambda: "candidate") == "candidate"  # the last table keeps serving
    wait_until(lambda: mig.decide("k").arm == LEGACY)  # then legacy, after stale_after
    assert mig.run("k", lambda: "legacy", lambda: "candidate") == "legacy"
    assert app.stats()["stale"] and app.stats()["refresh_failures"] > 0
    app.close()
    # Never reachable at all: legacy from the first call.
    lost = crossfade.connect("http://127.0.0.1:9", token="cf_x")
    assert lost.migration("m").run("k", lambda: "legacy", lambda: "candidate") == "legacy"
    with pytest.raises(crossfade.BackendUnavailable):
        lost.migration("m").start()
    lost.close()


def test_the_token_comes_from_the_environment(control_plane, monkeypatch):
    monkeypatch.setenv("CROSSFADE_URL", control_plane.url)
    monkeypatch.setenv("CROSSFADE_TOKEN", control_plane.tokens["sdk"])
    with crossfade.connect() as cf:
        assert cf.migrations() == []
        with pytest.raises(crossfade.BackendError, match="role sdk"):
            cf.apply({"name": "m", "stages": STAGES})


def test_leases_and_token_writes_stay_on_the_server(control_plane):
    from crossfade.backends.http import HTTPBackend

    backend = HTTPBackend(control_plane.url, token=control_plane.tokens["admin"])
    with pytest.raises(crossfade.BackendError, match="controller runs inside"):
        backend.acquire_lease("controller:m", "me", 3, time.time())
    with pytest.raises(crossfade.BackendError, match="token create"):
        backend.create_token("x", "viewer", "0" * 64, time.time())
    assert {t.name for t in backend.tokens()} == {"viewer-user", "sdk-user", "operator-user", "admin-user"}
    assert all(t.hash == "" for t in backend.tokens())  # hashes never leave the server
    backend.close()


def _app_host(url: str, token: str, keys: list[str], ready, report) -> None:
    """An app process on the HTTP backend: says when its candidate keys route to the candidate, then reports
    the wall-clock time at which it first sees all of them on legacy."""
    client = crossfade.connect(url, token=token)  # default refresh: 1 s, plus the long poll
    mig = client.migration("m")
    while not all(mig.decide(k).arm == CANDIDATE for k in keys):
        time.sleep(0.001)
    ready.put(os.getpid())
    while any(mig.decide(k).arm == CANDIDATE for k in keys):
        time.sleep(0.001)
    report.put(time.time())
    client.close()


def test_a_rollback_reaches_two_app_processes_within_two_seconds(control_plane):
    operator = crossfade.connect(control_plane.url, token=control_plane.tokens["operator"])
    operator.apply({"name": "m", "stages": STAGES})
    operator.migration("m").start()
    keys = [k for k in (f"user-{i}" for i in range(500)) if bucket("m", k) < 3000][:20]
    ready, report = SPAWN.Queue(), SPAWN.Queue()
    hosts = [SPAWN.Process(target=_app_host, args=(control_plane.url, control_plane.tokens["sdk"], keys, ready,
                                                   report)) for _ in range(2)]
    for host in hosts:
        host.start()
    try:
        for _ in hosts:
            ready.get(timeout=60)
        time.sleep(0.5)  # let each host's long poll settle into waiting
        rolled_back_at = time.time()
        operator.migration("m").rollback("measured propagation")
        seen = [report.get(timeout=10) - rolled_back_at for _ in hosts]
    finally:
        for host in hosts:
            host.join(timeout=10)
            if host.is_alive():
                host.kill()
        operator.close()
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "rollback_propagation.txt").write_text(
        "rollback reached app processes after: " + ", ".join(f"{s * 1000:.0f} ms" for s in seen) + "\n")
    assert max(seen) < 2.0, seen


def test_an_operation_whose_answer_is_lost_is_re_read_not_reported_failed(control_plane):
    """The server writes the pause, the connection is cut before the answer: the SDK re-reads and finds it."""
    from conftest import Proxy

    operator = crossfade.connect(control_plane.url, token=control_plane.tokens["operator"], refresh=3600)
    operator.apply({"name": "m", "stages": STAGES})
    operator.migration("m").start()
    operator.close()
    proxy = Proxy(int(control_plane.url.rsplit(":", 1)[1]))
    try:
        cf = crossfade.connect(f"http://127.0.0.1:{proxy.port}", token=control_plane.tokens["operator"],
                               refresh=3600)
        proxy.swallow = 1
        event = cf.migration("m").pause("hold on")
        assert proxy.swallow == 0 and event.type == "paused" and event.actor == "operator-user"
        assert [e.type for e in control_plane.backend.events("m")].count("paused") == 1
        cf.close()
    finally:
        proxy.close()


def test_an_operation_that_cannot_be_re_read_is_unknown_never_failed(control_plane, monkeypatch):
    from typer.testing import CliRunner

    from conftest import Proxy
    from crossfade.cli import app

    operator = crossfade.connect(control_plane.url, token=control_plane.tokens["operator"], refresh=3600)
    operator.apply({"name": "m", "stages": STAGES})
    operator.migration("m").start()
    operator.close()
    proxy = Proxy(int(control_plane.url.rsplit(":", 1)[1]))
    try:
        monkeypatch.setenv("CROSSFADE_TOKEN", control_plane.tokens["operator"])
        # The answer is lost, and the control plane stays out of reach for the re-read.
        proxy.swallow, proxy.then_refuse = 1, True
        result = CliRunner().invoke(app, ["pause", "m", "--url", f"http://127.0.0.1:{proxy.port}", "--reason", "x"])
        assert result.exit_code == 3, result.output
        assert result.output.startswith("unknown:") and "re-read" in result.output
        assert "error" not in result.output.lower().split("(")[0]
    finally:
        proxy.close()
