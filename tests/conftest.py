"""Shared fixtures: real SQLite files and throwaway PostgreSQL databases for the backend tests.

Nothing heavy is imported at module level: some tests check what `import crossfade` pulls in.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest


def pytest_configure(config: pytest.Config) -> None:
    """Hypothesis judges no test by its speed: on a loaded machine (CI runners often are) drawing inputs and
    running an example take longer, and that is not what the tests check."""
    from hypothesis import HealthCheck, settings

    settings.register_profile("loaded", deadline=None, suppress_health_check=[HealthCheck.too_slow])
    settings.load_profile("loaded")


def loose(value: object) -> object:
    """`value` with its floats compared up to rounding (sums added in another order), in dicts, lists and tuples."""
    if isinstance(value, dict):
        return {k: loose(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(loose(v) for v in value)
    return pytest.approx(value, nan_ok=True) if isinstance(value, float) else value


def wait_until(condition, timeout: float = 30.0, every: float = 0.02) -> None:
    """Poll until `condition()` is true; fails the test after `timeout` seconds (a deadline, not a timing)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(every)


POSTGRES_URL = os.environ.get("CROSSFADE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def _libpq(url: str) -> str:
    """The URL as psycopg takes it (no `+driver` suffix in the scheme)."""
    parts = urlsplit(url)
    return parts._replace(scheme="postgresql").geturl()


@pytest.fixture(scope="session")
def _postgres_server() -> str:
    """The PostgreSQL server URL, once checked reachable; skips (fails on CI) when it is not."""
    import time

    # A loaded machine can take seconds to accept a connection: a server that answers within 30 s is there.
    deadline = time.monotonic() + 30
    while True:
        try:
            import psycopg

            psycopg.connect(_libpq(POSTGRES_URL), connect_timeout=10, autocommit=True).close()
            return POSTGRES_URL
        except Exception as e:  # noqa: BLE001 - any failure to connect means the same to the suite
            if not isinstance(e, ImportError) and time.monotonic() < deadline:
                time.sleep(1)  # the next attempt, not a wait on timing: the loop ends at the deadline
                continue
            message = f"PostgreSQL not reachable at URL: {POSTGRES_URL} ({e})"
            if os.environ.get("CI") == "true":
                pytest.fail(message)
            pytest.skip(message)


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    """A SQLite URL naming a file that does not exist yet, in the test's temporary directory."""
    return f"sqlite:///{tmp_path / 'crossfade.db'}"


@pytest.fixture
def postgres_url(_postgres_server: str) -> Iterator[str]:
    """The URL of a new, empty PostgreSQL database, dropped after the test."""
    import psycopg

    name = f"cf_{uuid.uuid4().hex[:16]}"
    admin = _libpq(_postgres_server)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield urlsplit(_postgres_server)._replace(path=f"/{name}").geturl()
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgres"])
def backend_url(request) -> str:
    """A URL of a fresh, empty store: a SQLite file, then a PostgreSQL database."""
    return request.getfixturevalue(f"{request.param}_url")


class ControlPlane:
    """A running control plane on loopback over a real SQLite file, with one token per role."""

    def __init__(self, url: str, backend, tokens: dict[str, str], app_factory) -> None:
        self.url = url
        self.backend = backend
        self.tokens = tokens
        self.app_factory = app_factory

    def call(self, method: str, path: str, body=None, *, role: str | None = "operator", token: str | None = None,
             headers: dict[str, str] | None = None, timeout: float = 10.0):
        """One request with the standard library: (status, decoded JSON or text, response headers)."""
        import json
        import urllib.error
        import urllib.request

        sent = {"Accept": "application/json", **(headers or {})}
        secret = token if token is not None else (self.tokens[role] if role else None)
        if secret:
            sent["Authorization"] = f"Bearer {secret}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            sent["Content-Type"] = "application/json"
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=sent)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as resp:
                status, raw, got = resp.status, resp.read(), resp.headers
        except urllib.error.HTTPError as e:
            status, raw, got = e.code, e.read(), e.headers
        text = raw.decode()
        try:
            return status, json.loads(text) if text else None, got
        except ValueError:
            return status, text, got


def start_control_plane(url: str, *, open_reads: bool = False, programs=()):
    """Start a control plane over the store at `url` (showing `programs`); returns it and the function that
    stops it."""
    import time

    from crossfade.backends.sql import SQLBackend
    from crossfade.server import create_app, serve_in_background
    from crossfade.tokens import ROLES, new_token, token_hash

    backend = SQLBackend(url)
    tokens = {}
    for role in ROLES:
        tokens[role] = new_token()
        backend.create_token(f"{role}-user", role, token_hash(tokens[role]), time.time())
    base, stop = serve_in_background(backend, open_reads=open_reads, programs=programs)

    def stop_all() -> None:
        stop()
        backend.close()

    return ControlPlane(base, backend, tokens, lambda: create_app(backend, controller=False)), stop_all


@pytest.fixture
def control_plane(sqlite_url) -> Iterator[ControlPlane]:
    """A control plane on loopback (reads need a token), stopped after the test."""
    plane, stop = start_control_plane(sqlite_url)
    try:
        yield plane
    finally:
        stop()


