"""`GET /v1/migrations/{name}/stage-telemetry`: the current stage's telemetry as the server's reader holds it,
so that `crossfade status --url http://...` costs what `status` on the database costs, not a read of every
window of the stage through the API."""

from __future__ import annotations

import http.client
import http.server
import json
import random
import threading
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from conftest import loose
from typer.testing import CliRunner

from crossfade.cli import app
from crossfade.client import Client
from crossfade.spec import load_spec
from crossfade.stagedata import StageTelemetry
from crossfade.telemetry import Cell, Window

SPEC = {
    "name": "pricing",
    "stages": [{"name": "canary", "traffic": "10%", "hold": "30d"}, {"name": "all", "traffic": "100%"}],
    "triggers": [{"metric": "error_rate", "above": "20%", "window": "5m"}],
}


class Recorder:
    """A forwarding HTTP proxy on loopback in front of a control plane: it passes every request on and
    records its method and path, so a test sees which API calls a client made."""

    def __init__(self, upstream: str) -> None:
        self.calls: list[tuple[str, str]] = []
        target = urlsplit(upstream)
        recorder = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _forward(self) -> None:
                recorder.calls.append((self.command, self.path.split("?")[0]))
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) or None
                conn = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
                try:
                    conn.request(self.command, self.path, body=body, headers={
                        k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")})
                    answer = conn.getresponse()
                    data = answer.read()
                finally:
                    conn.close()
                self.send_response(answer.status)
                for name, value in answer.getheaders():
                    if name.lower() not in ("content-length", "connection", "transfer-encoding", "date", "server"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = _forward  # the standard library's names for its handlers

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def recorder(control_plane) -> Iterator[Recorder]:
    """A recording proxy in front of the test's control plane."""
    proxy = Recorder(control_plane.url)
    try:
        yield proxy
    finally:
        proxy.close()


def fill(url: str, processes: int, minutes: int) -> float:
    """Start the migration `minutes` ago and write its canary stage's windows from `processes` processes,
    rolled up as a controller rolls them; returns the entry time."""
    entered = time.time() - minutes * 60
    with Client(url, clock=lambda: entered, background=False) as cf:
        cf.apply(SPEC)
        cf.migration("pricing").start()
    rng = random.Random(7)
    spec = load_spec(SPEC)
    controller = StageTelemetry()
    with Client(url, background=False) as cf:
        backend = cf.backend()
        state = backend.state("pricing")
        for w in range(minutes * 6):
            cells = []
            for _ in range(processes):
                for arm in ("legacy", "candidate"):
                    c = Cell()
                    c.calls = rng.randint(5, 20)
                    c.errors = int(rng.random() < 0.05)
                    for _ in range(c.calls):
                        c.latency.add(rng.lognormvariate(-3, 0.5))
                    cells.append(Window("pricing", "canary", arm, entered + 10 * w, 10.0, c))
            backend.write_windows(cells)
            if w % 30 == 29:  # every 5 minutes, as the controller rolls up
                controller.forget("pricing")
                controller.roll_up(backend, state, spec, entered + 10 * (w + 1))
    return entered


def test_status_through_the_api_reads_the_servers_rolled_up_stage_not_every_window(control_plane, recorder,
                                                                                   sqlite_url):
    fill(sqlite_url, processes=4, minutes=40)
    sdk = CliRunner(env={"CROSSFADE_TOKEN": control_plane.tokens["sdk"]})  # status reads the routing too
    remote = sdk.invoke(app, ["status", "pricing", "--json", "--url", recorder.url])
    assert remote.exit_code == 0, remote.output
    paths = [path for _, path in recorder.calls]
    assert "/v1/migrations/pricing/stage-telemetry" in paths
    assert "/v1/migrations/pricing/telemetry" not in paths, paths  # no read of every window of the stage
    local = CliRunner().invoke(app, ["status", "pricing", "--json", "--url", sqlite_url])
    assert local.exit_code == 0, local.output
    by_api, by_store = json.loads(remote.output)["arms"], json.loads(local.output)["arms"]
    assert by_api["candidate"]["calls"] == by_store["candidate"]["calls"] > 0
    assert loose(by_api) == by_store


def test_the_stage_telemetry_is_a_viewers_read_documented_with_its_model(control_plane, sqlite_url):
    entered = fill(sqlite_url, processes=2, minutes=3)
    assert control_plane.call("GET", "/v1/migrations/pricing/stage-telemetry", role=None)[0] == 401
    status, body, _ = control_plane.call("GET", "/v1/migrations/pricing/stage-telemetry", role="viewer")
    assert status == 200 and body["stage"] == "canary" and body["entered"] == pytest.approx(entered)
    # One window per 10 s and arm (the processes' rows merged), whatever the processes writing.
    assert len(body["windows"]) == 2 * 3 * 6 and sum(w["cell"]["calls"] for w in body["windows"]) > 0
    assert control_plane.call("GET", "/v1/migrations/nothing/stage-telemetry", role="viewer")[0] == 404
    openapi = control_plane.call("GET", "/openapi.json", role="viewer")[1]
    route = openapi["paths"]["/v1/migrations/{name}/stage-telemetry"]["get"]
    assert route["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/StageWindows")
