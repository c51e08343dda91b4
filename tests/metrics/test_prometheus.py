"""The Prometheus source against a real Prometheus scraping a real application on loopback.

The application serves two migrations over HTTP; each arm is instrumented with `prometheus_client` (requests,
errors, a latency histogram) and every call also goes through crossfade's SDK, which records its in-process
telemetry. The controller judges from Prometheus alone: an arm with 3x the errors is rolled back, a healthy
one promoted, and at every look the numbers from Prometheus are those of the in-process telemetry (counts
exactly, latency within the histogram's buckets).
"""

from __future__ import annotations

import json
import math
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(shutil.which("prometheus") is None, reason="Debian's prometheus is not installed")

BUCKETS = (0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128)
SLEEP = 0.003  # inside (2 ms, 4 ms]: every call lands in one bucket, well away from its edges


def _stage(stage: str, entered: float):
    """Migration m in `stage` since `entered`, as a source reads it."""
    from crossfade.events import State

    return State("m", status="running", stage=stage, stage_index=0, stage_entered_at=entered)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(condition, what: str, deadline: float = 60.0):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


class App:
    """Two migrations behind `GET /call/NAME?key=K`; each arm counts requests and errors and times itself."""

    def __init__(self, client, faulty: set[str]) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.client = client
        self.faulty = faulty
        self.registry = CollectorRegistry()
        labels = ["migration", "arm"]
        self.requests = Counter("app_requests", "Calls per arm", labels, registry=self.registry)
        self.errors = Counter("app_errors", "Failed calls per arm", labels, registry=self.registry)
        self.latency = Histogram("app_latency_seconds", "Arm latency", labels, buckets=BUCKETS,
                                 registry=self.registry)
        self.served: dict[tuple[str, str], int] = {}
        self.port = 0
        self.lock = threading.Lock()

    def arm(self, migration: str, arm: str):
        def serve() -> str:
            start = time.perf_counter()
            with self.lock:
                n = self.served.get((migration, arm), 0)
                self.served[(migration, arm)] = n + 1
            # Deterministic errors: legacy fails 1 call in 20; a faulty candidate 3 in 20 (3x the errors).
            failing = n % 20 in ((0, 7, 14) if arm == "candidate" and migration in self.faulty else (0,))
            time.sleep(SLEEP)
            self.requests.labels(migration, arm).inc()
            if failing:
                self.errors.labels(migration, arm).inc()
            self.latency.labels(migration, arm).observe(time.perf_counter() - start)
            if failing:
                raise RuntimeError(f"{arm} failed")
            return arm
        return serve

    def serve(self, port: int) -> ThreadingHTTPServer:
        from prometheus_client import generate_latest

        app = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the standard library's name
                url = urllib.parse.urlsplit(self.path)
                if url.path == "/metrics":
                    self._answer(200, generate_latest(app.registry))
                    return
                name = url.path.removeprefix("/call/")
                key = urllib.parse.parse_qs(url.query)["key"][0]
                mig = app.client.migration(name)
                try:
                    answer = mig.run(key, app.arm(name, "legacy"), app.arm(name, "candidate"))
                except RuntimeError as exc:
                    self._answer(500, str(exc).encode())
                    return
                self._answer(200, answer.encode())

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.port = port
        server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server


class Prometheus:
    """Debian's prometheus as this test's own process: a tmp config and data dir, a loopback port."""

    def __init__(self, tmp: Path, target: int) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = tmp / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s, scrape_timeout: 1s}\n"
            f"scrape_configs: [{{job_name: app, static_configs: [{{targets: ['127.0.0.1:{target}']}}]}}]\n")
        self.log = open(tmp / "prometheus.log", "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"], stdout=self.log, stderr=subprocess.STDOUT)

    def get(self, path: str, **params: str):
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=5) as response:
            return json.loads(response.read())

    def value(self, query: str) -> float | None:
        result = self.get("/api/v1/query", query=query)["data"]["result"]
        return float(result[0]["value"][1]) if result else None

    def ready(self) -> bool:
        try:
            targets = self.get("/api/v1/targets")["data"]["activeTargets"]
        except OSError:
            return False
        return bool(targets) and targets[0]["health"] == "up"

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