class Receiver:
    """An HTTP receiver on loopback that records every POST (path, headers, body) and answers 200, or 503
    while `down` is set; a stand-in for a webhook endpoint, Slack or PagerDuty, speaking real HTTP."""

    def __init__(self) -> None:
        import http.server
        import threading

        self.received: list[tuple[str, dict[str, str], bytes]] = []
        self.down = False
        self.delay = 0.0
        self.arrived = threading.Condition()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (the standard library's name)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if receiver.down:
                    self.send_response(503)
                    self.end_headers()
                    return
                with receiver.arrived:
                    receiver.received.append((self.path, dict(self.headers.items()), body))
                    receiver.arrived.notify_all()
                # A slow answer widens the window in which a sender can die after the receiver got the request.
                threading.Event().wait(receiver.delay)
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait_for(self, count: int, timeout: float = 60.0) -> list[tuple[str, dict[str, str], bytes]]:
        """Wait (on a condition, with a deadline) until `count` requests arrived; returns them all."""
        with self.arrived:
            self.arrived.wait_for(lambda: len(self.received) >= count, timeout=timeout)
            return list(self.received)

    def close(self) -> None:
        """Stop listening."""
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A recording HTTP receiver on loopback."""
    r = Receiver()
    try:
        yield r
    finally:
        r.close()


@pytest.fixture
def metrics_text(control_plane, receiver, monkeypatch) -> str:
    """/metrics of a control plane with one running migration whose every series has a sample: both arms'
    calls, errors, timeouts, cost, compared answers, latency and a custom metric, its gates, and a notification."""
    import threading
    import time

    from crossfade.telemetry import Cell

    monkeypatch.setenv("HOOK_KEY", "k")
    # The hour's hold keeps the controller from promoting it to its last stage (which has no gates) meanwhile.
    spec = {"stages": [{"name": "canary", "traffic": "20%", "hold": "1h"}, {"name": "all", "traffic": "100%"}],
            "notify": [{"name": "hook", "webhook": {"url": receiver.url, "secret_env": "HOOK_KEY"}}],
            "metrics": {"tokens": {"kind": "mean", "max_ratio": 1.5}}}
    assert control_plane.call("PUT", "/v1/migrations/m", {"spec": spec})[0] == 200
    assert control_plane.call("POST", "/v1/migrations/m/start", {"reason": "go"})[0] == 200
    windows = []
    for arm, errors in (("candidate", 3), ("legacy", 1)):
        cell = Cell()
        cell.calls, cell.errors, cell.timeouts, cell.compared, cell.mismatches = 400, errors, 2, 100, 4
        for i in range(400):
            cell.latency.add(0.004 + i * 1e-5)
            cell.add_cost(0.002)
            cell.metric("tokens", 800 + i % 7)
        windows.append({"migration": "m", "stage": "canary", "arm": arm, "start": time.time(), "length": 10.0,
                        "cell": cell.to_dict()})
    assert control_plane.call("POST", "/v1/telemetry", {"windows": windows}, role="sdk")[0] == 200
    assert control_plane.call("POST", "/v1/notifications/test", {"migration": "m", "target": "hook"})[0] == 200
    deadline = time.monotonic() + 60
    while not control_plane.call("GET", "/v1/migrations/m/state", role="viewer")[1]["verdicts"]:
        assert time.monotonic() < deadline, "the controller recorded no verdict within a minute"
        threading.Event().wait(0.05)  # the controller's thread writes it; nothing to wait on across HTTP
    status, text, _ = control_plane.call("GET", "/metrics", role="viewer")
    assert status == 200
    return text


class Proxy:
    """A TCP relay on loopback in front of an HTTP server, that a test can make misbehave: swallow the answers
    to the next `swallow` POST or PUT requests (the server acted, the caller never hears; with `then_refuse`,
    the relay then refuses every new connection), refuse new connections, or freeze (a peer that hangs)."""

    def __init__(self, port: int) -> None:
        import socket
        import threading

        self.target = port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.swallow = 0
        self.then_refuse = False
        self.refuse = False
        self.frozen = threading.Event()
        self._closed = False
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket
        import threading

        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.refuse:
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                client.close()
                continue
            seen: dict[str, bytes] = {}
            threading.Thread(target=self._pipe, args=(client, upstream, False, seen), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, True, seen), daemon=True).start()

    def _pipe(self, source, sink, answers: bool, seen: dict[str, bytes]) -> None:
        import time

        try:
            while True:
                data = source.recv(65536)
                while self.frozen.is_set() and not self._closed:
                    time.sleep(0.05)  # a hung peer: nothing moves until the test thaws it
                if not data:
                    break
                if not answers and data[:4] in (b"GET ", b"POST", b"PUT ", b"HEAD"):
                    seen["method"] = data.split(b" ", 1)[0]
                if answers and seen.get("method") in (b"POST", b"PUT"):
                    with self._lock:
                        cut = self.swallow > 0
                        self.swallow -= cut
                        self.refuse = self.refuse or (cut and self.then_refuse)
                    if cut:
                        break
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.close()
                except OSError:
                    pass

    def close(self) -> None:
        """Stop accepting; relays under way end with their sockets."""
        self._closed = True
        self.frozen.clear()
        self.listener.close()
