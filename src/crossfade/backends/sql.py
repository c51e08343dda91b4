"""The SQL backend: one schema and one code path for a SQLite file and a PostgreSQL database."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import quote

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.pool import NullPool, StaticPool

from crossfade.backends.base import BackendError, BackendUnavailable, ConflictError, InvalidURL, redact_url
from crossfade.backends.outbox import SQLOutbox
from crossfade.backends.totals import SQLStageTotals, StageSnapshot
from crossfade.canonical import canonical_json
from crossfade.events import Event, State
from crossfade.shadow import COUNTERS, Example, FieldWindow
from crossfade.telemetry import Cell, Window, check_cell
from crossfade.tokens import TokenRecord

log = logging.getLogger("crossfade")
if TYPE_CHECKING:  # Alembic (and Mako with it) is imported only to create or upgrade a schema
    from alembic.config import Config

__all__ = ["SQLBackend", "current_revision", "head_revision", "upgrade"]

# Where the shipped alembic scripts live; a module attribute so a test can point it at a copy with more revisions.
SCRIPT_LOCATION: str = str(Path(__file__).with_name("migrations"))
# Not alembic's default name: an application database may already have an `alembic_version` of its own.
VERSION_TABLE: Final = "crossfade_schema_version"
SQLITE_BUSY_TIMEOUT_MS: Final = 10_000
POSTGRES_CONNECT_TIMEOUT_S: Final = 3
# No statement waits longer than this on a lock or a busy server: a hung database makes callers fail (and the
# server answer 503), never wait for ever. The URL's own `options` win.
POSTGRES_STATEMENT_TIMEOUT_MS: Final = 10_000
TELEMETRY_PAGE: Final = 20_000  # rows a statement reads of a stage's telemetry
# pg_advisory_xact_lock key serializing schema creation and upgrades ("cfsc" in ASCII).
_SCHEMA_LOCK_KEY: Final = 0x63667363
# alembic's `context` is a process-wide proxy: two threads must not run env.py at once.
_ALEMBIC_LOCK = threading.Lock()

_metadata = sa.MetaData()
specs = sa.Table(
    "crossfade_specs", _metadata,
    sa.Column("migration", sa.Text, primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("spec", sa.Text, nullable=False),
    sa.Column("digest", sa.String(64), nullable=False),
    sa.Column("created_at", sa.Double, nullable=False),
)
events_table = sa.Table(
    "crossfade_events", _metadata,
    sa.Column("migration", sa.Text, primary_key=True),
    sa.Column("seq", sa.Integer, primary_key=True),
    sa.Column("type", sa.Text, nullable=False),
    sa.Column("time", sa.Double, nullable=False),
    sa.Column("actor", sa.Text, nullable=False),
    sa.Column("reason", sa.Text),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
)
states_table = sa.Table(
    "crossfade_states", _metadata,
    sa.Column("migration", sa.Text, primary_key=True),
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("state", sa.Text, nullable=False),
)
telemetry = sa.Table(
    "crossfade_telemetry", _metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("migration", sa.Text, nullable=False),
    sa.Column("stage", sa.Text, nullable=False),
    sa.Column("arm", sa.Text, nullable=False),
    sa.Column("window_start", sa.Double, nullable=False),
    sa.Column("window_length", sa.Double, nullable=False),
    sa.Column("cell", sa.Text, nullable=False),
    sa.Column("written_at", sa.Double, nullable=False),
    sa.Column("source", sa.Text),
    # The generation of the roll-up that added the row into its stage's totals (backends/totals.py); 0: none yet.
    sa.Column("rolled", sa.BigInteger, nullable=False, server_default="0"),
    sa.Index("ux_telemetry_source", "migration", "stage", "arm", "window_start", "source", unique=True),
    sa.Index("ix_telemetry_stage_id", "migration", "stage", "id"),
    sa.Index("ix_telemetry_unrolled", "migration", "stage", "id", sqlite_where=sa.text("rolled = 0"),
             postgresql_where=sa.text("rolled = 0")),
    sqlite_autoincrement=True,  # ids are never handed out twice (revision 0009)
)
leases = sa.Table(
    "crossfade_leases", _metadata,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("holder", sa.Text, nullable=False),
    sa.Column("expires_at", sa.Double, nullable=False),
    sa.Column("acquired_at", sa.Double, nullable=False),
)

tokens_table = sa.Table(
    "crossfade_tokens", _metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("role", sa.Text, nullable=False),
    sa.Column("hash", sa.String(128), nullable=False, unique=True),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("revoked_at", sa.Double),
    sa.Column("migrations", sa.Text),
)

shadow_fields = sa.Table(
    "crossfade_shadow_fields", _metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("migration", sa.Text, nullable=False),
    sa.Column("stage", sa.Text, nullable=False),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("window_start", sa.Double, nullable=False),
    sa.Column("window_length", sa.Double, nullable=False),
    *(sa.Column(name, sa.BigInteger, nullable=False) for name in COUNTERS),
    sa.Column("written_at", sa.Double, nullable=False),
)
shadow_examples = sa.Table(
    "crossfade_shadow_examples", _metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("migration", sa.Text, nullable=False),
    sa.Column("stage", sa.Text, nullable=False),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("time", sa.Double, nullable=False),
    sa.Column("detail", sa.Text, nullable=False),
)


def head_revision() -> str:
    """The schema revision this version of crossfade works with."""
    return _head(SCRIPT_LOCATION)


_REVISION_LINE = re.compile(r"^(down_revision|revision)\s*(?::[^=]*)?=\s*(.*)$", re.MULTILINE)
_QUOTED = re.compile(r"""["']([^"']+)["']""")


@functools.lru_cache(maxsize=4)
def _head(location: str) -> str:
    # Read from the revision files' `revision = "..."` and `down_revision = "..."` lines rather than through
    # Alembic, whose import (with Mako's) would otherwise be paid by every connect.
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in sorted(Path(location, "versions").glob("*.py")):
        for name, value in _REVISION_LINE.findall(path.read_text(encoding="utf-8")):
            (revisions if name == "revision" else parents).update(_QUOTED.findall(value))
    heads = revisions - parents
    if len(heads) != 1:
        # Branches or a layout this reader does not follow: Alembic answers (or says what is wrong).
        from alembic.script import ScriptDirectory

        head = ScriptDirectory.from_config(_alembic_config(location)).get_current_head()
        assert head is not None, f"no alembic revisions under {location}"
        return head
    return heads.pop()


def current_revision(engine: Engine) -> str | None:
    """The schema revision a database is at; None when crossfade's tables were never created in it."""
    with _GATE.passage(), engine.connect() as conn:
        return _revision(conn)


