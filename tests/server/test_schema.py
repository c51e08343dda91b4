"""Schemathesis against the OpenAPI document of a live server: no 5xx and every answer as documented."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


# A fixed amount of work (30 examples per operation) that takes minutes on a loaded machine: its own subprocess
# deadline bounds it, within a per-test timeout to match.
@pytest.mark.timeout(900)
def test_schemathesis_finds_no_server_error_and_no_schema_violation(tmp_path):
    from conftest import start_control_plane

    plane, stop = start_control_plane(f"sqlite:///{tmp_path / 'cf.db'}")
    try:
        # A running migration, so that generated requests sometimes reach real data (other names get 404).
        plane.call("PUT", "/v1/migrations/m", {"spec": {"stages": [{"traffic": "10%"}, {"traffic": "100%"}]}})
        plane.call("POST", "/v1/migrations/m/start", {"reason": "schemathesis"})
        command = shutil.which("schemathesis", path=os.path.dirname(sys.executable)) or "schemathesis"
        run = subprocess.run(
            [command, "run", f"{plane.url}/openapi.json", "--checks", CHECKS, "--max-examples", "30",
             "--header", f"Authorization: Bearer {plane.tokens['admin']}", "--request-timeout", "30",
             "--no-color", "--seed", "1"],
            capture_output=True, text=True, timeout=840, cwd=tmp_path,
        )
    finally:
        stop()
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "schemathesis.txt").write_text(run.stdout + run.stderr)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
