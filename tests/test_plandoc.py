"""The plan document: every section a team needs, in words and numbers taken from the spec and simulations."""

from __future__ import annotations

import statistics
from pathlib import Path

from typer.testing import CliRunner

from crossfade.cli import app
from crossfade.plandoc import estimate, render
from crossfade.spec import EXAMPLE, format_duration, load_spec

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


def test_the_plan_says_what_each_stage_can_detect_at_the_given_traffic():
    from crossfade.plandoc import detectable

    spec = load_spec({"name": "m", "stages": [{"name": "c1", "traffic": "1%", "hold": "15m"},
                                              {"name": "c50", "traffic": "50%", "hold": "1h"},
                                              {"name": "done", "traffic": "100%"}],
                      "gates": {"error_rate": {"max_increase": "1%"}, "latency": {"quantile": "p95",
                                                                                  "max_ratio": 1.25},
                                "cost": {"max_ratio": 1.5}}})
    low, high = detectable(spec, 2.0), detectable(spec, 200.0)
    assert [r.stage for r in low] == ["c1", "c50"]
    # 18 candidate calls in the 1% stage at 2 calls/s catch only huge regressions; 200 calls/s far smaller.
    assert low[0].candidate_calls == 18 and low[0].error_rate > 0.3 and set(low[0].out_of_reach) == {
        "error_rate", "latency", "cost"}
    assert high[1].error_rate < 0.02 and high[1].latency < 1.3 and high[1].cost < 1.6 and not high[1].out_of_reach
    text = render(spec, estimate(spec, rps=2, runs=1))
    assert "## What each stage can detect" in text and "| c1 | 18 | 1,782 |" in text
    assert "**Warning, c1**: at this traffic its hold is too short for error_rate, latency, cost" in text


def test_plan_takes_legacy_s_behaviour_and_refuses_a_bad_one(tmp_path):
    spec = tmp_path / "m.yaml"
    spec.write_text("name: m\nstages: [{name: c, traffic: 10%, hold: 10m}, {traffic: 100%}]\n")
    result = CliRunner().invoke(app, ["plan", str(spec), "--rps", "20", "--runs", "1",
                                      "--legacy", "errors=5% latency=const(2s)"])
    assert result.exit_code == 0, result.output
    assert "legacy `errors=5% latency=const(2s) cost=0.001`" in result.output
    bad = CliRunner().invoke(app, ["plan", str(spec), "--rps", "20", "--legacy", "errors=5 junk"])
    assert bad.exit_code == 2 and "--legacy: errors=5: 5 is not a fraction" in bad.output


def test_the_plan_says_who_is_told_of_what():
    spec = load_spec({"name": "m", "stages": [{"traffic": "10%"}, {"traffic": "100%"}], "notify": [
        {"name": "ci", "slack": {"url_env": "SLACK_URL", "channel": "#ci-migration"},
         "events": ["rolled_back", "gate_failed"]},
        {"email": {"host": "smtp.example.com", "from": "cf@example.com", "to": ["eng-managers@example.com"]}},
    ]})
    text = render(spec)
    assert "- **Notified:** #ci-migration (Slack) (`ci`) of rolled_back, gate_failed;" in text
    assert "- **Notified:** eng-managers@example.com (email) (`email`) of everything;" in text
    assert "No one is configured" not in text