@pytest.fixture
def setup(tmp_path, sqlite_url) -> Iterator[tuple[App, Prometheus, object]]:
    import crossfade

    client = crossfade.connect(sqlite_url, window=1.0, refresh=0.2)
    app = App(client, faulty={"prom-faulty"})
    port = _free_port()
    server = app.serve(port)
    prometheus = Prometheus(tmp_path, port)
    try:
        _wait(prometheus.ready, "prometheus to scrape the application")
        yield app, prometheus, client
    finally:
        prometheus.stop()
        server.shutdown()
        server.server_close()
        client.close()


def _spec(name: str, url: str) -> dict:
    selector = f'migration="{name}",arm="$arm"'
    return {
        "name": name,
        "stages": [{"name": "half", "traffic": "50%", "hold": "3s", "min_samples": 300}, {"name": "full", "traffic": "100%"}],
        "gates": {"error_rate": {"max_increase": "1%"}, "latency": {"quantile": "p50", "max_ratio": 3}},
        "analysis": {"interval": "1s", "confidence": "99%"},
        "fallback": {"on_error": False},
        "source": {"prometheus": {"url": url, "step": "1s", "queries": {
            "calls": f"app_requests_total{{{selector}}}",
            "errors": f"app_errors_total{{{selector}}}",
            "latency": f"app_latency_seconds_bucket{{{selector}}}",
            "latency_sum": f"app_latency_seconds_sum{{{selector}}}",
        }}},
    }


def test_judges_from_prometheus_alone_and_agrees_with_in_process_telemetry(setup) -> None:
    from crossfade.controller import assess, stage_cells
    from crossfade.events import COMPLETED, ROLLED_BACK_STATUS, RUNNING
    from crossfade.loop import ControllerLoop
    from crossfade.metrics import read_stage
    from crossfade.spec import load_spec

    app, prometheus, client = setup
    names = ("prom-faulty", "prom-healthy")
    specs = {}
    for name in names:
        client.apply(_spec(name, prometheus.url))
        client.migration(name).start("test")
        specs[name] = load_spec(_spec(name, prometheus.url))
    client.refresh()
    backend = client.backend()
    loop = ControllerLoop(backend, holder="test", names=names)
    sent = 0
    looks = {name: 0 for name in names}
    with ThreadPoolExecutor(8) as pool:
        for _ in range(40):
            running = [n for n in names if backend.state(n).status == RUNNING]
            if not running:
                break
            keys = [(n, f"user-{sent + i}") for i in range(200) for n in running]
            sent += 200

            def call(item: tuple[str, str]) -> int:
                name, key = item
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{app.port}/call/{name}?key={key}",
                                                timeout=10) as response:
                        return response.status
                except urllib.error.HTTPError as exc:
                    return exc.code

            list(pool.map(call, keys))
            # Judge only once Prometheus holds every call the application served, and the SDK flushed them.
            for name in running:
                served = sum(n for (m, _), n in app.served.items() if m == name)
                _wait(lambda name=name, served=served: prometheus.value(
                    f'sum(app_requests_total{{migration="{name}"}})') == served,
                      f"prometheus to scrape {served} calls of {name}")
            client.flush(everything=True)
            now = time.time()
            for name in running:
                state = backend.state(name)
                tick = loop.tick_one(state, now)
                assert tick.skipped is None, tick.skipped
                looks[name] += 1
                from_prometheus = tick.assessment
                stored = backend.windows(name, stage="half")
                in_process = assess(specs[name], state, stored, now)
                _agree(from_prometheus, in_process)
                _cells_agree(stage_cells(state, read_stage(backend, state, specs[name], now)),
                             stage_cells(state, stored))
            client.refresh()

    faulty, healthy = backend.state("prom-faulty"), backend.state("prom-healthy")
    assert faulty.status == ROLLED_BACK_STATUS, faulty
    assert "candidate error rate" in (faulty.reason or "") and "is above" in faulty.reason
    assert healthy.status == COMPLETED, healthy
    assert looks["prom-faulty"] >= 1 and looks["prom-healthy"] >= 2
    # The last verdict from Prometheus shows fixed buckets: its latency interval spans whole buckets.
    verdicts = [e for e in backend.events("prom-faulty") if e.type == "verdict"]
    latency = next(g for g in verdicts[-1].payload["gates"] if g["gate"] == "latency")
    assert latency["samples"]["candidate"] > 0 and latency["lower"] < 1.0 < latency["upper"]
    # The dashboard's charts read the same source: the healthy stage's calls, window by window.
    from crossfade.server import views

    points = views.series(backend, "prom-healthy", 0.0, specs["prom-healthy"], time.time())["points"]
    stored = backend.windows("prom-healthy", stage="half")
    assert points and sum(p["calls"] for p in points) == sum(w.cell.calls for w in stored)
    assert {p["stage"] for p in points} == {"half"}


