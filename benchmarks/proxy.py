"""Latency `crossfade proxy` adds on loopback: p50/p99 over calling the upstream directly and over nginx.

One run, three paths to the same upstream (an nginx answering a small JSON body, so the upstream itself adds
almost nothing), each driven by wrk at a fixed rate (default 1,000 requests/s: N connections, each pausing
between requests through wrk's Lua `delay()`), with a sticky key drawn per request:

  direct   wrk -> upstream
  nginx    wrk -> nginx proxy_pass (keep-alive upstream) -> upstream
  proxy    wrk -> crossfade proxy (a subprocess: uvicorn, httpx, a started migration at 50%) -> upstream

Added latency = the path's percentile minus direct's (and minus nginx's). Needs nginx and wrk (Debian
packages; installed with apt when missing and root). Usage: python benchmarks/proxy.py [--seconds 20] [--rate 1000]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import crossfade

BODY = '{"item": 7, "price": 8.75, "currency": "EUR"}'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def need(binary: str, package: str) -> str:
    if shutil.which(binary) is None and shutil.which("apt-get") and os.geteuid() == 0:
        subprocess.run(["apt-get", "install", "-y", "-q", "-o", "DPkg::Lock::Timeout=600", package],
                       capture_output=True, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    found = shutil.which(binary) or (f"/usr/sbin/{binary}" if os.path.exists(f"/usr/sbin/{binary}") else None)
    if found is None:
        sys.exit(f"{binary} is needed (apt-get install {package})")
    return found


def wait_port(port: int, deadline: float = 30.0) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def start_nginx(nginx: str, folder: Path, upstream: int, front: int) -> subprocess.Popen[bytes]:
    temps = "\n".join(f"  {k}_temp_path {folder / k};" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    (folder / "nginx.conf").write_text(f"""
worker_processes 1;
pid {folder / 'nginx.pid'};
error_log {folder / 'error.log'} warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
{temps}
  upstream app {{ server 127.0.0.1:{upstream}; keepalive 64; }}
  server {{ listen 127.0.0.1:{upstream}; location / {{ default_type application/json; return 200 '{BODY}'; }} }}
  server {{ listen 127.0.0.1:{front};
    location / {{ proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; }} }}
}}
""")
    process = subprocess.Popen([nginx, "-p", str(folder), "-c", str(folder / "nginx.conf"), "-e",
                                str(folder / "error.log"), "-g", "daemon off;"])
    wait_port(upstream)
    wait_port(front)
    return process


def wrk_latency(wrk: str, url: str, seconds: int, rate: int, connections: int) -> dict[str, float]:
    # Each connection waits `pause` ms between requests: connections * 1000 / pause ~ the rate asked for.
    pause = max(0, round(connections * 1000 / rate))
    script = f"""
math.randomseed(7)
request = function()
  return wrk.format("GET", "/quote?item=7", {{["X-User-Id"] = "user-" .. math.random(1, 100000)}})
end
delay = function() return {pause} end
done = function(summary, latency, requests)
  io.write(string.format("RESULT %d %d %.1f %.1f %.1f\\n", summary.requests, summary.errors.status
    + summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50), latency:percentile(99), summary.duration))
end
"""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(script)
    try:
        out = subprocess.run([wrk, "-t", "2", "-c", str(connections), "-d", f"{seconds}s", "-s", f.name, url],
                             capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(f.name)
    requests, errors, p50_us, p99_us, duration_us = re.search(r"RESULT (\d+) (\d+) ([\d.]+) ([\d.]+) ([\d.]+)", out).groups()
    if int(errors):
        raise RuntimeError(f"{url}: {errors} failed requests\n{out}")
    return {"rps": int(requests) / (float(duration_us) / 1e6), "p50_ms": float(p50_us) / 1000,
            "p99_ms": float(p99_us) / 1000}


def cpu_seconds(pid: int) -> float:
    """User and system CPU a process has used (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--rate", type=int, default=1000, help="requests per second per path")
    parser.add_argument("--connections", type=int, default=10)
    args = parser.parse_args()
    nginx, wrk = need("nginx", "nginx"), need("wrk", "wrk")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        upstream, front, proxy_port = free_port(), free_port(), free_port()
        server = start_nginx(nginx, folder, upstream, front)
        url = f"sqlite:///{folder / 'crossfade.db'}"
        with crossfade.connect(url) as cf:
            cf.apply({"name": "quotes", "stages": [{"name": "half", "traffic": "50%"}, {"traffic": "100%"}]})
            cf.migration("quotes").start()
        # Both arms are the same upstream: what is measured is the proxy, not a difference between arms.
        proxy = subprocess.Popen([sys.executable, "-m", "crossfade", "proxy", "quotes", "--url", url,
                                  "--legacy", f"http://127.0.0.1:{upstream}", "--candidate", f"http://127.0.0.1:{upstream}",
                                  "--key", "header:X-User-Id", "--listen", f"127.0.0.1:{proxy_port}"],
                                 stdout=subprocess.DEVNULL)
        try:
            wait_port(proxy_port)
            paths = {"direct": upstream, "nginx": front, "crossfade proxy": proxy_port}
            for port in paths.values():  # warm up connections and code paths
                wrk_latency(wrk, f"http://127.0.0.1:{port}", 2, args.rate, args.connections)
            results = {}
            for name, port in paths.items():
                before = cpu_seconds(proxy.pid)
                results[name] = wrk_latency(wrk, f"http://127.0.0.1:{port}", args.seconds, args.rate, args.connections)
            # The proxy's own CPU per request: what its latency is made of once the machine is busy.
            served = results["crossfade proxy"]["rps"] * args.seconds
            cpu_ms = (cpu_seconds(proxy.pid) - before) * 1000 / max(1.0, served)
        finally:
            proxy.terminate()
            proxy.wait(30)
            server.terminate()
            server.wait(30)
    load = os.getloadavg()[0]
    print(f"{args.rate} requests/s asked, {args.connections} connections, {args.seconds} s per path, "
          f"{os.cpu_count()} CPUs, load average {load:.1f}")
    print(f"crossfade proxy CPU per request: {cpu_ms:.3f} ms (user + system, the proxy process alone)")
    print(f"{'path':<16}{'req/s':>8}{'p50 ms':>9}{'p99 ms':>9}{'+p50 vs direct':>16}{'+p99 vs direct':>16}"
          f"{'+p99 vs nginx':>15}")
    direct, via_nginx = results["direct"], results["nginx"]
    for name, r in results.items():
        print(f"{name:<16}{r['rps']:>8.0f}{r['p50_ms']:>9.3f}{r['p99_ms']:>9.3f}"
              f"{r['p50_ms'] - direct['p50_ms']:>16.3f}{r['p99_ms'] - direct['p99_ms']:>16.3f}"
              f"{r['p99_ms'] - via_nginx['p99_ms']:>15.3f}")


if __name__ == "__main__":
    main()
