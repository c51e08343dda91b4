"""`crossfade batch ...` and `crossfade convert` from the command line, bad input included."""

from __future__ import annotations

import json
import sqlite3
import tomllib

import pytest
from typer.testing import CliRunner

from crossfade.cli import app

runner = CliRunner()

SPEC = """name: rows-v2
stages:
  - {name: canary, traffic: 20%}
  - {name: all, traffic: 100%}
gates: {mismatch_rate: {max: 1%}}
"""

TRANSFORM = '''import json

def to_v2(key, data):
    record = json.loads(data)
    return json.dumps({"id": record["id"], "version": 2})

def broken(key, data):
    if int(key) % 10 == 3:
        raise KeyError("name")
    return to_v2(key, data)
'''


def cli(*args: str, code: int = 0) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == code, result.output
    return result.output


@pytest.fixture
def project(tmp_path):
    db = tmp_path / "app.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, data TEXT)")
        conn.executemany("INSERT INTO items VALUES (?, ?)",
                         [(i, json.dumps({"id": i, "version": 1})) for i in range(400)])
    (tmp_path / "spec.yaml").write_text(SPEC)
    (tmp_path / "mig.py").write_text(TRANSFORM)
    return tmp_path


def _rows(path):
    with sqlite3.connect(path / "app.db") as conn:
        return dict(conn.execute("SELECT id, data FROM items"))


def test_batch_run_report_and_prune(project):
    db, store = f"sqlite:///{project / 'cf.db'}", f"sqlite:///{project / 'app.db'}"
    output = cli("batch", "run", "rows-v2", "--source", store, "--table", "items", "--transform",
                 f"{project / 'mig.py'}:to_v2", "--spec", str(project / "spec.yaml"), "--url", db)
    assert "rows-v2: completed at stage all; transformed 400 items" in output
    assert all(json.loads(v)["version"] == 2 for v in _rows(project).values())
    assert "items: 400 written" in cli("batch", "report", "rows-v2", "--url", db)
    assert "pruned 0 items" in cli("batch", "prune", "--older-than", "30d", "--url", db)
    assert "pruned 400 items and 800 snapshots" in cli("batch", "prune", "--older-than", "0s", "--url", db)


def test_dry_run_lists_failed_items_and_writes_nothing(project):
    db, store = f"sqlite:///{project / 'cf.db'}", f"sqlite:///{project / 'app.db'}"
    before = _rows(project)
    report = project / "failed.json"
    output = cli("batch", "run", "rows-v2", "--source", store, "--table", "items", "--transform",
                 f"{project / 'mig.py'}:broken", "--spec", str(project / "spec.yaml"), "--url", db, "--dry-run",
                 "--json", "--failed-report", str(report), code=1)
    data = json.loads(output)
    assert data["dry_run"] and data["transformed"] == 400 and len(data["failed"]) == 40
    assert json.loads(report.read_text())[0] == {"key": "103", "status": "failed", "error": "KeyError: 'name'",
                                                 "tries": 1}
    assert _rows(project) == before


def test_batch_commands_refuse_bad_input_in_one_line(project):
    db, store = f"sqlite:///{project / 'cf.db'}", f"sqlite:///{project / 'app.db'}"
    out = cli("batch", "run", "x", "--source", store, "--transform", f"{project / 'mig.py'}:to_v2", "--url", db,
              code=1)
    assert "name the table of items with --table NAME" in out
    assert "no file nope.py" in cli("batch", "run", "x", "--source", store, "--table", "items", "--transform",
                                    "nope.py:f", "--url", db, code=1)
    out = cli("batch", "run", "x", "--source", store, "--table", "items", "--transform", "to_v2", "--url", db, code=1)
    assert "write module:function" in out
    out = cli("batch", "run", "x", "--source", store, "--table", "items", "--transform",
              f"{project / 'mig.py'}:nothing", "--url", db, code=1)
    assert "has no function 'nothing'" in out
    out = cli("batch", "run", "nope", "--source", store, "--table", "items", "--transform",
              f"{project / 'mig.py'}:to_v2", "--url", db, code=1)
    assert "no migration named 'nope'" in out
    assert "not a duration" in cli("batch", "prune", "--older-than", "soon", "--url", db, code=1)
    assert "Traceback" not in out


