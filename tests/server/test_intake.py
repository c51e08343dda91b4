"""Telemetry intake attacked with an sdk token: fabricated, malformed, replayed and flooding windows, and bad
rows already in the store, against a real control plane on loopback."""

from __future__ import annotations

import json
import time

import sqlalchemy as sa

from crossfade.telemetry import Cell

SPEC = {"stages": [{"name": "canary", "traffic": "10%"}, {"name": "half", "traffic": "50%"},
                   {"name": "all", "traffic": "100%"}],
        "analysis": {"interval": "1s"}}


def started(plane, name="m"):
    assert plane.call("PUT", f"/v1/migrations/{name}", {"spec": SPEC})[0] == 200
    assert plane.call("POST", f"/v1/migrations/{name}/start", {"reason": "go"})[0] == 200


def cell(calls=100, errors=0, latencies=(0.01, 0.02)) -> dict:
    c = Cell()
    c.calls, c.errors = calls, errors
    for v in latencies:
        c.latency.add(v)
    return c.to_dict()


def window(stage="canary", arm="candidate", start=None, data=None, migration="m", key=None) -> dict:
    w = {"migration": migration, "stage": stage, "arm": arm, "start": time.time() - 5 if start is None else start,
         "length": 10.0, "cell": cell() if data is None else data}
    return w if key is None else {**w, "key": key}


def post(plane, windows, role="sdk", token=None):
    status, body, _ = plane.call("POST", "/v1/telemetry", {"windows": windows}, role=role, token=token)
    return status, body


def test_windows_for_other_migrations_stages_or_times_are_skipped_and_never_stored(control_plane):
    started(control_plane)
    now = time.time()
    forged = [
        window(migration="ghost"),                         # a migration that does not exist
        window(stage="nope"),                              # a stage that does not exist
        window(stage="all"),                               # a later stage: walking it to 100% with no traffic
        window(start=now + 3 * 365 * 86400),               # years ahead, so every future look counts it
        window(start=now - 3 * 86400),                     # long gone
    ]
    status, body = post(control_plane, [*forged, window()])
    assert status == 200 and body["written"] == 1
    assert [s["index"] for s in body["skipped"]] == [0, 1, 2, 3, 4]
    reasons = [s["reason"] for s in body["skipped"]]
    assert "no migration named ghost" in reasons[0] and "not the current stage" in reasons[1]
    assert "not the current stage" in reasons[2] and "future" in reasons[3] and "ago" in reasons[4]
    stored = control_plane.backend.windows("m")
    assert [(w.stage, w.cell.calls) for w in stored] == [("canary", 100)]
    assert control_plane.backend.windows("ghost") == []


def test_malformed_cells_refuse_the_batch_with_the_reason(control_plane):
    started(control_plane)
    huge_bin = cell()
    huge_bin["latency"]["bins"] = {"100000": 2}
    bad = {
        "bin index 100000": huge_bin,
        "errors > calls": {**cell(), "errors": 500},
        "negative": {**cell(), "calls": -1},
        "not a count": {**cell(), "calls": 1.5},
        "count mismatch": {**cell(), "latency": {"bins": {"10": 1}, "zeros": 0, "count": 7, "total": 0.01}},
        "unknown field": {**cell(), "rows": 1},
        "total too big": {**cell(), "latency": {"bins": {"10": 1}, "zeros": 0, "count": 1, "total": 1e300}},
        "mismatches > compared": {**cell(), "compared": 1, "mismatches": 2},
    }
    for what, data in bad.items():
        status, body = post(control_plane, [window(), window(data=data)])
        assert status == 422, what
        assert body["problems"][0]["path"] == "windows[1].cell", what
    assert control_plane.backend.windows("m") == []


def test_counts_without_a_latency_sketch_are_taken_and_every_reader_copes(control_plane):
    """What a client in another language would post: counts only. Stored, judged, shown, exported."""
    started(control_plane)
    status, body = post(control_plane, [window(arm=arm, data={"calls": 50, "errors": 1}) for arm in
                                        ("candidate", "legacy")])
    assert status == 200 and body["written"] == 2
    detail = control_plane.call("GET", "/v1/migrations/m", role="viewer")
    assert detail[0] == 200 and detail[1]["arms"]["candidate"]["calls"] == 50
    assert detail[1]["arms"]["candidate"]["p95"] is None
    assert control_plane.call("GET", "/metrics", role="viewer")[0] == 200
    from crossfade.loop import ControllerLoop

    (tick,) = ControllerLoop(control_plane.backend, holder="test", dry_run=True).tick()
    assert tick.assessment is not None  # judged without a latency sketch, not crashed


