"""The NGINX router for real: a private nginx in front of two HTTP services on loopback, moved by the controller."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import crossfade
from crossfade.loop import ControllerLoop
from crossfade.registry import ProviderConfigError
from crossfade.routers import NOT_VERIFIED, VERIFIED, RouterError, Target, nginx
from crossfade.routing import Decision

KEYS = 2_000
PER_STAGE = 5_000
STAGES = [0.05, 0.25, 0.50, 1.00]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Arm(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are two writes: without this, 40 ms of delayed ACK each
    arm = ""

    def do_GET(self) -> None:  # noqa: N802 - the http.server spelling
        body = json.dumps({"arm": self.arm}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def _service(arm: str) -> ThreadingHTTPServer:
    handler = type(f"{arm.title()}Handler", (_Arm,), {"arm": arm})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def services() -> Iterator[tuple[str, str]]:
    legacy, candidate = _service("legacy"), _service("candidate")
    yield f"127.0.0.1:{legacy.server_port}", f"127.0.0.1:{candidate.server_port}"
    for server in (legacy, candidate):
        server.shutdown()
        server.server_close()


@pytest.fixture
def nginx_prefix(tmp_path: Path) -> Iterator[tuple[list[str], Path]]:
    """A private nginx master (our own process, loopback only, every path in tmp); the command that reaches it."""
    binary = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("nginx is not installed (.ci/run installs it)")
        pytest.skip("nginx is not installed (apt-get install nginx)")
    prefix = tmp_path / "nginx"
    (prefix / "conf.d").mkdir(parents=True)
    temps = "\n".join(f"    {kind}_temp_path {prefix / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    (prefix / "nginx.conf").write_text(f"""
