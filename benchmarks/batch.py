"""Batch migrations: items per second, and how long a rollback takes to restore every touched record.

    python benchmarks/batch.py [--records 10000] [--postgres postgresql://postgres@127.0.0.1:5432/test] [--json]

For each database (a SQLite file; PostgreSQL when --postgres names a server, in a throwaway database):
1. a healthy batch of `--records` JSON records in a table, v1 -> v2 in place with a validator, through three
   stages (20%, 50%, 100%): items/s over the whole run (snapshots, writes, judging included);
2. a faulty transform (3% of records wrong, refused by the validator): the mismatch_rate gate rolls it back
   at the first stage; the seconds the restore of every touched record takes (goal: < 30 s), checked byte
   for byte against the records before;
3. a completed batch rolled back by an operator: the seconds to restore all `--records` records.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).parents[1]))

import crossfade  # noqa: E402
from crossfade.batch import open_store  # noqa: E402
from tests.batch.records import SPEC, dump, seed, to_v2, valid_v2  # noqa: E402


def _v2(key: str, data: bytes) -> bytes:
    return to_v2(data)


def _faulty(wrong: set[str]):
    def transform(key: str, data: bytes) -> bytes:
        out = json.loads(to_v2(data))
        if key in wrong:
            out["tool"]["name"] = out["tool"]["name"].upper()
        return json.dumps(out, ensure_ascii=False).encode()

    return transform


def _restore_seconds(cf: crossfade.Client, name: str) -> float:
    restored = [e for e in cf.migration(name).history() if e.type == "batch_restored"]
    return float(restored[-1].payload["seconds"])


def run(url: str, records: int) -> dict[str, object]:
    """The three measurements on one fresh database."""
    figures: dict[str, object] = {}
    original = seed(url, records)
    cf = crossfade.connect(url, refresh=3600)
    store = open_store(url, table="records")
    started = time.perf_counter()
    report = cf.batch("healthy", store, _v2, validate=valid_v2, spec={**SPEC, "name": "healthy"}, concurrency=1000)
    figures["healthy"] = {"status": report.status, "items": report.transformed, "failed": len(report.failed),
                          "seconds": round(time.perf_counter() - started, 2),
                          "items_per_s": round(report.transformed / (time.perf_counter() - started))}
    # Back to v1 for the next runs: an operator's rollback restores all of them from their snapshots.
    cf.migration("healthy").rollback("benchmark: restore everything")
    started = time.perf_counter()
    report = cf.batch("healthy", store, _v2)
    figures["full_restore"] = {"records": report.restored, "seconds": round(_restore_seconds(cf, "healthy"), 2),
                               "byte_for_byte": dump(url) == original}
    wrong = set(random.Random(3).sample(sorted(original), records * 3 // 100))
    report = cf.batch("faulty", store, _faulty(wrong), validate=valid_v2, spec={**SPEC, "name": "faulty"},
                      concurrency=1000)
    rolled = next(e for e in cf.migration("faulty").history() if e.type == "rolled_back")
    figures["faulty"] = {"status": report.status, "stage": rolled.payload["from_stage"],
                         "restored": report.restored, "restore_seconds": round(_restore_seconds(cf, "faulty"), 3),
                         "byte_for_byte": dump(url) == original, "goal_s": 30}
    store.close()
    cf.close()
    return figures


def _postgres_database(server: str):
    import psycopg

    name = f"cf_bench_{uuid.uuid4().hex[:8]}"
    admin = urlsplit(server)._replace(scheme="postgresql").geturl()
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return urlsplit(server)._replace(path=f"/{name}").geturl(), drop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--postgres", help="a PostgreSQL server URL; a throwaway database is made on it")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp:
        results["sqlite"] = run(f"sqlite:///{Path(tmp) / 'bench.db'}", args.records)
    if args.postgres:
        url, drop = _postgres_database(args.postgres)
        try:
            results["postgresql"] = run(url, args.records)
        finally:
            drop()
    if args.json:
        print(json.dumps(results, indent=2))
        return
    for db, f in results.items():
        h, r, x = f["healthy"], f["full_restore"], f["faulty"]  # type: ignore[index]
        print(f"{db}: {h['items']} records in {h['seconds']} s = {h['items_per_s']} items/s ({h['status']}, "
              f"{h['failed']} failed); full restore of {r['records']} in {r['seconds']} s (exact: "
              f"{r['byte_for_byte']}); faulty transform {x['status']} at {x['stage']}, {x['restored']} restored in "
              f"{x['restore_seconds']} s (goal < 30 s, exact: {x['byte_for_byte']})")


if __name__ == "__main__":
    main()