def test_a_bad_row_in_the_store_is_skipped_and_counted_by_every_reader(control_plane, sqlite_url):
    started(control_plane)
    assert post(control_plane, [window(arm=arm) for arm in ("candidate", "legacy")])[0] == 200
    # Rows a server without these checks let in, or someone with the database wrote.
    rows = [{"bins": {"100000": 1}, "zeros": 0, "count": 1, "total": 1.0}, {"calls": 1, "errors": 9}, "{not json"]
    with control_plane.backend.engine.begin() as conn:
        for row in rows:
            data = row if isinstance(row, str) else json.dumps({"calls": 5, "latency": row} if "bins" in row else row)
            conn.execute(sa.text("INSERT INTO crossfade_telemetry (migration, stage, arm, window_start, "
                                 "window_length, cell, written_at) VALUES ('m', 'canary', 'candidate', :s, 10, :c, 0)"),
                         {"s": time.time() - 5, "c": data})
    status, detail, _ = control_plane.call("GET", "/v1/migrations/m", role="viewer")
    assert status == 200 and detail["arms"]["candidate"]["calls"] == 100
    status, text, _ = control_plane.call("GET", "/metrics", role="viewer")
    assert status == 200
    skipped = [line for line in text.splitlines() if line.startswith("crossfade_telemetry_rows_skipped_total")]
    assert skipped and float(skipped[0].split()[-1]) == 3
    assert control_plane.call("GET", "/v1/migrations/m/series", role="viewer")[0] == 200
    from crossfade.loop import ControllerLoop

    # A dry run judges every active migration (no lease, no replica share), as the server's own loop would.
    (tick,) = ControllerLoop(control_plane.backend, holder="test", dry_run=True).tick()
    assert tick.assessment is not None
    from typer.testing import CliRunner

    from crossfade.cli import app

    for args in (["run-controller", "--once", "--url", sqlite_url], ["status", "m", "--url", sqlite_url]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output


def test_a_token_bound_to_migrations_cannot_report_for_others(control_plane):
    from crossfade.tokens import new_token, token_hash

    started(control_plane, "m")
    started(control_plane, "other")
    secret = new_token()
    control_plane.backend.create_token("m-hosts", "sdk", token_hash(secret), time.time(), migrations=["m"])
    status, body = post(control_plane, [window(), window(migration="other")], token=secret)
    assert status == 200 and body["written"] == 1 and "bound to m" in body["skipped"][0]["reason"]
    assert control_plane.backend.windows("other") == []
    status, body, _ = control_plane.call("POST", "/v1/comparisons", {"rows": [
        {"migration": "other", "stage": "canary", "path": "$", "start": time.time(), "length": 10,
         "counts": {"compared": 5, "differing": 5}}]}, token=secret)
    assert status == 403 and "bound to m" in body["error"]


def test_rows_per_token_and_window_are_bounded(control_plane):
    from crossfade.server.intake import MAX_ROWS

    started(control_plane)
    start = time.time() - 5
    flood = [window(start=start, key=f"p{i}", data=cell(calls=1, latencies=())) for i in range(MAX_ROWS + 5)]
    status, body = post(control_plane, flood)
    assert status == 200 and body["written"] == MAX_ROWS and len(body["skipped"]) == 5
    assert sum(w.cell.calls for w in control_plane.backend.windows("m")) == MAX_ROWS


def test_a_retried_window_with_the_same_key_is_stored_once(control_plane):
    started(control_plane)
    w = window(key="4f2a.1")
    assert post(control_plane, [w])[1]["written"] == 1
    assert post(control_plane, [w])[0] == 200  # the answer to the first was lost; the host sends it again
    assert sum(x.cell.calls for x in control_plane.backend.windows("m")) == 100
    # Another host (another key) for the same window adds up.
    assert post(control_plane, [window(start=w["start"], key="77c1.1")])[0] == 200
    assert sum(x.cell.calls for x in control_plane.backend.windows("m")) == 200


def test_a_flush_whose_answer_is_cut_is_retried_and_counted_once(control_plane):
    """The server stores the windows, the connection is cut before the answer: the SDK sends again."""
    import crossfade
    from conftest import Proxy

    started(control_plane)
    port = int(control_plane.url.rsplit(":", 1)[1])
    proxy = Proxy(port)
    try:
        client = crossfade.connect(f"http://127.0.0.1:{proxy.port}", token=control_plane.tokens["sdk"],
                                   refresh=3600)
        mig = client.migration("m")
        for i in range(40):
            mig.run(i, lambda: "l", lambda: "c")
        proxy.swallow = 1
        client.flush(everything=True)
        client.flush()
        assert proxy.swallow == 0 and client.stats()["pending_windows"] == 0
        assert sum(w.cell.calls for w in control_plane.backend.windows("m")) == 40
        client.close()
    finally:
        proxy.close()


def test_concurrent_posts_are_written_together_each_exactly_once(tmp_path):
    import asyncio

    from crossfade.backends.sql import SQLBackend
    from crossfade.server.intake import TelemetryWriter
    from crossfade.telemetry import Window

    backend = SQLBackend(f"sqlite:///{tmp_path / 'w.db'}")
    batches: list[int] = []

    def write(windows):
        batches.append(len(windows))
        backend.write_windows(windows)

    writer = TelemetryWriter(write)

    def window(i: int) -> Window:
        c = Cell()
        c.calls = i + 1
        return Window("m", "s", "legacy", 100.0, 10.0, c, f"proc-{i}.1")

    async def post_all() -> None:
        await asyncio.gather(*(writer.write([window(i)]) for i in range(200)))

    asyncio.run(post_all())
    writer.stop()
    assert [w.cell.calls for w in backend.windows("m")] == [sum(range(1, 201))]
    assert sum(batches) == 200 and len(batches) < 200  # some POSTs shared a transaction
    backend.close()

    gone = SQLBackend(f"sqlite:///{tmp_path / 'gone.db'}")
    (tmp_path / "gone.db").unlink()  # the store is away: every waiting POST gets its error
    closed = TelemetryWriter(gone.write_windows)

    async def post_to_closed() -> list[object]:
        return await asyncio.gather(*(closed.write([window(i)]) for i in range(3)), return_exceptions=True)

    outcomes = asyncio.run(post_to_closed())
    closed.stop()
    gone.close()
    assert all(isinstance(o, Exception) for o in outcomes)


def test_a_window_the_held_states_do_not_fit_is_checked_against_the_store_in_a_second_pass(sqlite_url):
    # The event loop admits a flush itself when the feed's states settle it, and hands it to a thread (which
    # reads the migration's state from the store) only when they do not: a host that sends right after a
    # change the feed has not read yet is not refused, and the first look counted nothing of it.
    import crossfade
    from crossfade.server.auth import Principal
    from crossfade.server.intake import Intake
    from crossfade.server.models import WindowModel
    from crossfade.spec import load_spec

    cf = crossfade.connect(sqlite_url)
    cf.apply({"name": "m", **SPEC})
    backend = cf.backend()
    held = {"m": backend.state("m")}  # the feed read the draft
    cf.migration("m").start()
    reads: list[str] = []

    def fresh(name):
        reads.append(name)
        return backend.state(name)

    intake = Intake(lambda: held, lambda name, version: load_spec(backend.spec(name, version)), fresh=fresh,
                    max_rows=1)
    who = Principal("hosts", "sdk")
    posted = [WindowModel(**window())]
    assert intake.admit_held(who, posted, time.time()) is None and reads == []
    accepted, skipped = intake.admit(who, posted, time.time())
    assert [(w.stage, w.arm) for w in accepted] == [("canary", "candidate")] and skipped == []
    assert reads == ["m"]
    # The feed catches up: the next flush is settled without the store, and the bound of one row per token
    # and window holds across both paths.
    held["m"] = backend.state("m")
    accepted, skipped = intake.admit_held(who, posted, time.time())
    assert accepted == [] and "already sent 1 rows" in skipped[0].reason and reads == ["m"]
    cf.close()
