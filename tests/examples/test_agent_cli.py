"""examples/agent-cli runs as documented: configs converted and validated, manifests valid, the right ending."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from crossfade.notify.webhook import SIGNATURE_HEADER, verify_signature
from tests.examples import load_example

EXAMPLE = Path(__file__).parents[2] / "examples" / "agent-cli"
SECRET = "agent-cli-test-secret"




def _notes(receiver, kinds: set[str]) -> dict[str, dict]:
    """The notifications received, by kind, each checked for its signature, once every kind in `kinds` came."""
    deadline = time.monotonic() + 60
    while True:
        received = {}
        for path, headers, body in list(receiver.received):
            assert path == "/crossfade"
            assert verify_signature(SECRET, headers[SIGNATURE_HEADER], body, now=time.time())
            note = json.loads(body)
            received[note["kind"]] = note
        if kinds <= set(received):
            return received
        assert time.monotonic() < deadline, f"no {kinds - set(received)} notification arrived"
        receiver.wait_for(len(receiver.received) + 1, timeout=max(0.1, deadline - time.monotonic()))


def test_a_healthy_candidate_completes_and_the_receiver_is_told(tmp_path, receiver, monkeypatch):
    monkeypatch.setenv("AGENT_CLI_WEBHOOK_SECRET", SECRET)
    result = load_example("agent-cli", "migrate").main(tmp_path, build="1.0", webhook=receiver.url + "/crossfade")
    planning = result["planning"]
    assert planning["instructions_lost"] == [] and planning["settings_lost"] == []
    assert planning["agent_toml_round_trip"]
    # What Codex cannot express is listed, rule by rule.
    assert any("'Bash(wc:*)'" in loss for loss in planning["not_carried"])
    assert any("permissions.deny 'Bash(rm:*)'" in loss for loss in planning["not_carried"])
    agents_md = (tmp_path / "workspace" / "AGENTS.md").read_text()
    assert "Money is kept in integer cents" in agents_md and "@docs/conventions.md" not in agents_md
    assert result["status"] == "completed" and result["reason"] is None
    assert result["stages_entered"] == ["testing", "canary", "rollout-25", "rollout-50", "complete"]
    assert result["legacy_failures_seen_by_agents"] == 0
    note = _notes(receiver, {"completed"})["completed"]
    assert note["migration"] == "agent-cli"
    assert "rolled_back" not in _notes(receiver, set())


@pytest.mark.parametrize(("build", "trigger"), [
    ("1.1-grep", "trigger error_rate > 5% over 5m fired"),
    ("1.1-slow", "trigger latency_p95_ratio > x2 over 3m"),
    ("1.1-verbose", "trigger cost_ratio > x1.5 over 1h fired"),
])
def test_a_bad_release_is_rolled_back_in_testing_by_its_trigger(tmp_path, receiver, monkeypatch, build, trigger):
    monkeypatch.setenv("AGENT_CLI_WEBHOOK_SECRET", SECRET)
    migrate = load_example("agent-cli", "migrate")
    shutil.copytree(EXAMPLE / "workspace", tmp_path / "workspace")
    migrate.convert(tmp_path / "workspace")
    result = migrate.run(tmp_path, build=build, webhook=receiver.url + "/crossfade")
    # Stopped in the shadow stage, before the candidate answered a single agent.
    assert (result["status"], result["stopped_at"]) == ("rolled_back", "testing"), result
    assert result["reason"].startswith(trigger), result["reason"]
    assert result["stages_entered"] == ["testing"]
    notes = _notes(receiver, {"rolled_back"})
    assert notes["rolled_back"]["migration"] == "agent-cli" and notes["rolled_back"]["reason"].startswith(trigger)


def test_the_cli_programs_run_as_commands_and_refuse_a_broken_config(tmp_path):
    migrate = load_example("agent-cli", "migrate")
    workspace = tmp_path / "workspace"
    shutil.copytree(EXAMPLE / "workspace", workspace)
    migrate.convert(workspace)
    for cli in ("claude-like", "codex-like"):
        done = subprocess.run([sys.executable, str(EXAMPLE / "agent_cli.py"), cli, str(workspace), "count src/ledger.py"],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        answer = json.loads(done.stdout)
        assert answer["text"] == "12 src/ledger.py" and answer["cost"] > 0
    config = workspace / ".codex" / "config.toml"
    config.write_text(config.read_text().replace('model = "gpt-5-codex"', 'model = "claude-sonnet-4.5"'))
    done = subprocess.run([sys.executable, str(EXAMPLE / "agent_cli.py"), "codex-like", str(workspace), "grep TODO"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip() == ("codex-like: .codex/config.toml: model 'claude-sonnet-4.5' is not one this CLI "
                                   "serves (claude-sonnet-4, gpt-5-codex)")


def _rendered(tmp_path: Path) -> dict[str, dict[str, str]]:
    spec = yaml.safe_load((EXAMPLE / "agent-cli.yaml").read_text())
    return load_example("agent-cli", "migrate").render_manifests(spec, tmp_path)


def test_the_istio_and_gateway_api_manifests_pass_the_crd_schemas(tmp_path):
    from routers.crd import validator

    rendered = _rendered(tmp_path)
    assert set(rendered) == {"istio", "gateway_api", "nginx"}
    manifests = [m for router in ("istio", "gateway_api") for text in rendered[router].values()
                 for m in yaml.safe_load_all(text) if m]
    assert len(manifests) == 6 * 2 + 6  # a DestinationRule and a VirtualService, an HTTPRoute; 6 renderings each
    assert validator().errors(manifests) == [""] * len(manifests)
    canary = [m for m in yaml.safe_load_all(rendered["istio"]["canary"]) if m["kind"] == "VirtualService"][0]
    assert [r["weight"] for r in canary["spec"]["http"][-1]["route"]] == [90, 10]
    rollback = [m for m in yaml.safe_load_all(rendered["gateway_api"]["rollback"]) if m][0]
    assert [(b["name"], b["weight"] > 0) for b in rollback["spec"]["rules"][-1]["backendRefs"]] == [
        ("claude-like", True), ("codex-like", False)]


def test_the_nginx_config_passes_nginx_t(tmp_path):
    binary = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("nginx is not installed (.ci/run installs it)")
        pytest.skip("nginx is not installed (apt-get install nginx)")
    rendered = _rendered(tmp_path)
    assert "10.00% candidate;" in rendered["nginx"]["canary"]
    prefix = tmp_path / "nginx-prefix"
    prefix.mkdir()
    temps = "\n".join(f"    {kind}_temp_path {prefix / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi",
                                                                             "scgi"))
    for stage, text in rendered["nginx"].items():
        conf = prefix / f"{stage}.conf"
        conf.write_text(text)
        (prefix / "nginx.conf").write_text(f"pid {prefix / 'nginx.pid'};\nerror_log {prefix / 'error.log'};\n"
                                           f"events {{}}\nhttp {{\n{temps}\n    include {conf};\n}}\n")
        done = subprocess.run([binary, "-t", "-p", str(prefix), "-c", str(prefix / "nginx.conf"),
                               "-e", str(prefix / "error.log")], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"{stage}: {done.stderr}"
