"""The plan document: every section a team needs, in words and numbers taken from the spec and simulations."""

from __future__ import annotations

from typer.testing import CliRunner

from crossfade.cli import app
from crossfade.plandoc import estimate, render
from crossfade.spec import EXAMPLE, load_spec

SPEC = load_spec(EXAMPLE)


def test_the_plan_has_every_section_with_the_spec_s_numbers():
    text = render(SPEC)
    for heading in ("# Migration plan: checkout-pricing", "## Phases", "## Success criteria", "## Rollback",
                    "### Automatic", "### Manual", "## Testing strategy", "## Estimated timeline",
                    "## Communication"):
        assert heading in text
    assert "| 2 | canary-1 | 1% | - | 30m | 500 | - |" in text
    assert "| 4 | rollout-25 | 25% | - | 2h | - | yes: a person approves entering it |" in text
    assert "the candidate's may exceed legacy's by at most 0.5 percentage points" in text
    assert "the candidate's p95 may be at most 1.2x legacy's" in text
    assert "the candidate's error rate exceeds 5% over 5m (at least 100 samples)" in text
    assert "steps down through 50%, 25%, 10%, 0%, one step every 1m" in text
    assert 'crossfade rollback checkout-pricing --reason "..."' in text
    assert "crossfade approve checkout-pricing" in text and "payments-team investigates" in text
    assert "At least 7h40m (the sum of the holds)" in text


def test_a_minimal_spec_says_what_is_missing():
    text = render(load_spec({"name": "m", "stages": [{"traffic": "10%"}, {"traffic": "100%"}]}))
    assert "not set (add `owner:` to the spec)" in text
    assert "No instant triggers are set" in text
    assert "**No shadow stage**" in text
    assert "the migration **rolls back at once**" in text


def test_the_timeline_and_testing_come_from_simulations():
    spec = load_spec({"name": "m", "owner": "team",
                      "stages": [{"name": "c", "traffic": "10%", "hold": "20m"}, {"name": "h", "traffic": "50%",
                                                                                   "hold": "20m"},
                                 {"name": "done", "traffic": "100%"}]})
    text = render(spec, estimate(spec, rps=50, runs=3))
    assert "3 runs with a candidate that behaves like legacy ended 3 completed" in text
    assert "3 of 3 caught" in text
    assert "| h |" in text and "**Completion:** median" in text


def test_crossfade_plan_writes_the_document(tmp_path):
    spec = tmp_path / "m.yaml"
    spec.write_text(EXAMPLE)
    out = tmp_path / "plan.md"
    result = CliRunner().invoke(app, ["plan", str(spec), "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_text().startswith("# Migration plan: checkout-pricing")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nstages: []\n")
    result = CliRunner().invoke(app, ["plan", str(bad)])
    assert result.exit_code == 2 and "stages" in result.output
