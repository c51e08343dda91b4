"""Load on the control plane over loopback: requests per second and p99 for /v1/decide and /v1/routing.

Runs `crossfade serve` in a subprocess over a temporary SQLite file with one started migration, and drives it
with wrk (Debian package `wrk`, installed with apt when missing and root) or, failing that, a Python load
generator (threads, keep-alive http.client connections). Usage: python benchmarks/server.py [--seconds 10]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from crossfade.backends.sql import SQLBackend
from crossfade.client import Client
from crossfade.tokens import new_token, token_hash


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def have_wrk() -> str | None:
    if shutil.which("wrk") is None and shutil.which("apt-get") and os.geteuid() == 0:
        subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], capture_output=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    return shutil.which("wrk")


def run_wrk(wrk: str, url: str, token: str, method: str, body: str | None, headers: dict[str, str],
            seconds: int, connections: int, threads: int) -> tuple[float, float]:
    lua = [f'wrk.method = "{method}"', f'wrk.headers["Authorization"] = "Bearer {token}"']
    lua += [f'wrk.headers["{k}"] = {json.dumps(v)}' for k, v in headers.items()]
    if body is not None:
        lua += ['wrk.headers["Content-Type"] = "application/json"', f"wrk.body = {json.dumps(body)}"]
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write("\n".join(lua) + "\n")
    out = subprocess.run([wrk, "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s", "--latency",
                          "-s", script.name, url], capture_output=True, text=True, check=True).stdout
    os.unlink(script.name)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    value, unit = re.search(r"99%\s+([\d.]+)(us|ms|s)", out).groups()
    p99_ms = float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        raise RuntimeError(f"{url}: {non2xx.group(1)} failed responses\n{out}")
    return rps, p99_ms


def run_python(host: str, port: int, path: str, token: str, method: str, body: str | None,
               headers: dict[str, str], seconds: int, connections: int) -> tuple[float, float]:
    latencies: list[float] = []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def worker() -> None:
        conn = http.client.HTTPConnection(host, port, timeout=10)
        sent = {"Authorization": f"Bearer {token}", "Content-Type": "application/json", **headers}
        mine = []
        while time.monotonic() < deadline:
            t0 = time.perf_counter()
            conn.request(method, path, body=body, headers=sent)
            resp = conn.getresponse()
            resp.read()
            mine.append(time.perf_counter() - t0)
            if resp.status >= 400:
                raise RuntimeError(f"{path}: HTTP {resp.status}")
        with lock:
            latencies.extend(mine)

    pool = [threading.Thread(target=worker) for _ in range(connections)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return len(latencies) / seconds, statistics.quantiles(latencies, n=100)[98] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--python", action="store_true", help="use the Python load generator even if wrk exists")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="crossfade-bench-"))
    url = f"sqlite:///{workdir / 'cf.db'}"
    backend = SQLBackend(url)
    token = new_token()
    backend.create_token("bench", "operator", token_hash(token), time.time())
    with Client(backend, background=False) as cf:
        cf.apply({"name": "bench", "stages": [{"traffic": "25%"}, {"traffic": "100%"}]}, actor="bench")
        cf.migration("bench").start(actor="bench")
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "crossfade", "serve", "--url", url, "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        conn = http.client.HTTPConnection("127.0.0.1", port)
        conn.request("GET", "/v1/routing", headers={"Authorization": f"Bearer {token}"})
        etag = conn.getresponse().getheader("ETag")
        cases = [
            ("POST /v1/decide", "POST", "/v1/decide", json.dumps({"migration": "bench", "key": "user-42"}), {}),
            ("GET /v1/routing (200, full table)", "GET", "/v1/routing", None, {}),
            ("GET /v1/routing (304, If-None-Match)", "GET", "/v1/routing", None, {"If-None-Match": etag}),
        ]
        wrk = None if args.python else have_wrk()
        tool = "wrk" if wrk else "python threads + http.client keep-alive"
        print(f"crossfade serve (1 uvicorn worker) on loopback, {args.connections} connections, {args.seconds}s each, "
              f"load generator: {tool}; {os.cpu_count()} CPUs shared by server and load generator")
        print(f"{'endpoint':<40} {'req/s':>10} {'p99':>10}")
        for label, method, path, body, headers in cases:
            if wrk:
                rps, p99 = run_wrk(wrk, f"http://127.0.0.1:{port}{path}", token, method, body, headers,
                                   args.seconds, args.connections, 2)
            else:
                rps, p99 = run_python("127.0.0.1", port, path, token, method, body, headers, args.seconds,
                                      args.connections)
            print(f"{label:<40} {rps:>10,.0f} {p99:>8.1f}ms")
    finally:
        server.terminate()
        server.wait(timeout=10)
        backend.close()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
