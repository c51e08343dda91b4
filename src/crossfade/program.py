"""A program: several migrations (components) moved in dependency order, with owners and stakeholders.

A program file names its components, each a migration spec (a path beside the program file, or inline),
the components it must wait for (`after:`), its traffic and how its legacy behaves (for simulation), what
data it preserves and how it is accepted; and the people told of its progress. `crossfade plan PROGRAM`
renders the strategy package from it (see `plandoc.render_program`).
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from crossfade.spec import Problem, Spec, SpecError, load_spec, parse_duration, read_document

# What a stakeholder can be told of: the moments of a migration a person acts on or wants to know.
MOMENTS: Final = ("started", "stage_passed", "approval_requested", "paused", "rolled_back", "completed")

_PROGRAM_KEYS: Final = ("program", "description", "owner", "cadence", "escalation", "stakeholders", "components")
_COMPONENT_KEYS: Final = ("name", "spec", "after", "owner", "rps", "legacy", "candidate", "data", "acceptance")
_STAKEHOLDER_KEYS: Final = ("name", "contact", "told")


@dataclass(frozen=True, slots=True)
class Component:
    """One migration of a program: its spec, what it waits for, and what the plan needs to know about it.

    `rps` is its expected calls per second (a CI system's can be 0.06); `legacy` and `candidate` describe
    how the arms behave in the simulation's arm language; `data` names the stores it preserves and how;
    `acceptance` the checks that accept it besides the gates.
    """

    name: str
    spec: Spec
    after: tuple[str, ...] = ()
    owner: str = ""
    rps: float | None = None
    legacy: str = ""
    candidate: str = ""
    data: tuple[str, ...] = ()
    acceptance: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Stakeholder:
    """Someone told of the program's progress: who, where to reach them, and which moments."""

    name: str
    contact: str
    told: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Program:
    """A validated program: components in the file's order, and the people around it. Immutable."""

    name: str
    components: tuple[Component, ...]
    description: str = ""
    owner: str = ""
    cadence: float = 7 * 86400.0
    escalation: tuple[str, ...] = ()
    stakeholders: tuple[Stakeholder, ...] = ()

    def component(self, name: str) -> Component:
        """The component called `name` (KeyError naming the known ones otherwise)."""
        for c in self.components:
            if c.name == name:
                return c
        raise KeyError(f"no component {name!r} in program {self.name!r}; its components are "
                       f"{', '.join(c.name for c in self.components)}")

    def phases(self) -> list[tuple[Component, ...]]:
        """The components grouped into phases: each phase's components wait only for earlier phases."""
        depth: dict[str, int] = {}
        for c in _dependency_order(self.components):
            depth[c.name] = 1 + max((depth[a] for a in c.after), default=-1)
        return [tuple(c for c in self.components if depth[c.name] == level)
                for level in range(max(depth.values(), default=-1) + 1)]

    def critical_path(self, durations: Mapping[str, float]) -> tuple[list[str], float]:
        """The chain of components that decides when the program ends, and its length in seconds.

        `durations` gives each component's expected time from start to completion.
        """
        finish: dict[str, float] = {}
        before: dict[str, str | None] = {}
        for c in _dependency_order(self.components):
            start_after = max(c.after, key=lambda a: finish[a], default=None)
            before[c.name] = start_after
            finish[c.name] = (finish[start_after] if start_after else 0.0) + durations.get(c.name, 0.0)
        if not finish:
            return [], 0.0
        last: str | None = max(finish, key=lambda n: finish[n])
        end = finish[last]
        path = []
        while last is not None:
            path.append(last)
            last = before[last]
        return path[::-1], end


def is_program(data: object) -> bool:
    """Whether parsed YAML is a program file (it has `program:` and `components:`) rather than a spec."""
    return isinstance(data, Mapping) and "program" in data and "components" in data


def load_program(path: str | os.PathLike[str]) -> Program:
    """A validated Program from a file; SpecError listing every problem (with its path) otherwise.

    A component's `spec:` is a path relative to the program file, or an inline spec mapping.
    """
    label = os.fspath(path)
    data = read_document(Path(path), label)
    problems: list[Problem] = []
    program = _Reader(Path(path).parent, problems).program(data)
    if problems or program is None:
        raise SpecError(label, problems or [Problem("", "is not a program")])
    return program


class _Reader:
    """Reads a program's plain data, collecting every problem instead of stopping at the first."""

    def __init__(self, folder: Path, problems: list[Problem]) -> None:
        self.folder = folder
        self.problems = problems

    def fail(self, path: str, message: str) -> None:
        self.problems.append(Problem(path, message))

    def keys(self, data: Mapping[str, Any], allowed: Sequence[str], path: str) -> None:
        for key in data:
            if key not in allowed:
                close = difflib.get_close_matches(str(key), allowed, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else f"; known: {', '.join(allowed)}"
                self.fail(f"{path}.{key}" if path else str(key), f"unknown field{hint}")

    def text(self, data: Mapping[str, Any], key: str, path: str, *, required: bool = False) -> str:
        value = data.get(key)
        if value is None:
            if required:
                self.fail(path, f"`{key}` is required")
            return ""
        if not isinstance(value, str) or not value.strip():
            self.fail(path, f"should be non-empty text, got {value!r}")
            return ""
        return value.strip()

    def texts(self, value: object, path: str) -> tuple[str, ...]:
        if value is None:
            return ()
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
            self.fail(path, "should be a list of non-empty texts")
            return ()
        return tuple(v.strip() for v in value)

    def program(self, data: object) -> Program | None:
        if not is_program(data):
            self.fail("", "a program file has `program:` (its name) and `components:` (a list of migrations)")
            return None
        assert isinstance(data, Mapping)
        self.keys(data, _PROGRAM_KEYS, "")
        name = self.text(data, "program", "program", required=True)
        raw = data.get("components")
        if not isinstance(raw, list) or not raw:
            self.fail("components", "should be a non-empty list of components ({name: ..., spec: ...})")
            raw = []
        indexed = [(i, c) for i, item in enumerate(raw) if (c := self.component(item, f"components[{i}]"))]
        self.check_graph(indexed)
        components = [c for _, c in indexed]
        cadence = 7 * 86400.0
        if data.get("cadence") is not None:
            try:
                cadence = parse_duration(data["cadence"])
            except ValueError as exc:
                self.fail("cadence", str(exc))
        raw_people = data.get("stakeholders") or []
        if not isinstance(raw_people, list):
            self.fail("stakeholders", "should be a list of {name, contact, told}")
            raw_people = []
        people = [s for i, item in enumerate(raw_people) if (s := self.stakeholder(item, f"stakeholders[{i}]"))]
        return Program(
            name=name,
            components=tuple(components),
            description=self.text(data, "description", "description"),
            owner=self.text(data, "owner", "owner"),
            cadence=cadence,
            escalation=self.texts(data.get("escalation"), "escalation"),
            stakeholders=tuple(people),
        )

    def component(self, item: object, path: str) -> Component | None:
        if not isinstance(item, Mapping):
            self.fail(path, "should be a mapping with `name:` and `spec:`")
            return None
        self.keys(item, _COMPONENT_KEYS, path)
        name = self.text(item, "name", path, required=True)
        spec = self.spec(item.get("spec"), f"{path}.spec")
        rps = item.get("rps")
        if rps is not None and (isinstance(rps, bool) or not isinstance(rps, int | float) or not 0 < rps <= 1e6):
            self.fail(f"{path}.rps", f"should be calls per second above 0 (e.g. 0.06), got {rps!r}")
            rps = None
        for arm in ("legacy", "candidate"):
            if arm in item:
                self.arm(item[arm], f"{path}.{arm}")
        if not name or spec is None:
            return None
        return Component(
            name=name,
            spec=spec,
            after=self.texts(item.get("after"), f"{path}.after"),
            owner=self.text(item, "owner", f"{path}.owner"),
            rps=float(rps) if rps is not None else None,
            legacy=str(item.get("legacy") or ""),
            candidate=str(item.get("candidate") or ""),
            data=self.texts(item.get("data"), f"{path}.data"),
            acceptance=self.texts(item.get("acceptance"), f"{path}.acceptance"),
        )

    def spec(self, value: object, path: str) -> Spec | None:
        if value is None:
            self.fail(path, "is required: a spec file beside the program, or an inline spec")
            return None
        source: object = value
        if isinstance(value, str):
            source = self.folder / value
            if not source.is_file():
                self.fail(path, f"no spec file {value!r} beside the program ({self.folder})")
                return None
        elif not isinstance(value, Mapping):
            self.fail(path, "should be a spec file name or an inline spec mapping")
            return None
        try:
            return load_spec(source, source_name=path)  # type: ignore[arg-type]
        except SpecError as exc:
            self.problems += [Problem(f"{path} ({p.path})" if p.path else path, p.message) for p in exc.problems]
            return None

    def arm(self, value: object, path: str) -> None:
        from crossfade.simulate import WorkloadError, parse_arm

        if not isinstance(value, str):
            self.fail(path, 'should be an arm description, e.g. "errors=1% latency=lognormal(8m,0.3) cost=0.5"')
            return
        try:
            parse_arm(value, label=path)
        except WorkloadError as exc:
            self.fail(path, str(exc).removeprefix(f"{path}: "))

    def stakeholder(self, item: object, path: str) -> Stakeholder | None:
        if not isinstance(item, Mapping):
            self.fail(path, "should be a mapping {name, contact, told}")
            return None
        self.keys(item, _STAKEHOLDER_KEYS, path)
        told = self.texts(item.get("told", list(MOMENTS)), f"{path}.told")
        for i, moment in enumerate(told):
            if moment not in MOMENTS:
                close = difflib.get_close_matches(moment, MOMENTS, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                self.fail(f"{path}.told[{i}]", f"unknown moment {moment!r}; {hint}known: {', '.join(MOMENTS)}")
        name = self.text(item, "name", path, required=True)
        contact = self.text(item, "contact", path, required=True)
        return Stakeholder(name, contact, told) if name and contact else None

    def check_graph(self, indexed: Sequence[tuple[int, Component]]) -> None:
        """Names are unique and every `after:` names another component, with no cycle (paths keep the
        file's indices, whichever components could not be read)."""
        names = list(dict.fromkeys(c.name for _, c in indexed))
        seen: set[str] = set()
        for i, c in indexed:
            if c.name in seen:
                self.fail(f"components[{i}].name", f"{c.name!r} names two components; give each its own name")
            seen.add(c.name)
            for j, dep in enumerate(c.after):
                if dep == c.name:
                    self.fail(f"components[{i}].after[{j}]", f"{c.name!r} cannot wait for itself")
                elif dep not in names:
                    close = difflib.get_close_matches(dep, names, n=1)
                    hint = f"did you mean {close[0]!r}? " if close else ""
                    self.fail(f"components[{i}].after[{j}]", f"no component {dep!r}; {hint}known: {', '.join(names)}")
        if not self.problems:
            try:
                _dependency_order([c for _, c in indexed])
            except ValueError as exc:
                self.fail("components", str(exc))


def _dependency_order(components: Sequence[Component]) -> list[Component]:
    """The components with each after everything it waits for (file order among equals); ValueError names a
    cycle."""
    by_name = {c.name: c for c in components}
    done: dict[str, bool] = {}
    order: list[Component] = []

    def visit(c: Component, trail: list[str]) -> None:
        if done.get(c.name):
            return
        if c.name in trail:
            cycle = trail[trail.index(c.name):] + [c.name]
            raise ValueError(f"the components wait for each other in a cycle: {' -> '.join(cycle)}")
        for dep in c.after:
            visit(by_name[dep], [*trail, c.name])
        done[c.name] = True
        order.append(c)

    for c in components:
        visit(c, [])
    return order


# Where a component stands, as a person reads it (`ComponentProgress.state`).
WAITING: Final = "waiting"        # on components it comes after
READY: Final = "ready"            # everything it waits for is complete; not started yet
RUNNING: Final = "running"        # at a stage (also awaiting an approval, or paused)
COMPLETED: Final = "completed"
ROLLED_BACK: Final = "rolled back"  # also aborted, or on its way back


@dataclass(frozen=True, slots=True)
class ComponentProgress:
    """Where one component stands: its migration's status, stage and traffic (None when never applied), what
    that means for the program (`state`, with the components it still waits for), and the share of its stages
    passed (`done`, 0 to 1)."""

    component: str
    migration: str
    phase: int
    status: str
    stage: str | None
    traffic: float
    state: str = WAITING
    waiting_for: tuple[str, ...] = ()
    done: float = 0.0

    def describe(self) -> str:
        """One phrase: "waiting on build-steps", "running at stage canary (5%)", "completed", ..."""
        if self.state == WAITING:
            return f"waiting on {', '.join(self.waiting_for)}"
        if self.state == READY:
            return "ready to start"
        if self.state == RUNNING:
            extra = {"awaiting_approval": ", awaiting approval", "paused": ", paused"}.get(self.status, "")
            return f"running at stage {self.stage} ({self.traffic * 100:g}%{extra})"
        return self.state

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able form (`crossfade status --program --json`, the API)."""
        return {"component": self.component, "migration": self.migration, "phase": self.phase,
                "status": self.status, "stage": self.stage, "traffic": self.traffic, "state": self.state,
                "waiting_for": list(self.waiting_for), "done": self.done, "summary": self.describe()}


@dataclass(frozen=True, slots=True)
class ProgramProgress:
    """A program's progress: each component's, the critical path (by the stages' holds) and the share done.

    `percent` weighs each component's share of stages passed by its stages' holds (equally when none has a
    hold): the share of the program's planned time behind it.
    """

    program: str
    components: tuple[ComponentProgress, ...]
    critical_path: tuple[str, ...]
    critical_seconds: float
    percent: float

    @property
    def completed(self) -> int:
        """How many components are complete."""
        return sum(c.state == COMPLETED for c in self.components)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able form."""
        return {"program": self.program, "percent": self.percent, "completed": self.completed,
                "critical_path": list(self.critical_path), "critical_seconds": self.critical_seconds,
                "components": [c.to_dict() for c in self.components]}


def _holds(c: Component) -> float:
    return sum(s.hold or 0.0 for s in c.spec.stages)


def progress(program: Program, states: Mapping[str, Any]) -> list[ComponentProgress]:
    """Each component's progress in phase order, from the migrations' states keyed by migration name
    (anything with `status`, `stage`, `stage_index` and `traffic`; a migration missing from `states` is
    "not applied")."""
    rows: list[ComponentProgress] = []
    found: dict[str, ComponentProgress] = {}
    for number, phase in enumerate(program.phases(), start=1):
        for c in phase:
            state = states.get(c.spec.name)
            status = "not applied" if state is None else state.status
            stage = None if state is None else state.stage
            traffic = 0.0 if state is None else state.traffic
            waiting = tuple(a for a in c.after if found[a].state != COMPLETED)
            judged = max(1, len(c.spec.stages) - 1)
            if status == "completed":
                label, done = COMPLETED, 1.0
            elif status in ("rolled_back", "rolling_back", "aborted"):
                label, done = ROLLED_BACK, 0.0
            elif status in ("running", "awaiting_approval", "paused"):
                label, done = RUNNING, min(1.0, getattr(state, "stage_index", 0) / judged)
            else:
                label, done = (WAITING if waiting else READY), 0.0
            row = ComponentProgress(c.name, c.spec.name, number, status, stage, traffic, label, waiting, done)
            found[c.name] = row
            rows.append(row)
    return rows


def program_progress(program: Program, states: Mapping[str, Any]) -> ProgramProgress:
    """The program's progress from the migrations' states (see `progress`), with its critical path."""
    rows = progress(program, states)
    holds = {c.name: _holds(c) for c in program.components}
    weights = holds if any(holds.values()) else {name: 1.0 for name in holds}
    total = sum(weights.values()) or 1.0
    percent = round(100 * sum(r.done * weights[r.component] for r in rows) / total, 1)
    path, length = program.critical_path(holds)
    return ProgramProgress(program.name, tuple(rows), tuple(path), length, percent)
