"""The same move done by expand/contract: write v2 beside v1, route reads, shadow-compare them, contract.

    python expand_contract.py DIR      (creates DIR/registry.db and DIR/crossfade.db)

1. Expand: new writes go to both tables (`mig.write` in a dual_write stage, with an idempotency key, so a
   retried write is not stored twice), and a batch backfills `tools_v2` from `tools_v1` (the buggy converter).
2. Route reads: every read is served from v1 (converted on the fly) and shadowed from v2; the comparison
   names the field where they differ: the converter bug, in about 3% of the tools.
3. Reconcile: compare the tables item by item and backfill the differing tools with the fixed converter;
   the shadow comparison is clean again.
4. Contract: reads move to v2 stage by stage; v1 can then be dropped.
"""

from __future__ import annotations

import json
import sqlite3
import sys
import time
from pathlib import Path

import crossfade
from crossfade.batch import open_store
from crossfade.batch.reconcile import backfill, reconcile

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
import tools  # noqa: E402

SPEC = {
    "name": "tool-registry-v2",
    "stages": [
        {"name": "expand", "traffic": "0%", "shadow": "100%", "dual_write": True},
        {"name": "reads", "traffic": "50%", "shadow": "100%", "shadow_legacy": "100%", "dual_write": True},
        {"name": "contract", "traffic": "100%"},
    ],
    "gates": {"mismatch_rate": {"max": "0.5%"}},
    # Room for every shadow read of the example in the queue: none is dropped, so all 1,001 are compared.
    "shadow": {"max_pending": 2048},
}


def main(directory: Path) -> dict[str, object]:
    registry = directory / "registry.db"
    tools.seed(registry)
    url = f"sqlite:///{registry}"
    v1 = open_store(url, table="tools_v1", key="name", value="data")
    v2 = open_store(url, table="tools_v2", key="name", value="data")
    cf = crossfade.connect(f"sqlite:///{directory / 'crossfade.db'}", refresh=0.05)
    cf.apply(SPEC)
    mig = cf.migration("tool-registry-v2")
    mig.start("expand: write v2 beside v1")

    # 1. Expand. A new tool is written to both tables; the v2 side loses its answer once and is retried.
    lost = {"once": True}

    def write_v1(tool: dict, idempotency_key: str) -> str:
        v1.write({tool["name"]: json.dumps(tool, ensure_ascii=False).encode()})
        return tool["name"]

    def write_v2(tool: dict, idempotency_key: str) -> str:
        with sqlite3.connect(registry) as conn:
            # The key is the row's identity: a second write with the same key changes nothing.
            conn.execute("INSERT INTO tools_v2 VALUES (?, ?) ON CONFLICT (name) DO NOTHING",
                         (idempotency_key, json.dumps(tools.to_v2(tool), ensure_ascii=False)))
        if lost.pop("once", False):
            raise ConnectionError("answer lost after the row was written")
        return tool["name"]

    new_tool = {"name": "tool_9999", "description": "Added during the move", "version": 1, "parameters": [],
                "returns": "string", "updated": "2025-10-01"}
    mig.write(new_tool["name"], write_v1, write_v2, new_tool, idempotency_key=new_tool["name"])
    filled = cf.batch("tool-registry-v2-backfill", v1, tools.buggy_transform, target=v2,
                      spec={"name": "tool-registry-v2-backfill", "stages": [{"name": "all", "traffic": "100%"}],
                            "gates": {}})
    print(f"expand: backfilled {filled.written} tools into tools_v2; dual write of {new_tool['name']} stored once")

    # 2. Route reads and shadow-compare: v1 serves (converted on the fly), v2 is read beside it.
    def read_v1(name: str) -> dict:
        return tools.to_v2(json.loads(v1.read([name])[name]))

    def read_v2(name: str) -> dict:
        return json.loads(v2.read([name])[name])

    names = list(v1.keys())
    for name in names:
        mig.run(name, read_v1, read_v2, name)
    fields = _wait_for_comparisons(cf, mig.name, len(names))
    worst = max(((path, row) for path, row in fields.items() if path), key=lambda kv: kv[1]["differing"])
    print(f"shadow reads: {fields['']['differing']} of {fields['']['compared']} tools differ; "
          f"field {worst[0]} in {worst[1]['differing']}")

    # 3. Reconcile the tables with the fixed converter and backfill what differs.
    result = reconcile(v1, v2, transform=tools.transform)
    backfill(v1, v2, result.missing + result.differing, transform=tools.transform)
    after = reconcile(v1, v2, transform=tools.transform)
    for name in names:
        mig.run(name, read_v1, read_v2, name)
    again = _wait_for_comparisons(cf, mig.name, 2 * len(names))
    still = again[""]["differing"] - fields[""]["differing"]
    print(f"reconcile: {len(result.differing)} differing, {len(result.missing)} missing; after the backfill "
          f"consistent: {after.consistent}, and {still} of {len(names)} shadow reads differ")

    # 4. Contract: reads move to v2 (half, then all); v1 is no longer read.
    # The stage's mismatch estimate still counts the reads made before the fix, so a plain promote is refused
    # (the estimate is past its limit). The operator who has just seen the second round come back clean goes
    # past it on purpose: the event records that it was forced and which gates it went past.
    mig.promote(f"shadow reads clean after the backfill ({still} of {len(names)} differ); the stage's estimate "
                "still counts the reads before the fix", force=True)
    served = [mig.decide(name).arm for name in names]
    mig.promote("contract: v2 serves every read")
    state = mig.state()
    print(f"contract: {served.count('candidate')} of {len(names)} reads on v2 at the reads stage; now "
          f"{state.status} at {state.stage}")
    cf.close()
    v1.close()
    v2.close()
    return {"differing_fields": {p: r["differing"] for p, r in fields.items() if r["differing"]},
            "reconciled": after.consistent, "differing": len(result.differing), "status": state.status,
            "differing_after_backfill": still,
            "v2_rows": len(list(v2.keys())), "v1_rows": len(names)}


def _wait_for_comparisons(cf: crossfade.Client, name: str, count: int, timeout: float = 60.0) -> dict:
    """The comparison counts per field once `count` shadow reads are compared and stored."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        cf.flush(everything=True)
        rows = {r.path: {"compared": r["compared"], "differing": r["differing"]}
                for r in cf.backend().comparisons(name)}
        if rows.get("", {}).get("compared", 0) >= count:
            return rows
        time.sleep(0.05)
    raise TimeoutError(f"only {rows.get('', {}).get('compared', 0)} of {count} shadow reads compared")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
