"""The tool registry moved in place by a batch migration: snapshots, a gate, a rollback that restores.

    python batch_migration.py DIR      (creates DIR/registry.db and DIR/crossfade.db)

First the buggy converter runs: its validator refuses the tools it breaks, the mismatch_rate gate fails at
the canary stage, and every tool the canary rewrote is restored from its snapshot. Then the fixed converter
runs to completion.
"""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

import crossfade
from crossfade.batch import open_store

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
import tools  # noqa: E402


def rows(db: Path) -> dict[str, str]:
    with sqlite3.connect(db) as conn:
        return dict(conn.execute("SELECT name, data FROM tools_v1"))


def main(directory: Path) -> dict[str, object]:
    registry = directory / "registry.db"
    tools.seed(registry)
    original = rows(registry)
    cf = crossfade.connect(f"sqlite:///{directory / 'crossfade.db'}", refresh=3600)
    store = open_store(f"sqlite:///{registry}", table="tools_v1", key="name", value="data")
    cf.apply(HERE / "batch.yaml")
    first = cf.batch("tools-v2", store, tools.buggy_transform, validate=tools.check)
    restored_exactly = rows(registry) == original
    print(f"buggy converter: {first.status} after {first.transformed} tools; {len(first.failed)} refused, "
          f"e.g. {first.failed[0].key}: {first.failed[0].error}; restored {first.restored}, byte for byte: "
          f"{restored_exactly}")
    cf.migration("tools-v2").restart("converter fixed")
    second = cf.batch("tools-v2", store, tools.transform, validate=tools.check)
    print(f"fixed converter: {second.status}, {second.written} tools written, {len(second.failed)} failed, "
          f"{second.items_per_second:.0f} tools/s")
    store.close()
    cf.close()
    return {"first": first.status, "restored": first.restored, "restored_exactly": restored_exactly,
            "second": second.status, "written": second.written, "failed": len(second.failed)}


if __name__ == "__main__":
    main(Path(sys.argv[1]))