def test_a_simulated_program_plan_carries_the_simulated_numbers_in_every_deliverable():
    """The seed's deliverables (phased plan with timeline and critical path, success criteria with acceptance and
    benchmarks, rollback with triggers, data and rehearsal, testing strategy, communication plan), each with
    numbers from the specs and from simulated runs at the components' own traffic."""
    import re

    from crossfade.plandoc import estimate_program, render_program
    from crossfade.program import load_program

    program = load_program(PROGRAM_EXAMPLE)
    estimates = estimate_program(program, runs=2)
    document = render_program(program, estimates, source="program.yaml")
    sections = re.split(r"^## ", document, flags=re.M)[1:]
    titles = [s.split("\n", 1)[0] for s in sections]
    assert titles == ["Phases and timeline", "Success criteria", "Acceptance and validation", "Rollback",
                      "Rollback rehearsal", "Testing strategy", "Shadow's extra cost", "Communication plan"]
    body = dict(zip(titles, sections))
    # 1. Phases by dependency order, a timeline per phase from the simulated durations, the critical path.
    phases = body["Phases and timeline"]
    assert [m for m in re.findall(r"^### (Phase \d)", phases, flags=re.M)] == ["Phase 1", "Phase 2", "Phase 3",
                                                                                   "Phase 4"]
    done = [r.duration_s for r in estimates.components["config-loader"].healthy if r.outcome == "completed"]
    assert done and f"| {format_duration(round(statistics.median(done)))} |" in phases.split("### Phase 2")[0]
    assert re.search(r"Phase 4 runs from \d+d[\dhms]* to \d+d", phases)
    assert "**Critical path:** config-loader -> build-steps ->" in phases
    # 2. Success criteria per phase in numbers (holds, limits: the performance benchmarks), and acceptance.
    criteria = body["Success criteria"]
    assert "### Phase 2: build-steps" in criteria and "its hold of 3d has passed" in criteria
    assert "p95 may be at most 1.2x legacy's" in criteria and "mean cost per call may be at most 1.5x" in criteria
    assert "the 40 most-run pipelines build green on Dagger in shadow for a week" in body["Acceptance and validation"]
    # 3. Rollback per phase: triggers with their numbers, data preservation, a rehearsal with simulated results.
    rollback = body["Rollback"]
    assert "error rate exceeds 20% over 1h" in rollback and "error rate exceeds 30% over 2h" in rollback
    assert "build cache: written by both runners in every stage" in rollback
    rehearsal = body["Rollback rehearsal"]
    assert '`crossfade simulate SPEC --rps 0.06 --legacy "errors=0.5% latency=lognormal(2s,0.3) cost=0.0004"' \
           in rehearsal
    assert re.search(r"rehearsed: [12] of 2 simulated faulty runs were stopped \(at shadow\)", rehearsal)
    # 4. Testing strategy per component with the simulated outcomes at its own traffic.
    testing = body["Testing strategy"]
    assert "**Simulation** at 0.06 calls/s: 2 runs" in testing and "**Simulation** at 0.01 calls/s: 2 runs" in testing
    # Parallel operation priced: config-loader shadows 100% (+5% noise runs) for its simulated shadow stage.
    assert re.search(r"\| config-loader \| shadow \| [\d,]+ \| \d+[dhm]", body["Shadow's extra cost"])
    # 5. Communication: who is told of what, templates, cadence and escalation.
    communication = body["Communication plan"]
    assert "| CI users | #ci-migration | started, stage passed, rolled back, completed |" in communication
    assert "Every 7d, the owner posts" in communication and "-> VP engineering" in communication


def test_a_program_plan_nests_each_migrations_headings_one_level_under_its_phase():
    from crossfade.plandoc import render_program
    from crossfade.program import load_program

    text = render_program(load_program(Path(__file__).parent.parent / "examples" / "orchestrator" / "program.yaml"))
    levels, fenced = [], False
    for line in text.splitlines():
        fenced = fenced != line.startswith("```")
        if line.startswith("#") and not fenced:
            levels.append(len(line) - len(line.lstrip("#")))
    assert max(levels) <= 6, "Markdown has six heading levels"
    assert all(b <= a + 1 for a, b in zip(levels, levels[1:])), "no heading skips a level"


def test_the_plan_names_the_bake_in_the_phases_criteria_and_timeline():
    baked = load_spec({**SPEC.to_dict(), "bake": "1h"})
    text = render(baked)
    assert "The last stage (complete) bakes for 1h" in text and "final look, at most 1h more" in text
    assert "- **complete** completes when its bake of 1h and its final look have passed" in text
    assert "At least 8h40m (the sum of the holds and the bake)" in text
    spec = load_spec({"name": "m", "stages": [{"name": "c", "traffic": "50%", "hold": "10m"},
                                              {"name": "done", "traffic": "100%"}], "bake": "20m"})
    simulated = render(spec, estimate(spec, rps=50, runs=2))
    assert "| bake of done (20m and its final look) ends: completed |" in simulated
    assert "the holds and the bake alone take 30m" in simulated
