"""Programs: components in dependency order, the critical path, progress, and every problem with its path."""

from __future__ import annotations

from pathlib import Path

import pytest

from crossfade.program import load_program, progress
from crossfade.spec import SpecError

EXAMPLE = Path(__file__).parent.parent / "examples" / "orchestrator" / "program.yaml"

SPEC = "name: {name}\nstages:\n  - {{name: canary, traffic: 5%, hold: 1d}}\n  - {{name: all, traffic: 100%}}\n"


def write(tmp_path: Path, body: str, specs: tuple[str, ...] = ("a", "b", "c")) -> Path:
    for name in specs:
        (tmp_path / f"{name}.yaml").write_text(SPEC.format(name=f"mig-{name}"))
    path = tmp_path / "program.yaml"
    path.write_text(body)
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(SpecError) as caught:
        load_program(path)
    return [str(p) for p in caught.value.problems]


def test_the_orchestrator_program_has_phases_in_dependency_order():
    program = load_program(EXAMPLE)
    assert [[c.name for c in phase] for phase in program.phases()] == [
        ["config-loader"], ["build-steps"], ["test-runner", "artifact-publisher"], ["deploy"]]


def test_the_critical_path_is_the_longest_chain_of_waits():
    program = load_program(EXAMPLE)
    durations = {"config-loader": 1, "build-steps": 2, "test-runner": 3, "artifact-publisher": 10, "deploy": 1}
    assert program.critical_path(durations) == (["config-loader", "build-steps", "artifact-publisher", "deploy"], 14)
    durations["artifact-publisher"] = 1
    assert program.critical_path(durations) == (["config-loader", "build-steps", "test-runner", "deploy"], 7)


def test_inline_specs_and_specs_beside_the_program_both_load(tmp_path):
    path = write(tmp_path, "program: p\ncomponents:\n  - {name: one, spec: a.yaml}\n"
                           "  - name: two\n    after: [one]\n    spec: {name: inline, stages: [{name: all, traffic: 100%}]}\n")
    program = load_program(path)
    assert [c.spec.name for c in program.components] == ["mig-a", "inline"]
    assert program.component("two").after == ("one",)


def test_every_problem_is_reported_with_its_path(tmp_path):
    path = write(tmp_path, "program: p\ncadence: often\ncomponents:\n"
                           "  - {name: one, spec: a.yaml, after: [tow], rps: -1}\n"
                           "  - {name: two, spec: missing.yaml, legacy: 'errors=lots'}\n"
                           "  - {name: one, spec: b.yaml, colour: red}\n"
                           "stakeholders:\n  - {name: ops, contact: ops@example.com, told: [rolledback]}\n")
    found = problems(path)
    assert "components[0].rps: should be calls per second above 0 (e.g. 0.06), got -1" in found
    assert any(p.startswith("components[1].spec: no spec file 'missing.yaml'") for p in found)
    assert any(p.startswith("components[1].legacy: ") for p in found)
    assert any(p.startswith("components[2].colour: unknown field") for p in found)
    assert "stakeholders[0].told[0]: unknown moment 'rolledback'; did you mean 'rolled_back'? known: " \
           "started, stage_passed, approval_requested, paused, rolled_back, completed" in found
    assert any(p.startswith('cadence: "often" is not a duration') for p in found)
    assert "components[2].name: 'one' names two components; give each its own name" in found


def test_an_unknown_dependency_and_a_cycle_are_named(tmp_path):
    unknown = write(tmp_path, "program: p\ncomponents:\n  - {name: one, spec: a.yaml, after: [tow]}\n"
                              "  - {name: two, spec: b.yaml}\n")
    assert problems(unknown) == ["components[0].after[0]: no component 'tow'; did you mean 'two'? known: one, two"]
    cycle = write(tmp_path, "program: p\ncomponents:\n  - {name: one, spec: a.yaml, after: [three]}\n"
                            "  - {name: two, spec: b.yaml, after: [one]}\n  - {name: three, spec: c.yaml, after: [two]}\n")
    assert problems(cycle) == ["components: the components wait for each other in a cycle: one -> three -> two -> one"]


def test_a_bad_component_spec_names_the_component_and_the_field(tmp_path):
    (tmp_path / "a.yaml").write_text("name: x\nstages:\n  - {name: all, traffic: 140%}\n")
    path = write(tmp_path, "program: p\ncomponents:\n  - {name: one, spec: a.yaml}\n", specs=())
    assert any(p.startswith("components[0].spec (stages[0].traffic): ") for p in problems(path))


def test_a_spec_is_not_a_program(tmp_path):
    path = write(tmp_path, SPEC.format(name="x"), specs=())
    assert problems(path) == ["a program file has `program:` (its name) and `components:` (a list of migrations)"]


def test_progress_follows_the_phases_and_marks_what_was_never_applied():
    class State:
        def __init__(self, status, stage, traffic):
            self.status, self.stage, self.traffic = status, stage, traffic

    program = load_program(EXAMPLE)
    rows = progress(program, {"dagger-config-loader": State("completed", "all", 1.0),
                              "dagger-build-steps": State("running", "canary", 0.05)})
    assert [(r.phase, r.component, r.status, r.stage) for r in rows] == [
        (1, "config-loader", "completed", "all"), (2, "build-steps", "running", "canary"),
        (3, "test-runner", "not applied", None), (3, "artifact-publisher", "not applied", None),
        (4, "deploy", "not applied", None)]


def test_program_progress_names_each_component_s_state_the_critical_path_and_the_share_done():
    from crossfade.program import program_progress

    class State:
        def __init__(self, status, stage, stage_index, traffic):
            self.status, self.stage, self.stage_index, self.traffic = status, stage, stage_index, traffic

    program = load_program(EXAMPLE)
    report = program_progress(program, {"dagger-config-loader": State("completed", "all", 3, 1.0),
                                        "dagger-build-steps": State("awaiting_approval", "quarter", 2, 0.25),
                                        "dagger-artifact-publisher": State("rolled_back", "canary", 0, 0.0)})
    assert [c.describe() for c in report.components] == [
        "completed", "running at stage quarter (25%, awaiting approval)", "waiting on build-steps",
        "rolled back", "waiting on test-runner, artifact-publisher"]
    assert report.critical_path == ("config-loader", "build-steps", "test-runner", "deploy")
    assert report.critical_seconds == 37 * 86400
    # Holds: config-loader 6d (done), build-steps 12d (2 of 4 judged stages passed), of 41 days in all.
    assert report.percent == round(100 * (6 + 6) / 41, 1) and report.completed == 1
    assert report.to_dict()["components"][1]["waiting_for"] == []
