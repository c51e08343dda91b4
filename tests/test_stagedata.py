"""The stage's telemetry read incrementally: what the controller sees equals a whole read, kept flat in the
stage's age, on a real SQLite store."""

from __future__ import annotations

import random

import pytest

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
    def loose(value: object) -> object:
        if isinstance(value, dict):
            return {k: loose(v) for k, v in value.items()}
        return pytest.approx(value) if isinstance(value, float) else value

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
