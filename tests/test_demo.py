"""The demo: it walks every stage, no candidate failure reaches a caller, and the audit log verifies."""

from __future__ import annotations

import io

from rich.console import Console

from crossfade.demo import SPEC, run_demo
from crossfade.spec import load_spec


def test_the_demo_completes_every_stage_with_an_intact_log():
    buffer = io.StringIO()
    assert run_demo(Console(file=buffer, width=120), calls_per_stage=150) == 0
    text = buffer.getvalue()
    for stage in load_spec(SPEC).stages:
        assert f"stage {stage.name}" in text
    assert "is completed after 4 stages; exceptions seen by callers: 0" in text
    assert "audit log: intact (5 events" in text
