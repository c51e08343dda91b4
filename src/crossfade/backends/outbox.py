"""The notification outbox's storage in the SQL store: rows to deliver, their attempts, and how far each
migration's event log has been turned into rows (its cursor)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import sqlalchemy as sa

if TYPE_CHECKING:
    from crossfade.backends.sql import _Store

PENDING: Final = "pending"
DELIVERED: Final = "delivered"
FAILED: Final = "failed"

_metadata = sa.MetaData()
notifications = sa.Table(
    "crossfade_notifications", _metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("key", sa.Text, nullable=False, unique=True),
    sa.Column("migration", sa.Text, nullable=False),
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("target", sa.Text, nullable=False),
    sa.Column("channel", sa.Text, nullable=False),
    sa.Column("config", sa.Text, nullable=False),
    sa.Column("note", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("next_at", sa.Double, nullable=False),
    sa.Column("last_attempt_at", sa.Double),
    sa.Column("delivered_at", sa.Double),
    sa.Column("last_error", sa.Text),
)
cursors = sa.Table(
    "crossfade_notify_cursors", _metadata,
    sa.Column("migration", sa.Text, primary_key=True),
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("spec_version", sa.Integer, nullable=False),
)


@dataclass(frozen=True, slots=True)
class Delivery:
    """One notification of one event to one target, and how its delivery stands. Immutable."""

    id: int
    key: str
    migration: str
    seq: int
    kind: str
    target: str
    channel: str
    config: Mapping[str, Any]
    note: Mapping[str, Any]
    status: str
    attempts: int
    created_at: float
    next_at: float
    last_attempt_at: float | None
    delivered_at: float | None
    last_error: str | None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able form without the channel's settings (they name secrets' variables, not secrets, but a
        status display has no use for them)."""
        return {
            "key": self.key, "migration": self.migration, "seq": self.seq, "kind": self.kind, "target": self.target,
            "channel": self.channel, "status": self.status, "attempts": self.attempts, "created_at": self.created_at,
            "next_at": self.next_at, "last_attempt_at": self.last_attempt_at, "delivered_at": self.delivered_at,
            "last_error": self.last_error, "summary": self.note.get("summary"),
        }


@dataclass(frozen=True, slots=True)
class Queued:
    """A notification to add to the outbox: its key, target and message. Immutable."""

    key: str
    seq: int
    kind: str
    target: str
    channel: str
    config: Mapping[str, Any]
    note: Mapping[str, Any]


class SQLOutbox:
    """The outbox over a SQL store's connection (SQLite or PostgreSQL). Thread-safe like the store."""

    def __init__(self, store: _Store) -> None:
        self._store = store

    def cursor(self, migration: str) -> tuple[int, int]:
        """The last event turned into notifications, and the spec version in force at it; (0, 0) at first."""
        query = sa.select(cursors.c.seq, cursors.c.spec_version).where(cursors.c.migration == migration)
        with self._store.guard(f"reading the notification cursor of {migration}"), self._store.read() as conn:
            row = conn.execute(query).first()
        return (0, 0) if row is None else (int(row[0]), int(row[1]))

    def enqueue(self, migration: str, expected: int, seq: int, spec_version: int, rows: Sequence[Queued],
                now: float) -> bool:
        """Add rows and move the cursor from `expected` to `seq`, in one transaction; False (nothing written)
        when another process moved the cursor first. A row whose key is already queued is left alone."""
        with self._store.guard(f"queueing notifications of {migration}"), self._store.write() as conn:
            found = conn.scalar(sa.select(cursors.c.seq).where(cursors.c.migration == migration))
            if (found or 0) != expected:
                return False
            if found is None:
                conn.execute(cursors.insert().values(migration=migration, seq=seq, spec_version=spec_version))
            else:
                conn.execute(cursors.update().where(cursors.c.migration == migration)
                             .values(seq=seq, spec_version=spec_version))
            for row in rows:
                taken = conn.scalar(sa.select(notifications.c.id).where(notifications.c.key == row.key))
                if taken is None:
                    conn.execute(notifications.insert().values(
                        key=row.key, migration=migration, seq=row.seq, kind=row.kind, target=row.target,
                        channel=row.channel, config=json.dumps(dict(row.config), sort_keys=True),
                        note=json.dumps(dict(row.note), sort_keys=True), status=PENDING, attempts=0,
                        created_at=now, next_at=now))
            return True

    def add(self, migration: str, row: Queued, now: float) -> None:
        """Queue one notification outside the event log (a test message)."""
        with self._store.guard("queueing a notification"), self._store.write() as conn:
            conn.execute(notifications.insert().values(
                key=row.key, migration=migration, seq=row.seq, kind=row.kind, target=row.target, channel=row.channel,
                config=json.dumps(dict(row.config), sort_keys=True), note=json.dumps(dict(row.note), sort_keys=True),
                status=PENDING, attempts=0, created_at=now, next_at=now))

    def due(self, now: float, *, limit: int = 50) -> list[Delivery]:
        """Pending notifications whose next attempt has come, oldest first."""
        n = notifications.c
        query = (sa.select(notifications).where(n.status == PENDING, n.next_at <= now)
                 .order_by(n.next_at, n.id).limit(limit))
        with self._store.guard("reading due notifications"), self._store.read() as conn:
            return [_delivery(row) for row in conn.execute(query).mappings().all()]

    def settle(self, id: int, *, now: float, status: str, next_at: float, error: str | None) -> None:
        """Record one attempt: delivered, failed for good, or pending again until `next_at`."""
        n = notifications.c
        values: dict[str, Any] = {"status": status, "attempts": n.attempts + 1, "last_attempt_at": now,
                                  "next_at": next_at, "last_error": error}
        if status == DELIVERED:
            values["delivered_at"] = now
        with self._store.guard("recording a notification attempt"), self._store.write() as conn:
            conn.execute(notifications.update().where(n.id == id).values(**values))

    def list(self, migration: str | None = None, *, status: str | None = None, limit: int = 100) -> list[Delivery]:
        """Notifications, newest first: of one migration, in one status."""
        n = notifications.c
        query = sa.select(notifications).order_by(n.id.desc()).limit(limit)
        if migration is not None:
            query = query.where(n.migration == migration)
        if status is not None:
            query = query.where(n.status == status)
        with self._store.guard("reading notifications"), self._store.read() as conn:
            return [_delivery(row) for row in conn.execute(query).mappings().all()]

    def counts(self) -> dict[tuple[str, str, str], int]:
        """How many notifications stand in each (migration, target, status)."""
        n = notifications.c
        query = sa.select(n.migration, n.target, n.status, sa.func.count()).group_by(n.migration, n.target, n.status)
        with self._store.guard("counting notifications"), self._store.read() as conn:
            return {(m, t, s): int(c) for m, t, s, c in conn.execute(query).all()}


def _delivery(row: Mapping[str, Any]) -> Delivery:
    return Delivery(**{**row, "config": json.loads(row["config"]), "note": json.loads(row["note"])})
