"""One control plane feeding many app processes: routing-feed latency after a change, and flush POST latency.

    python benchmarks/server_fanout.py [--processes 1000] [--seconds 40] [--client-processes 1]
                                       [--actions pause,resume] [--postgres URL]

Runs `crossfade serve` in a subprocess (one uvicorn worker, a temporary SQLite file or a fresh PostgreSQL
database) with one started migration, then simulates `--processes` app processes on loopback as asyncio
clients in this process, each as the SDK behaves: a long poll of `GET /v1/routing?wait=30` with the ETag it
holds, on a keep-alive connection of its own, and a telemetry flush (`POST /v1/telemetry`, one window per
arm, in the SDK's compact form) once a 10 s window, at its own point of the window (the SDK's flush
jitter), on a second connection. Midway, an operator pauses then resumes the migration (`--changes` in all;
`--actions` chooses the commands: a promote, forced, reads the stage's telemetry); for each change it prints
how long after the change every process held the new routing table (p50, p99, max; goal: p99 under 100 ms),
how long the operator's POST itself took, and the server's CPU time for it (less its CPU at rest); then the
server's CPU at rest per flush (over the quiet time before the first change, the feed's and the
controller's reads included), and the flush POSTs' p50 and p99 over the run.

A process holds a table once its client has read the answer: one asyncio loop that reads a thousand answers
at once adds its own queueing to the figure (and a flush it encodes meanwhile delays them further). With
`--client-processes N` the simulated processes are spread over N OS processes, each with its own loop (the
lag is then measured against one clock, CLOCK_MONOTONIC, shared by all of them).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import queue
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

from crossfade.backends import open_backend
from crossfade.client import Client
from crossfade.telemetry import Cell
from crossfade.tokens import new_token, token_hash

WINDOW = 10.0
NAME = "fanout"
_shown: list[int] = []  # the first refused flush is printed, to say why
SPEC = {"name": NAME, "stages": [{"traffic": "10%"}, {"traffic": "50%"}, {"traffic": "100%"}]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
                   ) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 request on a keep-alive connection: status, headers, body."""
    writer.write(request)
    await writer.drain()
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("closed by the server")
    status = int(status_line.split()[1])
    headers: dict[str, str] = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers, body


