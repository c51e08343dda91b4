"""How the control plane's work grows: with the processes writing telemetry, the hours a stage has run, and
the number of migrations.

    python benchmarks/scale.py                       # SQLite, the full grid (several minutes)
    python benchmarks/scale.py --quick               # a smaller grid
    python benchmarks/scale.py --postgres postgresql://postgres@127.0.0.1:5432/test
    python benchmarks/scale.py --postgres URL --migrations 100 1000   # only the many-migrations rows

Each row is measured on a fresh store filled with telemetry windows as app processes write them (one row a
process, arm and 10 s window, 50 calls each with a latency sketch). It prints, per (processes, stage hours):
the rows stored; a controller's first tick of that migration and its ticks after that; `crossfade status
NAME --json`; and, of a running control plane, a /metrics scrape and the migration page. Per number of
running migrations: apply+start, one controller pass over all of them, `status` of all, and two
controller replicas, as two processes, passing at once: how many each stepped, its seconds (and as a fraction
of the one replica's pass), the CPU seconds of its process and the SQL statements it sent. Times are
medians, wall clock, on this machine as it is: compare rows of one run, not runs of different days.
"""

from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from typer.testing import CliRunner

from crossfade.backends import open_backend
from crossfade.backends.sql import TELEMETRY_PAGE
from crossfade.cli import app
from crossfade.client import Client
from crossfade.loop import ControllerLoop
from crossfade.server import serve_in_background
from crossfade.spec import load_spec
from crossfade.stagedata import FRESH, ROLL_EVERY, detail_horizon
from crossfade.telemetry import Cell, Window
from crossfade.tokens import new_token, token_hash

WINDOW = 10.0
SPEC = {
    "name": "scale",
    "stages": [{"name": "shadow", "traffic": "0%", "shadow": "100%"}, {"name": "canary", "traffic": "10%", "hold": "30d"},
               {"name": "all", "traffic": "100%"}],
    "gates": {"error_rate": {"max_increase": "1%"}, "latency": {"quantile": "p95", "max_ratio": 1.25}},
    "triggers": [{"metric": "error_rate", "above": "20%", "window": "5m"}],
}


def median_time(fn: Callable[[], object], repeat: int = 3) -> float:
    """The median wall time of `repeat` calls of `fn`, in seconds."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def cell(rng: random.Random, calls: int = 50) -> Cell:
    """One window's cell of an app process: `calls` calls, 1% errors, lognormal latencies around 50 ms."""
    c = Cell()
    c.calls = calls
    c.errors = sum(rng.random() < 0.01 for _ in range(calls))
    for _ in range(calls):
        c.latency.add(rng.lognormvariate(-3.0, 0.4))
    return c


def fresh_store(postgres: str | None) -> tuple[str, Callable[[], None]]:
    """The URL of an empty store and the function that removes it."""
    if postgres is None:
        folder = tempfile.TemporaryDirectory()
        return f"sqlite:///{Path(folder.name) / 'scale.db'}", folder.cleanup
    import psycopg
    from urllib.parse import urlsplit

    name = f"cf_scale_{uuid.uuid4().hex[:12]}"
    admin = urlsplit(postgres)._replace(scheme="postgresql").geturl()
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return urlsplit(postgres)._replace(path=f"/{name}").geturl(), drop


def start_in_canary(url: str, name: str, entered: float) -> None:
    """Apply the spec under `name` and move it into its canary stage at time `entered`."""
    with Client(url, clock=lambda: entered, background=False) as cf:
        cf.apply({**SPEC, "name": name})
        mig = cf.migration(name)
        mig.start()
        mig.promote(reason="benchmark")


