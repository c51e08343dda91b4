"""Test helpers for batch migrations: a table of JSON records in a real database, and the v1 -> v2 transform."""

from __future__ import annotations

import json
import os
import random
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url

SPEC: dict[str, Any] = {
    "name": "records-v2",
    "stages": [{"name": "canary", "traffic": "20%"}, {"name": "half", "traffic": "50%"},
               {"name": "all", "traffic": "100%"}],
    "gates": {"mismatch_rate": {"max": "1%"}},
    "triggers": [{"metric": "error_rate", "above": "2%", "min_samples": 200}],
}


def engine(url: str) -> sa.Engine:
    """An engine on the test database (psycopg for PostgreSQL)."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return sa.create_engine(parsed)


def seed(url: str, n: int, table: str = "records") -> dict[str, bytes]:
    """Create `table` (id, data text, note) with n v1 records; returns every row's bytes by key."""
    rng = random.Random(7)
    rows = []
    for i in range(n):
        record = {"id": i, "version": 1, "name": f"tool-{i}", "title": f"Outil n°{i} — ünïcode",
                  "params": [{"name": "q", "type": "string"}] * rng.randint(0, 3)}
        rows.append({"id": i, "data": json.dumps(record, ensure_ascii=False), "note": f"row {i}"})
    eng = engine(url)
    with eng.begin() as conn:
        conn.execute(sa.text(f"CREATE TABLE {table} (id INTEGER PRIMARY KEY, data TEXT, note TEXT)"))
        if rows:
            conn.execute(sa.text(f"INSERT INTO {table} (id, data, note) VALUES (:id, :data, :note)"), rows)
    eng.dispose()
    return {str(r["id"]): r["data"].encode() for r in rows}


def dump(url: str, table: str = "records") -> dict[str, bytes]:
    """Every row's data as bytes, by key."""
    eng = engine(url)
    with eng.connect() as conn:
        rows = conn.execute(sa.text(f"SELECT id, data FROM {table}")).all()
    eng.dispose()
    return {str(k): v.encode() for k, v in rows}


def to_v2(data: bytes) -> bytes:
    """The right v2 of a v1 record; refuses a record that is already v2 (a second transform would show)."""
    record = json.loads(data)
    if record["version"] != 1:
        raise ValueError(f"record {record['id']} is already version {record['version']}")
    out = {"id": record["id"], "version": 2, "tool": {"name": record["name"], "title": record["title"]},
           "input_schema": {p["name"]: p["type"] for p in record["params"]}}
    return json.dumps(out, ensure_ascii=False).encode()


def valid_v2(key: str, before: bytes, after: bytes) -> str | None:
    """The validator: the v2 keeps the v1's name and parameters."""
    old, new = json.loads(before), json.loads(after)
    if new["tool"]["name"] != old["name"]:
        return f"tool.name {new['tool']['name']!r} differs from name {old['name']!r}"
    if set(new["input_schema"]) != {p["name"] for p in old["params"]}:
        return "input_schema lost parameters"
    return None


def log_line(path: str, text: str) -> None:
    """Append one line atomically (O_APPEND), so lines from threads and killed processes never mix."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, (text + "\n").encode())
    finally:
        os.close(fd)