worker_processes 1;
pid {prefix / 'nginx.pid'};
error_log {prefix / 'error.log'} warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
{temps}
    include {prefix / 'conf.d'}/*.conf;
}}
""")
    command = [binary, "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-e", str(prefix / "error.log")]
    master = subprocess.Popen([*command, "-g", "daemon off;"], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while not (prefix / "nginx.pid").exists() or not (prefix / "nginx.pid").read_text().strip():
        assert master.poll() is None, master.stderr.read().decode() if master.stderr else "nginx exited"
        assert time.monotonic() < deadline, "nginx did not start"
        time.sleep(0.02)
    yield command, prefix
    master.terminate()
    master.wait(30)


def _router_config(command: list[str], prefix: Path, listen: str, legacy: str, candidate: str) -> dict[str, object]:
    return {"conf": str(prefix / "conf.d" / "crossfade.conf"), "listen": listen, "legacy": legacy,
            "candidate": candidate, "key": "header:X-User", "nginx": command, "pid": str(prefix / "nginx.pid")}


def _wait(condition, what: str, timeout: float = 60.0) -> float:
    """Seconds until `condition()` held; fails after `timeout` (a deadline, not a measurement)."""
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < timeout, f"timed out waiting for {what}"
        time.sleep(0.01)
    return time.monotonic() - start


def _router_state(mig: crossfade.Migration) -> tuple[object, ...] | None:
    routers = mig.state().routers
    return routers[0][:3] if routers else None


def test_bad_settings_are_named_by_path():
    with pytest.raises(ProviderConfigError) as caught:
        nginx.create({"conf": "x.txt", "listen": "8080", "legacy": ["a"], "key": "query:q", "extra": 1},
                     "routers[0].nginx")
    text = str(caught.value)
    for where in ("routers[0].nginx.conf", "routers[0].nginx.listen", "routers[0].nginx.legacy[0]",
                  "routers[0].nginx.candidate: required", "routers[0].nginx.key", "routers[0].nginx.extra"):
        assert where in text


def test_a_spec_with_a_bad_router_is_refused_with_its_path():
    with pytest.raises(crossfade.SpecError) as caught:
        crossfade.load_spec({"name": "m", "stages": [{"traffic": "100%"}], "routers": [{"nginx": {"conf": "a.conf"}},
                                                                                        {"envoy": {}}]})
    text = str(caught.value)
    assert "routers[0].nginx.listen: required" in text
    assert "routers[1].envoy" in text and "unknown router" in text


def test_sync_verify_and_remove_against_a_running_nginx(nginx_prefix, services):
    command, prefix = nginx_prefix
    listen = f"127.0.0.1:{_free_port()}"
    router = nginx.create(_router_config(command, prefix, listen, *services), "routers[0].nginx")
    target = Target("m", "half", 0.5, 0.0, allow=("vip",), deny=("blocked",), salt="m")
    with pytest.raises(RouterError, match="cannot reach nginx"):
        router.verify(target)
    router.sync(target)
    # A reload is a signal: nginx's new workers answer a moment later.
    _wait(lambda: _status(router, target) == VERIFIED, "nginx to load the config")
    assert router.verify(Target("m", "all", 1.0, 0.0, salt="m")).status == NOT_VERIFIED

    def arm(key: str) -> str:
        conn = http.client.HTTPConnection(listen)
        conn.request("GET", "/", headers={"X-User": key})
        return json.loads(conn.getresponse().read())["arm"]

    assert arm("vip") == "candidate" and arm("blocked") == "legacy"
    # A config nginx refuses is not loaded, the file is put back, and the running split keeps serving.
    broken = nginx.create({**_router_config(command, prefix, listen, *services), "candidate": "no-such-host.invalid:80"},
                          "routers[0].nginx")
    with pytest.raises(RouterError, match="failed"):
        broken.sync(Target("m", "bad", 0.3, 0.0, salt="m"))
    assert router.verify(target).status == VERIFIED
    router.remove("m")
    assert not (prefix / "conf.d" / "crossfade.conf").exists()
    _wait(lambda: _refused(listen), "nginx to stop listening for the removed migration")


def _status(router: nginx.NginxRouter, target: Target) -> str | None:
    try:
        return router.verify(target).status
    except RouterError:
        return None


def _refused(listen: str) -> bool:
    try:
        socket.create_connection(tuple(listen.rsplit(":", 1)), timeout=1).close()  # type: ignore[arg-type]
    except OSError:
        return True
    return False


def test_the_controller_moves_nginx_through_every_stage_and_a_rollback_reaches_it(sqlite_url, nginx_prefix, services):
    command, prefix = nginx_prefix
    listen = f"127.0.0.1:{_free_port()}"
    spec = {
        "name": "nginx-e2e",
        "stages": [{"name": f"s{round(t * 100)}", "traffic": t, "min_samples": 50} for t in STAGES],
        "gates": {"error_rate": {"max_increase": "5%"}},
        "analysis": {"interval": "1s"},
        "routers": [{"nginx": _router_config(command, prefix, listen, *services)}],
    }
    stop, stop_load = threading.Event(), threading.Event()
    seen: dict[str, list[tuple[int, str]]] = defaultdict(list)  # stage -> (key, arm) in answer order
    failures: list[str] = []
    lock = threading.Lock()
    sent = Counter[str]()

    with crossfade.Client(sqlite_url, background=False) as cf:
        cf.apply(spec)
        mig = cf.migration("nginx-e2e")
        mig.start()
        loop = ControllerLoop(cf.backend(), holder="test")
        controller = threading.Thread(target=loop.run, kwargs={"stop": stop, "poll": 0.05}, daemon=True)
        controller.start()
        _wait(lambda: _router_state(mig) == ("nginx", "verified", 0.05), "nginx at the first stage")

        def ask(conn: http.client.HTTPConnection, key: int) -> tuple[int, dict[str, str], str | None, str | None]:
            conn.request("GET", "/", headers={"X-User": f"user-{key}"})
            response = conn.getresponse()
            return (response.status, json.loads(response.read()), response.getheader("X-Crossfade-Arm"),
                    response.getheader("X-Crossfade-Stage"))

        def load(worker: int) -> None:
            conn = http.client.HTTPConnection(listen, timeout=10)
            i = worker
            while not stop_load.is_set():
                key = i % KEYS
                i += 8
                try:
                    try:
                        status, body, arm, stage = ask(conn, key)
                    except (http.client.RemoteDisconnected, ConnectionResetError):
                        # A reload's old worker closes its idle keep-alive connections; a request written
                        # as it does was never read, and HTTP clients send it again on a new connection
                        # (RFC 9112, 9.3.1). Counted, and a second loss is a failure.
                        with lock:
                            sent["retried on a closed keep-alive connection"] += 1
                        conn.close()
                        conn = http.client.HTTPConnection(listen, timeout=10)
                        status, body, arm, stage = ask(conn, key)
                    if status != 200 or body["arm"] != arm or stage is None:
                        raise RuntimeError(f"HTTP {status} {body} arm={arm} stage={stage}")
                except Exception as exc:  # every failure is a finding: nothing may fail during reloads
                    with lock:
                        failures.append(f"user-{key}: {exc!r}")
                    conn.close()
                    conn = http.client.HTTPConnection(listen, timeout=10)
                    continue
                with mig.observe(Decision(body["arm"], False, stage, -1, "nginx")):
                    pass
                with lock:
                    seen[stage].append((key, body["arm"]))
                    sent[stage] += 1

        workers = [threading.Thread(target=load, args=(w,), daemon=True) for w in range(8)]
        for w in workers:
            w.start()
        try:
            for target in STAGES:
                stage = f"s{round(target * 100)}"
                _wait(lambda: sent[stage] >= PER_STAGE, f"{PER_STAGE} answers in stage {stage}", timeout=300)
                # Telemetry reaches the controller only now, so it promotes after the stage's share was measured;
                # the load keeps running through the reload that follows.
                cf.flush(everything=True)
                if target < 1:
                    nxt = f"s{round(STAGES[STAGES.index(target) + 1] * 100)}"
                    _wait(lambda: sent[nxt] > 0, f"nginx serving stage {nxt}", timeout=120)
        finally:
            stop_load.set()
            for w in workers:
                w.join(30)
        assert mig.state().status == "completed"

        asked = time.monotonic()
        mig.rollback("end-to-end test: rollback must reach nginx")
        rollback_s = _wait(lambda: _router_state(mig) == ("nginx", "verified", 0.0),
                           "the rollback verified in nginx", timeout=30)
        rolled = time.monotonic() - asked
        arms = set()
        for key in range(0, KEYS, 10):
            conn = http.client.HTTPConnection(listen, timeout=10)
            conn.request("GET", "/", headers={"X-User": f"user-{key}"})
            response = conn.getresponse()
            arms.add((json.loads(response.read())["arm"], response.getheader("X-Crossfade-Stage"), time.monotonic() - asked))
        stop.set()
        controller.join(30)
        events = mig.history()

    retried = sent.pop("retried on a closed keep-alive connection", 0)
    total = sum(sent.values())
    shares = {}
    for target in STAGES:
        answers = seen[f"s{round(target * 100)}"]
        shares[target] = sum(arm == "candidate" for _, arm in answers) / len(answers)
    print(f"\nnginx end to end: {total} requests over {KEYS} keys, {len(failures)} failed, {retried} resent after a "
          f"reload closed their idle keep-alive connection; shares "
          + ", ".join(f"{t:.0%}: {s:.2%}" for t, s in shares.items())
          + f"; rollback verified in nginx {rolled:.3f} s after it was asked ({rollback_s:.3f} s of waiting)")
    assert not failures, failures[:5]
    assert total >= len(STAGES) * PER_STAGE
    for target, share in shares.items():
        assert abs(share - target) <= 0.01, f"stage {target:.0%} served {share:.2%} to the candidate"
    # Sticky and monotonic: within a stage a key has one arm; once on the candidate it never goes back.
    on_candidate: set[int] = set()
    for target in STAGES:
        arms_of: dict[int, set[str]] = defaultdict(set)
        for key, arm in seen[f"s{round(target * 100)}"]:
            arms_of[key].add(arm)
        assert all(len(a) == 1 for a in arms_of.values()), "a key changed arm within a stage"
        now_candidate = {k for k, a in arms_of.items() if a == {"candidate"}}
        assert on_candidate <= now_candidate | (on_candidate - set(arms_of)), "a key moved back to legacy"
        on_candidate |= now_candidate
    assert {a[0] for a in arms} == {"legacy"}, arms
    synced = [e for e in events if e.type == "router_synced"]
    assert [e.payload["candidate"] for e in synced] == [*STAGES, 0.0]
    assert all(e.payload["took_ms"] >= 0 for e in synced)
    assert rolled < 30
