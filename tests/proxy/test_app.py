"""`crossfade proxy` on loopback: the seed scenario caught in the mirror stage, fallback, stickiness, bad input."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from typer.testing import CliRunner

import crossfade
from crossfade.cli import app
from crossfade.loop import ControllerLoop
from crossfade.proxy import KeySource, ProxySettings
from crossfade.proxy.run import serve_in_background

REQUESTS = 3_000


class _Quote(BaseHTTPRequestHandler):
    """A price quote service; v2 answers the wrong currency for 3 items in 100 (item % 100 < 3)."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are two writes: without this, 40 ms of delayed ACK each
    version = "v1"
    broken = False  # answers 500 to everything

    def _answer(self, status: int, payload: dict[str, object]) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - the http.server spelling
        if self.broken:
            self._answer(500, {"error": "down"})
            return
        item = int(parse_qs(urlsplit(self.path).query).get("item", ["0"])[0])
        wrong = self.version == "v2" and item % 100 < 3
        self._answer(200, {"item": item, "price": round(item * 1.25, 2), "currency": "USD" if wrong else "EUR",
                           "served_by": self.version, "served_at": time.time_ns()})

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        self._answer(500 if self.broken else 201, {"created": json.loads(self.rfile.read(length) or b"null"),
                                                   "by": self.version})

    def log_message(self, *args: object) -> None:
        pass


def _service(version: str, broken: bool = False) -> ThreadingHTTPServer:
    handler = type(f"Quote{version}", (_Quote,), {"version": version, "broken": broken})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def services() -> Iterator[dict[str, str]]:
    servers = {"v1": _service("v1"), "v2": _service("v2"), "down": _service("v2", broken=True)}
    yield {name: f"http://127.0.0.1:{s.server_port}" for name, s in servers.items()}
    for s in servers.values():
        s.shutdown()
        s.server_close()


