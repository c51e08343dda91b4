"""The stage's telemetry read incrementally: what the controller sees equals a whole read, kept flat in the
stage's age, on a real SQLite store."""

from __future__ import annotations

import random

import pytest
from conftest import loose

from crossfade.backends.sql import SQLBackend
from crossfade.client import Client
from crossfade.controller import stage_cells
from crossfade.judge import check_triggers
from crossfade.spec import load_spec
from crossfade.stagedata import StageTelemetry, detail_horizon, stage_windows
from crossfade.telemetry import Cell, Window

T0 = 1_800_000_000.0
SPEC = {
    "name": "pricing",
    "stages": [{"name": "canary", "traffic": "10%"}, {"name": "half", "traffic": "50%"}, {"name": "all", "traffic": "100%"}],
    "triggers": [{"metric": "error_rate", "above": "20%", "window": "5m", "for": "1m"}],
}


@pytest.fixture
def store(sqlite_url):
    with Client(sqlite_url, clock=lambda: T0, background=False) as cf:
        cf.apply(SPEC)
        cf.migration("pricing").start()
    backend = SQLBackend(sqlite_url)
    yield backend
    backend.close()


def cell(rng: random.Random) -> Cell:
    c = Cell()
    c.calls = rng.randint(1, 30)
    c.errors = rng.randint(0, c.calls // 3)
    c.add_cost(rng.random())
    for _ in range(c.calls):
        c.latency.add(rng.lognormvariate(-3, 0.5))
    return c


def same(a: dict[str, Cell], b: dict[str, Cell]) -> bool:
    """Equal cells, but for the rounding of float sums (costs, latency totals) added in another order."""
    return loose({arm: c.to_dict() for arm, c in a.items()}) == {arm: c.to_dict() for arm, c in b.items()}


def write(backend: SQLBackend, rng: random.Random, start: float, processes: int) -> None:
    backend.write_windows([Window("pricing", "canary", arm, start, 10.0, cell(rng))
                           for _ in range(processes) for arm in ("legacy", "candidate")])


def test_what_the_controller_sees_equals_a_whole_read_however_often_it_looks(store):
    rng = random.Random(1)
    spec = load_spec(SPEC)
    kept = StageTelemetry()
    # Three hours of 10 s windows from three processes, one of them flushing late, looked at every 30 s.
    for step in range(3 * 360):
        now = T0 + 10 * (step + 1)
        write(store, rng, now - 10, processes=2)
        if step % 7 == 0:
            write(store, rng, now - 600, processes=1)  # a retry of a window ten minutes old
        if step % 9 == 0:
            state = store.state("pricing")
            seen = kept.windows(store, state, spec, now)
            whole = stage_windows(store, state)
            assert same(stage_cells(state, seen), stage_cells(state, whole))
            assert [f.message for f in check_triggers(spec, seen, now)] == \
                   [f.message for f in check_triggers(spec, whole, now)]
    # What is kept is flat in the stage's age: hours rolled up, plus the windows triggers look at.
    recent = detail_horizon(spec) / 10 + 61
    assert len(seen) <= 2 * (3 + recent)
    assert len(whole) > 2 * 3 * 350  # against every window written


def test_a_new_stage_starts_afresh(store, sqlite_url):
    rng = random.Random(2)
    spec = load_spec(SPEC)
    kept = StageTelemetry()
    write(store, rng, T0 + 10, processes=1)
    assert kept.windows(store, store.state("pricing"), spec, T0 + 30)
    with Client(sqlite_url, clock=lambda: T0 + 40, background=False) as cf:
        cf.migration("pricing").promote(reason="test", force=True)  # its random calls may be past a limit
    state = store.state("pricing")
    assert state.stage == "half"
    assert kept.windows(store, state, spec, T0 + 50) == []


def test_rows_before_the_stage_are_not_counted(store):
    rng = random.Random(3)
    spec = load_spec(SPEC)
    write(store, rng, T0 - 45, processes=1)   # ended before entry: not the stage's
    write(store, rng, T0 - 5, processes=1)    # began before entry, ran into it: the stage's first calls
    state = store.state("pricing")
    seen = StageTelemetry().windows(store, state, spec, T0 + 5 * 3600)
    assert same(stage_cells(state, seen), stage_cells(state, stage_windows(store, state)))
    assert min(w.start for w in seen) >= T0 - 5


def test_a_row_committed_after_higher_ids_is_still_read_on_postgresql(postgres_url):
    """PostgreSQL hands a row its id at insert and shows it at commit: a slow writer's row appears below
    rows the reader has already read."""
    import json

    import sqlalchemy as sa

    with Client(postgres_url, clock=lambda: T0, background=False) as cf:
        cf.apply(SPEC)
        cf.migration("pricing").start()
    backend = SQLBackend(postgres_url)
    rng = random.Random(4)
    spec = load_spec(SPEC)
    clock = [0.0]
    kept = StageTelemetry(monotonic=lambda: clock[0])
    slow = sa.create_engine(postgres_url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with slow.connect() as conn:
            late = cell(rng)
            conn.execute(sa.text(
                "INSERT INTO crossfade_telemetry (migration, stage, arm, window_start, window_length, cell, "
                "written_at) VALUES ('pricing', 'canary', 'legacy', :start, 10, :cell, :now)"),
                {"start": T0, "cell": json.dumps(late.to_dict()), "now": T0})
            write(backend, rng, T0 + 10, processes=2)  # committed first, with higher ids
            state = backend.state("pricing")
            kept.windows(backend, state, spec, T0 + 30)
            conn.commit()
        clock[0] += 10
        seen = kept.windows(backend, state, spec, T0 + 40)
        assert same(stage_cells(state, seen), stage_cells(state, stage_windows(backend, state)))
        assert sum(w.cell.calls for w in seen if w.start == T0) == late.calls
        clock[0] += 1000  # long after: the late row is not read twice
        again = kept.windows(backend, state, spec, T0 + 50)
        assert same(stage_cells(state, again), stage_cells(state, stage_windows(backend, state)))
    finally:
        slow.dispose()
        backend.close()


def test_the_stage_read_through_the_stores_totals_equals_the_stage_merged_from_its_rows(backend_url):
    """Writers in threads (each window sent twice with its key, as a retry after a lost answer), two
    controllers rolling the stage up at once while they write, compaction and prune in between: a first look
    through the totals, and a reader that was looking all along, see what merging every row sees."""
    import threading

    from crossfade.backends.sql import TELEMETRY_PAGE

    with Client(backend_url, clock=lambda: T0, background=False) as cf:
        cf.apply(SPEC)
        cf.migration("pricing").start()
    spec = load_spec(SPEC)
    store = SQLBackend(backend_url)
    writers = [SQLBackend(backend_url) for _ in range(3)]
    rollers = [StageTelemetry(), StageTelemetry()]
    all_along = StageTelemetry()
    hours = 3
    try:
        state = store.state("pricing")
        store.write_windows([Window("pricing", "canary", "legacy", T0 - 45, 10.0, cell(random.Random(9)), "early")])

        def write(p: int, first: int, last: int) -> None:
            rng = random.Random(p)
            for w in range(first, last):
                batch = [Window("pricing", "canary", arm, T0 + 10 * w, 10.0, cell(rng), f"proc-{p}.{w}")
                         for arm in ("legacy", "candidate")]
                writers[p].write_windows(batch)
                if w % 5 == 0:
                    writers[p].write_windows(batch)  # the same rows again: they add nothing

        def roll(roller: StageTelemetry, now: float) -> None:
            roller.forget("pricing")  # so it rolls now, whatever the last time was
            roller.roll_up(store, state, spec, now)

        per_hour = 360
        for hour in range(hours):
            now = T0 + (hour + 1) * 3600
            threads = [threading.Thread(target=write, args=(p, hour * per_hour, (hour + 1) * per_hour))
                       for p in range(3)]
            threads += [threading.Thread(target=roll, args=(r, now)) for r in rollers]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            all_along.windows(store, state, spec, now)
            if hour == 1:
                store.compact_telemetry(before=T0 + 1e9)  # merges each window's rows, rolled or not, exactly
                store.prune(before=T0 + 1e9, keep=[("pricing", "canary")])
        now = T0 + hours * 3600 + 300
        by_window = now - 2100  # the last half hour of windows left as written, the rest rolled up
        while store.roll_up("pricing", stage="canary", entered=T0, before=now - detail_horizon(spec),
                            windows_before=by_window) == TELEMETRY_PAGE:
            pass
        whole = stage_windows(store, state)
        snapshot = store.stage_snapshot("pricing", stage="canary", entered=T0)
        # The first look reads the totals (by hour, and by window for the newest hour), and the rows of the
        # windows not rolled up yet.
        assert snapshot.hours and snapshot.windows
        assert min(w.start for _, w in snapshot.rows) >= by_window - 10
        for seen in (StageTelemetry().windows(store, state, spec, now), all_along.windows(store, state, spec, now)):
            assert same(stage_cells(state, seen), stage_cells(state, whole))
            assert sum(w.cell.calls for w in seen) == sum(w.cell.calls for w in whole if w.start >= T0 - 5)
            assert [f.message for f in check_triggers(spec, seen, now)] == \
                   [f.message for f in check_triggers(spec, whole, now)]
        # Pruning after the stage ended takes its totals with its rows.
        assert store.prune(before=T0 + 1e9)["totals"] > 0
        gone = store.stage_snapshot("pricing", stage="canary", entered=T0)
        assert gone.hours == [] and gone.windows == []
    finally:
        for backend in (store, *writers):
            backend.close()


def test_a_first_look_reads_one_total_a_window_and_only_the_rows_since_the_last_roll_up(backend_url):
    """A controller that starts on a stage an hour old (a restart, a replica taking over, `status`) reads the
    window totals its predecessor rolled up plus the rows written since, not every process's row of the hour,
    and judges (gates, triggers, the change detector) exactly as on a whole read."""
    from crossfade.controller import assess
    from crossfade.stagedata import FRESH, ROLL_EVERY

    processes = 10
    with Client(backend_url, clock=lambda: T0, background=False) as cf:
        cf.apply(SPEC)
        cf.migration("pricing").start()
    spec = load_spec(SPEC)
    store = SQLBackend(backend_url)
    controller = StageTelemetry()
    try:
        state = store.state("pricing")
        rng = random.Random(5)
        now = T0
        for step in range(360):  # an hour of 10 s windows, the controller looking every 30 s
            now = T0 + 10 * (step + 1)
            write(store, rng, now - 10, processes=processes)
            if step % 7 == 0:
                write(store, rng, now - 600, processes=1)  # a retry of a window ten minutes old
            if step % 3 == 0:
                controller.windows(store, state, spec, now)
                controller.roll_up(store, state, spec, now)
        snapshot = store.stage_snapshot("pricing", stage="canary", entered=T0)
        written = 360 * processes * 2
        # Counted as the store hands them out: the rows of the windows that ended since the last roll-up
        # (ROLL_EVERY ago at most, plus FRESH before it and the window being written), and a total a window.
        assert len(snapshot.rows) <= processes * 2 * ((ROLL_EVERY + FRESH) / 10 + 2), len(snapshot.rows)
        assert len(snapshot.windows) <= 2 * 360 and len(snapshot.rows) + len(snapshot.windows) < written / 4
        first = StageTelemetry().windows(store, state, spec, now)
        whole = stage_windows(store, state)
        assert same(stage_cells(state, first), stage_cells(state, whole))
        assert [f.message for f in check_triggers(spec, first, now)] == \
               [f.message for f in check_triggers(spec, whole, now)]
        assert loose(assess(spec, state, first, now).to_dict()) == assess(spec, state, whole, now).to_dict()
        # The controller looking all along sees the same.
        assert same(stage_cells(state, controller.windows(store, state, spec, now)), stage_cells(state, whole))
    finally:
        store.close()
