"""The alerting rules: promtool accepts them, its rule unit tests fire the rollback and controller-lag alerts
on synthetic series, and every metric they read is one /metrics exposes."""

from __future__ import annotations

import re
import shutil
import subprocess

import yaml
from typer.testing import CliRunner

from crossfade.alerts import rules
from crossfade.cli import app


def _promtool() -> str:
    found = shutil.which("promtool")
    assert found, "promtool is needed (Debian package prometheus)"
    return found


def test_promtool_checks_the_rules_written_by_the_command(tmp_path) -> None:
    target = tmp_path / "rules.yml"
    result = CliRunner().invoke(app, ["alerts", "--out", str(target)])
    assert result.exit_code == 0, result.output
    checked = subprocess.run([_promtool(), "check", "rules", str(target)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 8 rules found" in checked.stdout


def test_the_rollback_and_lag_alerts_fire_on_promtool_unit_tests(tmp_path) -> None:
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rules()))
    cases = {
        "rule_files": ["rules.yml"],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [
                {"series": 'crossfade_rollbacks_total{migration="m"}', "values": "0 0 1 1 1"},
                {"series": "crossfade_controller_lag_seconds", "values": "1 1 90 120 150 180"},
            ],
            "alert_rule_test": [
                {"eval_time": "3m", "alertname": "CrossfadeRollback", "exp_alerts": [{
                    "exp_labels": {"severity": "critical", "migration": "m"},
                    "exp_annotations": {"summary": "m rolled back to legacy (crossfade history m)"}}]},
                {"eval_time": "1m", "alertname": "CrossfadeRollback", "exp_alerts": []},
                {"eval_time": "5m", "alertname": "CrossfadeControllerLag", "exp_alerts": [{
                    "exp_labels": {"severity": "critical"},
                    "exp_annotations": {"summary": "the controller has not completed a pass for 3m 0s"}}]},
                {"eval_time": "3m", "alertname": "CrossfadeControllerLag", "exp_alerts": []},
            ],
        }],
    }
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(cases))
    tested = subprocess.run([_promtool(), "test", "rules", "tests.yml"], cwd=tmp_path, capture_output=True, text=True)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_every_rule_reads_a_series_metrics_exposes(metrics_text) -> None:
    exposed = {line.split("{")[0].split(" ")[0] for line in metrics_text.splitlines()
               if line and not line.startswith("#")}
    for rule in rules()["groups"][0]["rules"]:
        names = set(re.findall(r"\bcrossfade_[a-z_]+", rule["expr"]))
        assert names and not names - exposed, f"{rule['alert']}: {names - exposed} not in /metrics"


def test_an_unwritable_path_is_one_line() -> None:
    result = CliRunner().invoke(app, ["alerts", "--out", "/nonexistent/dir/rules.yml"])
    assert result.exit_code == 2 and "cannot write /nonexistent/dir/rules.yml" in result.output