def _cells_agree(from_prometheus, in_process) -> None:
    """Per arm: calls and errors exactly; each latency rank's bucket from Prometheus holds the in-process value."""
    from crossfade.sketch import Buckets

    assert sorted(from_prometheus) == sorted(in_process)
    for arm, p in from_prometheus.items():
        i = in_process[arm]
        assert (p.calls, p.errors, p.latency.count) == (i.calls, i.errors, i.latency.count), arm
        assert isinstance(p.latency, Buckets) and p.latency.bounds == BUCKETS
        for q in (0.1, 0.5, 0.9):
            rank = math.floor(q * (i.latency.count - 1))
            low, high = p.latency.bounds_at_rank(rank)
            # The SDK times the call a few microseconds wider than the arm times itself.
            assert low / 1.01 <= i.latency.value_at_rank(rank) <= high * 1.01 + 0.0005, (arm, q, low, high)


def _agree(from_prometheus, in_process) -> None:
    """Counts agree exactly; a latency quantile from Prometheus is a bucket holding the in-process one."""
    assert from_prometheus.samples == in_process.samples
    for p, i in zip(from_prometheus.judgement.gates, in_process.judgement.gates, strict=True):
        assert (p.gate, p.candidate_samples, p.legacy_samples) == (i.gate, i.candidate_samples, i.legacy_samples)
        if p.gate == "error_rate":
            assert (p.verdict, p.estimate, p.lower, p.upper) == (i.verdict, i.estimate, i.lower, i.upper)
        if p.gate == "latency" and i.estimate is not None:
            # The in-process ratio lies within Prometheus' interval (1% sketch accuracy either way), which is
            # as wide as the buckets: never narrower than the in-process one.
            assert p.lower / 1.03 <= i.estimate <= p.upper * 1.03
            assert p.lower <= i.lower * 1.03 and p.upper >= i.upper / 1.03


def test_a_bad_query_or_a_query_that_is_no_histogram_is_a_source_error_naming_it(setup) -> None:
    from crossfade.metrics import SourceError, create_source

    app, prometheus, client = setup
    now = time.time()
    bad = create_source({"prometheus": {"url": prometheus.url, "queries": {"calls": "app_requests_total{", "errors": "x"}}})
    with pytest.raises(SourceError, match=r"refused the calls query for legacy \(app_requests_total\{\).*parse"):
        bad.windows(None, _stage("s", now - 5), None, now)
    # Counters selected as latency: no `le` label, so no buckets to read a quantile from.
    app.requests.labels("m", "legacy").inc()
    _wait(lambda: prometheus.value('app_requests_total{migration="m"}'), "a scrape")
    wrong = create_source({"prometheus": {"url": prometheus.url, "queries": {
        "calls": 'app_requests_total{migration="m",arm="$arm"}', "errors": 'app_errors_total{arm="$arm"}',
        "latency": 'app_requests_total{migration="m",arm="$arm"}'}}})
    with pytest.raises(SourceError, match="must select a histogram's _bucket series"):
        wrong.windows(None, _stage("s", time.time() - 30), None, time.time())