def _wait(condition, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_the_seed_scenario_is_caught_in_the_mirror_stage_and_named_by_path(sqlite_url, services):
    spec = {"name": "quotes", "key": "X-User-Id",
            "stages": [{"name": "mirror", "traffic": 0, "shadow": "100%", "noise": "20%", "min_samples": 100},
                       {"name": "canary", "traffic": "5%"}, {"name": "all", "traffic": "100%"}],
            "gates": {"error_rate": {"max_increase": "1%"}, "mismatch_rate": {"max": "1%"}}}
    with crossfade.Client(sqlite_url, background=False) as cf:
        cf.apply(spec)
        cf.migration("quotes").start()
        cf.refresh()
        settings = ProxySettings(services["v1"], services["v2"], KeySource.parse("header:X-User-Id"))
        url, stop = serve_in_background(cf, "quotes", settings, ignore=("$.body.served_by",))
        try:
            with httpx.Client(base_url=url) as http:
                for i in range(REQUESTS):
                    r = http.get(f"/quote?item={i}", headers={"X-User-Id": f"user-{i % 500}"})
                    assert r.status_code == 200 and r.headers["x-crossfade-arm"] == "legacy"
                    assert r.json()["currency"] == "EUR" and r.json()["served_by"] == "v1"
            _wait(lambda: cf.counters["shadow_compared"] >= REQUESTS, "every mirrored request compared")
        finally:
            stop()
        cf.flush(everything=True)
        ticks = ControllerLoop(cf.backend(), holder="test").tick()
        state = cf.migration("quotes").state()

    report = json.loads(CliRunner().invoke(app, ["mismatches", "quotes", "--url", sqlite_url, "--json"]).output)
    fields = {f["path"]: f for f in report["fields"]}
    assert fields["$.body.currency"]["verdict"] == "mismatch"
    assert fields["$.body.currency"]["differing"] == REQUESTS * 3 // 100
    # served_at differs between two legacy answers too: the noise samples mark it noise, not a regression.
    assert fields["$.body.served_at"]["verdict"] != "mismatch"
    assert "$.body.served_by" not in fields  # an ignore path
    text = CliRunner().invoke(app, ["mismatches", "quotes", "--url", sqlite_url]).output
    assert "$.body.currency" in text and "'EUR' -> candidate 'USD'" in text
    # Caught in the mirror stage: the mismatch gate fails there and the candidate never serves a request.
    verdicts = {g.gate: g.verdict for g in ticks[0].assessment.judgement.gates}
    assert verdicts["mismatch_rate"] == "FAIL"
    assert state.status == "rolled_back" and "differ from legacy's" in (state.reason or "")


def test_fallback_for_idempotent_methods_only_and_sticky_keys(sqlite_url, services):
    spec = {"name": "quotes", "stages": [{"name": "half", "traffic": "50%"}, {"name": "all", "traffic": "100%"}],
            "allow": ["alice"]}
    with crossfade.Client(sqlite_url, background=False) as cf:
        cf.apply(spec)
        cf.migration("quotes").start()
        cf.refresh()
        for key_source, send in (("cookie:uid", lambda k: {"headers": {"Cookie": f"theme=dark; uid={k}"}}),
                                 ("query:user", lambda k: {"params": {"user": k}})):
            url, stop = serve_in_background(cf, "quotes", ProxySettings(services["v1"], services["v2"],
                                                                        KeySource.parse(key_source)))
            try:
                with httpx.Client(base_url=url) as http:
                    arms = {}
                    for round_ in range(3):
                        for k in range(200):
                            arm = http.get("/quote?item=5", **send(f"user-{k}")).headers["x-crossfade-arm"]
                            assert arms.setdefault(k, arm) == arm, "a key changed arm"
                    assert 70 < sum(a == "candidate" for a in arms.values()) < 130
            finally:
                stop()
        # The candidate answers 500: a GET falls back to legacy, a POST is not sent twice and gets the 500.
        url, stop = serve_in_background(cf, "quotes", ProxySettings(services["v1"], services["down"],
                                                                    KeySource.parse("header:X-User-Id")))
        try:
            with httpx.Client(base_url=url) as http:
                got = http.get("/quote?item=7", headers={"X-User-Id": "alice"})
                assert got.status_code == 200 and got.json()["served_by"] == "v1"
                posted = http.post("/orders", json={"item": 7}, headers={"X-User-Id": "alice"})
                assert posted.status_code == 500 and posted.headers["x-crossfade-arm"] == "candidate"
                keyless = http.get("/quote?item=1")
                assert keyless.status_code == 200 and keyless.headers["x-crossfade-arm"] == "legacy"
        finally:
            stop()
        # The candidate is not even listening: a connection error falls back too.
        url, stop = serve_in_background(cf, "quotes", ProxySettings(services["v1"], "http://127.0.0.1:9",
                                                                    KeySource.parse("header:X-User-Id")))
        try:
            with httpx.Client(base_url=url) as http:
                assert http.get("/quote?item=7", headers={"X-User-Id": "alice"}).json()["served_by"] == "v1"
                assert http.post("/orders", json={}, headers={"X-User-Id": "alice"}).status_code == 502
        finally:
            stop()
        cf.flush(everything=True)
        cells = {w.arm: w.cell for w in cf.migration("quotes").windows(stage="half")}
    # Recorded as the SDK records: the candidate's failures are errors, the GETs' are also fallbacks.
    assert cells["candidate"].errors == 4 and cells["candidate"].fallbacks == 2


def test_bad_proxy_arguments_are_one_line_errors(sqlite_url):
    runner = CliRunner()
    base = ["proxy", "quotes", "--legacy", "http://127.0.0.1:1", "--candidate", "http://127.0.0.1:2", "--url", sqlite_url]
    bad_key = runner.invoke(app, [*base, "--key", "body:user"])
    assert bad_key.exit_code == 2 and "expected header:NAME, cookie:NAME or query:NAME" in bad_key.output
    bad_url = runner.invoke(app, ["proxy", "quotes", "--legacy", "127.0.0.1:1", "--candidate", "http://x",
                                  "--key", "header:X", "--url", sqlite_url])
    assert bad_url.exit_code == 2 and "--legacy '127.0.0.1:1': expected an http://" in bad_url.output
    bad_path = runner.invoke(app, [*base, "--key", "header:X", "--ignore", "body.id"])
    assert bad_path.exit_code == 2 and "must start with $" in bad_path.output
    bad_listen = runner.invoke(app, [*base, "--key", "header:X", "--listen", "8080"])
    assert bad_listen.exit_code == 2 and "expected host:port" in bad_listen.output
    missing = runner.invoke(app, [*base, "--key", "header:X"])
    assert missing.exit_code == 1 and "does not exist" in missing.output
    crossfade.connect(sqlite_url).close()  # a store with no migration named quotes
    unknown = runner.invoke(app, [*base, "--key", "header:X"])
    assert unknown.exit_code == 1 and "no migration named 'quotes'" in unknown.output
    assert "Traceback" not in bad_key.output + bad_url.output + bad_path.output + unknown.output
