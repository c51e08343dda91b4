"""Reconciling two stores after dual writes, and backfilling the new one, on real databases."""

from __future__ import annotations

import json

from crossfade.batch import MemoryStore, open_store
from crossfade.batch.reconcile import backfill, reconcile
from tests.batch.records import seed, to_v2


def _v2(key: str, data: bytes) -> bytes:
    return to_v2(data)


def test_reconcile_counts_missing_differing_extra_and_duplicate_items(backend_url):
    original = seed(backend_url, 300)
    seed(backend_url, 0, table="records_v2")
    old = open_store(backend_url, table="records")
    new = open_store(backend_url, table="records_v2")
    # The dual writes reached the new table for most records; one was garbled, one written twice.
    writes = {k: to_v2(v) for k, v in original.items() if int(k) % 50}
    writes["1"] = writes["1"].replace(b'"version": 2', b'"version": 3')
    writes["1000"] = to_v2(original["7"])
    new.write(writes)
    result = reconcile(old, new, transform=_v2, identity=lambda k, d: str(json.loads(d)["id"]))
    assert result.source_items == 300 and result.target_items == 295
    assert result.missing == ("0", "100", "150", "200", "250", "50")
    assert result.differing == ("1",) and result.extra == ("1000",)
    assert result.duplicates == (("7", ("7", "1000")),) and not result.consistent
    # After a rollback, writes went to the old store only: backfill catches the new one up.
    changed = backfill(old, new, result.missing + result.differing, transform=_v2, drop_duplicates=result.duplicates)
    assert changed == 8
    again = reconcile(old, new, transform=_v2, identity=lambda k, d: str(json.loads(d)["id"]))
    assert again.consistent and again.matching == 300
    old.close()
    new.close()


def test_a_transform_that_fails_on_an_item_is_reported_for_that_item():
    old = MemoryStore({"a": b"1", "b": b"x"})
    new = MemoryStore({"a": b"2", "b": b"?"})
    result = reconcile(old, new, transform=lambda k, d: str(int(d) * 2).encode())
    assert result.matching == 1
    assert result.errors == (("b", "ValueError: invalid literal for int() with base 10: b'x'"),)
