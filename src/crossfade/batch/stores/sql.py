"""An item store over one table of a SQLite or PostgreSQL database: a key column and a value column.

The value column may be text or binary; items are bytes either way (text is UTF-8), so a snapshot and its
restore are exact. Other columns of the table are left alone: a write updates the value of an existing row
and inserts a row with only the key and the value for a new item.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url

from crossfade.registry import ConfigProblem, ProviderConfigError

_IDENTIFIER: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CHUNK: Final = 500


class SQLTableStore:
    """Items in `table`: `key` names the key column, `value` the column holding each item's content."""

    def __init__(self, url: str, table: str, *, key: str = "id", value: str = "data") -> None:
        parsed = make_url(url)
        if parsed.drivername in ("postgresql", "postgres"):
            parsed = parsed.set(drivername="postgresql+psycopg")
        connect_args = {"timeout": 30} if parsed.get_backend_name() == "sqlite" else {}
        self.engine = sa.create_engine(parsed, connect_args=connect_args, pool_pre_ping=True)
        try:
            self.table = sa.Table(table, sa.MetaData(), autoload_with=self.engine)
        except sa_exc.NoSuchTableError:
            self.engine.dispose()
            raise ValueError(f"no table {table!r} in {parsed.render_as_string(hide_password=True)}") from None
        missing = [c for c in (key, value) if c not in self.table.c]
        if missing:
            self.engine.dispose()
            raise ValueError(f"table {table!r} has no column {missing[0]!r} (columns: "
                             f"{', '.join(self.table.c.keys())})")
        self.key = self.table.c[key]
        self.value = self.table.c[value]
        self._text = isinstance(self.value.type, sa.String | sa.Text)
        self._int_keys = isinstance(self.key.type, sa.Integer)

    def _key(self, key: str) -> Any:
        return int(key) if self._int_keys else key

    def _encode(self, data: bytes) -> Any:
        return data.decode() if self._text else data

    @staticmethod
    def _decode(value: Any) -> bytes:
        return value.encode() if isinstance(value, str) else bytes(value)

    def keys(self) -> Iterator[str]:
        """Every row's key as text, in key order."""
        with self.engine.connect() as conn:
            return iter([str(k) for k in conn.scalars(sa.select(self.key).order_by(self.key))])

    def read(self, keys: Sequence[str]) -> dict[str, bytes]:
        """The values of the rows with these keys (rows whose value is NULL count as absent)."""
        found: dict[str, bytes] = {}
        with self.engine.connect() as conn:
            for start in range(0, len(keys), _CHUNK):
                chunk = [self._key(k) for k in keys[start:start + _CHUNK]]
                query = sa.select(self.key, self.value).where(self.key.in_(chunk))
                for k, v in conn.execute(query):
                    if v is not None:
                        found[str(k)] = self._decode(v)
        return found

    def write(self, items: Mapping[str, bytes | None]) -> None:
        """Update existing rows, insert new ones, delete rows for None, in one transaction."""
        if not items:
            return
        gone = [self._key(k) for k, v in items.items() if v is None]
        present = {self._key(k): self._encode(v) for k, v in items.items() if v is not None}
        with self.engine.begin() as conn:
            for start in range(0, len(gone), _CHUNK):
                conn.execute(self.table.delete().where(self.key.in_(gone[start:start + _CHUNK])))
            wanted = list(present)
            existing: set[Any] = set()
            for start in range(0, len(wanted), _CHUNK):
                existing.update(conn.scalars(sa.select(self.key).where(self.key.in_(wanted[start:start + _CHUNK]))))
            updates = [{"k": k, "v": v} for k, v in present.items() if k in existing]
            if updates:
                conn.execute(self.table.update().where(self.key == sa.bindparam("k"))
                             .values({self.value.name: sa.bindparam("v")}), updates)
            inserts = [{self.key.name: k, self.value.name: v} for k, v in present.items() if k not in existing]
            if inserts:
                conn.execute(self.table.insert(), inserts)

    def close(self) -> None:
        """Release the store's connections."""
        self.engine.dispose()


def create(config: dict[str, Any], path: str) -> SQLTableStore:
    """A SQL table store: `url`, `table`, `key` (default `id`) and `value` (default `data`) columns."""
    known = {"url", "table", "key", "value"}
    problems = [ConfigProblem(f"{path}.{k}", f"unknown setting; the sql store takes: {', '.join(sorted(known))}")
                for k in sorted(set(config) - known)]
    url = config.get("url")
    if not isinstance(url, str) or not url.startswith(("sqlite:", "postgresql:", "postgresql+psycopg:", "postgres:")):
        problems.append(ConfigProblem(f"{path}.url", f"must be sqlite:///file.db or postgresql://..., got {url!r}"))
    for name, default in (("table", None), ("key", "id"), ("value", "data")):
        value = config.get(name, default)
        if not isinstance(value, str) or not _IDENTIFIER.match(value):
            problems.append(ConfigProblem(f"{path}.{name}", f"must be a column or table name, got {value!r}"
                                          + (" (pass --table NAME)" if name == "table" else "")))
    if problems:
        raise ProviderConfigError(problems)
    try:
        return SQLTableStore(str(url), config["table"], key=config.get("key", "id"), value=config.get("value", "data"))
    except (ValueError, sa_exc.SQLAlchemyError) as e:
        raise ProviderConfigError([ConfigProblem(path, " ".join(str(e).split()))]) from None