def upgrade(url: str, *, init_empty: bool = False) -> tuple[str | None, str]:
    """Bring the database at `url` to the newest schema (creating a SQLite file if missing).

    Returns the revision before and after; running it again is harmless. Safe against concurrent runs.
    An existing empty (0-byte) SQLite file is refused unless `init_empty`: crossfade never leaves one.
    """
    store = _Store(url, create=True, init_empty=init_empty)
    try:
        with store.guard("upgrading the schema"):
            return store.migrate(lambda before: True)
    finally:
        with store.use():
            store.engine.dispose()


class SQLBackend:
    """A Backend over SQLAlchemy Core: a SQLite file for one host, PostgreSQL for many. Thread-safe.

    `url` is `sqlite:///relative/path.db`, `sqlite:////absolute/path.db`, `sqlite://` (in memory, one
    process), or `postgresql://user:password@host:port/db` (also `postgres://`, `postgresql+psycopg://`).
    With `create`, a database without crossfade's tables gets them (a missing SQLite file is created);
    a database at an older schema revision is refused until `crossfade db upgrade` is run.
    """

    def __init__(self, url: str, *, create: bool = True) -> None:
        self._store = _Store(url, create=create)
        self.url = redact_url(url)
        self.dialect: str = self._store.dialect
        self.engine: Engine = self._store.engine  # for tools and tests that need raw SQL
        self.outbox = SQLOutbox(self._store)
        self._totals = SQLStageTotals(self._store, telemetry, self._cell, TELEMETRY_PAGE)
        # Telemetry rows that could not be read as cells (written by an older server, or by hand): each
        # reader skips them, and /metrics shows how many were met.
        self.skipped_rows = 0
        self._bad_rows: set[int] = set()
        try:
            with self._store.guard("opening the store"):
                self._check_schema(create)
        except BaseException:
            with self._store.use():
                self.engine.dispose()
            raise

    def _check_schema(self, create: bool) -> None:
        head = head_revision()
        if self._store.quick_revision() == head:
            return

        def decide(before: str | None) -> bool:
            if before is None and create:
                return True
            if before == head:
                return False
            raise BackendError(self._store.schema_problem(before, head))

        self._store.migrate(decide)

    def append(
        self,
        migration: str,
        expected_seq: int,
        events: Sequence[Event],
        *,
        state: State,
        spec: Mapping[str, Any] | None = None,
    ) -> None:
        """Atomically append events numbered `expected_seq + 1...`, store `state` as the snapshot and, when
        given, `spec` as the version numbered by the first event's seq. ConflictError if another writer
        appended first."""
        _check_batch(migration, expected_seq, events, state)
        event_rows = [
            {**e.body(), "payload": canonical_json(dict(e.payload)), "hash": e.hash} for e in events
        ]
        state_json = canonical_json(state.to_dict())
        with self._store.guard(f"appending to {migration}"), self._store.write() as conn:
            found = conn.scalar(
                sa.select(sa.func.coalesce(sa.func.max(events_table.c.seq), 0)).where(
                    events_table.c.migration == migration
                )
            )
            if found != expected_seq:
                raise _conflict(migration, expected_seq, found)
            try:
                conn.execute(events_table.insert(), event_rows)
            except sa_exc.IntegrityError as e:
                # A writer that read the same last seq committed first (PostgreSQL; SQLite serializes writers).
                raise _conflict(migration, expected_seq, "a newer one") from e
            self._store.upsert_state(conn, migration, state.seq, state_json)
            if spec is not None:
                text = canonical_json(dict(spec))
                conn.execute(
                    specs.insert().values(
                        migration=migration, version=events[0].seq, spec=text,
                        digest=hashlib.sha256(text.encode()).hexdigest(), created_at=time.time(),
                    )
                )

    def events(self, migration: str, *, after: int = 0, limit: int | None = None) -> list[Event]:
        """The migration's events with seq > `after`, in order, at most `limit`, exactly as stored."""
        query = (
            sa.select(events_table)
            .where(events_table.c.migration == migration, events_table.c.seq > after)
            .order_by(events_table.c.seq)
            .limit(limit)
        )
        with self._store.guard(f"reading the events of {migration}"), self._store.read() as conn:
            rows = conn.execute(query).mappings().all()
        return [Event.from_dict({**row, "payload": json.loads(row["payload"])}) for row in rows]

    def state(self, migration: str) -> State | None:
        """The migration's stored state snapshot, or None if it was never applied."""
        query = sa.select(states_table.c.state).where(states_table.c.migration == migration)
        with self._store.guard(f"reading the state of {migration}"), self._store.read() as conn:
            text = conn.scalar(query)
        return None if text is None else State.from_dict(json.loads(text))

    def states(self) -> list[State]:
        """Every migration's state snapshot, ordered by name."""
        query = sa.select(states_table.c.state).order_by(states_table.c.migration)
        with self._store.guard("reading the migrations"), self._store.read() as conn:
            texts = conn.scalars(query).all()
        return [State.from_dict(json.loads(t)) for t in texts]

    def spec(self, migration: str, version: int | None = None) -> dict[str, Any] | None:
        """The spec stored at `version` (the latest when None), or None."""
        query = sa.select(specs.c.spec).where(specs.c.migration == migration)
        if version is None:
            query = query.order_by(specs.c.version.desc()).limit(1)
        else:
            query = query.where(specs.c.version == version)
        with self._store.guard(f"reading the spec of {migration}"), self._store.read() as conn:
            text = conn.scalar(query)
        return None if text is None else json.loads(text)

    def write_windows(self, windows: Sequence[Window]) -> None:
        """Store telemetry windows in one transaction, one row each; rows for one window add up on read."""
        if not windows:
            return
        now = time.time()
        rows = [
            {
                "migration": w.migration, "stage": w.stage, "arm": w.arm, "window_start": w.start,
                "window_length": w.length, "written_at": now, "source": w.key,
                # Not canonical_json: a NaN cost someone recorded must not make every later flush fail.
                "cell": json.dumps(w.cell.to_dict(), separators=(",", ":")),
            }
            for w in windows
        ]
        # A row whose key is stored already is a retry of a write whose answer was lost: it adds nothing.
        insert = self._store.insert(telemetry).on_conflict_do_nothing(
            index_elements=["migration", "stage", "arm", "window_start", "source"])
        with self._store.guard("writing telemetry"), self._store.write() as conn:
            conn.execute(insert, rows)

    def windows(
        self, migration: str, *, stage: str | None = None, since: float | None = None, until: float | None = None
    ) -> list[Window]:
        """Telemetry windows of a migration starting in [since, until), ordered by start, arm and stage.

        Rows written separately for the same window (by several processes, or one process twice) come
        back merged into one Window.
        """
        t = telemetry.c
        query = sa.select(t.id, t.stage, t.arm, t.window_start, t.window_length, t.cell).where(t.migration == migration)
        if stage is not None:
            query = query.where(t.stage == stage)
        if since is not None:
            query = query.where(t.window_start >= since)
        if until is not None:
            query = query.where(t.window_start < until)
        with self._store.guard(f"reading the telemetry of {migration}"), self._store.read() as conn:
            rows = conn.execute(query).all()
        cells: dict[tuple[float, str, str, float], Cell] = {}
        for row_id, row_stage, arm, start, length, text in rows:
            cell = self._cell(row_id, migration, row_stage, arm, start, text)
            if cell is None:
                continue
            key = (start, arm, row_stage, length)
            if key in cells:
                cells[key].merge(cell)
            else:
                cells[key] = cell
        return [
            Window(migration, row_stage, arm, start, length, cell)
            for (start, arm, row_stage, length), cell in sorted(cells.items(), key=lambda kv: kv[0])
        ]

    def telemetry_ids(self, migration: str, *, stage: str, after_id: int, upto: int,
                      rolled_after: int | None = None) -> list[int]:
        """The ids of one stage's rows in (after_id, upto]; with `rolled_after`, only those not rolled up
        into its totals by then (by a generation up to it)."""
        t = telemetry.c
        query = sa.select(t.id).where(t.migration == migration, t.stage == stage, t.id <= upto)
        if rolled_after is not None:
            query = query.where(sa.or_(t.rolled == 0, t.rolled > rolled_after))
        ids: list[int] = []
        with self._store.guard(f"reading the telemetry of {migration}"), self._store.read() as conn:
            last = after_id
            while True:  # in pages, as `telemetry_rows`: no statement meets the timeout
                page = list(conn.scalars(query.where(t.id > last).order_by(t.id).limit(TELEMETRY_PAGE)))
                ids += page
                if len(page) < TELEMETRY_PAGE:
                    return ids
                last = page[-1]

    def telemetry_rows(self, migration: str, *, stage: str, after_id: int,
                       also: Collection[int] = ()) -> list[tuple[int, Window]]:
        """One stage's rows with an id above `after_id` or in `also`, unmerged, with their ids, in id order."""
        t = telemetry.c
        stage_rows = (sa.select(t.id, t.arm, t.window_start, t.window_length, t.cell)
                      .where(t.migration == migration, t.stage == stage))
        rows: list[Any] = []
        with self._store.guard(f"reading the telemetry of {migration}"), self._store.read() as conn:
            if also:
                rows += conn.execute(stage_rows.where(t.id.in_(list(also)), t.id <= after_id).order_by(t.id)).all()
            # In pages by id: the first read of a long stage (a day of a hundred hosts is millions of rows)
            # is many short statements, none of which meets the statement timeout.
            last = after_id
            while True:
                page = conn.execute(stage_rows.where(t.id > last).order_by(t.id).limit(TELEMETRY_PAGE)).all()
                rows += page
                if len(page) < TELEMETRY_PAGE:
                    break
                last = page[-1][0]
        out = []
        for row_id, arm, start, length, text in rows:
            cell = self._cell(row_id, migration, stage, arm, start, text)
            if cell is not None:
                out.append((row_id, Window(migration, stage, arm, start, length, cell)))
        return out

    def _cell(self, row_id: int, migration: str, stage: str, arm: str, start: float, text: str) -> Cell | None:
        """A stored row's cell, checked; None (skipped, counted, logged once) for a row that is not one."""
        try:
            return check_cell(json.loads(text))
        except ValueError as exc:  # CellError, or text that is not JSON: never fatal to a reader
            if row_id not in self._bad_rows:
                self._bad_rows.add(row_id)
                self.skipped_rows += 1
                log.warning("skipped bad telemetry row %s of %s (%s %s at %s): %s", row_id, migration, stage, arm,
                            start, exc)
            return None

    def roll_up(self, migration: str, *, stage: str, entered: float, before: float,
                windows_before: float | None = None) -> int:
        """Add a stay's rows of windows that ended by `before` into its hourly totals, and of those that ended
        by `windows_before` into per-window totals, a page at a time; returns the rows taken (call again while
        that is a full page). See backends/totals.py."""
        return self._totals.roll_up(migration, stage=stage, entered=entered, before=before,
                                    windows_before=windows_before)

    def stage_snapshot(self, migration: str, *, stage: str, entered: float) -> StageSnapshot:
        """A stay's hourly and per-window totals and its rows not rolled into them, read in one snapshot."""
        return self._totals.snapshot(migration, stage=stage, entered=entered)

    def compact_telemetry(self, *, before: float) -> tuple[int, int]:
        """Merge the rows of each window that ended before `before` (one a process) into one row, kept
        under the lowest of their ids so an incremental reader that has read them reads nothing twice.
        Only rows rolled up by the same generation (or none) are merged, so the totals stay exact.
        Exact: cells add up. Returns (rows before, rows after), one transaction per migration."""
        t = telemetry.c
        with self._store.guard("reading the telemetry's migrations"), self._store.read() as conn:
            names = list(conn.scalars(sa.select(t.migration).distinct()))
        total_before = total_after = 0
        for name in names:
            old = (t.migration == name, t.window_start + t.window_length < before, t.written_at < before)
            with self._store.guard(f"compacting the telemetry of {name}"), self._store.write() as conn:
                self._totals.lock(conn, name)
                rows = conn.execute(sa.select(t.id, t.stage, t.arm, t.window_start, t.window_length, t.rolled,
                                              t.cell).where(*old).order_by(t.id)).all()
                groups: dict[tuple[str, str, float, float, int], list[tuple[int, str]]] = {}
                for row_id, stage, arm, start, length, rolled, text in rows:
                    groups.setdefault((stage, arm, start, length, rolled), []).append((row_id, text))
                merged, drop = [], []
                for members in groups.values():
                    if len(members) < 2:
                        continue
                    cell = Cell()
                    for _, text in members:
                        cell.merge(Cell.from_dict(json.loads(text)))
                    merged.append({"keep": members[0][0], "merged": json.dumps(cell.to_dict(), separators=(",", ":"))})
                    drop += [row_id for row_id, _ in members[1:]]
                if merged:
                    conn.execute(telemetry.update().where(t.id == sa.bindparam("keep"))
                                 .values(cell=sa.bindparam("merged")), merged)
                    for i in range(0, len(drop), 500):
                        conn.execute(telemetry.delete().where(t.id.in_(drop[i:i + 500])))
                total_before += len(rows)
                total_after += len(rows) - len(drop)
        return total_before, total_after

    def prune(self, *, before: float, keep: Collection[tuple[str, str]] = ()) -> dict[str, int]:
        """Delete telemetry windows, stage totals and shadow comparison rows that ended before `before`, and
        mismatch examples taken before it, except those of the (migration, stage) pairs in `keep` (the stages
        running now). Returns how many rows of each went."""
        t, c, x = telemetry.c, shadow_fields.c, shadow_examples.c
        spared_t = [sa.and_(t.migration == m, t.stage == s) for m, s in keep]
        spared_c = [sa.and_(c.migration == m, c.stage == s) for m, s in keep]
        spared_x = [sa.and_(x.migration == m, x.stage == s) for m, s in keep]
        removed = {}
        with self._store.guard("pruning old telemetry"), self._store.write() as conn:
            removed["telemetry"] = conn.execute(telemetry.delete().where(
                t.window_start + t.window_length < before, *([sa.not_(sa.or_(*spared_t))] if keep else []))).rowcount
            removed["totals"] = self._totals.prune(conn, before=before, keep=list(keep))
            removed["comparisons"] = conn.execute(shadow_fields.delete().where(
                c.window_start + c.window_length < before, *([sa.not_(sa.or_(*spared_c))] if keep else []))).rowcount
            removed["examples"] = conn.execute(shadow_examples.delete().where(
                x.time < before, *([sa.not_(sa.or_(*spared_x))] if keep else []))).rowcount
        return removed

    def write_comparisons(self, rows: Sequence[FieldWindow], examples: Sequence[Example], *, keep: int = 20) -> None:
        """Store comparison counts (rows add up on read) and examples, keeping the newest `keep` per
        migration and field path, in one transaction."""
        if not rows and not examples:
            return
        now = time.time()
        count_rows = [
            {"migration": r.migration, "stage": r.stage, "path": r.path, "window_start": r.start,
             "window_length": r.length, "written_at": now, **{name: int(r[name]) for name in COUNTERS}}
            for r in rows
        ]
        example_rows = [
            {"migration": e.migration, "stage": e.stage, "path": e.path, "time": e.time,
             "detail": json.dumps(dict(e.detail), separators=(",", ":"), default=repr)}
            for e in examples
        ]
        e = shadow_examples.c
        with self._store.guard("writing shadow comparisons"), self._store.write() as conn:
            if count_rows:
                conn.execute(shadow_fields.insert(), count_rows)
            if example_rows:
                conn.execute(shadow_examples.insert(), example_rows)
                for migration, path in {(x["migration"], x["path"]) for x in example_rows}:
                    # The id of the oldest example kept; a LIMIT inside NOT IN is refused by some databases.
                    kept = (
                        sa.select(e.id).where(e.migration == migration, e.path == path)
                        .order_by(e.id.desc()).limit(keep).subquery()
                    )
                    oldest_kept = sa.select(sa.func.min(kept.c.id)).scalar_subquery()
                    conn.execute(
                        shadow_examples.delete().where(
                            e.migration == migration, e.path == path, e.id < oldest_kept
                        )
                    )

    def comparisons(self, migration: str, *, stage: str | None = None) -> list[FieldWindow]:
        """Comparison counts of a migration, one row per stage and field path, summed over every window (the
        row's start and length span them all)."""
        f = shadow_fields.c
        query = sa.select(f.stage, f.path, sa.func.min(f.window_start), sa.func.max(f.window_start + f.window_length),
                          *(sa.func.sum(getattr(f, name)) for name in COUNTERS)
                          ).where(f.migration == migration).group_by(f.stage, f.path).order_by(f.stage, f.path)
        if stage is not None:
            query = query.where(f.stage == stage)
        with self._store.guard(f"reading the comparisons of {migration}"), self._store.read() as conn:
            found = conn.execute(query).all()
        out = []
        for row_stage, path, first, end, *sums in found:
            counts = {name: int(v) for name, v in zip(COUNTERS, sums, strict=True) if v}
            out.append(FieldWindow(migration, row_stage, path, float(first), float(end - first), counts))
        return out

    def examples(self, migration: str, *, stage: str | None = None, path: str | None = None,
                 limit: int | None = None) -> list[Example]:
        """Kept mismatch examples of a migration, newest first."""
        e = shadow_examples.c
        query = sa.select(e.stage, e.path, e.time, e.detail).where(e.migration == migration)
        if stage is not None:
            query = query.where(e.stage == stage)
        if path is not None:
            query = query.where(e.path == path)
        query = query.order_by(e.id.desc()).limit(limit)
        with self._store.guard(f"reading the examples of {migration}"), self._store.read() as conn:
            found = conn.execute(query).all()
        return [Example(migration, st, p, t, json.loads(d)) for st, p, t, d in found]

    def acquire_lease(self, name: str, holder: str, ttl: float, now: float) -> bool:
        """Take or renew the lease `name` for `holder` until `now + ttl`; False while another holder's
        lease has not expired. Taking and renewing are one transaction, so two holders never both win."""
        with self._store.guard(f"taking the lease {name}"), self._store.write() as conn:
            query = sa.select(leases.c.holder, leases.c.expires_at).where(leases.c.name == name)
            if self._store.dialect == "postgresql":
                query = query.with_for_update()
            row = conn.execute(query).first()
            if row is None:
                try:
                    with conn.begin_nested():
                        conn.execute(leases.insert().values(name=name, holder=holder, expires_at=now + ttl,
                                                            acquired_at=now))
                except sa_exc.IntegrityError:
                    return False  # another holder inserted it first
                return True
            if row.holder != holder and row.expires_at > now:
                return False
            values = {"holder": holder, "expires_at": now + ttl}
            if row.holder != holder:
                values["acquired_at"] = now
            conn.execute(leases.update().where(leases.c.name == name).values(**values))
            return True

    def acquire_leases(self, ttls: Mapping[str, float], holder: str, now: float) -> set[str]:
        """Take or renew many leases for `holder` at once (each until `now` + its ttl), in one statement; the
        names taken. Each lease is decided as `acquire_lease` decides it: one held by another holder and not
        expired stays theirs."""
        if not ttls:
            return set()  # no write transaction (SQLite's takes the write lock) for nothing
        # In the order of the names, so two holders taking overlapping sets lock rows in one order: no deadlock.
        # A statement per 500 names keeps under SQLite's limit of bound values.
        rows = [{"name": name, "holder": holder, "expires_at": now + ttl, "acquired_at": now}
                for name, ttl in sorted(ttls.items())]
        taken: set[str] = set()
        with self._store.guard(f"taking {len(ttls)} leases"), self._store.write() as conn:
            for i in range(0, len(rows), 500):
                new = self._store.insert(leases).values(rows[i:i + 500])
                # The row is updated only where the holder is this one or the lease expired, and RETURNING
                # lists the rows inserted or updated: decided under the row's lock, so two holders never both win.
                taken |= set(conn.scalars(new.on_conflict_do_update(
                    index_elements=["name"],
                    set_={"holder": new.excluded.holder, "expires_at": new.excluded.expires_at,
                          "acquired_at": sa.case((leases.c.holder == new.excluded.holder, leases.c.acquired_at),
                                                 else_=new.excluded.acquired_at)},
                    where=sa.or_(leases.c.holder == new.excluded.holder, leases.c.expires_at <= now),
                ).returning(leases.c.name)))
        return taken

    def lease_holders(self, prefix: str, now: float) -> list[str]:
        """The holders of the unexpired leases whose names start with `prefix`, sorted."""
        escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        query = (sa.select(leases.c.holder).distinct()
                 .where(leases.c.name.like(escaped + "%", escape="\\"), leases.c.expires_at > now)
                 .order_by(leases.c.holder))
        with self._store.guard("reading the leases"), self._store.read() as conn:
            return list(conn.scalars(query))

    def release_lease(self, name: str, holder: str) -> None:
        """Give the lease up, if `holder` holds it, so another can take it at once."""
        with self._store.guard(f"releasing the lease {name}"), self._store.write() as conn:
            conn.execute(leases.delete().where(leases.c.name == name, leases.c.holder == holder))

    def create_token(self, name: str, role: str, token_hash: str, now: float, *,
                     migrations: Sequence[str] = ()) -> TokenRecord:
        """Store a new token by its hash, bound to `migrations` when given (none: every migration);
        ConflictError when an unrevoked token already has this name."""
        t = tokens_table.c
        with self._store.guard(f"creating the token {name}"), self._store.write() as conn:
            taken = conn.scalar(sa.select(sa.func.count()).where(t.name == name, t.revoked_at.is_(None)))
            if taken:
                raise ConflictError(f"a token named {name!r} exists; revoke it first (crossfade token revoke {name})"
                                    " or choose another name")
            conn.execute(tokens_table.insert().values(name=name, role=role, hash=token_hash, created_at=now,
                                                      migrations=",".join(migrations) or None))
        return TokenRecord(name, role, token_hash, now, None, tuple(migrations))

    def tokens(self) -> list[TokenRecord]:
        """Every token ever created (revoked ones too), oldest first."""
        t = tokens_table.c
        query = sa.select(t.name, t.role, t.hash, t.created_at, t.revoked_at, t.migrations).order_by(t.id)
        with self._store.guard("reading the tokens"), self._store.read() as conn:
            return [_token(row) for row in conn.execute(query).all()]

    def revoke_token(self, name: str, now: float) -> int:
        """Revoke the unrevoked tokens named `name`; returns how many were revoked."""
        t = tokens_table.c
        with self._store.guard(f"revoking the token {name}"), self._store.write() as conn:
            result = conn.execute(
                tokens_table.update().where(t.name == name, t.revoked_at.is_(None)).values(revoked_at=now)
            )
        return int(result.rowcount or 0)

    def token_by_hash(self, token_hash: str) -> TokenRecord | None:
        """The unrevoked token with this hash, or None."""
        t = tokens_table.c
        query = sa.select(t.name, t.role, t.hash, t.created_at, t.revoked_at, t.migrations).where(
            t.hash == token_hash, t.revoked_at.is_(None))
        with self._store.guard("looking a token up"), self._store.read() as conn:
            row = conn.execute(query).first()
        return None if row is None else _token(row)

    def after_fork(self) -> None:
        """In a forked child: a new engine and locks; nothing the parent's threads may have held is touched
        (its pooled connections are left for the parent to close)."""
        self._store = self._store.reopened()
        self.engine = self._store.engine

    def close(self) -> None:
        """Release every pooled connection."""
        with self._store.use():
            self.engine.dispose()

    def __repr__(self) -> str:
        return f"SQLBackend({self._store.display!r})"