def stage_history(url: str, processes: int, hours: float, now: float) -> tuple[int, float]:
    """Fill the canary stage with `hours` of windows from `processes` processes, rolling its rows up into the
    store's totals every ROLL_EVERY seconds of windows written, as its controller does while the stage runs
    (so the last ROLL_EVERY seconds of rows are left as written, as a controller leaves them at worst).
    Returns the rows written and the longest roll-up (seconds)."""
    entered = now - hours * 3600
    start_in_canary(url, "scale", entered)
    horizon = detail_horizon(load_spec({**SPEC, "name": "scale"}))
    backend = open_backend(url)
    longest = 0.0
    rng = random.Random(processes * 1000 + hours)
    cells = [cell(rng) for _ in range(64)]  # reused: building sketches is not what is measured
    batch: list[Window] = []
    rows = 0
    first = (now - hours * 3600) // WINDOW * WINDOW
    for w in range(int(hours * 3600 // WINDOW)):
        for _ in range(processes):
            for arm in ("legacy", "candidate"):
                batch.append(Window("scale", "canary", arm, first + w * WINDOW, WINDOW, rng.choice(cells)))
        if len(batch) >= 20_000:
            backend.write_windows(batch)
            rows += len(batch)
            batch = []
        if (w + 1) % int(ROLL_EVERY // WINDOW) == 0 and (w + 1) * WINDOW < hours * 3600:
            backend.write_windows(batch)
            rows += len(batch)
            batch = []
            began = time.perf_counter()
            written = first + (w + 1) * WINDOW
            while backend.roll_up("scale", stage="canary", entered=entered, before=written - horizon,
                                  windows_before=written - FRESH) == TELEMETRY_PAGE:
                pass
            longest = max(longest, time.perf_counter() - began)
    backend.write_windows(batch)
    backend.close()
    return rows + len(batch), longest


def table_bytes(url: str) -> int:
    """The telemetry table's size on disk (with its indexes)."""
    import sqlalchemy as sa

    # VACUUM runs outside a transaction on PostgreSQL.
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1), isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            conn.exec_driver_sql("VACUUM")
            size = conn.exec_driver_sql("SELECT SUM(pgsize) FROM dbstat WHERE name LIKE '%telemetry%'").scalar()
        else:
            conn.exec_driver_sql("VACUUM crossfade_telemetry")
            size = conn.exec_driver_sql("SELECT pg_total_relation_size('crossfade_telemetry')").scalar()
    engine.dispose()
    return int(size or 0)


def storage(url: str, rows: int, processes: int, hours: float) -> str:
    """Bytes per host-day of telemetry as written, and per migration-day once `crossfade db prune` compacted
    the windows older than an hour (one row per window and arm, whatever the number of hosts)."""
    from crossfade.backends.sql import SQLBackend

    written = table_bytes(url) / rows
    backend = SQLBackend(url)
    _, left = backend.compact_telemetry(before=time.time() + 1)
    backend.close()
    compacted = table_bytes(url) / max(left, 1)
    per_day = 86400 / WINDOW * 2
    return (f"{written:,.0f} B/row: {written * per_day / 1e6:,.1f} MB per host-day written; "
            f"{left:,} rows after compaction, {compacted * per_day / 1e6:,.1f} MB per migration-day whatever the hosts")


def first_look_rows(url: str) -> int:
    """How many stored rows a first look at the stage reads: its totals and the telemetry rows not rolled up."""
    backend = open_backend(url)
    state = backend.state("scale")
    assert state is not None and state.stage is not None and state.stage_entered_at is not None
    snapshot = backend.stage_snapshot("scale", stage=state.stage, entered=state.stage_entered_at)
    backend.close()
    return len(snapshot.hours) + len(snapshot.windows) + len(snapshot.rows)


def measure_history(url: str, processes: int, now: float) -> dict[str, float]:
    """A controller's first tick of the filled migration (a restarted controller reads the stage once), its
    ticks after that (each with one new window from every process), `status --json`, and of a running control
    plane a /metrics scrape, the migration page and `status --json --url` through its API. The first tick and
    `status` also in CPU seconds of this process (the server's thread included), less swayed by the machine's
    other work than wall time."""
    backend = open_backend(url)
    loop = ControllerLoop(backend, holder="bench")
    state = backend.state("scale")
    cpu = time.process_time()
    first = median_time(lambda: loop.tick_one(state, now), repeat=1)
    first_cpu = time.process_time() - cpu
    rng = random.Random(processes)
    news = [[Window("scale", "canary", arm, now + i * WINDOW, WINDOW, cell(rng)) for _ in range(processes)
             for arm in ("legacy", "candidate")] for i in range(3)]
    ticks = []
    for i, batch in enumerate(news):
        backend.write_windows(batch)
        ticks.append(median_time(lambda: loop.tick_one(state, now + (i + 1) * WINDOW), repeat=1))
    runner = CliRunner()
    status = median_time(lambda: invoke(runner, url))
    began = time.process_time()
    invoke(runner, url)
    status_cpu = time.process_time() - began
    # `status` through the API needs a token of role sdk (it reads the routing too).
    secret = new_token()
    backend.create_token("scale-bench", "sdk", token_hash(secret), time.time())
    remote_runner = CliRunner(env={"CROSSFADE_TOKEN": secret})
    # The control plane as it runs (open reads on loopback, its controller off): a scrape and the migration
    # page over real HTTP, after a first read that fills its incremental reader.
    base, stop = serve_in_background(backend, controller=False)
    try:
        fetch = lambda path: urllib.request.urlopen(base + path, timeout=600).read()  # noqa: E731
        fetch("/metrics")
        backend.write_windows(news[0])
        scrape = median_time(lambda: fetch("/metrics"))
        page = median_time(lambda: fetch("/v1/migrations/scale"))
        remote = median_time(lambda: invoke(remote_runner, base))
    finally:
        stop()
    backend.close()
    return {"first": first, "first_cpu": first_cpu, "tick": statistics.median(ticks), "status": status,
            "status_cpu": status_cpu, "remote": remote, "scrape": scrape, "page": page}


def invoke(runner: CliRunner, url: str) -> None:
    """`crossfade status scale --json --url URL`, which must succeed (a refusal would be timed as fast)."""
    result = runner.invoke(app, ["status", "scale", "--json", "--url", url])
    assert result.exit_code == 0, result.output


def many(url: str, count: int, now: float) -> dict[str, float | str]:
    """Apply and start `count` migrations, then time a controller pass, `status` of all and two replicas."""
    rng = random.Random(count)
    began = time.perf_counter()
    with Client(url, clock=lambda: now - 600, background=False) as cf:
        for i in range(count):
            cf.apply({**SPEC, "name": f"tool-{i:04d}"})
            cf.migration(f"tool-{i:04d}").start()
    apply_start = time.perf_counter() - began
    backend = open_backend(url)
    backend.write_windows([Window(f"tool-{i:04d}", "shadow", arm, now - 300, WINDOW, cell(rng, 20))
                           for i in range(count) for arm in ("legacy", "candidate")])
    one = ControllerLoop(backend, holder="one")
    statements = count_statements(backend)
    cpu = time.process_time()
    pass_time = median_time(lambda: (one._due.clear(), one.tick()), repeat=1)
    alone = Pass(count, pass_time, time.process_time() - cpu, statements())
    one.release()
    status = median_time(lambda: CliRunner().invoke(app, ["status", "--json", "--url", url]), repeat=1)
    replicas = two_replicas(url)
    backend.close()
    return {"apply_start": apply_start, "pass": pass_time, "status": status, "alone": alone.describe(alone),
            "replicas": "; ".join(r.describe(alone) for r in replicas)}


@dataclass(frozen=True, slots=True)
class Pass:
    """One controller pass: the migrations it stepped, its wall and CPU seconds (of its whole process), and
    the SQL statements it sent."""

    handled: int
    seconds: float
    cpu: float
    statements: int

    def describe(self, alone: Pass) -> str:
        """The pass as a line of the table, its wall time also as a fraction of the single replica's pass."""
        return (f"{self.handled}: {self.seconds:.2f} s ({self.seconds / alone.seconds:.0%}), "
                f"CPU {self.cpu:.2f} s, {self.statements:,} statements")


def count_statements(backend: object) -> Callable[[], int]:
    """Start counting the SQL statements `backend` sends; returns the function that says how many since."""
    import sqlalchemy as sa

    sent = [0]
    sa.event.listen(backend.engine, "before_cursor_execute",  # type: ignore[attr-defined]
                    lambda *args: sent.__setitem__(0, sent[0] + 1))
    return lambda: sent[0]


def two_replicas(url: str) -> list[Pass]:
    """Two controller replicas as two processes (no interpreter lock shared) over the store at `url`, both
    registered before either passes: the migrations each stepped in one pass, and its seconds."""
    replicas = [subprocess.Popen([sys.executable, __file__, "--replica", url, f"replica-{i}"], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True) for i in range(2)]
    for r in replicas:
        assert r.stdout is not None and r.stdout.readline().strip() == "ready", "a replica did not start"
    for r in replicas:  # both go at once
        assert r.stdin is not None
        r.stdin.write("go\n")
        r.stdin.flush()
    results = []
    for r in replicas:
        out, _ = r.communicate(timeout=3600)
        handled, seconds, cpu, statements = out.split()
        results.append(Pass(int(handled), float(seconds), float(cpu), int(statements)))
    return results


def replica(url: str, holder: str) -> None:
    """One replica's side of `two_replicas`: join the replica set, wait for the word, pass once, report."""
    backend = open_backend(url)
    loop = ControllerLoop(backend, holder=holder)
    loop._alive(time.time())  # the heartbeat a first pass would write: each sees the other in its pass
    statements = count_statements(backend)
    print("ready", flush=True)
    sys.stdin.readline()
    began, cpu, sent = time.perf_counter(), time.process_time(), statements()
    handled = sum(1 for t in loop.tick() if t.skipped is None)
    print(handled, time.perf_counter() - began, time.process_time() - cpu, statements() - sent, flush=True)
    loop.release()
    backend.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--postgres", metavar="URL", help="measure on PostgreSQL (a database is created per row)")
    parser.add_argument("--quick", action="store_true", help="a smaller grid")
    parser.add_argument("--rows", metavar="P,H", nargs="+",
                        help="only these (processes, stage hours) rows, and no many-migrations table")
    parser.add_argument("--migrations", type=int, nargs="*", help="only the many-migrations rows, for these counts")
    parser.add_argument("--replica", nargs=2, metavar=("URL", "HOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.replica:
        replica(*args.replica)
        return
    grid = [(1, 1), (10, 1), (10, 6)] if args.quick else [(1, 1), (10, 1), (100, 1), (1, 24), (10, 24), (100, 24)]
    counts = args.migrations or ([1, 100] if args.quick else [1, 100, 1000])
    if args.rows:
        grid = [(int(p), int(h)) for p, h in (row.split(",") for row in args.rows)]
        counts = []
    store = "PostgreSQL" if args.postgres else "SQLite"
    now = time.time()
    print(f"store: {store}")
    if not args.migrations:  # the history grid
        print(f"{'processes':>9} {'hours':>5} {'rows':>9} {'first-look rows':>15} {'first tick s':>12} "
              f"{'(cpu s)':>8} {'tick s':>8} {'status s':>9} {'(cpu s)':>8} {'status --url s':>14} "
              f"{'/metrics s':>10} {'page s':>7} {'roll-up s':>9}")
        for processes, hours in grid:
            url, remove = fresh_store(args.postgres)
            try:
                rows, roll = stage_history(url, processes, hours, now)
                looked = first_look_rows(url)
                m = measure_history(url, processes, now)
                if (processes, hours) == grid[-1] and not args.rows:
                    bytes_line = storage(url, rows, processes, hours)
            finally:
                remove()
            print(f"{processes:>9} {hours:>5} {rows:>9,} {looked:>15,} {m['first']:>12.3f} {m['first_cpu']:>8.3f} "
                  f"{m['tick']:>8.3f} {m['status']:>9.3f} {m['status_cpu']:>8.3f} {m['remote']:>14.3f} "
                  f"{m['scrape']:>10.3f} {m['page']:>7.3f} {roll:>9.3f}", flush=True)
        if not args.rows:
            print(f"telemetry storage at ({grid[-1][0]}, {grid[-1][1]}): {bytes_line}")
        print()
    if not counts:
        return
    print(f"{'migrations':>10} {'apply+start s':>13} {'pass s':>8} {'status s':>9}  "
          "one replica's pass; two replica processes' passes at once (stepped: seconds, of the one's, CPU, SQL)")
    for count in counts:
        url, remove = fresh_store(args.postgres)
        try:
            row = many(url, count, now)
        finally:
            remove()
        print(f"{count:>10} {row['apply_start']:>13.2f} {row['pass']:>8.2f} {row['status']:>9.2f}  {row['alone']}; "
              f"{row['replicas']}", flush=True)


if __name__ == "__main__":
    main()
