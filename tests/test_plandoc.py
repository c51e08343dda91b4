"""The plan document: every section a team needs, in words and numbers taken from the spec and simulations."""

from __future__ import annotations

from pathlib import Path

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


# -- programs -------------------------------------------------------------------------------------

PROGRAM_EXAMPLE = Path(__file__).parent.parent / "examples" / "orchestrator" / "program.yaml"


def test_a_program_plan_renders_every_deliverable_with_the_spec_s_numbers():
    from crossfade.plandoc import render_program
    from crossfade.program import load_program

    document = render_program(load_program(PROGRAM_EXAMPLE), source="program.yaml")
    for heading in ("# Migration program: orchestrator-to-dagger", "## Phases and timeline", "## Success criteria",
                    "## Acceptance and validation", "## Rollback", "## Rollback rehearsal", "## Testing strategy",
                    "## Shadow's extra cost", "## Communication plan", "### Templates", "### Cadence and escalation"):
        assert heading in document, heading
    # Phases, timeline and critical path from the holds (2d x 3 for config-loader, 3d x 4 for build-steps, ...).
    assert "| config-loader (critical) | alice | - | shadow -> canary -> half -> all | 0s | 6d | 6d |" in document
    assert "| artifact-publisher | dave | build-steps | canary -> half -> all | 18d | 4d | 22d |" in document
    assert "**Critical path:** config-loader -> build-steps -> test-runner -> deploy, 37d in all" in document
    # Success criteria and rollback per phase carry each spec's own limits and triggers.
    assert "the candidate's may exceed legacy's by at most 2 percentage points" in document
    assert "the candidate's error rate exceeds 25% over 6h" in document
    # Data preservation: dual-written stages and the stores the component names.
    assert "`write` call sites write both stores in shadow, canary, quarter, half, all" in document
    assert "artifact registry: each artifact is published under a content digest" in document
    # Shadow's cost: config-loader shadows 100% of 0.06 calls/s for 2d with 5% noise runs of legacy.
    assert "| config-loader | shadow | 10,886 |" in document  # 0.06 * 172800 * (1 + 0.05)
    # Communication: stakeholders, templates with the program's names, cadence and escalation.
    assert "| engineering managers | eng-managers@example.com | approval requested, rolled back, completed |" \
           in document
    assert "orchestrator-to-dagger: config-loader was rolled back at stage shadow" in document
    assert "Every 7d, the owner posts `crossfade status --program program.yaml`" in document
    assert "platform on-call (#platform-oncall) -> engineering manager, platform -> VP engineering" in document


def test_a_program_plan_renders_as_html_with_its_tables():
    from crossfade.plandoc import render_program, to_html
    from crossfade.program import load_program

    page = to_html(render_program(load_program(PROGRAM_EXAMPLE)), "Migration plan: <x>")
    assert page.startswith("<!doctype html>") and "<title>Migration plan: &lt;x&gt;</title>" in page
    assert "<table>" in page and "<h2>Communication plan</h2>" in page
