"""Per-stage running totals of telemetry in the SQL store: old windows rolled up by hour of the stage's stay,
newer ones by window.

A stage's telemetry is one row per process, arm and window: a day of a hundred processes is 1.7 million rows,
and reading the stage whole (a controller that starts, `crossfade status`, a /metrics scrape) parses them all.
The controller rolls the rows of windows older than what any trigger or change detector looks back over into
one total per hour and arm of the stay, and the rows of newer windows that have ended into one total per
window and arm (what every judge sees of them: the rows of one window merged), and marks them with the
roll-up's generation in the same transaction; a window's total moves into its hour once it is that old. Cells
add up exactly. The first look at a stage reads the totals and the rows not yet rolled, in one snapshot: what
it parses is bounded by the hours of the stay, the windows of the detail horizon and the rows written since
the last roll-up, not by the processes writing. Rows stay as written: whole reads, a rewritten window's key
(which still adds nothing) and compaction are as before, and a reader that already holds a row never counts
it twice.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import sqlalchemy as sa

from crossfade.telemetry import WINDOW_MARGIN, Cell, Window, in_stay, stay_hour

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

    from crossfade.backends.sql import _Store

# Seconds after which a row id handed out to a writer is surely committed or abandoned, by the database's
# clock (PostgreSQL hands ids out at insert and shows rows at commit; statements time out well before this).
SETTLE: Final = 120.0
# pg_advisory_xact_lock's first key for the roll-ups and compactions of one migration ("cfru").
_ROLLUP_LOCK_KEY: Final = 0x63667275
# Written into the statement, not bound: PostgreSQL's generic plans use the partial index only for a literal.
_NONE: Final = sa.literal(0, literal_execute=True)

_metadata = sa.MetaData()
stage_totals = sa.Table(
    "crossfade_stage_totals", _metadata,
    sa.Column("migration", sa.Text, primary_key=True),
    sa.Column("stage", sa.Text, primary_key=True),
    sa.Column("entered", sa.Double, primary_key=True),
    sa.Column("arm", sa.Text, primary_key=True),
    sa.Column("hour", sa.Double, primary_key=True),
    sa.Column("window_end", sa.Double, nullable=False),
    sa.Column("cell", sa.Text, nullable=False),
)
window_totals = sa.Table(
    "crossfade_window_totals", _metadata,
    sa.Column("migration", sa.Text, primary_key=True),
    sa.Column("stage", sa.Text, primary_key=True),
    sa.Column("entered", sa.Double, primary_key=True),
    sa.Column("arm", sa.Text, primary_key=True),
    sa.Column("window_start", sa.Double, primary_key=True),
    sa.Column("window_length", sa.Double, primary_key=True),
    sa.Column("cell", sa.Text, nullable=False),
)
rollups = sa.Table(
    "crossfade_rollups", _metadata,
    sa.Column("migration", sa.Text, primary_key=True),
    sa.Column("stage", sa.Text, primary_key=True),
    sa.Column("generation", sa.BigInteger, nullable=False),
    sa.Column("settled_id", sa.BigInteger, nullable=False),
    sa.Column("pending_id", sa.BigInteger, nullable=False),
    sa.Column("pending_at", sa.Double, nullable=False),
)


@dataclass(frozen=True, slots=True)
class StageSnapshot:
    """A stay of a stage as stored at one instant: its totals by hour and by window, the rows not rolled into
    them, and the marks a reader needs to add later rows exactly once.

    `hours` holds (arm, hour, end of its last window, cell); `windows` the totals of single windows (the
    rows of each window and arm merged). Every row with an id up to `top` was either rolled into `hours` or
    `windows` (by a generation up to `generation`), is in `rows`, or had not committed yet (then its id is
    above `settled`)."""

    generation: int
    settled: int
    top: int
    hours: list[tuple[str, float, float, Cell]]
    windows: list[Window]
    rows: list[tuple[int, Window]]


class SQLStageTotals:
    """The totals of the SQL store's stages: rolling rows up, reading a stay, and dropping what is pruned."""

    def __init__(self, store: _Store, telemetry: sa.Table, parse: Callable[..., Cell | None], page: int) -> None:
        self._store = store
        self._t = telemetry
        self._parse = parse  # a row's cell, or None for a row that is not one (skipped, counted by the backend)
        self._page = page

    def lock(self, conn: Connection, migration: str) -> None:
        """Serialize with every other roll-up or compaction of the migration until the transaction ends
        (SQLite's write transactions are serialized already)."""
        if self._store.dialect == "postgresql":
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_ROLLUP_LOCK_KEY, sa.func.hashtext(migration))))

    def _clock(self, conn: Connection) -> float:
        """The database's clock (one for every writer and reader), in seconds since the epoch."""
        if self._store.dialect == "postgresql":
            return float(conn.scalar(sa.text("SELECT extract(epoch FROM clock_timestamp())")))
        return float(conn.scalar(sa.text("SELECT (julianday('now') - 2440587.5) * 86400.0")))

    def roll_up(self, migration: str, *, stage: str, entered: float, before: float,
                windows_before: float | None = None) -> int:
        """Add the stay's rows not rolled yet whose windows ended by `before` into its hourly totals and, with
        `windows_before` (later than `before`), those whose windows ended by then into per-window totals, at
        most a page of rows, and mark them; move the window totals that ended by `before` into their hours;
        all in one transaction. Returns how many rows it took: call again while that is a full page. Running
        it twice, or in several controllers at once, adds each row once."""
        t = self._t.c
        upto = before if windows_before is None else max(before, windows_before)
        with self._store.guard(f"rolling up the telemetry of {migration}"), self._store.write() as conn:
            self.lock(conn, migration)
            mark = conn.execute(sa.select(rollups.c.generation, rollups.c.pending_id, rollups.c.pending_at)
                                .where(rollups.c.migration == migration, rollups.c.stage == stage)).first()
            rows = conn.execute(
                sa.select(t.id, t.arm, t.window_start, t.window_length, t.cell)
                .where(t.migration == migration, t.stage == stage, t.rolled == _NONE,
                       t.window_start >= entered - WINDOW_MARGIN, t.window_start + t.window_length <= upto)
                .order_by(t.id).limit(self._page)).all()
            now = self._clock(conn)
            top = conn.scalar(sa.select(sa.func.coalesce(sa.func.max(t.id), 0))
                              .where(t.migration == migration, t.stage == stage))
            generation = (mark.generation if mark else 0) + 1
            if mark is None:
                conn.execute(rollups.insert().values(migration=migration, stage=stage, generation=generation,
                                                     settled_id=0, pending_id=top, pending_at=now))
            else:
                settle = ({"settled_id": mark.pending_id, "pending_id": top, "pending_at": now}
                          if mark.pending_at <= now - SETTLE else {})
                conn.execute(rollups.update().where(rollups.c.migration == migration, rollups.c.stage == stage)
                             .values(generation=generation, **settle))
            added: dict[tuple[str, float], tuple[Cell, float]] = {}
            windows: dict[tuple[str, float, float], Cell] = {}

            def into_hour(arm: str, start: float, length: float, cell: Cell) -> None:
                key = (arm, stay_hour(start, entered))
                merged, end = added.get(key) or (Cell(), start + length)
                merged.merge(cell)
                added[key] = (merged, max(end, start + length))

            for arm, start, length, cell in self._take_windows(conn, migration, stage, entered, before):
                into_hour(arm, start, length, cell)
            for row_id, arm, start, length, text in rows:
                cell = self._parse(row_id, migration, stage, arm, start, text)
                if cell is None or not in_stay(start, length, entered):
                    continue  # marked all the same: a reader of the stay skips it too
                if start + length <= before:
                    into_hour(arm, start, length, cell)
                else:
                    windows.setdefault((arm, start, length), Cell()).merge(cell)
            if added:
                self._add(conn, migration, stage, entered, added)
            if windows:
                self._add_windows(conn, migration, stage, entered, windows)
            ids = [row[0] for row in rows]
            for i in range(0, len(ids), 500):
                conn.execute(self._t.update().where(t.id.in_(ids[i:i + 500])).values(rolled=generation))
            return len(rows)

    def _add(self, conn: Connection, migration: str, stage: str, entered: float,
             added: dict[tuple[str, float], tuple[Cell, float]]) -> None:
        s = stage_totals.c
        stay = (s.migration == migration, s.stage == stage, s.entered == entered)
        held = {(arm, hour): (Cell.from_dict(json.loads(text)), end) for arm, hour, end, text in conn.execute(
            sa.select(s.arm, s.hour, s.window_end, s.cell).where(*stay, s.hour.in_([h for _, h in added]))).all()}
        fresh, changed = [], []
        for (arm, hour), (cell, end) in added.items():
            row: dict[str, Any] = {"migration": migration, "stage": stage, "entered": entered, "arm": arm,
                                   "hour": hour}
            if (arm, hour) in held:
                total, last = held[(arm, hour)]
                total.merge(cell)
                changed.append({**{f"k_{k}": v for k, v in row.items()}, "window_end": max(last, end),
                                "cell": _text(total)})
            else:
                fresh.append({**row, "window_end": end, "cell": _text(cell)})
        if fresh:
            conn.execute(stage_totals.insert(), fresh)
        if changed:
            conn.execute(stage_totals.update().where(*(getattr(s, k) == sa.bindparam(f"k_{k}") for k in (
                "migration", "stage", "entered", "arm", "hour"))).values(
                window_end=sa.bindparam("window_end"), cell=sa.bindparam("cell")), changed)

    def _take_windows(self, conn: Connection, migration: str, stage: str, entered: float,
                      before: float) -> list[tuple[str, float, float, Cell]]:
        """Delete the stay's window totals that ended by `before` and hand them back (to go into their hours)."""
        w = window_totals.c
        old = (w.migration == migration, w.stage == stage, w.entered == entered,
               w.window_start + w.window_length <= before)
        taken = conn.execute(sa.select(w.arm, w.window_start, w.window_length, w.cell).where(*old)).all()
        if taken:
            conn.execute(window_totals.delete().where(*old))
        return [(arm, start, length, Cell.from_dict(json.loads(text))) for arm, start, length, text in taken]

    def _add_windows(self, conn: Connection, migration: str, stage: str, entered: float,
                     added: dict[tuple[str, float, float], Cell]) -> None:
        w = window_totals.c
        starts = [start for _, start, _ in added]
        # A range, not a list of starts: a page of rows may hold thousands of windows.
        held = {(arm, start, length): Cell.from_dict(json.loads(text)) for arm, start, length, text in conn.execute(
            sa.select(w.arm, w.window_start, w.window_length, w.cell).where(
                w.migration == migration, w.stage == stage, w.entered == entered,
                w.window_start >= min(starts), w.window_start <= max(starts))).all()}
        fresh, changed = [], []
        for (arm, start, length), cell in added.items():
            key = {"migration": migration, "stage": stage, "entered": entered, "arm": arm, "window_start": start,
                   "window_length": length}
            if (arm, start, length) in held:
                total = held[(arm, start, length)]
                total.merge(cell)
                changed.append({**{f"k_{k}": v for k, v in key.items()}, "cell": _text(total)})
            else:
                fresh.append({**key, "cell": _text(cell)})
        if fresh:
            conn.execute(window_totals.insert(), fresh)
        if changed:
            conn.execute(window_totals.update().where(*(getattr(w, k) == sa.bindparam(f"k_{k}") for k in (
                "migration", "stage", "entered", "arm", "window_start", "window_length"))).values(
                cell=sa.bindparam("cell")), changed)

    def snapshot(self, migration: str, *, stage: str, entered: float) -> StageSnapshot:
        """The stay as stored now: its totals and its rows not rolled up (from WINDOW_MARGIN before the entry),
        read in one snapshot, the rows in pages by id."""
        t, s, r, w = self._t.c, stage_totals.c, rollups.c, window_totals.c
        with self._store.guard(f"reading the telemetry of {migration}"), self._store.snapshot() as conn:
            mark = conn.execute(sa.select(r.generation, r.settled_id)
                                .where(r.migration == migration, r.stage == stage)).first()
            top = conn.scalar(sa.select(sa.func.coalesce(sa.func.max(t.id), 0))
                              .where(t.migration == migration, t.stage == stage))
            totals = conn.execute(sa.select(s.arm, s.hour, s.window_end, s.cell).where(
                s.migration == migration, s.stage == stage, s.entered == entered)).all()
            by_window = conn.execute(sa.select(w.arm, w.window_start, w.window_length, w.cell).where(
                w.migration == migration, w.stage == stage, w.entered == entered)).all()
            unrolled = (sa.select(t.id, t.arm, t.window_start, t.window_length, t.cell)
                        .where(t.migration == migration, t.stage == stage, t.rolled == _NONE,
                               t.window_start >= entered - WINDOW_MARGIN))
            found: list[Any] = []
            last = 0
            while True:
                page = conn.execute(unrolled.where(t.id > last).order_by(t.id).limit(self._page)).all()
                found += page
                if len(page) < self._page:
                    break
                last = page[-1][0]
        rows = []
        for row_id, arm, start, length, text in found:
            cell = self._parse(row_id, migration, stage, arm, start, text)
            if cell is not None:
                rows.append((row_id, Window(migration, stage, arm, start, length, cell)))
        return StageSnapshot(
            generation=mark.generation if mark else 0, settled=mark.settled_id if mark else 0, top=int(top),
            hours=[(arm, hour, end, Cell.from_dict(json.loads(text))) for arm, hour, end, text in totals],
            windows=[Window(migration, stage, arm, start, length, Cell.from_dict(json.loads(text)))
                     for arm, start, length, text in by_window],
            rows=rows)

    def prune(self, conn: Connection, *, before: float, keep: list[Any]) -> int:
        """In the caller's transaction: delete the totals whose last window ended before `before`, except
        those of the (migration, stage) pairs in `keep`. Returns how many went."""
        s, w = stage_totals.c, window_totals.c
        spared = [sa.and_(s.migration == m, s.stage == st) for m, st in keep]
        spared_w = [sa.and_(w.migration == m, w.stage == st) for m, st in keep]
        hours = conn.execute(stage_totals.delete().where(
            s.window_end < before, *([sa.not_(sa.or_(*spared))] if keep else []))).rowcount
        windows = conn.execute(window_totals.delete().where(
            w.window_start + w.window_length < before, *([sa.not_(sa.or_(*spared_w))] if keep else []))).rowcount
        return int(hours or 0) + int(windows or 0)


def _text(cell: Cell) -> str:
    return json.dumps(cell.to_dict(), separators=(",", ":"))
