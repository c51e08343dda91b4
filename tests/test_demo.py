"""The demo: the healthy story completes, the faulty one is rolled back, and both audit logs verify."""

from __future__ import annotations

import io

from rich.console import Console
from typer.testing import CliRunner

from crossfade.cli import app
from crossfade.demo import SPEC, run_demo
from crossfade.spec import load_spec


def test_both_stories_end_as_they_should_with_intact_logs():
    buffer = io.StringIO()
    assert run_demo(Console(file=buffer, width=140), speed=0) == 0
    text = buffer.getvalue()
    assert "completed in" in text and "rolled back at" in text
    assert text.count("audit log: intact") == 2
    assert "approval_requested" in text and "by the demo, as an operator" in text
    for stage in load_spec(SPEC).stages:
        assert stage.name in text


def test_keep_leaves_databases_that_status_and_history_read(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["demo", "--faulty", "--speed", "0", "--keep", str(tmp_path / "demo.db")])
    assert result.exit_code == 0, result.output
    url = f"sqlite:///{tmp_path / 'demo-1.db'}"
    status = runner.invoke(app, ["status", "demo-pricing", "--url", url])
    assert status.exit_code == 0 and "rolled_back" in status.output
    history = runner.invoke(app, ["history", "demo-pricing", "--url", url])
    # Caught by a gate's FAIL or, a look after the fault began, by change detection.
    assert "rolled_back" in history.output and ("FAIL" in history.output or "change in" in history.output)
    audit = runner.invoke(app, ["audit", "verify", "demo-pricing", "--url", url])
    assert audit.exit_code == 0, audit.output


def test_the_dashboard_serves_the_demo_while_it_plays(tmp_path):
    import json
    import urllib.request

    seen = {}

    def look(url):
        with urllib.request.urlopen(f"{url}/v1/migrations/demo-pricing", timeout=10) as answer:
            seen["migration"] = json.load(answer)
        with urllib.request.urlopen(url, timeout=10) as page:
            seen["page"] = page.read().decode()

    buffer = io.StringIO()
    code = run_demo(Console(file=buffer, width=140), speed=0, faulty_only=True, dashboard=0, linger=look)
    assert code == 0
    assert "dashboard: http://127.0.0.1:" in buffer.getvalue()
    assert seen["migration"]["state"]["status"] == "rolled_back"
    assert "<html" in seen["page"].lower()


def test_piped_demo_draws_its_panels_to_a_page_s_width():
    result = CliRunner().invoke(app, ["demo", "--faulty", "--speed", "0"])
    assert result.exit_code == 0, result.output
    assert "rolled back at" in result.output
    assert max(len(line) for line in result.output.splitlines()) <= 100
