"""1,000 agent tool definitions moving from the v1 shape to v2 (MCP-style `inputSchema`), in a SQLite file.

v1: {"name", "description", "version": 1, "parameters": [{"name", "type", "required", "description"}],
     "returns", "updated": date}
v2: {"name", "title", "description", "version": 2, "inputSchema": {"type": "object", "properties": {...},
     "required": [...]}, "outputType", "updated"}
"""

from __future__ import annotations

import json
import random
import sqlite3
from pathlib import Path

TYPES = ("string", "integer", "number", "boolean", "object", "array")


def seed(db: Path, count: int = 1000) -> None:
    """Create `tools_v1` with `count` v1 definitions and an empty `tools_v2` beside it."""
    rng = random.Random(2025)
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE tools_v1 (name TEXT PRIMARY KEY, data TEXT NOT NULL)")
        conn.execute("CREATE TABLE tools_v2 (name TEXT PRIMARY KEY, data TEXT NOT NULL)")
        rows = []
        for i in range(count):
            params = [{"name": f"arg_{j}", "type": rng.choice(TYPES), "required": rng.random() < 0.6,
                       "description": f"Paramètre {j} — ✓"} for j in range(rng.randint(0, 5))]
            tool = {"name": f"tool_{i:04d}", "description": f"Does thing {i}", "version": 1, "parameters": params,
                    "returns": rng.choice(TYPES), "updated": f"2025-0{1 + i % 9}-1{i % 10}"}
            rows.append((tool["name"], json.dumps(tool, ensure_ascii=False)))
        conn.executemany("INSERT INTO tools_v1 VALUES (?, ?)", rows)


def to_v2(tool: dict, *, buggy: bool = False) -> dict:
    """The v2 definition of a v1 tool. `buggy` is the converter bug this example catches: it drops the
    `required` list of tools with five parameters whose first two are optional (about 3% of them)."""
    params = tool["parameters"]
    required = [p["name"] for p in params if p["required"]]
    if buggy and len(params) == 5 and not params[0]["required"] and not params[1]["required"]:
        required = []
    return {
        "name": tool["name"], "title": tool["name"].replace("_", " ").title(),
        "description": tool["description"], "version": 2,
        "inputSchema": {"type": "object",
                        "properties": {p["name"]: {"type": p["type"], "description": p["description"]} for p in params},
                        "required": required},
        "outputType": tool["returns"], "updated": tool["updated"],
    }


def transform(key: str, data: bytes) -> bytes:
    """The batch transform: a v1 row's JSON to its v2 JSON."""
    return json.dumps(to_v2(json.loads(data)), ensure_ascii=False).encode()


def buggy_transform(key: str, data: bytes) -> bytes:
    """The same with the converter bug."""
    return json.dumps(to_v2(json.loads(data), buggy=True), ensure_ascii=False).encode()


def check(key: str, before: bytes, after: bytes) -> str | None:
    """The validator: every v1 parameter is in the v2 schema, required ones listed as required."""
    old, new = json.loads(before), json.loads(after)
    schema = new["inputSchema"]
    for p in old["parameters"]:
        if p["name"] not in schema["properties"]:
            return f"inputSchema.properties lacks {p['name']}"
        if p["required"] and p["name"] not in schema["required"]:
            return f"inputSchema.required lacks {p['name']}"
    return None