def test_reconcile_and_backfill(project):
    store = f"sqlite:///{project / 'app.db'}"
    with sqlite3.connect(project / "app.db") as conn:
        conn.execute("CREATE TABLE items_v2 (id INTEGER PRIMARY KEY, data TEXT)")
        conn.executemany("INSERT INTO items_v2 VALUES (?, ?)",
                         [(i, json.dumps({"id": i, "version": 2})) for i in range(0, 400, 2)])
    args = ["batch", "reconcile", "--source", store, "--table", "items", "--target", store, "--target-table",
            "items_v2", "--transform", f"{project / 'mig.py'}:to_v2"]
    assert "200 match, 200 missing" in cli(*args, code=1)
    cli(*args, "--backfill")
    assert json.loads(cli(*args, "--json"))["consistent"] is True


def test_convert_files_and_report_losses(tmp_path):
    source = tmp_path / "settings.json"
    source.write_text('{"model": "x", "hooks": null, "mcpServers": {"a": {"command": "npx"}}}')
    result = runner.invoke(app, ["convert", "json-to-toml", str(source), "--snake-case", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    converted = tomllib.loads((tmp_path / "settings.toml").read_text())
    assert converted == {"model": "x", "mcp_servers": {"a": {"command": "npx"}}}
    assert "$.hooks: null has no TOML equivalent; dropped" in result.output
    strict = runner.invoke(app, ["convert", "json-to-toml", str(source), "--strict"])
    assert strict.exit_code == 1
    claude = tmp_path / "CLAUDE.md"
    claude.write_text("# Rules\n\n@notes.md\n")
    (tmp_path / "notes.md").write_text("- be brief\n")
    result = runner.invoke(app, ["convert", "claude-to-agents", str(claude), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "- be brief" in (tmp_path / "out" / "AGENTS.md").read_text()


def test_convert_refuses_bad_input_in_one_line(tmp_path):
    assert "unknown converter 'yaml-to-toml'" in cli("convert", "yaml-to-toml", str(tmp_path), code=1)
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    assert "the JSON must be an object, not list" in cli("convert", "json-to-toml", str(bad), code=1)
    out = cli("convert", "claude-to-agents", str(bad), "--settings", str(tmp_path / "none.json"), code=1)
    assert "settings: must name a JSON file" in out


def test_batch_run_converts_a_directory_with_a_converter_and_renamed_keys(tmp_path):
    configs = tmp_path / "configs"
    configs.mkdir()
    for i in range(30):
        (configs / f"agent{i}.json").write_text(json.dumps({"model": "x", "maxTurns": i, "when": "2025-01-02"}))
    (tmp_path / "spec.yaml").write_text("name: configs-toml\nstages: [{name: all, traffic: 100%}]\n"
                                        "gates: {mismatch_rate: {max: 1%}}\n")
    db = f"sqlite:///{tmp_path / 'cf.db'}"
    output = cli("batch", "run", "configs-toml", "--source", str(configs), "--pattern", "*.json", "--target",
                 str(configs), "--rename", ".json=.toml", "--transform", "convert:json-to-toml", "--spec",
                 str(tmp_path / "spec.yaml"), "--url", db)
    assert "30 written" in output
    assert tomllib.loads((configs / "agent7.toml").read_text()) == {"model": "x", "maxTurns": 7,
                                                                    "when": tomllib.loads("d = 2025-01-02")["d"]}
    bad = cli("batch", "run", "configs-toml", "--source", str(configs), "--rename", "toml", "--transform",
              "convert:json-to-toml", "--url", db, code=1)
    assert "--rename 'toml': write OLD=NEW" in bad
    assert "unknown converter" in cli("batch", "run", "configs-toml", "--source", str(configs), "--transform",
                                      "convert:yaml", "--url", db, code=1)
