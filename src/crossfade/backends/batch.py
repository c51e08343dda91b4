"""The SQL store of batch migrations: content-addressed snapshots (blobs) and each item's progress.

An item moves `transformed` (its previous content and its new content are stored, the write is about to
happen) -> `written` (the store took it) and, on a rollback, -> `restored`. `failed` and `invalid` items were
never written. Because the snapshot is committed before the write, a crash at any point leaves every item
either untouched, or recorded with what it held before: a resumed run re-writes a `transformed` item's
recorded new content (never transforming it again), and a rollback restores it.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import sqlalchemy as sa

from crossfade.backends.base import BackendError
from crossfade.backends.sql import SQLBackend

_metadata = sa.MetaData()

TRANSFORMED: Final = "transformed"
WRITTEN: Final = "written"
FAILED: Final = "failed"
INVALID: Final = "invalid"
RESTORED: Final = "restored"
STATUSES: Final = (TRANSFORMED, WRITTEN, FAILED, INVALID, RESTORED)

blobs = sa.Table(
    "crossfade_blobs", _metadata,
    sa.Column("digest", sa.String(64), primary_key=True),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("data", sa.LargeBinary, nullable=False),
    sa.Column("created_at", sa.Double, nullable=False),
)
items_table = sa.Table(
    "crossfade_batch_items", _metadata,
    sa.Column("migration", sa.Text, primary_key=True),
    sa.Column("key", sa.Text, primary_key=True),
    sa.Column("target", sa.Text),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("stage", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("existed", sa.Boolean, nullable=False),
    sa.Column("before", sa.String(64)),
    sa.Column("after", sa.String(64)),
    sa.Column("tries", sa.Integer, nullable=False),
    sa.Column("error", sa.Text),
    sa.Column("updated_at", sa.Double, nullable=False),
)

# Rows per statement: keeps PostgreSQL's bind-parameter count and SQLite's variable limit far away.
_CHUNK: Final = 500


def digest(data: bytes) -> str:
    """The content address of some bytes: their SHA-256, hex."""
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True, slots=True)
class ItemRecord:
    """Where one item of a batch stands, with the addresses of its content before and after. Immutable."""

    key: str
    target: str | None
    attempt: int
    stage: str
    status: str
    existed: bool
    before: str | None
    after: str | None
    tries: int
    error: str | None
    updated_at: float

    @property
    def written_to(self) -> str:
        """The key the new content was written under (and a restore puts the old one back under)."""
        return self.key if self.target is None else self.target


@dataclass(frozen=True, slots=True)
class Outcome:
    """What happened to one item in a run, ready to be recorded: its content before and after, or an error."""

    key: str
    stage: str
    status: str
    before: bytes | None
    after: bytes | None
    tries: int
    error: str | None = None
    target: str | None = None

    @property
    def written_to(self) -> str:
        """The key the new content is written under."""
        return self.key if self.target is None else self.target


class BatchLedger:
    """Snapshots and item progress of batch migrations, in the SQL backend's database. Thread-safe."""

    def __init__(self, backend: object) -> None:
        if not isinstance(backend, SQLBackend):
            raise BackendError(
                f"batch migrations keep snapshots in a database: use a sqlite:// or postgresql:// URL, not "
                f"{getattr(backend, 'url', backend)!r} (a control plane does not store snapshots)"
            )
        self.backend = backend
        self._store = backend._store

    def _insert(self, table: sa.Table) -> Any:
        """The dialect's INSERT, which has ON CONFLICT (both dialects spell it the same way)."""
        if self._store.dialect == "postgresql":
            from sqlalchemy.dialects import postgresql as dialect
        else:
            from sqlalchemy.dialects import sqlite as dialect  # type: ignore[no-redef]
        return dialect.insert(table)

    def record(self, migration: str, attempt: int, outcomes: Sequence[Outcome], now: float | None = None) -> None:
        """Store the outcomes of some items in one transaction: their contents (each distinct one once)
        and their rows, replacing rows of earlier attempts."""
        if not outcomes:
            return
        now = time.time() if now is None else now
        contents: dict[str, bytes] = {}
        rows = []
        for o in outcomes:
            before = after = None
            if o.before is not None:
                before = digest(o.before)
                contents[before] = o.before
            if o.after is not None:
                after = digest(o.after)
                contents[after] = o.after
            rows.append({"migration": migration, "key": o.key, "target": o.target, "attempt": attempt, "stage": o.stage,
                         "status": o.status, "existed": o.before is not None, "before": before, "after": after,
                         "tries": o.tries, "error": o.error, "updated_at": now})
        blob_rows = [{"digest": d, "size": len(b), "data": b, "created_at": now} for d, b in contents.items()]
        stmt = self._insert(items_table)
        upsert = stmt.on_conflict_do_update(
            index_elements=["migration", "key"],
            set_={name: stmt.excluded[name] for name in (
                "target", "attempt", "stage", "status", "existed", "before", "after", "tries", "error",
                "updated_at")},
        )
        with self._store.guard(f"recording items of {migration}"), self._store.write() as conn:
            # executemany: one statement compiled once, whatever the number of rows.
            conn.execute(self._insert(blobs).on_conflict_do_nothing(index_elements=["digest"]), blob_rows)
            conn.execute(upsert, rows)

    def mark(self, migration: str, keys: Iterable[str], status: str, now: float | None = None) -> None:
        """Move some items to `status` (written after the store took them, restored after a rollback)."""
        now = time.time() if now is None else now
        c = items_table.c
        with self._store.guard(f"updating items of {migration}"), self._store.write() as conn:
            for chunk in _chunks(list(keys)):
                conn.execute(items_table.update().where(c.migration == migration, c.key.in_(chunk))
                             .values(status=status, updated_at=now))

    def items(self, migration: str, *, statuses: Sequence[str] | None = None) -> dict[str, ItemRecord]:
        """The recorded items of a migration (only those in `statuses` when given), by key."""
        c = items_table.c
        query = sa.select(items_table).where(c.migration == migration)
        if statuses is not None:
            query = query.where(c.status.in_(list(statuses)))
        with self._store.guard(f"reading items of {migration}"), self._store.read() as conn:
            rows = conn.execute(query).mappings().all()
        return {row["key"]: ItemRecord(**{k: v for k, v in row.items() if k != "migration"}) for row in rows}

    def done(self, migration: str, attempt: int) -> set[str]:
        """The keys an attempt has dealt with (written, snapshotted, failed or refused; not restored)."""
        c = items_table.c
        query = sa.select(c.key).where(c.migration == migration, c.attempt == attempt, c.status != RESTORED)
        with self._store.guard(f"reading items of {migration}"), self._store.read() as conn:
            return set(conn.scalars(query))

    def counts(self, migration: str, *, attempt: int | None = None, stage: str | None = None) -> dict[str, int]:
        """How many items of a migration (one attempt, one stage) are in each status."""
        c = items_table.c
        query = sa.select(c.status, sa.func.count()).where(c.migration == migration)
        if attempt is not None:
            query = query.where(c.attempt == attempt)
        if stage is not None:
            query = query.where(c.stage == stage)
        query = query.group_by(c.status)
        with self._store.guard(f"counting items of {migration}"), self._store.read() as conn:
            return {status: int(n) for status, n in conn.execute(query).all()}

    def contents(self, digests: Iterable[str]) -> dict[str, bytes]:
        """The stored bytes of some content addresses (a missing one is absent from the answer)."""
        wanted = sorted(set(digests))
        found: dict[str, bytes] = {}
        with self._store.guard("reading snapshots"), self._store.read() as conn:
            for chunk in _chunks(wanted):
                for d, data in conn.execute(sa.select(blobs.c.digest, blobs.c.data).where(blobs.c.digest.in_(chunk))):
                    found[d] = bytes(data)
        return found

    def prune(self, older_than: float, *, migration: str | None = None) -> tuple[int, int]:
        """Forget items last changed before `older_than` (epoch seconds) and the snapshots only they used.

        Returns (items, snapshots) removed. A pruned item can no longer be restored by a rollback.
        """
        c = items_table.c
        where = [c.updated_at < older_than]
        if migration is not None:
            where.append(c.migration == migration)
        with self._store.guard("pruning snapshots"), self._store.write() as conn:
            items = conn.execute(items_table.delete().where(*where)).rowcount
            used = sa.union(sa.select(c.before.label("d")).where(c.before.is_not(None)),
                            sa.select(c.after.label("d")).where(c.after.is_not(None))).subquery()
            dropped = conn.execute(blobs.delete().where(blobs.c.digest.not_in(sa.select(used.c.d)))).rowcount
        return int(items), int(dropped)

    def snapshot_stats(self) -> Mapping[str, int]:
        """How many snapshots are stored and their total size in bytes."""
        query = sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(blobs.c.size), 0))
        with self._store.guard("reading snapshots"), self._store.read() as conn:
            count, size = conn.execute(query).one()
        return {"snapshots": int(count), "bytes": int(size)}


def _chunks(rows: list[Any], size: int = _CHUNK) -> Iterable[list[Any]]:
    for start in range(0, len(rows), size):
        yield rows[start:start + size]
