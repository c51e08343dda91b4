"""Programs on the control plane: the progress of each program file it was started with (`serve --program`).

A program lives in a file beside its specs, not in the store: the server reads the files it was given once
and answers, per program, each component's state (waiting on its dependencies, running at a stage,
completed, rolled back), the critical path and the share done, from the migrations' current states.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Path
from pydantic import BaseModel

from crossfade.backends.base import Backend
from crossfade.program import Program, program_progress


class ComponentModel(BaseModel):
    """One component: its migration's status and stage, and what that means for the program."""

    component: str
    migration: str
    phase: int
    status: str
    stage: str | None
    traffic: float
    state: str
    waiting_for: list[str]
    done: float
    summary: str


class ProgramModel(BaseModel):
    """A program's progress: per component, the critical path (by the stages' holds) and the percent done."""

    program: str
    percent: float
    completed: int
    critical_path: list[str]
    critical_seconds: float
    components: list[ComponentModel]


def install(app: FastAPI, programs: Sequence[Program], backend: Backend, viewer: Callable[..., Any],
            errors: dict[int | str, dict[str, Any]], error: Callable[[int, str, str], Any]) -> None:
    """Add `GET /v1/programs` and `GET /v1/programs/{name}`, readable by viewers; `error` makes an error
    answer (status, kind, message) as the app's other routes do."""
    by_name = {p.name: p for p in programs}
    readers = [Depends(viewer)]

    def report(program: Program) -> dict[str, Any]:
        return program_progress(program, {s.name: s for s in backend.states()}).to_dict()

    @app.get("/v1/programs", response_model=list[ProgramModel], tags=["programs"], responses=errors,
             dependencies=readers)
    def list_programs() -> Any:
        return [report(p) for p in programs]

    @app.get("/v1/programs/{name}", response_model=ProgramModel, tags=["programs"], responses=errors,
             dependencies=readers)
    def get_program(name: Annotated[str, Path(max_length=200)]) -> Any:
        if name not in by_name:
            known = ", ".join(by_name) or "none (start the server with --program FILE)"
            return error(404, "unknown_program", f"no program named {name!r}; known: {known}")
        return report(by_name[name])
