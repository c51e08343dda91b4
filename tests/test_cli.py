"""The command line: specs, operations, reading state and history, auditing, and clear errors."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

import crossfade
from crossfade.cli import app

runner = CliRunner()


@pytest.fixture
def url(tmp_path):
    return f"sqlite:///{tmp_path / 'cf.db'}"


def cli(*args: str, code: int = 0) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == code, result.output
    return result.output


def test_quickstart_init_apply_start_promote_status(tmp_path, url):
    spec = tmp_path / "migration.yaml"
    assert "wrote" in cli("init", str(spec))
    assert "ok (checkout-pricing, 6 stages)" in cli("validate", str(spec))
    assert "applied" in cli("apply", str(spec), "--url", url)
    assert "unchanged" in cli("apply", str(spec), "--url", url)
    assert "started" in cli("start", "checkout-pricing", "--url", url, "--actor", "alice")
    # The hold is 10m; a loaded machine may take a second or more between the two commands.
    assert re.search(r"the hold has (10m|9m\d+s) left", cli("promote", "checkout-pricing", "--url", url, code=1))
    assert "canary-1" in cli("promote", "checkout-pricing", "--url", url, "--reason", "shadow clean", "--force")
    with crossfade.connect(url) as cf:
        mig = cf.migration("checkout-pricing")
        for i in range(300):
            mig.run(f"c{i}", lambda: "old", lambda: "new")
    report = json.loads(cli("status", "checkout-pricing", "--url", url, "--json"))
    assert (report["status"], report["stage"], report["traffic"]) == ("running", "canary-1", 0.01)
    arms = report["arms"]
    assert arms["legacy"]["calls"] + arms["candidate"]["calls"] == 300
    assert arms["legacy"]["p95"] is not None
    table = cli("status", "--url", url)
    assert "canary-1" in table and "p95" in table


def test_init_refuses_to_overwrite(tmp_path):
    spec = tmp_path / "m.yaml"
    spec.write_text("mine")
    assert "--force" in cli("init", str(spec), code=1)
    assert spec.read_text() == "mine"


def test_validate_reports_every_problem_with_file_and_path(tmp_path):
    spec = tmp_path / "bad.yaml"
    spec.write_text("name: Bad_Name\nstages:\n  - {traffic: 50%}\n  - {traffic: 10%}\n")
    out = cli("validate", str(spec), code=1)
    assert f"{spec}: name" in out and f"{spec}: stages[1].traffic" in out


def test_apply_of_an_invalid_spec_exits_2_without_a_traceback(tmp_path, url):
    spec = tmp_path / "bad.yaml"
    spec.write_text("name: m\nstages: [{traffic: 150%}]\n")
    out = cli("apply", str(spec), "--url", url, code=2)
    assert "stages[0].traffic" in out and "Traceback" not in out


def test_refused_operations_say_why_and_exit_1(tmp_path, url):
    spec = tmp_path / "m.yaml"
    spec.write_text("name: m\nstages: [{traffic: 10%}, {traffic: 100%}]\n")
    cli("apply", str(spec), "--url", url)
    assert "crossfade start" in cli("promote", "m", "--url", url, code=1)
    assert "no migration named 'ghost'" in cli("start", "ghost", "--url", url, code=1)
    assert "Missing option '--reason'" in cli("rollback", "m", "--url", url, code=2)


def test_dry_run_prints_the_event_and_writes_nothing(tmp_path, url):
    spec = tmp_path / "m.yaml"
    spec.write_text("name: m\nstages: [{traffic: 10%}, {traffic: 100%}]\n")
    cli("apply", str(spec), "--url", url)
    assert "would write" in cli("start", "m", "--url", url, "--dry-run")
    assert json.loads(cli("status", "m", "--url", url, "--json"))["status"] == "draft"


def test_history_lists_events_and_json_carries_hashes(tmp_path, url):
    spec = tmp_path / "m.yaml"
    spec.write_text("name: m\nstages: [{traffic: 10%}, {traffic: 100%}]\n")
    cli("apply", str(spec), "--url", url)
    cli("start", "m", "--url", url, "--actor", "bob")
    cli("rollback", "m", "--url", url, "--reason", "p95 doubled")
    assert "p95 doubled" in cli("history", "m", "--url", url)
    events = json.loads(cli("history", "m", "--url", url, "--json"))
    assert [e["type"] for e in events] == ["applied", "started", "rolled_back"]
    assert events[1]["actor"] == "bob" and len(events[2]["hash"]) == 64


def test_audit_verify_passes_then_names_the_tampered_event(tmp_path, url):
    spec = tmp_path / "m.yaml"
    spec.write_text("name: m\nstages: [{traffic: 10%}, {traffic: 50%}, {traffic: 100%}]\n")
    cli("apply", str(spec), "--url", url)
    cli("start", "m", "--url", url)
    cli("promote", "m", "--url", url)
    assert "intact (3 events" in cli("audit", "verify", "m", "--url", url)
    db = sqlite3.connect(str(tmp_path / "cf.db"))
    db.execute("UPDATE crossfade_events SET actor = 'mallory' WHERE migration = 'm' AND seq = 2")
    db.commit()
    db.close()
    out = cli("audit", "verify", "m", "--url", url, code=1)
    assert "event 2" in out
    report = json.loads(cli("audit", "verify", "m", "--url", url, "--json", code=1))
    assert report["first_bad_event"] == 2 and not report["ok"]


def test_schema_is_json_and_db_upgrade_reports_the_revision(url):
    schema = json.loads(cli("schema"))
    assert "stages" in schema["properties"]
    assert "schema at" in cli("db", "upgrade", "--url", url)


def test_an_unreachable_backend_is_one_line_not_a_traceback():
    out = cli("status", "--url", "postgresql://postgres@127.0.0.1:1/none", code=1)
    assert "error:" in out and "Traceback" not in out


def test_the_console_entry_point_runs():
    result = subprocess.run([sys.executable, "-m", "crossfade", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "validate" in result.stdout


def test_mismatches_lists_fields_with_verdicts_and_examples(url):
    import uuid

    with crossfade.connect(url, refresh=0.05) as cf:
        cf.apply({"name": "m", "stages": [{"traffic": "0%", "shadow": "100%", "noise": "50%"}, {"traffic": "100%"}],
                  "shadow": {"max_pending": 1000}})
        mig = cf.migration("m")
        mig.start()
        for i in range(200):
            mig.run(i, lambda i: {"id": uuid.uuid4().hex, "total": i},
                    lambda i: {"id": uuid.uuid4().hex, "total": -1 if i == 7 else i}, i)
        deadline = time.monotonic() + 20
        while cf.stats()["shadow_compared"] < 200 and time.monotonic() < deadline:
            time.sleep(0.02)
    report = json.loads(cli("mismatches", "m", "--url", url, "--json", "--limit", "1"))
    fields = {f["path"]: f for f in report["fields"]}
    assert report["totals"]["compared"] == 200
    assert fields["$.id"]["verdict"] == "noise" and fields["$.total"]["verdict"] == "mismatch"
    assert fields["$.total"]["differing"] == 1 and fields["$.total"]["examples"][0]["args"] == [7]
    text = cli("mismatches", "m", "--url", url)
    assert "$.total" in text and "mismatch" in text and "legacy 7 -> candidate -1" in text
    assert "shadow: 200 compared" in cli("status", "m", "--url", url)
    cli("mismatches", "nope", "--url", url, code=1)

def test_abort_then_restart_from_the_command_line(tmp_path, url):
    spec = tmp_path / "m.yaml"
    spec.write_text("name: m\nstages: [{traffic: 10%}, {traffic: 100%, approval: true}]\n")
    cli("apply", str(spec), "--url", url)
    cli("start", "m", "--url", url)
    assert "nothing to approve" in cli("approve", "m", "--url", url, code=1)
    assert "aborted" in cli("abort", "m", "--url", url, "--reason", "wrong key")
    assert "restarted" in cli("restart", "m", "--url", url)
    assert json.loads(cli("status", "m", "--url", url, "--json"))["attempt"] == 2


def test_status_shows_verdicts_and_run_controller_acts_on_them(tmp_path, url):
    spec = tmp_path / "m.yaml"
    spec.write_text("name: m\nstages: [{traffic: 50%}, {traffic: 100%}]\n"
                    "gates: {error_rate: {max_increase: 1%}}\nanalysis: {interval: 1s}\n")
    cli("apply", str(spec), "--url", url)
    cli("start", "m", "--url", url)
    with crossfade.connect(url) as cf:
        mig = cf.migration("m")

        def broken():
            raise RuntimeError("candidate bug")

        for i in range(3000):
            mig.run(f"u{i}", lambda: "ok", broken if i % 5 == 0 else (lambda: "ok"))
    view = json.loads(cli("status", "m", "--url", url, "--json"))["controller"]
    assert view["gates"][0]["verdict"] == "FAIL"
    assert "FAIL" in cli("status", "m", "--url", url) and "is above the allowed +1.00 pp" in cli("status", "--url", url)
    dry = cli("run-controller", "--dry-run", "--url", url)
    assert "would write" in dry and "rolled_back" in dry
    assert "FAIL         candidate error rate" in dry and "{'" not in dry  # verdicts as lines, not a raw dict
    assert json.loads(cli("status", "m", "--url", url, "--json"))["status"] == "running"
    assert "rolled_back" in cli("run-controller", "--once", "--url", url)
    assert json.loads(cli("status", "m", "--url", url, "--json"))["status"] == "rolled_back"
    history = cli("history", "m", "--url", url)
    assert "FAIL         candidate error rate" in history


def test_status_shows_streams_latency_to_their_first_chunk(tmp_path, url):
    spec = tmp_path / "m.yaml"
    spec.write_text("name: m\nstages: [{traffic: 50%}, {traffic: 100%}]\n"
                    "gates: {latency_first_chunk: {quantile: p99, max_ratio: 2}}\n")
    cli("apply", str(spec), "--url", url)
    cli("start", "m", "--url", url)

    def chunks():
        yield from ("a", "b", "c")

    with crossfade.connect(url) as cf:
        mig = cf.migration("m")
        for i in range(200):
            assert "".join(mig.stream(f"u{i}", chunks, chunks)) == "abc"
    arms = json.loads(cli("status", "m", "--url", url, "--json"))["arms"]
    assert all(arms[arm]["first_chunk"]["p99"] > 0 for arm in ("legacy", "candidate"))
    assert "first chunk p50" in cli("status", "m", "--url", url)


def test_token_create_prints_the_secret_once_stores_its_hash_and_revoke_refuses_it(url):
    from crossfade.backends.sql import SQLBackend
    from crossfade.tokens import token_hash

    result = CliRunner().invoke(app, ["token", "create", "--role", "operator", "--name", "alice", "--url", url])
    assert result.exit_code == 0, result.output
    secret = result.stdout.strip().splitlines()[0]
    assert secret.startswith("cf_")
    listing = cli("token", "list", "--url", url, "--json")
    assert json.loads(listing)[0]["name"] == "alice" and secret not in listing
    backend = SQLBackend(url)
    assert backend.token_by_hash(token_hash(secret)).role == "operator"
    assert "revoked alice" in cli("token", "revoke", "alice", "--url", url)
    assert backend.token_by_hash(token_hash(secret)) is None
    backend.close()
    assert "no active token" in cli("token", "revoke", "alice", "--url", url, code=1)
    assert "unknown role" in cli("token", "create", "--role", "root", "--name", "x", "--url", url, code=2)


def test_serve_needs_a_database_url_not_another_control_plane():
    assert "database URL" in cli("serve", "--url", "http://127.0.0.1:8765", code=2)


def test_operations_against_a_control_plane_use_the_token_from_the_environment(control_plane, tmp_path, monkeypatch):
    spec = tmp_path / "m.yaml"
    spec.write_text("name: m\nstages: [{traffic: 10%}, {traffic: 100%}]\n")
    monkeypatch.setenv("CROSSFADE_TOKEN", control_plane.tokens["operator"])
    assert "by operator-user" in cli("apply", str(spec), "--url", control_plane.url)
    assert "started" in cli("start", "m", "--url", control_plane.url)
    assert "rolled_back" in cli("rollback", "m", "--reason", "from the CLI", "--url", control_plane.url)
    monkeypatch.setenv("CROSSFADE_TOKEN", control_plane.tokens["sdk"])
    assert "needs operator" in cli("restart", "m", "--url", control_plane.url, code=1)


def _applied_and_started(tmp_path, url, name="m"):
    spec = tmp_path / f"{name}.yaml"
    spec.write_text(f"name: {name}\nstages: [{{traffic: 10%}}, {{traffic: 50%}}, {{traffic: 100%}}]\n")
    cli("apply", str(spec), "--url", url)
    cli("start", name, "--url", url)
    return spec


def test_user_text_is_printed_as_text_with_control_characters_escaped(tmp_path, url):
    """Reasons and actors come from any operator or token: markup and terminal escapes stay inert."""
    _applied_and_started(tmp_path, url)
    hostile = "[/x] [bold red]boom[/] \x1b]0;owned\x07\x1b[2J\u202eevil"
    out = cli("pause", "m", "--url", url, "--reason", hostile, "--actor", "[link=http://x]eve\x1b[31m")
    for text in (out, cli("history", "m", "--url", url), cli("status", "m", "--url", url)):
        assert "\x1b" not in text and "\x07" not in text and "\u202e" not in text
    history = cli("history", "m", "--url", url)
    assert "[/x] [bold red]boom[/]" in history and "\\x1b]0;owned\\x07\\x1b[2J\\u202eevil" in history
    assert "[link=http://x]eve\\x1b[31m" in history
    bad = tmp_path / "[red]spec.yaml"
    bad.write_text('name: m\nstages: [{traffic: 10%}]\n"\\e[2J": 1\n"[/x]": 2\n')
    out = runner.invoke(app, ["validate", str(bad)])
    assert out.exit_code == 1 and "[red]spec.yaml" in out.output and "\x1b" not in out.output
    assert "[/x]" in out.output and "\\x1b[2J" in out.output


def test_audit_verify_sees_a_rewritten_state_snapshot_or_stored_spec(tmp_path, url):
    _applied_and_started(tmp_path, url)
    out = cli("audit", "verify", "m", "--url", url)
    head = json.loads(cli("audit", "verify", "m", "--url", url, "--json"))["head"]
    assert head in out and len(head.split(":")[1]) == 64
    db = sqlite3.connect(str(tmp_path / "cf.db"))
    # Routing follows the snapshot: 100% to the candidate, and no event says so.
    (text,) = db.execute("SELECT state FROM crossfade_states WHERE migration = 'm'").fetchone()
    db.execute("UPDATE crossfade_states SET state = ? WHERE migration = 'm'",
               (text.replace('"traffic":0.1', '"traffic":1.0'),))
    db.commit()
    assert "snapshot differs" in cli("audit", "verify", "m", "--url", url, code=1)
    db.execute("UPDATE crossfade_states SET state = ? WHERE migration = 'm'", (text,))
    (spec,) = db.execute("SELECT spec FROM crossfade_specs WHERE migration = 'm'").fetchone()
    db.execute("UPDATE crossfade_specs SET spec = ? WHERE migration = 'm'", (spec.replace('"traffic":0.1', '"traffic":0.2'),))
    db.commit()
    assert "stored spec version 1 was changed" in cli("audit", "verify", "m", "--url", url, code=1)
    db.execute("UPDATE crossfade_specs SET spec = ? WHERE migration = 'm'", (spec,))
    db.commit()
    db.close()
    assert "intact" in cli("audit", "verify", "m", "--url", url, "--expect", head)


def test_audit_verify_expect_catches_a_history_rewritten_whole(tmp_path, url):
    """Someone with write access rewrites every event and the snapshot consistently: only an anchor kept
    outside the database shows it."""
    from crossfade.backends.sql import SQLBackend
    from crossfade.events import State, fold, seal

    _applied_and_started(tmp_path, url)
    head = json.loads(cli("audit", "verify", "m", "--url", url, "--json"))["head"]
    backend = SQLBackend(url)
    events = backend.events("m")
    forged, state = [], State("m")
    for e in events:
        state, (new,) = seal(state, [type("C", (), {"type": e.type, "reason": e.reason or "", "payload": e.payload})()],
                             actor="mallory", now=e.time)
        forged.append(new)
    with backend.engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM crossfade_events WHERE migration = 'm'")
        conn.exec_driver_sql("DELETE FROM crossfade_states WHERE migration = 'm'")
    backend.append("m", 0, forged, state=fold("m", forged))
    backend.close()
    assert "intact" in cli("audit", "verify", "m", "--url", url)  # consistent in itself
    out = cli("audit", "verify", "m", "--url", url, "--expect", head, code=1)
    assert "rewritten" in out
    assert "SEQ:HASH" in cli("audit", "verify", "m", "--url", url, "--expect", "nonsense", code=2)


def test_an_empty_store_file_is_refused_not_started_over(tmp_path):
    empty = tmp_path / "cf.db"
    empty.write_bytes(b"")
    url = f"sqlite:///{empty}"
    out = cli("status", "--url", url, code=1)
    assert "empty file (0 bytes)" in out and "--init-empty" in out
    assert empty.stat().st_size == 0  # nothing was written into it
    with crossfade.connect(url) as cf:  # the SDK routes to legacy and leaves the file alone
        assert cf.migration("m").run("k", lambda: "legacy", lambda: "candidate") == "legacy"
    assert empty.stat().st_size == 0
    assert "schema at" in cli("db", "upgrade", "--url", url, "--init-empty")
    assert "no migrations yet" in cli("status", "--url", url)


def test_token_create_binds_to_migrations_and_refuses_bad_names(url):
    from crossfade.backends.sql import SQLBackend

    result = runner.invoke(app, ["token", "create", "--role", "sdk", "--name", "hosts", "--migration", "m",
                                 "--migration", "n", "--url", url])
    assert result.exit_code == 0, result.output
    backend = SQLBackend(url)
    assert backend.tokens()[0].migrations == ("m", "n")
    backend.close()
    assert "not a migration name" in cli("token", "create", "--role", "sdk", "--name", "x", "--migration",
                                         "Bad Name", "--url", url, code=2)


def test_promote_refuses_an_approval_stage_and_approve_enters_it(tmp_path, url):
    spec = tmp_path / "m.yaml"
    # The error-rate gate only: the p95 of 30 calls of a lambda is noise, and an estimate past its limit
    # would rightly hold the stage.
    spec.write_text("name: m\nstages: [{traffic: 10%}, {traffic: 50%, approval: true}, {traffic: 100%}]\n"
                    "gates: {error_rate: {max_increase: 1%}}\n")
    cli("apply", str(spec), "--url", url)
    cli("start", "m", "--url", url)
    assert "needs an approval; run `crossfade approve m`" in cli("promote", "m", "--url", url, code=1)
    assert "nothing to approve" in cli("approve", "m", "--url", url, code=1)  # the controller has not asked
    with crossfade.connect(url) as cf:  # calls on both arms: the controller has data to judge the stage by
        mig = cf.migration("m")
        for i in range(300):
            mig.run(f"k{i}", lambda: "old", lambda: "new")
    assert "approval_requested" in cli("run-controller", "--once", "--url", url)
    out = cli("approve", "m", "--url", url, "--reason", "signed off")
    assert "approved" in out and "stage stage-2" in out


# -- user mistakes: one line, exit 2 for invalid input and 1 when refused, never a traceback ---------------


def one_line_error(args, code):
    """Run a command that must fail: its exit code, and one `error:` line (no traceback, no SDK warning)."""
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == code, result.output
    assert isinstance(result.exception, SystemExit), result.exception  # not an uncaught exception
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def spec_file(tmp_path):
    spec = tmp_path / "m.yaml"
    spec.write_text("name: m\nstages: [{traffic: 10%}, {traffic: 100%}]\n")
    return spec


# Every command that takes --url, with the rest of a valid command line.
URL_COMMANDS = {
    "apply": lambda p: ["apply", spec_file(p)],
    "start": lambda p: ["start", "m"], "promote": lambda p: ["promote", "m"], "pause": lambda p: ["pause", "m"],
    "resume": lambda p: ["resume", "m"], "rollback": lambda p: ["rollback", "m", "--reason", "r"],
    "approve": lambda p: ["approve", "m"], "abort": lambda p: ["abort", "m", "--reason", "r"],
    "restart": lambda p: ["restart", "m"], "run-controller": lambda p: ["run-controller", "--once"],
    "status": lambda p: ["status"], "mismatches": lambda p: ["mismatches", "m"], "history": lambda p: ["history", "m"],
    "audit verify": lambda p: ["audit", "verify", "m"], "db upgrade": lambda p: ["db", "upgrade"],
    "serve": lambda p: ["serve", "--port", "0"],
    "token create": lambda p: ["token", "create", "--name", "n"], "token list": lambda p: ["token", "list"],
    "token revoke": lambda p: ["token", "revoke", "n"],
}


@pytest.mark.parametrize("command", sorted(URL_COMMANDS))
def test_every_command_given_a_bad_url_says_so_in_one_line_and_exits_2(command, tmp_path):
    line = one_line_error([*URL_COMMANDS[command](tmp_path), "--url", "mysql://db/x"], 2)
    assert "unsupported" in line and "mysql://db/x" in line
    assert "--url is empty" in one_line_error([*URL_COMMANDS[command](tmp_path), "--url", ""], 2)


@pytest.mark.parametrize("command", sorted(URL_COMMANDS))
def test_every_command_given_a_database_in_a_missing_directory_says_so_in_one_line(command, tmp_path):
    url = f"sqlite:///{tmp_path / 'no-such-dir' / 'cf.db'}"
    line = one_line_error([*URL_COMMANDS[command](tmp_path), "--url", url], 1)
    assert f"directory {tmp_path / 'no-such-dir'} does not exist" in line


def test_commands_that_write_refuse_an_in_memory_database(tmp_path):
    for command in ("apply", "start", "promote", "rollback", "run-controller", "db upgrade", "serve", "token create"):
        assert "in-memory database" in one_line_error([*URL_COMMANDS[command](tmp_path), "--url", "sqlite://"], 2)
    assert "no migrations yet" in cli("status", "--url", "sqlite://")


# Every command that takes a file or a directory, given one that is not there.
PATH_COMMANDS = {
    "init": (["init", "{missing}/m.yaml"], 2), "validate": (["validate", "{missing}.yaml"], 1),
    "apply": (["apply", "{missing}.yaml"], 2), "simulate": (["simulate", "{missing}.yaml"], 2),
    "plan": (["plan", "{missing}.yaml"], 2), "plan -o": (["plan", "{spec}", "-o", "{missing}/plan.md"], 2),
    "demo --keep": (["demo", "--keep", "{missing}/demo"], 2),
}


@pytest.mark.parametrize("command", sorted(PATH_COMMANDS))
def test_every_command_given_a_missing_path_says_so_without_a_traceback(command, tmp_path):
    args, code = PATH_COMMANDS[command]
    missing = tmp_path / "no-such-dir"
    args = [a.format(missing=missing, spec=spec_file(tmp_path)) for a in args]
    result = runner.invoke(app, args)
    assert result.exit_code == code and isinstance(result.exception, SystemExit), result.output
    assert str(missing) in result.output and "Traceback" not in result.output


def test_empty_names_and_reasons_are_invalid_input(tmp_path, url):
    cli("apply", str(spec_file(tmp_path)), "--url", url)
    cli("start", "m", "--url", url)
    assert "migration name is empty" in one_line_error(["status", "", "--url", url], 2)
    assert "migration name is empty" in one_line_error(["pause", " ", "--url", url], 2)
    assert "--reason is empty" in one_line_error(["rollback", "m", "--reason", " ", "--url", url], 2)
    assert "--reason is empty" in one_line_error(["pause", "m", "--reason", "", "--url", url], 2)
    assert crossfade.connect(url).migration("m").state().status == "running"


def test_an_unknown_migration_keeps_its_quotes_and_a_refusal_is_one_line(tmp_path, url):
    cli("apply", str(spec_file(tmp_path)), "--url", url)
    assert one_line_error(["history", "ghost", "--url", url], 1).endswith("no migration named 'ghost'")
    assert "crossfade start" in one_line_error(["promote", "m", "--url", url], 1)


def test_an_unreachable_control_plane_is_one_line_without_the_sdks_warning():
    line = one_line_error(["status", "--url", "http://127.0.0.1:9"], 1)
    assert "cannot reach the control plane" in line and "legacy" not in line


def test_a_deeply_nested_spec_is_a_clear_error(tmp_path, url):
    spec = tmp_path / "deep.yaml"
    spec.write_text("name: m\nstages: [{traffic: 100%}]\nextra: " + "[" * 5000 + "]" * 5000 + "\n")
    assert "nested too deeply" in one_line_error(["apply", spec, "--url", url], 2)
    assert "nested too deeply" in cli("validate", str(spec), code=1)


def test_unbounded_numbers_are_refused(tmp_path, url):
    spec = spec_file(tmp_path)
    assert runner.invoke(app, ["run-controller", "--poll", "-1", "--url", url]).exit_code == 2
    assert runner.invoke(app, ["run-controller", "--poll", "0", "--url", url]).exit_code == 2
    assert runner.invoke(app, ["simulate", str(spec), "--rps", "0"]).exit_code == 2
    assert runner.invoke(app, ["demo", "--port", "70000"]).exit_code == 2


def test_version():
    assert cli("--version") == f"crossfade {crossfade.__version__}\n"


@pytest.mark.parametrize("args", [["demo", "--dashboard"], ["serve"]])
def test_without_the_server_extra_the_hint_keeps_its_brackets(args, tmp_path):
    # The extra is made absent for this process only: None in sys.modules makes its import fail.
    code = ("import sys; sys.modules['crossfade.server'] = None; sys.argv = ['crossfade', *sys.argv[1:]]; "
            "from crossfade.cli import main; main()")
    done = subprocess.run([sys.executable, "-c", code, *args, "--url" if args[0] == "serve" else "--speed",
                           f"sqlite:///{tmp_path / 'cf.db'}" if args[0] == "serve" else "0"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert "pip install 'crossfade[server]'" in done.stderr and "pip install '.[server]'" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


def test_output_is_not_cut_at_80_columns_without_a_terminal(tmp_path, url):
    spec = tmp_path / "long.yaml"
    long_name = "a-migration-whose-name-is-long-enough-to-pass-eighty-columns"
    spec.write_text(f"name: {long_name}\nstages: [{{traffic: 10%}}, {{traffic: 100%}}]\n")
    cli("apply", str(spec), "--url", url)
    cli("start", long_name, "--url", url)
    done = subprocess.run([sys.executable, "-m", "crossfade", "status", "--url", url], capture_output=True, text=True,
                          timeout=120, env={**__import__("os").environ, "COLUMNS": ""})
    assert done.returncode == 0 and any(long_name in line and "running" in line for line in done.stdout.splitlines())


def test_serve_says_where_the_dashboard_is_and_nothing_logs_alembics_narration(tmp_path):
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    done = subprocess.run([sys.executable, "-m", "crossfade", "run-controller", "--once", "--url", url],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "alembic" not in done.stderr.lower() + done.stdout.lower()
    server = subprocess.Popen([sys.executable, "-m", "crossfade", "serve", "--port", "0", "--url",
                               f"sqlite:///{tmp_path / 'served.db'}"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        first = server.stdout.readline()
    finally:
        server.terminate()
        _, errors = server.communicate(timeout=60)
    # Printed once bound: the port the OS chose for --port 0, not 0.
    where = re.search(r"dashboard at (http://127\.0\.0\.1:(\d+))/ ", first)
    assert where and int(where.group(2)) > 0, first
    assert f"metrics at {where.group(1)}/metrics (they need a" in first
    assert "alembic" not in errors.lower()


def test_a_reading_command_does_not_create_a_missing_sqlite_store(tmp_path):
    missing = tmp_path / "typo.db"
    line = one_line_error(["status", "--url", f"sqlite:///{missing}"], 1)
    assert f"{missing} does not exist" in line and "crossfade apply" in line
    assert not missing.exists()


def test_plan_and_status_of_a_program(tmp_path, url):
    from pathlib import Path

    example = Path(__file__).parent.parent / "examples" / "orchestrator"
    page = tmp_path / "plan.html"
    # Without simulated traffic (rps comes from the components), the plan is rendered from the holds.
    program = tmp_path / "program.yaml"
    program.write_text((example / "program.yaml").read_text().replace("    rps: ", "    # rps: "))
    for spec in example.glob("*.yaml"):
        if spec.name != "program.yaml":
            (tmp_path / spec.name).write_text(spec.read_text())
    assert f"wrote {page}" in cli("plan", str(program), "--html", "-o", str(page))
    assert "<h1>Migration program: orchestrator-to-dagger</h1>" in page.read_text()
    cli("apply", str(tmp_path / "config-loader.yaml"), "--url", url)
    cli("start", "dagger-config-loader", "--url", url)
    report = json.loads(cli("status", "--program", str(program), "--url", url, "--json"))
    assert [(c["phase"], c["component"], c["status"], c["stage"], c["summary"]) for c in report["components"]][:2] == [
        (1, "config-loader", "running", "shadow", "running at stage shadow (0%)"),
        (2, "build-steps", "not applied", None, "waiting on config-loader")]
    assert report["critical_path"] == ["config-loader", "build-steps", "test-runner", "deploy"]
    assert report["percent"] == 0
    cli("promote", "dagger-config-loader", "--force", "--reason", "shadow clean", "--url", url)
    text = cli("status", "--program", str(program), "--url", url)
    # config-loader passed 1 of its 3 judged stages: 1/3 of its 6 days of holds, of 41 days in all.
    assert "orchestrator-to-dagger: 4.9% done, 0 of 5 components completed" in text
    assert "critical path: config-loader -> build-steps -> test-runner -> deploy (37d of holds)" in text
    assert "running at stage canary (10%)" in text and "waiting on build-steps" in text


def test_plan_and_status_of_a_program_refuse_bad_paths(tmp_path, url):
    bad = tmp_path / "program.yaml"
    bad.write_text("program: p\ncomponents:\n  - {name: one, spec: nowhere.yaml}\n")
    assert "components[0].spec: no spec file 'nowhere.yaml'" in cli("plan", str(bad), code=2)
    assert "components[0].spec: no spec file" in cli("status", "--program", str(bad), "--url", url, code=2)
    assert "components[0].spec: no spec file" in cli("serve", "--program", str(bad), "--url", url, "--port", "0",
                                                     code=2)
    assert "no directory" in cli("plan", str(bad), "-o", str(tmp_path / "missing" / "plan.md"), code=2)


def test_db_prune_compacts_and_deletes_old_telemetry(tmp_path, url):
    from crossfade.backends.sql import SQLBackend
    from crossfade.telemetry import Cell, Window

    backend = SQLBackend(url)
    c = Cell()
    c.calls = 3
    now = time.time()
    backend.write_windows([Window("a", "canary", "legacy", now - 40 * 86400, 10.0, c) for _ in range(2)])
    backend.close()
    assert "deleted 1 telemetry rows" in cli("db", "prune", "--older-than", "30d", "--compact-after", "0s",
                                             "--url", url)
    assert "--older-than soon: " in cli("db", "prune", "--older-than", "soon", "--url", url, code=2)
    assert "not a http URL" in cli("db", "prune", "--older-than", "30d", "--url", "http://127.0.0.1:1", code=2)
    missing = f"sqlite:///{tmp_path / 'nowhere' / 'cf.db'}"
    assert cli("db", "prune", "--older-than", "30d", "--url", missing, code=1).count("\n") == 1


ROUTED = """
name: agent-cli
stages: [{name: shadow, traffic: 0%, shadow: 10%}, {name: canary, traffic: 5%}, {name: all, traffic: 100%}]
deny: [vip]
routers:
  - istio: {host: agent-cli, legacy_labels: {version: v1}, candidate_labels: {version: v2}}