def _token(row: Any) -> TokenRecord:
    name, role, digest, created_at, revoked_at, migrations = row
    return TokenRecord(name, role, digest, created_at, revoked_at, tuple(migrations.split(",")) if migrations else ())


def _check_batch(migration: str, expected_seq: int, events: Sequence[Event], state: State) -> None:
    if not events:
        raise ValueError(f"append to {migration}: no events given")
    for offset, event in enumerate(events, start=1):
        if event.migration != migration:
            raise ValueError(f"append to {migration}: event {event.seq} belongs to {event.migration}")
        if event.seq != expected_seq + offset:
            raise ValueError(
                f"append to {migration}: events must be numbered {expected_seq + 1}.. consecutively, "
                f"found {event.seq} at position {offset}"
            )
    last = events[-1]
    if state.name != migration or state.seq != last.seq or state.head != last.hash:
        raise ValueError(
            f"append to {migration}: the state must be the fold up to the last event ({last.seq}), "
            f"got the state of {state.name} at event {state.seq}"
        )


def _conflict(migration: str, expected: int, found: object) -> ConflictError:
    return ConflictError(
        f"migration {migration} changed concurrently: expected event {expected} to be the last, "
        f"found {found}; re-read its state and retry"
    )


def _alembic_config(location: str | None = None) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", location or SCRIPT_LOCATION)
    return config


