"""Notifications from a real control plane: kill -9 of `crossfade serve` between events and their delivery,
twenty times at random points, then every notification arrives, signed, duplicates under one key; and the
notification routes (status, test) with their errors."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

import crossfade
from crossfade.notify import kinds_of, notification

SPEC = {"name": "k", "stages": [{"traffic": "10%"}, {"traffic": "50%"}, {"traffic": "100%"}]}


def signed(secret: str, header: str, body: bytes) -> bool:
    fields = dict(part.split("=", 1) for part in header.split(","))
    expected = hmac.new(secret.encode(), fields["t"].encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, fields["v1"])


def _serve(url: str, env: dict[str, str]) -> subprocess.Popen:
    server = subprocess.Popen([sys.executable, "-m", "crossfade", "serve", "--url", url, "--port", "0"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    # Kill at a random point of its work, not of its start-up: wait until uvicorn says the app started.
    for line in server.stderr:
        if "Application startup complete" in line:
            return server
    raise AssertionError(f"crossfade serve exited with {server.wait()} before starting")


@pytest.mark.timeout(900)  # 21 server start-ups on a machine shared with other test runs
def test_kill_9_between_events_and_delivery_loses_no_notification(tmp_path, receiver):
    url = f"sqlite:///{tmp_path / 'cf.db'}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "HOOK_KEY": "s3cret"}
    spec = {**SPEC, "notify": [{"name": "hook", "webhook": {"url": receiver.url + "/in", "secret_env": "HOOK_KEY"}}]}
    rng = random.Random(12)
    receiver.delay = 0.4
    with crossfade.Client(url, background=False) as cf:
        cf.apply(spec)
        mig = cf.migration("k")
        mig.start()
        for round in range(20):
            server = _serve(url, env)
            try:
                # Each round writes events that notify (rolled_back, restarted, paused, stepped_back, completed)
                # and kills the server at a random moment after: before queueing, between queueing and
                # sending, mid-send, or between sending and recording the delivery.
                state = mig.state()
                if state.status == "running" and state.stage_index == 0:
                    mig.promote()
                    mig.step_back("round %d" % round) if round % 2 else mig.pause("round %d" % round)
                elif state.status in ("paused", "running"):
                    mig.rollback(f"round {round}")
                else:
                    mig.restart()
                time.sleep(rng.uniform(0.5, 2.5))
            finally:
                server.send_signal(signal.SIGKILL)
                server.wait()
                server.stderr.close()
        events = mig.history()
    expected = {notification(e, kind, "hook").key for e in events for kind in kinds_of(e)}
    assert len(expected) >= 20
    receiver.delay = 0.0
    server = _serve(url, env)
    try:
        deadline = time.monotonic() + 120
        while {h["Idempotency-Key"] for _, h, _ in receiver.received} < expected and time.monotonic() < deadline:
            receiver.wait_for(len(receiver.received) + 1, timeout=5)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait()
        server.stderr.close()
    received = receiver.received
    keys = [h["Idempotency-Key"] for _, h, _ in received]
    assert set(keys) == expected, f"missing: {sorted(expected - set(keys))}"
    assert all(signed("s3cret", h["X-Crossfade-Signature"], body) for _, h, body in received)
    bodies: dict[str, set[bytes]] = {}
    for _, h, body in received:
        bodies.setdefault(h["Idempotency-Key"], set()).add(body)
        assert json.loads(body)["key"] == h["Idempotency-Key"]
    # A duplicate is the same notification again, under the same key, so a receiver can drop it.
    assert all(len(b) == 1 for b in bodies.values())
    print(f"{len(expected)} notifications, {len(keys)} deliveries ({len(keys) - len(expected)} duplicates)")


def test_status_and_test_routes(control_plane, receiver, monkeypatch):
    monkeypatch.setenv("HOOK_KEY", "k")
    spec = {"stages": SPEC["stages"], "notify": [{"name": "hook", "webhook": {"url": receiver.url,
                                                                               "secret_env": "HOOK_KEY"}}]}
    assert control_plane.call("PUT", "/v1/migrations/m", {"spec": spec})[0] == 200
    status, body, _ = control_plane.call("POST", "/v1/notifications/test", {"migration": "m", "target": "hook"})
    assert status == 200 and body["kind"] == "test" and body["status"] == "pending", body
    receiver.wait_for(1)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status, rows, _ = control_plane.call("GET", "/v1/notifications?migration=m", role="viewer")
        if rows[0]["status"] == "delivered":
            break
        receiver.wait_for(2, timeout=0.2)  # a bounded wait for the delivery to be recorded
    assert rows[0]["status"] == "delivered" and rows[0]["attempts"] == 1
    status, body, _ = control_plane.call("POST", "/v1/notifications/test", {"migration": "m", "target": "nope"})
    assert status == 404 and "its targets: hook" in body["error"]
    status, body, _ = control_plane.call("POST", "/v1/notifications/test", {"migration": "m", "target": "hook"},
                                         role="viewer")
    assert status == 403


def test_the_notify_commands_work_through_a_control_plane(control_plane, receiver, monkeypatch):
    from typer.testing import CliRunner

    from crossfade.cli import app

    monkeypatch.setenv("HOOK_KEY", "k")
    spec = {"stages": SPEC["stages"], "notify": [{"name": "hook", "webhook": {"url": receiver.url,
                                                                               "secret_env": "HOOK_KEY"}}]}
    assert control_plane.call("PUT", "/v1/migrations/m", {"spec": spec})[0] == 200
    runner = CliRunner(env={"CROSSFADE_TOKEN": control_plane.tokens["operator"]})
    result = runner.invoke(app, ["notify", "test", "m", "--url", control_plane.url])
    assert result.exit_code == 0 and "test message queued for hook" in result.output, result.output
    result = runner.invoke(app, ["notify", "test", "m", "--target", "pager", "--url", control_plane.url])
    assert result.exit_code == 1 and "m has no notify target 'pager'" in result.output
    receiver.wait_for(1)
    result = runner.invoke(app, ["notify", "status", "m", "--json", "--url", control_plane.url])
    assert result.exit_code == 0 and json.loads(result.output)[0]["target"] == "hook", result.output