"""


def test_render_prints_a_routers_manifests_for_now_or_a_stage(tmp_path, url):
    import yaml

    spec = tmp_path / "agent-cli.yaml"
    spec.write_text(ROUTED)
    cli("apply", str(spec), "--url", url)
    cli("start", "agent-cli", "--url", url)
    docs = list(yaml.safe_load_all(cli("render", "agent-cli", "--router", "istio", "--url", url)))
    assert [d["kind"] for d in docs] == ["DestinationRule", "VirtualService"]
    split = docs[1]["spec"]["http"][-1]
    assert [r["weight"] for r in split["route"]] == [100, 0] and split["mirrorPercentage"] == {"value": 10.0}
    canary = list(yaml.safe_load_all(cli("render", "agent-cli", "--router", "istio", "--stage", "canary", "--url", url)))
    assert [r["weight"] for r in canary[1]["spec"]["http"][-1]["route"]] == [95, 5]


def test_render_refuses_bad_input_in_one_line(tmp_path, url):
    spec = tmp_path / "agent-cli.yaml"
    spec.write_text(ROUTED)
    cli("apply", str(spec), "--url", url)
    out = cli("render", "agent-cli", "--router", "nginx", "--url", url, code=2)
    assert "names no nginx router (it names: istio)" in out and "Traceback" not in out
    assert "no stage 'nope'" in cli("render", "agent-cli", "--router", "istio", "--stage", "nope", "--url", url, code=2)
    assert "no migration" in cli("render", "ghost", "--router", "istio", "--url", url, code=1)


def test_status_shows_each_routers_state(tmp_path, url):
    from crossfade.events import ROUTER_FAILED, ROUTER_SYNCED, Change, seal

    spec = tmp_path / "agent-cli.yaml"
    spec.write_text(ROUTED)
    cli("apply", str(spec), "--url", url)
    cli("start", "agent-cli", "--url", url)
    with crossfade.connect(url) as cf:
        # What the controller loop records after syncing a router, written here without a cluster.
        state = cf.migration("agent-cli").state()
        after, events = seal(state, [
            Change(ROUTER_SYNCED, "istio at 0.00% candidate", {"router": "istio", "candidate": 0.0,
                                                                "verification": "verified"}),
            Change(ROUTER_FAILED, "nginx: cannot reach nginx", {"router": "nginx", "candidate": 0.0})],
            actor="controller", now=time.time())
        cf.backend().append("agent-cli", state.seq, events, state=after)
    text = cli("status", "agent-cli", "--url", url)
    assert "router istio: verified at 0% candidate" in text
    assert "router nginx: failed at 0% candidate (nginx: cannot reach nginx)" in text


def test_replay_refuses_a_bad_spec_an_unknown_migration_and_one_never_started(tmp_path, url):
    spec = tmp_path / "m.yaml"
    spec.write_text("name: m\nstages: [{traffic: 10%}, {traffic: 100%}]\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: m\nstages: [{traffic: 200%}]\n")
    assert "stages[0].traffic" in cli("replay", "m", "--spec", str(bad), "--url", url, code=2)
    assert "no such file" in cli("replay", "m", "--spec", str(tmp_path / "none.yaml"), "--url", url, code=2).lower()
    assert "does not exist" in cli("replay", "m", "--spec", str(spec), "--url", url, code=1)
    other = tmp_path / "other.yaml"
    other.write_text("name: other\nstages: [{traffic: 10%}, {traffic: 100%}]\n")
    cli("apply", str(other), "--url", url)
    assert "no migration named 'm'" in cli("replay", "m", "--spec", str(spec), "--url", url, code=1)
    cli("apply", str(spec), "--url", url)
    assert "never started" in cli("replay", "m", "--spec", str(spec), "--url", url, code=1)


def test_schema_prints_the_open_telemetry_form_on_request():
    import json

    schema = json.loads(cli("schema", "--telemetry"))
    assert schema["properties"]["windows"]["items"]["$ref"] == "#/$defs/OpenWindowModel"
    assert "counts" in schema["$defs"]["OpenWindowModel"]["required"]


def test_step_back_returns_to_an_earlier_stage_and_refuses_bad_input(tmp_path, url):
    spec = tmp_path / "m.yaml"
    spec.write_text("name: m\nstages: [{name: one, traffic: 1%}, {name: ten, traffic: 10%}, "
                    "{name: half, traffic: 50%}, {traffic: 100%}]\n")
    cli("apply", str(spec), "--url", url)
    cli("start", "m", "--url", url)
    cli("promote", "m", "--url", url)
    cli("promote", "m", "--url", url)
    assert "stepped_back" in cli("step-back", "m", "--to", "10%", "--reason", "p99 creeping", "--url", url)
    assert json.loads(cli("status", "m", "--url", url, "--json"))["stage"] == "ten"
    assert "--to 'lots': " in cli("step-back", "m", "--to", "lots", "--url", url, code=2)
    assert "no earlier stage is at or below it" in cli("step-back", "m", "--to", "0.5%", "--url", url, code=1)
    assert "unknown-one" in cli("step-back", "unknown-one", "--url", url, code=1)


def test_status_warns_when_a_rollback_stopped_dual_writes(tmp_path, url):
    spec = tmp_path / "m.yaml"
    spec.write_text("name: m\nstages: [{name: dual, traffic: 0%, dual_write: true}, {traffic: 100%}]\n")
    cli("apply", str(spec), "--url", url)
    cli("start", "m", "--url", url)
    assert "dual writes stopped" not in cli("status", "m", "--url", url)
    cli("rollback", "m", "--reason", "store trouble", "--url", url)
    assert "warning: dual writes stopped at event 3 (rolled_back" in cli("status", "m", "--url", url)
    assert json.loads(cli("status", "m", "--url", url, "--json"))["dual_writes_stopped"]["seq"] == 3
    spec.write_text(spec.read_text() + "dual_write_after_rollback: true\n")
    cli("apply", str(spec), "--url", url)
    cli("restart", "m", "--url", url)
    cli("rollback", "m", "--reason", "again", "--url", url)
    report = json.loads(cli("status", "m", "--url", url, "--json"))
    assert report["dual_write"] is True and report["dual_writes_stopped"] is None


def test_notify_test_and_status(tmp_path, url, receiver, monkeypatch):
    monkeypatch.setenv("HOOK_KEY", "k")
    spec = tmp_path / "m.yaml"
    spec.write_text("name: m\nstages: [{traffic: 10%}, {traffic: 100%}]\n")
    cli("apply", str(spec), "--url", url)
    assert "no notification targets" in cli("notify", "test", "m", "--url", url, code=1)
    spec.write_text(spec.read_text() + f"notify: [{{name: hook, webhook: {{url: '{receiver.url}', "
                                       "secret_env: HOOK_KEY}, events: [rolled_back]}]\n")
    cli("apply", str(spec), "--url", url)
    assert "no notifications yet" in cli("notify", "status", "--url", url)
    assert "test message queued for hook" in cli("notify", "test", "m", "--url", url)
    assert "m has no notify target 'pager'" in cli("notify", "test", "m", "--target", "pager", "--url", url, code=1)
    rows = json.loads(cli("notify", "status", "m", "--url", url, "--json"))
    assert [(r["kind"], r["target"], r["status"]) for r in rows] == [("test", "hook", "pending")]
    assert "run-controller" not in cli("run-controller", "--once", "--url", url)
    rows = json.loads(cli("notify", "status", "m", "--url", url, "--json"))
    assert rows[0]["status"] == "delivered" and receiver.received
    assert "delivered" in cli("notify", "status", "--url", url)
    assert "no-such" in cli("notify", "status", "no-such", "--url", url, code=1)


@pytest.mark.parametrize("command, extra", [("proxy", "proxy"), ("serve", "server"), ("demo", "server")])
def test_help_names_the_extra_to_install_from_a_clone(command, extra):
    # Rich reads square brackets as markup: an unescaped '.[server]' was printed as '.'.
    shown = runner.invoke(app, [command, "--help"], env={"COLUMNS": "300"}).output
    assert f"pip install '.[{extra}]'" in " ".join(shown.split())