def _known(revision: str) -> bool:
    from alembic.script import ScriptDirectory

    try:
        ScriptDirectory.from_config(_alembic_config()).get_revision(revision)
    except Exception:  # alembic raises several types for an unknown or malformed revision id
        return False
    return True


def _revision(conn: Connection) -> str | None:
    if not sa.inspect(conn).has_table(VERSION_TABLE):
        return None
    return conn.scalar(sa.text(f"SELECT version_num FROM {VERSION_TABLE}"))


class _ForkGate:
    """Keeps `os.fork()` out of SQLite: a fork waits until no thread of this process is using a connection.

    SQLite's mutexes (its allocator's among them) have no at-fork handlers: a child forked while another
    thread holds one hangs for ever on its first SQLite call. Every use of a SQLite connection passes
    through the gate; a fork closes it first (waiting for those inside to leave), and the child starts with
    new engines.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._inside = 0
        self._forking = False

    @contextmanager
    def passage(self) -> Iterator[None]:
        """Hold the gate open for one use of SQLite."""
        with self._cond:
            while self._forking:
                self._cond.wait()
            self._inside += 1
        try:
            yield
        finally:
            with self._cond:
                self._inside -= 1
                if not self._inside:
                    self._cond.notify_all()

    def close_for_fork(self) -> None:
        """Before a fork: wait until nobody is inside, and keep everyone out until `reopen`."""
        self._cond.acquire()
        self._forking = True
        while self._inside:
            self._cond.wait()

    def reopen(self) -> None:
        """After a fork, in the parent and in the child: let the waiting threads in."""
        self._forking = False
        self._cond.notify_all()
        self._cond.release()


_GATE = _ForkGate()

if hasattr(os, "register_at_fork"):
    # The child reopens the same gate: a thread it starts in an earlier at-fork handler may already be
    # waiting at it, and nobody was inside at the fork.
    os.register_at_fork(before=_GATE.close_for_fork, after_in_parent=_GATE.reopen, after_in_child=_GATE.reopen)


class _Store:
    """An engine set up for one URL's dialect, with its transactions, locks and error translation."""

    def __init__(self, url: str, *, create: bool, init_empty: bool = False) -> None:
        self.url = url
        self.display = redact_url(url)
        self.init_empty = init_empty
        try:
            parsed = make_url(url)
        except sa_exc.ArgumentError as e:
            raise InvalidURL(f"cannot parse database URL {self.display!r}: {e}") from None
        backend = parsed.get_backend_name()
        # Only one thread at a time may use the single connection of an in-memory database.
        self._serial: Callable[[], AbstractContextManager[Any]] = nullcontext
        if backend == "sqlite":
            self.dialect = "sqlite"
            self.engine = self._sqlite_engine(url, parsed, create)
        elif backend in ("postgresql", "postgres"):
            self.dialect = "postgresql"
            self.display = redact_url(parsed.render_as_string(hide_password=False))
            self.engine = self._postgres_engine(parsed)
        else:
            raise InvalidURL(
                f"unsupported database URL {self.display!r}: use sqlite:///path/to/file.db or "
                "postgresql://user@host:5432/db"
            )

    def _sqlite_engine(self, url: str, parsed: URL, create: bool) -> Engine:
        if parsed.query or parsed.host or parsed.drivername not in ("sqlite", "sqlite+pysqlite"):
            raise InvalidURL(
                f"unsupported SQLite URL {redact_url(url)!r}: use sqlite:///relative/path.db or sqlite:////absolute/path.db"
            )
        name = parsed.database or ""
        if name in ("", ":memory:"):
            lock = threading.RLock()
            self._serial = lambda: lock
            with _GATE.passage():
                memory = sqlite3.connect(":memory:", check_same_thread=False)
            engine = sa.create_engine("sqlite://", creator=lambda: memory, poolclass=StaticPool)
        else:
            path = Path(name).expanduser().absolute()
            if not path.exists():
                if not create:
                    raise BackendUnavailable(f"cannot open {url}: {path} does not exist")
                if not path.parent.is_dir():
                    raise BackendUnavailable(f"cannot create {url}: directory {path.parent} does not exist")
                with _GATE.passage():
                    _new_sqlite_file(path, url)
            elif path.is_file() and path.stat().st_size == 0 and not self.init_empty:
                # crossfade creates a store whole (see _new_sqlite_file), so an empty file was truncated or
                # made by something else: treating it as new would silently start history over.
                raise BackendError(
                    f"{path} is an empty file (0 bytes), not a crossfade store: it may have been truncated. "
                    f"Restore it from a backup, or to start a new store there run: "
                    f"crossfade db upgrade --init-empty --url {url}")
            return _sqlite_file_engine(path)
        _sqlite_events(engine, file_backed=False)
        return engine

    def _postgres_engine(self, parsed: URL) -> Engine:
        if parsed.drivername in ("postgresql", "postgres"):
            parsed = parsed.set(drivername="postgresql+psycopg")
        # Fail fast on a server that is down, and notice a silent network partition on an open
        # connection within about half a minute instead of hanging the caller; the URL's own values win.
        defaults = {
            "connect_timeout": POSTGRES_CONNECT_TIMEOUT_S, "application_name": "crossfade",
            "keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3,
            "tcp_user_timeout": 30_000,
            "options": f"-c statement_timeout={POSTGRES_STATEMENT_TIMEOUT_MS} "
                       f"-c lock_timeout={POSTGRES_STATEMENT_TIMEOUT_MS}",
        }
        try:
            return sa.create_engine(
                parsed,
                pool_pre_ping=True,
                connect_args={k: v for k, v in defaults.items() if k not in parsed.query},
            )
        except ModuleNotFoundError as e:
            raise BackendError(
                f"{self.display} needs the PostgreSQL driver: pip install 'crossfade[postgres]' (from a clone of "
                f"the repository: pip install '.[postgres]') ({e})"
            ) from None

    def reopened(self) -> _Store:
        """In a forked child: the same store through a new engine, with new locks (nothing is connected yet).

        An in-memory SQLite database lives in its one connection: the child keeps using its copy of it."""
        twin = object.__new__(_Store)
        twin.url, twin.display, twin.dialect, twin._serial = self.url, self.display, self.dialect, nullcontext
        if self.dialect == "postgresql":
            twin.engine = twin._postgres_engine(make_url(self.url))
        elif (make_url(self.url).database or "") in ("", ":memory:"):
            lock = threading.RLock()
            twin._serial = lambda: lock
            twin.engine = self.engine
        else:
            twin.engine = _sqlite_file_engine(Path(make_url(self.url).database or "").expanduser().absolute())
        return twin

    @contextmanager
    def use(self) -> Iterator[None]:
        """Around any use of a connection: SQLite's fork gate, and the one-at-a-time lock of a memory database."""
        if self.dialect != "sqlite":
            yield
            return
        with _GATE.passage(), self._serial():
            yield

    def quick_revision(self) -> str | None:
        """The schema revision in one query, or None when it cannot be read (no schema yet, or an error that
        the slower, locked path will name)."""
        try:
            with self.read() as conn:
                return conn.scalar(sa.text(f"SELECT version_num FROM {VERSION_TABLE}"))
        except (sa_exc.SQLAlchemyError, sqlite3.Error):
            return None

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A connection in a read transaction."""
        with self.use(), self.engine.begin() as conn:
            yield conn

    @contextmanager
    def snapshot(self) -> Iterator[Connection]:
        """A connection in a read transaction whose statements all see the same committed data: SQLite's
        read transactions do; on PostgreSQL it takes REPEATABLE READ."""
        with self.use(), self.engine.connect() as conn:
            if self.dialect == "postgresql":
                conn = conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                yield conn

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A connection in a write transaction; on SQLite it holds the write lock from the start, so a
        read-then-write sequence inside it cannot interleave with another writer's."""
        with self.use(), self.engine.connect() as conn:
            conn.execution_options(sqlite_begin="IMMEDIATE")
            with conn.begin():
                yield conn

    def insert(self, table: sa.Table) -> Any:
        """An INSERT of the dialect, which knows ON CONFLICT."""
        if self.dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        return insert(table)

    def upsert_state(self, conn: Connection, migration: str, seq: int, text: str) -> None:
        """Insert or replace a migration's state snapshot."""
        stmt = self.insert(states_table).values(migration=migration, seq=seq, state=text)
        conn.execute(
            stmt.on_conflict_do_update(
                index_elements=[states_table.c.migration], set_={"seq": seq, "state": text}
            )
        )

    def migrate(self, decide: Callable[[str | None], bool]) -> tuple[str | None, str]:
        """Under the schema lock, read the revision, ask `decide(before)` whether to upgrade to head, and
        do it in the same transaction. Returns the revisions before and after."""
        with _ALEMBIC_LOCK, self.write() as conn:
            if self.dialect == "postgresql":
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_SCHEMA_LOCK_KEY)))
            before = _revision(conn)
            if decide(before):
                if before is not None and not _known(before):
                    raise BackendError(self.schema_problem(before, head_revision()))
                from alembic import command

                config = _alembic_config()
                config.attributes["connection"] = conn
                command.upgrade(config, "head")
            after = _revision(conn)
        assert after is not None
        return before, after

    def schema_problem(self, revision: str | None, head: str) -> str:
        """What is wrong with a database at `revision` when this crossfade needs `head`, and what to do."""
        if revision is None:
            return f"{self.display} has no crossfade tables yet; run: crossfade db upgrade --url {self.display}"
        if not _known(revision):
            return (
                f"{self.display} is at schema revision {revision}, which this crossfade does not know (it "
                f"needs {head}): the database was upgraded by a newer crossfade; upgrade the crossfade package"
            )
        return (
            f"{self.display} is at schema revision {revision}, this crossfade needs {head}; "
            f"run: crossfade db upgrade --url {self.display}"
        )

    @contextmanager
    def guard(self, action: str) -> Iterator[None]:
        """Turn driver errors into BackendUnavailable (cannot reach the store) or BackendError (other)."""
        try:
            yield
        except BackendError:
            raise
        except (sa_exc.OperationalError, sa_exc.InterfaceError, sqlite3.OperationalError) as e:
            cause = _cause(e)
            if "no such table" in cause or "no such column" in cause:
                raise BackendError(
                    f"{action} failed: {self.display} lacks crossfade's schema ({cause}); "
                    f"run: crossfade db upgrade --url {self.display}"
                ) from e
            raise BackendUnavailable(f"{action} failed: cannot use {self.display}: {cause}") from e
        except sa_exc.DBAPIError as e:
            if e.connection_invalidated:
                raise BackendUnavailable(f"{action} failed: lost the connection to {self.display}: {_cause(e)}") from e
            raise BackendError(f"{action} failed on {self.display}: {_cause(e)}") from e
        except (sa_exc.SQLAlchemyError, sqlite3.Error) as e:
            raise BackendError(f"{action} failed on {self.display}: {_cause(e)}") from e


