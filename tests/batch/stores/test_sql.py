"""The SQL table store on real SQLite and PostgreSQL databases: text and binary values, other columns kept."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from crossfade.batch import open_store
from crossfade.registry import ProviderConfigError
from tests.batch.records import engine


def _table(url: str, value_type: str) -> None:
    eng = engine(url)
    with eng.begin() as conn:
        conn.execute(sa.text(f"CREATE TABLE t (id INTEGER PRIMARY KEY, body {value_type}, note TEXT)"))
        conn.execute(sa.text("INSERT INTO t VALUES (1, :a, 'keep me'), (2, :b, 'me too')"),
                     {"a": "é" if value_type == "TEXT" else b"\x00\xff", "b": "two" if value_type == "TEXT" else b"2"})
    eng.dispose()


@pytest.mark.parametrize("value_type", ["TEXT", "BLOB"])
def test_reads_and_writes_values_as_bytes_and_leaves_other_columns_alone(backend_url, value_type):
    if value_type == "BLOB" and backend_url.startswith("postgres"):
        value_type = "BYTEA"
    _table(backend_url, value_type)
    store = open_store(backend_url, table="t", value="body")
    assert list(store.keys()) == ["1", "2"]
    first = "é".encode() if value_type == "TEXT" else b"\x00\xff"
    assert store.read(["1", "3"]) == {"1": first}
    store.write({"1": b"new", "3": b"three", "2": None})
    assert store.read(["1", "2", "3"]) == {"1": b"new", "3": b"three"}
    eng = engine(backend_url)
    with eng.connect() as conn:
        assert conn.execute(sa.text("SELECT note FROM t WHERE id = 1")).scalar() == "keep me"
    eng.dispose()
    store.close()


def test_a_missing_table_or_column_is_one_clear_error(sqlite_url):
    _table(sqlite_url, "TEXT")
    with pytest.raises(ProviderConfigError, match="no table 'nope'"):
        open_store(sqlite_url, table="nope")
    with pytest.raises(ProviderConfigError, match="has no column 'data'"):
        open_store(sqlite_url, table="t")
    with pytest.raises(ProviderConfigError, match="store.table: must be a column or table name"):
        open_store(sqlite_url, table="t; drop table t")
