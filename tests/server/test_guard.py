"""The server's outer wall attacked over real sockets: bodies before authentication, oversized and trickled
bodies, idle sockets against a descriptor limit, and the web surface's headers, docs and Host checks."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest


def raw(plane, request: bytes, *, timeout: float = 10.0) -> bytes:
    """Send bytes on a fresh connection and return what the server answers before closing or going quiet."""
    port = int(plane.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data or len(data) < data.find(b"\r\n\r\n") + 4 + _length(data):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        return data


def _length(data: bytes) -> int:
    for line in data.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":")[1])
    return 0


def head(method: str, path: str, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def test_a_huge_body_without_a_token_is_refused_before_it_is_sent(control_plane):
    # Only the head is sent: a server that read the body first would wait for 40 MB that never come.
    answer = raw(control_plane, head("POST", "/v1/telemetry", {"Content-Length": str(40 * 2**20),
                                                               "Content-Type": "application/json"}))
    assert answer.startswith(b"HTTP/1.1 401") and b"Bearer" in answer
    wrong = raw(control_plane, head("PUT", "/v1/migrations/m", {"Content-Length": str(40 * 2**20),
                                                                 "Authorization": "Bearer cf_wrong"}))
    assert wrong.startswith(b"HTTP/1.1 401")


def test_bodies_above_the_routes_cap_are_refused_even_with_a_token(control_plane):
    token = {"Authorization": f"Bearer {control_plane.tokens['operator']}", "Content-Type": "application/json"}
    for method, path, size in (("POST", "/v1/telemetry", 9 * 2**20), ("PUT", "/v1/migrations/m", 2 * 2**20),
                               ("POST", "/v1/migrations/m/pause", 100_000), ("POST", "/v1/decide", 20_000)):
        answer = raw(control_plane, head(method, path, {**token, "Content-Length": str(size)}))
        assert answer.startswith(b"HTTP/1.1 413"), (path, answer[:80])
    # Without a Content-Length (chunked), the count stops at the cap.
    chunk = b"x" * 65536
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(3)) + b"0\r\n\r\n"
    answer = raw(control_plane, head("POST", "/v1/decide", {**token, "Transfer-Encoding": "chunked"}) + body)
    assert answer.startswith(b"HTTP/1.1 413")
    status, _, _ = control_plane.call("POST", "/v1/decide", {"migration": "m", "key": "k"}, role="sdk")
    assert status == 200  # an ordinary body still goes through


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def test_idle_sockets_cannot_starve_a_server_with_few_descriptors(tmp_path):
    """300 idle connections against a server limited to 256 descriptors: it keeps answering."""
    import resource

    port = _free_port()
    code = ("import sys; from crossfade.server import serve, Limits; "
            "serve(sys.argv[1], port=int(sys.argv[2]), limits=Limits(header_timeout=2))")

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))

    log = tmp_path / "server.log"  # a file, not a pipe nobody drains, which could block the server's writes
    server = subprocess.Popen([sys.executable, "-c", code, f"sqlite:///{tmp_path / 'cf.db'}", str(port)],
                              preexec_fn=limit, stdout=subprocess.DEVNULL, stderr=log.open("wb"))
    idle: list[socket.socket] = []
    try:
        deadline = time.monotonic() + 60
        while not _healthy(port):
            assert server.poll() is None, log.read_text()[-2000:]
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.1)
        for _ in range(300):
            try:
                idle.append(socket.create_connection(("127.0.0.1", port), timeout=5))
            except OSError:
                break
        deadline = time.monotonic() + 30
        while not _healthy(port):
            assert server.poll() is None, "the server died"
            assert time.monotonic() < deadline, "idle sockets starved the server"
            time.sleep(0.1)
        # A trickle of header bytes does not hold a connection past the deadline either.
        slow = socket.create_connection(("127.0.0.1", port), timeout=10)
        slow.sendall(b"GET /healthz HTTP/1.1\r\n")
        slow.settimeout(10)
        assert slow.recv(1) == b""  # closed by the server without an answer
        slow.close()
        assert server.poll() is None
        assert "Too many open files" not in log.read_text()  # it never ran out of descriptors
    finally:
        for s in idle:
            s.close()
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=30)
            raise AssertionError("the server did not stop on SIGTERM within 30 s:\n" + log.read_text()[-2000:])


def test_every_answer_carries_a_content_security_policy_and_refuses_framing(control_plane):
    for path, role in (("/", None), ("/static/app.js", None), ("/v1/migrations", "viewer"), ("/healthz", None),
                       ("/v1/migrations", None)):
        _, _, headers = control_plane.call("GET", path, role=role)
        policy = headers["Content-Security-Policy"]
        assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy, path
        assert headers["X-Frame-Options"] == "DENY" and headers["X-Content-Type-Options"] == "nosniff"


def test_no_third_party_script_is_served_and_the_cdn_docs_are_gone(control_plane):
    assert control_plane.call("GET", "/docs", role=None)[0] == 404
    assert control_plane.call("GET", "/redoc", role=None)[0] == 404
    assert control_plane.call("GET", "/openapi.json", role=None)[0] == 200
    page = control_plane.call("GET", "/", role=None)[1]
    dashboard = Path(__file__).resolve().parents[2] / "src" / "crossfade" / "server" / "dashboard"
    for text in (page, *(p.read_text() for p in dashboard.iterdir())):
        assert "https://" not in text and "http://" not in text and "<script>" not in text


def test_open_reads_answer_only_under_an_allowed_host_name():
    """DNS rebinding: a page on evil.example, its name re-pointed at 127.0.0.1, reads through the browser."""
    import tempfile

    from conftest import start_control_plane

    with tempfile.TemporaryDirectory() as folder:
        plane, stop = start_control_plane(f"sqlite:///{folder}/cf.db", open_reads=True)
        try:
            port = plane.url.rsplit(":", 1)[1]
            assert plane.call("GET", "/v1/migrations", role=None)[0] == 200  # Host: 127.0.0.1:port
            for host in (f"localhost:{port}", f"[::1]:{port}", "localhost"):
                assert plane.call("GET", "/v1/migrations", role=None, headers={"Host": host})[0] == 200, host
            for host in (f"evil.example:{port}", "evil.example", "127.0.0.1.evil.example", ""):
                status, body, _ = plane.call("GET", "/v1/migrations", role=None, headers={"Host": host})
                assert status == 401, host
            # A token still reads under any name (a browser on another site cannot send it).
            assert plane.call("GET", "/v1/migrations", role="viewer", headers={"Host": "evil.example"})[0] == 200
        finally:
            stop()


def test_the_demo_dashboard_binds_loopback_only(tmp_path):
    from crossfade.demo import _serve

    url, stop = _serve(f"sqlite:///{tmp_path / 'demo.db'}", 0)
    try:
        assert url.startswith("http://127.0.0.1:")
        port = int(url.rsplit(":", 1)[1])
        addresses = {a[4][0] for a in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)} - {"127.0.0.1"}
        for address in addresses:
            with pytest.raises(OSError):
                socket.create_connection((address, port), timeout=2).close()
    finally:
        stop()


@pytest.mark.skipif(os.name != "posix", reason="descriptor limits are POSIX")
def test_default_connection_cap_stays_below_the_descriptor_limit():
    import resource

    from crossfade.server.guard import default_backlog, default_max_connections

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert default_max_connections() + default_backlog() <= max(soft - 64, 32)


def test_requests_with_one_token_share_its_store_lookup_but_not_a_failed_one(tmp_path):
    # After a routing change every SDK host's long poll comes back at once, with one token.
    import asyncio

    from crossfade.backends.sql import SQLBackend
    from crossfade.server.auth import Authenticator, AuthError
    from crossfade.server.guard import authenticate
    from crossfade.tokens import new_token, token_hash

    class DistantStore(SQLBackend):
        """The SQLite store, counting its token look-ups, each as slow as a database across a network."""

        lookups = 0

        def token_by_hash(self, digest):
            self.lookups += 1
            time.sleep(0.05)  # long enough for a herd of concurrent look-ups to gather, had they been sent
            return super().token_by_hash(digest)

    store = DistantStore(f"sqlite:///{tmp_path / 'tokens.db'}")
    secret = new_token()
    store.create_token("hosts", "sdk", token_hash(secret), time.time())
    auth = Authenticator(store)

    async def at_once(authorization: str, n: int) -> list:
        return await asyncio.gather(*(authenticate(auth, authorization, "127.0.0.1", "sdk", "127.0.0.1")
                                      for _ in range(n)), return_exceptions=True)

    try:
        assert {p.name for p in asyncio.run(at_once(f"Bearer {secret}", 200))} == {"hosts"}
        assert store.lookups == 1
        refused = asyncio.run(at_once("Bearer cf_wrong", 3))
        assert all(isinstance(r, AuthError) and r.status == 401 for r in refused)
        assert store.lookups == 1 + 3  # each caller's wrong token is looked up, and counted, as its own
    finally:
        store.close()