def _new_sqlite_file(path: Path, url: str) -> None:
    """Create a SQLite file that is never seen empty: written under a temporary name, then linked into place.

    Another process creating the same store at the same moment wins the link, and this one uses its file.
    """
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.new")
    try:
        conn = sqlite3.connect(f"file:{quote(str(temporary))}?mode=rwc", uri=True)
        try:
            # Setting the application id writes the database header, so the file is a database, not 0 bytes.
            conn.execute("PRAGMA application_id = 1667654499")  # "cfsc"
            conn.commit()
        finally:
            conn.close()
        try:
            os.link(temporary, path)
        except FileExistsError:
            pass
    except (OSError, sqlite3.Error) as e:
        raise BackendUnavailable(f"cannot create {url}: {e}") from None
    finally:
        temporary.unlink(missing_ok=True)


def _sqlite_file_engine(path: Path) -> Engine:
    """An engine over an existing SQLite file."""
    # mode=rw never creates the file: once deleted, it stays deleted and every operation says so.
    # NullPool reopens it per operation, so no pooled handle keeps reading a deleted inode.
    target = f"file:{quote(str(path))}?mode=rw"
    engine = sa.create_engine(
        "sqlite://",
        creator=lambda: sqlite3.connect(target, uri=True, check_same_thread=False),
        poolclass=NullPool,
    )
    _sqlite_events(engine, file_backed=True)
    return engine


def _sqlite_events(engine: Engine, *, file_backed: bool) -> None:
    """Connection set-up: our own BEGIN, a busy timeout, and WAL mode for a file."""

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: sqlite3.Connection, _record: Any) -> None:
        # We send BEGIN ourselves: pysqlite's own is deferred and skipped before SELECT and DDL.
        dbapi_conn.isolation_level = None
        dbapi_conn.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        if file_backed and dbapi_conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            dbapi_conn.execute("PRAGMA journal_mode = WAL")

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN " + conn.get_execution_options().get("sqlite_begin", "DEFERRED"))


def _cause(error: BaseException) -> str:
    orig = getattr(error, "orig", None) or error
    return " ".join(str(orig).split()) or type(orig).__name__