def test_a_restarted_process_is_read_as_a_counter_reset_not_as_negative_traffic(setup) -> None:
    from prometheus_client import CollectorRegistry, Counter

    from crossfade.metrics import create_source

    app, prometheus, client = setup
    source = create_source({"prometheus": {"url": prometheus.url, "step": "1s", "queries": {
        "calls": 'restarts_total{arm="$arm"}', "errors": 'restarts_total{arm="$arm",outcome="error"}'}}})
    since = time.time()

    def run(calls: int) -> None:
        # A fresh registry is what a restarted process exposes: every counter starts again from zero.
        app.registry = CollectorRegistry()
        counter = Counter("restarts", "Calls", ["arm", "outcome"], registry=app.registry)
        counter.labels("legacy", "ok").inc(calls)
        _wait(lambda: prometheus.value('restarts_total{arm="legacy"}') == calls, f"a scrape of {calls} calls")

    run(50)
    run(20)
    cells = [w.cell for w in source.windows(None, _stage("s", since), None, time.time()) if w.arm == "legacy"]
    assert sum(c.calls for c in cells) == 70 and all(c.calls >= 0 for c in cells)


@pytest.mark.parametrize(("settings", "path", "message"), [
    ({}, "source.prometheus.url", "required"),
    ({"url": "http://p:9090"}, "source.prometheus.queries.calls", "required"),
    ({"url": "http://p:9090", "preset": "linkerd"}, "source.prometheus.preset", "known: istio, envoy, nginx"),
    ({"url": "http://p:9090", "preset": "istio", "queries": {"latency_p99": "x"}}, "source.prometheus.queries.latency_p99",
     "unknown field"),
    ({"url": "http://p:9090", "preset": "istio", "arms": {"legacy": "v1"}}, "source.prometheus.arms", "label value"),
    ({"url": "http://p:9090", "preset": "istio", "step": "soon"}, "source.prometheus.step", "not a duration"),
    ({"url": "http://p:9090", "preset": "istio", "token_env": "secret token"}, "source.prometheus.token_env",
     "environment variable"),
    ({"url": "http://p:9090", "preset": "istio", "latency_unit": "us"}, "source.prometheus.latency_unit", "s, ms"),
])
def test_a_spec_with_a_bad_prometheus_source_names_the_path(settings, path, message) -> None:
    from crossfade.spec import SpecError, load_spec

    spec = {"name": "m", "stages": [{"traffic": "10%"}, {"traffic": "100%"}], "source": {"prometheus": settings}}
    with pytest.raises(SpecError) as caught:
        load_spec(spec)
    assert any(p.path == path and message in p.message for p in caught.value.problems), caught.value.problems


def test_presets_fill_each_arm_and_the_selector_into_their_queries() -> None:
    from crossfade.metrics import create_source

    istio = create_source({"prometheus": {"url": "http://p:9090/", "preset": "istio",
                                          "arms": {"legacy": "v1", "candidate": "v2"},
                                          "selector": 'destination_service_name="checkout"'}})
    assert istio.url == "http://p:9090" and istio.latency_unit == 0.001
    assert istio.query("errors", "candidate") == ('istio_requests_total{response_code=~"5..",reporter="destination",'
                                                  'destination_version="v2",destination_service_name="checkout"}')
    nginx = create_source({"prometheus": {"url": "http://p:9090", "preset": "nginx",
                                          "arms": {"legacy": "shop-v1", "candidate": "shop-v2"},
                                          "queries": {"cost_sum": 'shop_cost_total{service="$arm"}'}}})
    assert nginx.query("calls", "legacy") == 'nginx_ingress_controller_requests{service="shop-v1"}'
    assert nginx.query("cost_sum", "candidate") == 'shop_cost_total{service="shop-v2"}'
    envoy = create_source({"prometheus": {"url": "http://p:9090", "preset": "envoy",
                                          "arms": {"legacy": "old", "candidate": "new"}}})
    assert envoy.query("latency", "candidate") == 'envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="new"}'
