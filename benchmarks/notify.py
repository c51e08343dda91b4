"""Does delivering notifications slow an application's calls? ns per `mig.run` with the outbox idle against the
same with it busy, in one run and one process (the worst case: the outbox in the application's own process).

    python benchmarks/notify.py [--calls 100000] [--repeat 5] [--notes 400] [--json]

The busy case has `--notes` notifications queued to a webhook receiver on loopback that answers each after
20 ms, delivered by `NotificationOutbox.run` in a thread while the calls are timed; the idle case has nothing
queued. Each figure is the best of `--repeat` loops over 10,000 keys; the ratio busy/idle is the slowdown.
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import tempfile
import threading
import time
from pathlib import Path

import crossfade
from crossfade.loop import NotificationOutbox

KEYS = [f"user-{i}" for i in range(10_000)]


class _Slow(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 (the standard library's name)
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        time.sleep(0.02)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def _loop(mig: crossfade.Migration, calls: int) -> float:
    keys, n = KEYS, len(KEYS)
    legacy, candidate = (lambda: "legacy"), (lambda: "candidate")
    start = time.perf_counter_ns()
    for i in range(calls):
        mig.run(keys[i % n], legacy, candidate)
    return (time.perf_counter_ns() - start) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--notes", type=int, default=400)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    receiver = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Slow)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    os.environ["BENCH_HOOK_KEY"] = "k"
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'cf.db'}"
        with crossfade.Client(url, refresh=3600) as cf:
            cf.apply({"name": "m", "stages": [{"traffic": "25%"}, {"traffic": "100%"}], "notify": [
                {"name": "hook", "webhook": {"url": f"http://127.0.0.1:{receiver.server_address[1]}",
                                             "secret_env": "BENCH_HOOK_KEY"}}]})
            mig = cf.migration("m")
            mig.start()
            cf.refresh()
            outbox = NotificationOutbox(cf.backend())
            idle: list[float] = []
            busy: list[float] = []

            def delivering() -> None:
                for _ in range(args.notes):
                    outbox.test("m", "hook")
                stop = threading.Event()
                worker = threading.Thread(target=outbox.run, args=(stop,), kwargs={"poll": 0.05})
                worker.start()
                busy.append(_loop(mig, args.calls))
                stop.set()
                worker.join()

            for r in range(args.repeat):
                # Alternating which goes first, so neither case always runs on a warmer (or busier) machine.
                if r % 2:
                    delivering()
                    idle.append(_loop(mig, args.calls))
                else:
                    idle.append(_loop(mig, args.calls))
                    delivering()
            sent = len(outbox.store.list(status="delivered", limit=1_000_000))
    receiver.shutdown()
    result = {"calls": args.calls, "repeat": args.repeat, "idle_ns": round(min(idle)), "busy_ns": round(min(busy)),
              "ratio": round(min(busy) / min(idle), 3), "delivered_during_busy_loops": sent}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"mig.run, outbox idle: {result['idle_ns']} ns/call; delivering: {result['busy_ns']} ns/call "
              f"(x{result['ratio']}); {sent} notifications delivered during the timed loops")


if __name__ == "__main__":
    main()