class Process:
    """One simulated app process: its routing long poll and its telemetry flushes."""

    def __init__(self, index: int, port: int, token: str, stop: asyncio.Event) -> None:
        self.index = index
        self.port = port
        self.token = token
        self.stop = stop
        self.etag: str | None = None
        # (when, ETag, the migration's last event) of every table this process was sent: a process has a change
        # once it holds its event or a later one (the controller may record the next before the process polls).
        self.held: list[tuple[float, str, int]] = []
        self.flushes: list[tuple[float, float]] = []  # (answered at, seconds taken) of every flush
        self.errors = 0

    async def poll(self) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            while not self.stop.is_set():
                match = f"If-None-Match: {self.etag}\r\n" if self.etag else ""
                request = (f"GET /v1/routing?wait=30 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                           f"Authorization: Bearer {self.token}\r\n{match}\r\n").encode()
                status, headers, body = await exchange(reader, writer, request)
                if status == 200:
                    when = time.perf_counter()
                    self.etag = headers["etag"]
                    self.held.append((when, self.etag, last_event(body)))
                elif status != 304:
                    self.errors += 1
                    await asyncio.sleep(1)
        except (ConnectionError, asyncio.IncompleteReadError):
            self.errors += 1
        finally:
            writer.close()

    async def flush(self, stage: str) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        offset = random.uniform(0.0, 0.8 * WINDOW)  # as the SDK spreads its flushes over the window
        process = uuid.uuid4().hex
        part = 0
        try:
            while not self.stop.is_set():
                now = time.time()
                due = (now // WINDOW + 1) * WINDOW + 1.0 + offset
                try:
                    await asyncio.wait_for(self.stop.wait(), due - now)
                    return
                except TimeoutError:
                    pass
                part += 1
                start = (due - 1.0 - offset) - WINDOW
                windows = []
                for arm in ("legacy", "candidate"):
                    cell = Cell()
                    for _ in range(20):
                        cell.calls += 1
                        cell.latency.add(random.lognormvariate(-4, 0.5))
                    windows.append({"migration": NAME, "stage": stage, "arm": arm, "start": start, "length": WINDOW,
                                    "cell": cell.to_dict(), "key": f"{process}.{part}"})
                body = json.dumps({"windows": windows}).encode()
                request = (f"POST /v1/telemetry HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {self.token}\r\n"
                           f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
                began = time.perf_counter()
                try:
                    status, _, answer = await exchange(reader, writer, request)
                except (ConnectionError, asyncio.IncompleteReadError):
                    # The server closed the idle keep-alive connection (as http.client, reconnect and send).
                    writer.close()
                    began = time.perf_counter()
                    reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                    status, _, answer = await exchange(reader, writer, request)
                answered = time.perf_counter()
                self.flushes.append((answered, answered - began))
                if status != 200:
                    self.errors += 1
                    if not _shown:
                        _shown.append(status)
                        print(f"flush answered {status}: {answer[:300]!r}")
        except (ConnectionError, asyncio.IncompleteReadError):
            self.errors += 1
        finally:
            writer.close()


def last_event(table: bytes) -> int:
    """The number of the benchmark migration's last event in a routing table."""
    return next(s["seq"] for s in json.loads(table)["states"] if s["name"] == NAME)


def operate(port: int, token: str, action: str) -> int:
    """POST an operator action; the number of the event it appended."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/migrations/{NAME}/{action}", method="POST",
                                     # A promote is forced: the benchmark's stage has no time to meet its gates.
                                     data=json.dumps({"reason": "fanout benchmark",
                                                      "force": action == "promote"}).encode(),
                                     headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.loads(answer.read())["state"]["seq"]


def etag_now(port: int, token: str) -> str:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/routing", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        return answer.headers["ETag"]


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds a process has used (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def launch(processes: list[Process], stage: str, flush: bool) -> list[asyncio.Task[None]]:
    """Start the processes' long polls (and flushes), opening connections a few at a time, as processes start."""
    tasks = []
    for n, p in enumerate(processes):
        tasks.append(asyncio.create_task(p.poll()))
        if flush:
            tasks.append(asyncio.create_task(p.flush(stage)))
        if n % 50 == 49:
            await asyncio.sleep(0.05)
    return tasks


def client_process(indices: range, port: int, token: str, stage: str, flush: bool,
                   out: multiprocessing.Queue, stop: threading.Event) -> None:
    """One OS process of simulated app processes: reports every table a process was sent as it comes (in
    batches, every 20 ms), and its flushes once `stop` is set."""
    random.seed()  # forked: each process its own flush offsets

    async def run() -> None:
        done = asyncio.Event()
        processes = [Process(i, port, token, done) for i in indices]
        tasks = await launch(processes, stage, flush)
        reported = [0] * len(processes)
        while not stop.is_set():
            await asyncio.sleep(0.02)
            batch = []
            for k, p in enumerate(processes):
                batch += [(p.index, *held) for held in p.held[reported[k]:]]
                reported[k] = len(p.held)
            if batch:
                out.put(("held", batch))
        done.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        out.put(("done", [(p.index, p.flushes, p.errors) for p in processes]))

    asyncio.run(run())


class Fleet:
    """The simulated processes run by `--client-processes` OS processes: the records here are filled in from
    their reports, by a thread."""

    def __init__(self, args: argparse.Namespace, port: int, token: str, stage: str) -> None:
        self.processes = [Process(i, port, token, asyncio.Event()) for i in range(args.processes)]
        context = multiprocessing.get_context("fork")  # before any event loop runs in this process
        self.out: multiprocessing.Queue = context.Queue()
        self.stop = context.Event()
        count = args.client_processes
        self.workers = [context.Process(target=client_process, daemon=True, args=(
            range(k * args.processes // count, (k + 1) * args.processes // count), port, token, stage,
            not args.no_flush, self.out, self.stop)) for k in range(count)]
        for worker in self.workers:
            worker.start()
        self.pending = count
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        while self.pending:
            try:
                kind, records = self.out.get(timeout=1.0)
            except queue.Empty:
                if not any(w.is_alive() for w in self.workers):
                    return
                continue
            if kind == "held":
                for index, when, etag, seq in records:
                    p = self.processes[index]
                    p.held.append((when, etag, seq))
                    p.etag = etag
            else:
                for index, flushes, errors in records:
                    self.processes[index].flushes = flushes
                    self.processes[index].errors = errors
                self.pending -= 1

    def cpu(self) -> float:
        """CPU seconds used so far by the client processes."""
        return sum(cpu_seconds(w.pid) for w in self.workers if w.pid is not None and w.is_alive())

    def finish(self) -> None:
        """Stop the client processes and wait for their reports."""
        self.stop.set()
        self.reader.join(timeout=60)
        for worker in self.workers:
            worker.join(timeout=10)


async def drive(args: argparse.Namespace, port: int, server: int, sdk: str, operator: str, stage: str,
                fleet: Fleet | None) -> None:
    stop = asyncio.Event()
    if fleet is None:
        processes = [Process(i, port, sdk, stop) for i in range(args.processes)]
        tasks = await launch(processes, stage, not args.no_flush)
    else:
        processes, tasks = fleet.processes, []

    def clients_cpu() -> float:
        return time.process_time() + (0.0 if fleet is None else fleet.cpu())

    loop = asyncio.get_running_loop()
    # Every process holds the current table before the first change.
    first = await loop.run_in_executor(None, etag_now, port, operator)
    deadline = time.monotonic() + 60
    while sum(p.etag == first for p in processes) < len(processes) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    holding = sum(p.etag == first for p in processes)
    clients = ("in this process's event loop" if fleet is None
               else f"over {len(fleet.workers)} client OS processes")
    print(f"{args.processes} simulated app processes on loopback, {clients} ({holding} holding the table); "
          f"{os.cpu_count()} CPUs shared by server and clients")
    # The server's CPU at rest (the flushes, the feed's and the controller's reads), to take out of each
    # change's, over the quiet time before the first change.
    began, idle = time.perf_counter(), cpu_seconds(server)
    await asyncio.sleep(max(2.0, args.seconds / 2))
    rest = began, time.perf_counter()
    idle_rate = (cpu_seconds(server) - idle) / (rest[1] - rest[0])
    for change in range(args.changes):
        action = args.actions[change % len(args.actions)]
        cpu = cpu_seconds(server), clients_cpu()
        changed = time.perf_counter()  # the change's request is sent: its commit is part of the lag
        seq = await loop.run_in_executor(None, operate, port, operator, action)
        committed = time.perf_counter() - changed

        def lag(p: Process) -> float | None:
            return next((when - changed for when, _, held in p.held if held >= seq and when >= changed), None)

        deadline = time.monotonic() + 30
        while sum(lag(p) is not None for p in processes) < len(processes) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        lags = [x for p in processes if (x := lag(p)) is not None]
        # Every process then sends its next long poll: the server's work for the change ends once it has read
        # them all, well within a second.
        await asyncio.sleep(1.0)
        window = time.perf_counter() - changed
        server_cpu = cpu_seconds(server) - cpu[0] - idle_rate * window
        client_cpu = clients_cpu() - cpu[1]
        print(f"routing change ({action}): {len(lags)}/{len(processes)} processes had it; after the change was asked "
              f"p50 {1000 * quantile(lags, 0.5):.1f} ms, p99 {1000 * quantile(lags, 0.99):.1f} ms, "
              f"max {1000 * max(lags, default=float('nan')):.1f} ms  (goal: p99 < 100 ms); the operator's "
              f"POST itself took {1000 * committed:.1f} ms; CPU for the change (its POST, the answers and the "
              f"next polls, less the server's {1000 * idle_rate:.0f} ms/s at rest): server {1000 * server_cpu:.0f} "
              f"ms, simulated processes {1000 * client_cpu:.0f} ms")
        await asyncio.sleep(max(0.0, args.seconds / 4 - 1.0))
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    if fleet is not None:
        await loop.run_in_executor(None, fleet.finish)
    at_rest = sum(rest[0] <= answered < rest[1] for p in processes for answered, _ in p.flushes)
    rate = at_rest / (rest[1] - rest[0])
    print(f"server at rest: {1000 * idle_rate:.0f} ms CPU/s with {rate:.0f} flush POSTs/s over {rest[1] - rest[0]:.0f} s: "
          f"{1000 * idle_rate / rate if rate else float('nan'):.2f} ms of CPU per flush (the feed's and the "
          f"controller's reads included)")
    flushes = [taken for p in processes for _, taken in p.flushes]
    print(f"flush POST /v1/telemetry: {len(flushes)} posts, p50 {1000 * quantile(flushes, 0.5):.1f} ms, "
          f"p99 {1000 * quantile(flushes, 0.99):.1f} ms, max {1000 * max(flushes, default=float('nan')):.1f} ms; "
          f"errors {sum(p.errors for p in processes)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=40.0)
    parser.add_argument("--changes", type=int, default=2, help="routing changes to make (pause, resume, ...)")
    parser.add_argument("--actions", type=lambda text: text.split(","), default=["pause", "resume"],
                        help="the operator's commands, in turn (a promote weighs the stage's telemetry)")
    parser.add_argument("--no-flush", action="store_true", help="long polls only: the fan-out without writes")
    parser.add_argument("--client-processes", type=int, default=1, metavar="N",
                        help="spread the simulated processes over N OS processes (1: all in this one's event loop)")
    parser.add_argument("--postgres", metavar="URL", help="a PostgreSQL server to create a fresh database on")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.postgres:
            import sqlalchemy

            database = f"fanout_{uuid.uuid4().hex[:8]}"
            admin = sqlalchemy.create_engine(args.postgres, isolation_level="AUTOCOMMIT")
            with admin.connect() as c:
                c.execute(sqlalchemy.text(f'CREATE DATABASE "{database}"'))
            url = args.postgres.rsplit("/", 1)[0] + f"/{database}"
        else:
            url = f"sqlite:///{Path(tmp) / 'fanout.db'}"
        with Client(url, background=False) as cf:
            cf.apply(SPEC)
            cf.migration(NAME).start()
            stage = cf.migration(NAME).state().stage
        backend = open_backend(url)
        sdk, operator = new_token(), new_token()
        backend.create_token("fanout-hosts", "sdk", token_hash(sdk), time.time())
        backend.create_token("fanout-operator", "operator", token_hash(operator), time.time())
        backend.close()
        port = free_port()
        # The server's log goes to a file: a pipe nobody reads fills, and the server then blocks on a warning.
        log_path = Path(tmp) / "serve.log"
        log = log_path.open("w")
        # Each process holds two connections (the long poll, and the flushes): past the default cap of 1,000.
        server = subprocess.Popen([sys.executable, "-m", "crossfade", "serve", "--url", url, "--port", str(port),
                                   "--max-connections", str(2 * args.processes + 100)],
                                  stdout=subprocess.DEVNULL, stderr=log, text=True)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    etag_now(port, operator)
                    break
                except OSError:
                    if server.poll() is not None or time.monotonic() > deadline:
                        sys.exit(f"crossfade serve did not start: {log_path.read_text()[-3000:]}")
                    time.sleep(0.2)
            fleet = Fleet(args, port, sdk, stage or "") if args.client_processes > 1 else None
            asyncio.run(drive(args, port, server.pid, sdk, operator, stage or "", fleet))
        finally:
            server.terminate()
            server.wait(timeout=30)
            log.close()
            if args.postgres:
                with admin.connect() as c:
                    c.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))


if __name__ == "__main__":
    main()
