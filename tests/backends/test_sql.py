"""The SQL backend on a real SQLite file and a real PostgreSQL database."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa

from crossfade.backends import Backend, BackendError, BackendUnavailable, ConflictError, open_backend
from crossfade.backends import sql
from crossfade.backends.sql import SQLBackend, current_revision, head_revision, upgrade
from crossfade.events import APPLIED, GENESIS, Event, State, verify
from crossfade.telemetry import Cell, Window, merge_windows

SPAWN = multiprocessing.get_context("spawn")


def grow(state: State, count: int, *, time0: float = 1_700_000_000.125) -> tuple[list[Event], State]:
    """`count` more events after `state` (an `applied` first on an empty log), and the state after them."""
    events = []
    for _ in range(count):
        seq = state.seq + 1
        if seq == 1:
            payload = {"version": 1, "digest": "d" * 64, "salt": state.name}
            event = Event.create(state.name, 1, APPLIED, time=time0, actor="cli:ana", payload=payload,
                                 prev_hash=GENESIS, reason="spec applied")
        else:
            payload = {
                "verdict": {"gate": "p99 latency", "estimate": 0.1 + seq / 3, "interval": [-1.5e-7, 2.75e12]},
                "note": "größer als 10 ms — 超过",
                "arms": {"legacy": {"calls": seq * 1000, "ok": True}, "candidate": None},
            }
            event = Event.create(state.name, seq, "noted", time=time0 + seq / 7, actor="controller",
                                 payload=payload, prev_hash=state.head)
        events.append(event)
        state = state.apply(event)
    return events, state


def cell(i: int) -> Cell:
    """A small cell whose sums are exact in binary floating point, so totals compare exactly."""
    out = Cell()
    out.calls = 3
    out.errors = i % 2
    out.add_cost(0.5)
    out.latency.add(0.0625 * (i % 4 + 1))
    return out


def sqlite_path(url: str) -> Path:
    return Path(url.removeprefix("sqlite:///"))


# Schema and revisions


def test_new_database_is_created_at_head(backend_url):
    backend = SQLBackend(backend_url)
    assert isinstance(backend, Backend) and backend.url == backend_url
    assert backend.dialect == ("sqlite" if backend_url.startswith("sqlite") else "postgresql")
    assert current_revision(backend.engine) == head_revision()
    assert backend.states() == []
    backend.close()
    assert upgrade(backend_url) == (head_revision(), head_revision())


def test_upgrade_reports_revisions_and_is_idempotent(backend_url):
    assert upgrade(backend_url) == (None, head_revision())
    assert upgrade(backend_url) == (head_revision(), head_revision())
    SQLBackend(backend_url, create=False).close()


def test_without_create_an_empty_database_is_refused(backend_url):
    if backend_url.startswith("sqlite"):
        with pytest.raises(BackendUnavailable, match="does not exist"):
            SQLBackend(backend_url, create=False)
        assert not sqlite_path(backend_url).exists()
    else:
        with pytest.raises(BackendError, match="no crossfade tables yet; run: crossfade db upgrade --url"):
            SQLBackend(backend_url, create=False)


def test_older_revision_is_refused_until_upgraded(backend_url, monkeypatch, tmp_path):
    SQLBackend(backend_url).close()
    current = head_revision()
    newer = _newer_scripts(tmp_path, monkeypatch)
    with pytest.raises(BackendError) as refused:
        SQLBackend(backend_url)
    assert f"is at schema revision {current}, this crossfade needs {newer}; run: crossfade db upgrade --url" in str(
        refused.value
    )
    assert upgrade(backend_url) == (current, newer)
    backend = SQLBackend(backend_url)
    assert current_revision(backend.engine) == newer
    backend.close()


def _newer_scripts(tmp_path: Path, monkeypatch) -> str:
    """Make this crossfade one revision ahead of the shipped scripts; returns the new head."""
    scripts = tmp_path / "migrations"
    shutil.copytree(sql.SCRIPT_LOCATION, scripts, ignore=shutil.ignore_patterns("__pycache__"))
    current = head_revision()
    (scripts / "versions" / "9000_extra.py").write_text(
        '"""A later revision, for the test."""\n'
        "import sqlalchemy as sa\nfrom alembic import op\n\n"
        f'revision = "9000"\ndown_revision = "{current}"\nbranch_labels = None\ndepends_on = None\n\n\n'
        "def upgrade():\n"
        '    op.create_table("extra", sa.Column("id", sa.Integer, primary_key=True))\n'
    )
    monkeypatch.setattr(sql, "SCRIPT_LOCATION", str(scripts))
    return "9000"


def test_revision_from_a_newer_crossfade_is_refused(backend_url):
    backend = SQLBackend(backend_url)
    with backend.engine.begin() as conn:
        conn.execute(sa.text(f"UPDATE {sql.VERSION_TABLE} SET version_num = '9999'"))
    backend.close()
    with pytest.raises(BackendError, match="does not know .* upgrade the crossfade package"):
        SQLBackend(backend_url)
    with pytest.raises(BackendError, match="does not know"):
        upgrade(backend_url)


def _create(url: str, barrier, results) -> None:
    barrier.wait(timeout=60)
    try:
        SQLBackend(url).close()
        results.put("ok")
    except Exception as e:  # noqa: BLE001 - reported to the parent
        results.put(repr(e))


def test_concurrent_first_time_creation(backend_url):
    barrier, results = SPAWN.Barrier(4), SPAWN.Queue()
    workers = [SPAWN.Process(target=_create, args=(backend_url, barrier, results)) for _ in range(4)]
    for w in workers:
        w.start()
    outcomes = [results.get(timeout=60) for _ in workers]
    for w in workers:
        w.join(timeout=60)
    assert outcomes == ["ok"] * 4
    assert upgrade(backend_url) == (head_revision(), head_revision())


# Events, state and specs


def test_append_and_read_back(backend_url):
    backend = SQLBackend(backend_url)
    first, s1 = grow(State("agent-engine"), 1)
    backend.append("agent-engine", 0, first, state=s1, spec={"name": "agent-engine", "stages": [{"traffic": 1.0}]})
    rest, s5 = grow(s1, 4)
    backend.append("agent-engine", 1, rest, state=s5)
    other, o1 = grow(State("a-tools"), 1)
    backend.append("a-tools", 0, other, state=o1)

    stored = backend.events("agent-engine")
    assert stored == first + rest
    assert stored[3].payload["note"] == "größer als 10 ms — 超过"
    assert stored[3].payload["verdict"]["interval"] == [-1.5e-7, 2.75e12]
    assert verify(stored, head=(s5.seq, s5.head)) is None
    assert backend.events("agent-engine", after=2, limit=2) == rest[1:3]
    assert backend.events("nobody") == []
    assert backend.state("agent-engine") == s5
    assert backend.state("nobody") is None
    assert backend.states() == [o1, s5]
    assert backend.spec("agent-engine") == {"name": "agent-engine", "stages": [{"traffic": 1.0}]}
    assert backend.spec("a-tools") is None
    backend.close()


def test_stale_expected_seq_conflicts_and_writes_nothing(backend_url):
    backend = SQLBackend(backend_url)
    events, state = grow(State("m"), 3)
    backend.append("m", 0, events, state=state)
    stale, stale_state = grow(backend_state_at(events, 1), 1)
    with pytest.raises(ConflictError, match="migration m changed concurrently: expected event 1 to be the last, "
                                            "found 3; re-read its state and retry"):
        backend.append("m", 1, stale, state=stale_state, spec={"name": "m"})
    assert backend.events("m") == events
    assert backend.state("m") == state
    assert backend.spec("m", 2) is None
    backend.close()


def backend_state_at(events: list[Event], seq: int) -> State:
    state = State(events[0].migration)
    for event in events[:seq]:
        state = state.apply(event)
    return state


def test_append_rejects_a_malformed_batch(sqlite_url):
    backend = SQLBackend(sqlite_url)
    events, state = grow(State("m"), 2)
    with pytest.raises(ValueError, match="numbered 2.. consecutively"):
        backend.append("m", 1, events, state=state)
    with pytest.raises(ValueError, match="belongs to m"):
        backend.append("other", 0, events, state=state)
    with pytest.raises(ValueError, match="fold up to the last event"):
        backend.append("m", 0, events, state=State("m"))
    with pytest.raises(ValueError, match="no events"):
        backend.append("m", 0, [], state=state)
    assert backend.events("m") == []


def test_racing_writers_exactly_one_wins(backend_url):
    backend = SQLBackend(backend_url)
    writers = 6
    barrier = threading.Barrier(writers)
    outcomes: list[str] = []

    def write(i: int) -> None:
        event = Event.create("m", 1, "noted", time=float(i), actor=f"writer-{i}", prev_hash=GENESIS)
        barrier.wait()
        try:
            backend.append("m", 0, [event], state=State("m").apply(event))
            outcomes.append("won")
        except ConflictError:
            outcomes.append("conflict")

    threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["conflict"] * (writers - 1) + ["won"]
    (stored,) = backend.events("m")
    assert backend.state("m").head == stored.hash
    backend.close()


def test_every_spec_version_is_kept(backend_url):
    backend = SQLBackend(backend_url)
    state = State("m")
    for version in range(3):
        events, after = grow(state, 2)
        backend.append("m", state.seq, events, state=after, spec={"name": "m", "revision": version, "é": 0.1})
        state = after
    assert [backend.spec("m", v)["revision"] for v in (1, 3, 5)] == [0, 1, 2]
    assert backend.spec("m") == {"name": "m", "revision": 2, "é": 0.1}
    assert backend.spec("m", 2) is None
    with backend.engine.connect() as conn:
        digests = conn.scalars(sa.text("SELECT digest FROM crossfade_specs ORDER BY version")).all()
    assert len(set(digests)) == 3
    backend.close()


# Tampering: `crossfade audit verify` reads the log as stored and must find the first bad event.


def _reseal(conn, events: list[Event], seq: int) -> None:
    e = events[seq - 1]
    forged = Event.create(e.migration, e.seq, e.type, time=e.time, actor=e.actor, reason=e.reason,
                          payload={**e.payload, "note": "nothing to see"}, prev_hash=e.prev_hash)
    conn.execute(sa.text("UPDATE crossfade_events SET payload = :p, hash = :h WHERE seq = :s"),
                 {"p": sql.canonical_json(dict(forged.payload)), "h": forged.hash, "s": seq})


TAMPERING = {
    "edit-payload": (3, lambda conn, events: conn.execute(
        sa.text("UPDATE crossfade_events SET payload = REPLACE(payload, 'größer', 'kleiner') WHERE seq = 3"))),
    "edit-payload-and-reseal-its-hash": (4, lambda conn, events: _reseal(conn, events, 3)),
    "delete-middle-row": (3, lambda conn, events: conn.execute(sa.text("DELETE FROM crossfade_events WHERE seq = 3"))),
    "swap-two-rows-seq": (2, lambda conn, events: [
        conn.execute(sa.text(q)) for q in (
            "UPDATE crossfade_events SET seq = -2 WHERE seq = 2",
            "UPDATE crossfade_events SET seq = 2 WHERE seq = 4",
            "UPDATE crossfade_events SET seq = 4 WHERE seq = -2",
        )
    ]),
    "delete-last-row": (5, lambda conn, events: conn.execute(sa.text("DELETE FROM crossfade_events WHERE seq = 5"))),
}


@pytest.mark.parametrize("how", TAMPERING)
def test_tampering_is_found_at_the_right_event(backend_url, how):
    expected_seq, tamper = TAMPERING[how]
    backend = SQLBackend(backend_url)
    events, state = grow(State("m"), 5)
    backend.append("m", 0, events, state=state)
    with backend.engine.begin() as conn:
        tamper(conn, events)
    found = verify(backend.events("m"), head=(state.seq, state.head))
    assert found is not None and found.seq == expected_seq, found
    backend.close()


# Telemetry


def test_windows_round_trip_and_add_up_across_writers(backend_url):
    one, two = SQLBackend(backend_url), SQLBackend(backend_url)
    one.write_windows([
        Window("m", "1%", "legacy", 0.0, 10.0, cell(0)),
        Window("m", "1%", "candidate", 0.0, 10.0, cell(1)),
        Window("m", "1%", "legacy", 10.0, 10.0, cell(2)),
        Window("m", "5%", "legacy", 20.0, 10.0, cell(3)),
        Window("other", "1%", "legacy", 0.0, 10.0, cell(0)),
    ])
    two.write_windows([Window("m", "1%", "legacy", 0.0, 10.0, cell(1))])
    two.write_windows([])

    windows = one.windows("m")
    assert [(w.start, w.arm, w.stage) for w in windows] == [
        (0.0, "candidate", "1%"), (0.0, "legacy", "1%"), (10.0, "legacy", "1%"), (20.0, "legacy", "5%"),
    ]
    expected = cell(0)
    expected.merge(cell(1))
    assert windows[1].cell == expected
    assert windows[3].cell == cell(3)
    assert [w.start for w in one.windows("m", stage="1%")] == [0.0, 0.0, 10.0]
    assert [w.start for w in one.windows("m", since=10.0, until=20.0)] == [10.0]
    assert one.windows("nobody") == []
    one.close()
    two.close()


def _write_windows(url: str, barrier, rounds: int) -> None:
    backend = SQLBackend(url)
    barrier.wait(timeout=60)
    for i in range(rounds):
        backend.write_windows([
            Window("m", "s", arm, start, 10.0, cell(i)) for arm in ("legacy", "candidate") for start in (0.0, 10.0)
        ])
    backend.close()


def test_processes_writing_windows_concurrently_add_up_exactly(backend_url):
    SQLBackend(backend_url).close()
    processes, rounds = 4, 25
    barrier = SPAWN.Barrier(processes)
    workers = [SPAWN.Process(target=_write_windows, args=(backend_url, barrier, rounds)) for _ in range(processes)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=60)
    assert [w.exitcode for w in workers] == [0] * processes

    expected = Cell()
    for _ in range(processes):
        for i in range(rounds):
            expected.merge(cell(i))
    backend = SQLBackend(backend_url)
    windows = backend.windows("m", stage="s")
    assert len(windows) == 4
    assert all(w.cell == expected for w in windows)
    totals = merge_windows(windows)
    assert totals["legacy"].calls == totals["candidate"].calls == 2 * processes * rounds * 3
    backend.close()


# Losing and regaining the store


def test_deleted_sqlite_file_is_unavailable_and_never_recreated(sqlite_url, tmp_path):
    backend = SQLBackend(sqlite_url)
    events, state = grow(State("m"), 2)
    backend.append("m", 0, events, state=state)
    path, saved = sqlite_path(sqlite_url), tmp_path / "saved.db"
    with sqlite3.connect(path) as src, sqlite3.connect(saved) as dst:
        src.backup(dst)
    for leftover in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        leftover.unlink(missing_ok=True)

    more, after = grow(state, 1)
    operations = [
        lambda: backend.events("m"), lambda: backend.state("m"), backend.states, lambda: backend.spec("m"),
        lambda: backend.windows("m"), lambda: backend.write_windows([Window("m", "s", "legacy", 0, 10, cell(0))]),
        lambda: backend.append("m", 2, more, state=after),
    ]
    for operation in operations:
        with pytest.raises(BackendUnavailable) as gone:
            operation()
        assert sqlite_url in str(gone.value) and "unable to open" in str(gone.value)
    with pytest.raises(BackendUnavailable):
        SQLBackend(sqlite_url, create=False)
    assert not path.exists()

    shutil.copy(saved, path)
    assert backend.events("m") == events
    backend.append("m", 2, more, state=after)
    assert backend.state("m") == after
    backend.close()


def test_unreachable_postgres_is_unavailable_with_the_password_masked():
    with pytest.raises(BackendUnavailable) as down:
        SQLBackend("postgresql://ana:s3cret@127.0.0.1:1/crossfade")
    assert "postgresql://ana:***@127.0.0.1:1/crossfade" in str(down.value)
    assert "s3cret" not in str(down.value)


def test_postgres_pool_survives_a_fork(postgres_url):
    if not hasattr(os, "fork"):
        pytest.skip("no fork on this platform")
    backend = SQLBackend(postgres_url)
    events, state = grow(State("m"), 1)
    backend.append("m", 0, events, state=state)
    child = multiprocessing.get_context("fork").Process(target=_use_after_fork, args=(backend,))
    child.start()
    child.join(timeout=30)
    assert child.exitcode == 0
    assert backend.events("m") == events
    assert len(backend.windows("m")) == 1
    backend.close()


def _use_after_fork(backend: SQLBackend) -> None:
    backend.after_fork()
    backend.write_windows([Window("m", "s", "legacy", 0.0, 10.0, cell(0))])


# URLs and imports


def test_url_forms(tmp_path, monkeypatch, postgres_url):
    monkeypatch.chdir(tmp_path)
    relative = SQLBackend("sqlite:///relative.db")
    assert relative.url == "sqlite:///relative.db" and relative.dialect == "sqlite"
    assert (tmp_path / "relative.db").exists()
    relative.close()
    memory = SQLBackend("sqlite://")
    events, state = grow(State("m"), 1)
    memory.append("m", 0, events, state=state)
    assert memory.events("m") == events
    memory.close()

    short = "postgres://" + postgres_url.split("://", 1)[1]
    backend = open_backend(short)
    assert isinstance(backend, SQLBackend) and backend.url == short and backend.dialect == "postgresql"
    backend.close()
    with pytest.raises(BackendError, match="unsupported database URL"):
        SQLBackend("mysql://root@localhost/db")


def test_importing_the_backends_package_does_not_import_sqlalchemy():
    code = "import sys, crossfade.backends; assert 'sqlalchemy' not in sys.modules, 'sqlalchemy imported'"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_a_window_written_again_with_its_key_adds_nothing(backend_url):
    backend = SQLBackend(backend_url)
    cell = Cell()
    cell.calls = 7
    first = Window("m", "s", "candidate", 100.0, 10.0, cell, "proc-a.1")
    backend.write_windows([first])
    backend.write_windows([first])  # the answer to the first write was lost: the same rows again
    backend.write_windows([Window("m", "s", "candidate", 100.0, 10.0, cell, "proc-b.1"),
                           Window("m", "s", "candidate", 100.0, 10.0, cell)])  # another process; one without a key
    backend.write_windows([Window("m", "s", "candidate", 100.0, 10.0, cell)])
    assert [w.cell.calls for w in backend.windows("m")] == [28]
    backend.close()


def test_many_processes_creating_one_new_store_all_open_it(tmp_path):
    """A new store is written whole under another name and linked into place: no process sees it empty."""
    url = f"sqlite:///{tmp_path / 'new.db'}"
    code = "import sys; from crossfade.backends.sql import SQLBackend; SQLBackend(sys.argv[1]).close()"
    procs = [subprocess.Popen([sys.executable, "-c", code, url], stderr=subprocess.PIPE) for _ in range(6)]
    for p in procs:
        assert p.wait(timeout=120) == 0, p.stderr.read().decode()
    # No temporary file is left behind. The WAL and its index stay when the last two processes close at once
    # (each sees the other's lock and leaves the checkpoint to it): SQLite's own files, not ours.
    assert set(os.listdir(tmp_path)) - {"new.db-wal", "new.db-shm"} == {"new.db"}
    backend = SQLBackend(url)
    assert current_revision(backend.engine) == head_revision()
    backend.close()


def test_an_empty_file_is_refused_unless_asked(tmp_path):
    path = tmp_path / "truncated.db"
    path.write_bytes(b"")
    with pytest.raises(BackendError, match="empty file"):
        SQLBackend(f"sqlite:///{path}")
    with pytest.raises(BackendError, match="empty file"):
        upgrade(f"sqlite:///{path}")
    assert path.stat().st_size == 0
    assert upgrade(f"sqlite:///{path}", init_empty=True) == (None, head_revision())
    SQLBackend(f"sqlite:///{path}").close()


def test_compaction_merges_each_old_window_into_one_row_exactly(backend_url):
    import time as _time

    from crossfade.backends.sql import SQLBackend
    from crossfade.telemetry import Cell, Window, merge_windows

    backend = SQLBackend(backend_url)
    try:
        now = _time.time()

        def cell(calls: int) -> Cell:
            c = Cell()
            c.calls, c.errors = calls, calls // 10
            for i in range(calls):
                c.latency.add(0.01 * (i + 1))
            return c

        old = [Window("m", "canary", arm, now - 7200 + 10 * w, 10.0, cell(10 + p))
               for w in range(30) for p in range(5) for arm in ("legacy", "candidate")]
        recent = [Window("m", "canary", "legacy", now - 20, 10.0, cell(7)) for _ in range(3)]
        backend.write_windows(old)
        backend.write_windows(recent)
        whole = merge_windows(backend.windows("m"))
        ids = backend.telemetry_ids("m", stage="canary", after_id=0, upto=10**9)
        # Rows written just now are not compacted yet (written_at), however old their windows.
        assert backend.compact_telemetry(before=now - 3600) == (0, 0)
        assert backend.compact_telemetry(before=_time.time() + 1) == (303, 61)
        assert merge_windows(backend.windows("m")) == whole
        # Each kept row has the lowest id of its window's rows: a reader that had read them reads no news.
        kept = backend.telemetry_ids("m", stage="canary", after_id=0, upto=10**9)
        assert kept[0] == ids[0] and set(kept) <= set(ids)
        assert backend.telemetry_rows("m", stage="canary", after_id=ids[-1]) == []
    finally:
        backend.close()


def test_prune_deletes_what_is_past_retention_but_not_the_running_stage(sqlite_url):
    import time as _time

    from crossfade.backends.sql import SQLBackend
    from crossfade.telemetry import Cell, Window

    backend = SQLBackend(sqlite_url)
    try:
        now = _time.time()
        c = Cell()
        c.calls = 1
        backend.write_windows([Window("a", "canary", "legacy", now - 40 * 86400, 10.0, c),
                               Window("a", "half", "legacy", now - 40 * 86400, 10.0, c),
                               Window("a", "half", "legacy", now - 60, 10.0, c)])
        assert backend.prune(before=now - 30 * 86400, keep=[("a", "half")])["telemetry"] == 1
        assert [w.stage for w in backend.windows("a")] == ["half", "half"]
    finally:
        backend.close()


def test_connecting_to_an_existing_database_does_not_import_alembic(sqlite_url):
    SQLBackend(sqlite_url).close()
    code = ("import sys, crossfade; crossfade.connect(sys.argv[1]).close(); "
            "print(sorted(m for m in ('alembic', 'mako', 'pygments') if m in sys.modules))")
    found = subprocess.run([sys.executable, "-c", code, sqlite_url], capture_output=True, text=True, check=True)
    assert found.stdout.strip() == "[]"


def test_the_head_read_from_the_revision_files_is_alembics():
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", sql.SCRIPT_LOCATION)
    assert head_revision() == ScriptDirectory.from_config(config).get_current_head()


def test_a_stage_s_rows_are_read_in_pages_all_of_them_in_id_order(backend_url, monkeypatch):
    monkeypatch.setattr(sql, "TELEMETRY_PAGE", 7)  # 25 rows: four statements
    backend = SQLBackend(backend_url)
    for i in range(25):
        cell = Cell()
        cell.calls = i + 1
        backend.write_windows([Window("m", "s", "legacy", 100.0 + 10 * i, 10.0, cell, f"proc.{i}")])
    rows = backend.telemetry_rows("m", stage="s", after_id=0)
    ids = [row_id for row_id, _ in rows]
    assert ids == sorted(ids) and [w.cell.calls for _, w in rows] == list(range(1, 26))
    # The late rows named in `also` come first (their ids are below after_id), then every newer one.
    again = backend.telemetry_rows("m", stage="s", after_id=ids[20], also=[ids[3], ids[5]])
    assert [row_id for row_id, _ in again] == [ids[3], ids[5], *ids[21:]]
    backend.close()
