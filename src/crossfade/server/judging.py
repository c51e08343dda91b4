"""crossfade as the judge of other controllers: an analysis answer for Argo Rollouts' `web` metric provider
and webhook answers for Flagger, both from the same judgement the controller acts on.

Argo Rollouts' web provider GETs a URL, takes a value from the JSON answer by `jsonPath` and evaluates its
`successCondition` / `failureCondition` on it; `GET /v1/migrations/{name}/analysis` answers `verdict` PASS
(every gate allows promotion and the stage's evidence is complete), FAIL (a gate fails or a trigger fires)
or HOLD (not enough evidence yet, or the metric source cannot be read), with the numbers behind it.

Flagger POSTs `{name, namespace, phase, checksum, metadata}` to its webhooks and reads only the status code:
`confirm-promotion` answers 200 only for PASS; `rollback` answers 200 (Flagger then rolls back) only for
FAIL; `rollout` answers 200 unless FAIL, so a failing gate counts towards Flagger's failure threshold. Any
other answer is 412 with the judgement in the body, which Flagger writes to its events. Flagger sends no
headers of its own, so these accept the token in `metadata.token` as well as in `Authorization`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import Enum
from typing import Annotated, Any, Final

from fastapi import Depends, FastAPI, Path, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from crossfade.backends.base import Backend
from crossfade.controller import assess, judged_now, stage_cells
from crossfade.events import (
    ABORTED_STATUS,
    AWAITING_APPROVAL,
    COMPLETED,
    ROLLED_BACK_STATUS,
    ROLLING_BACK,
    RUNNING,
    State,
)
from crossfade.metrics import SourceError, read_stage, source_name
from crossfade.server import views
from crossfade.server.auth import Authenticator, Principal
from crossfade.server.feed import RoutingFeed
from crossfade.spec import NAME_PATTERN, Spec
from crossfade.telemetry import arm_metrics

MigrationName = Annotated[str, Path(pattern=NAME_PATTERN, max_length=63, description="The migration's name")]

PASS: Final = "PASS"
FAIL: Final = "FAIL"
HOLD: Final = "HOLD"


class AnalysisModel(BaseModel):
    """The judgement of a migration's current stage, in a shape other controllers evaluate: `verdict` is PASS
    (promote), FAIL (roll back) or HOLD (wait); `ok` is true for PASS, `failed` true for FAIL."""

    migration: str
    stage: str | None
    status: str
    verdict: str = Field(description="PASS, FAIL or HOLD")
    ok: bool
    failed: bool
    reason: str
    gates: dict[str, dict[str, Any]]
    triggers: list[str]
    arms: dict[str, dict[str, Any]]
    source: dict[str, Any]


class FlaggerPayload(BaseModel):
    """The body Flagger POSTs to a webhook (unknown fields are ignored, as newer Flagger versions add some)."""

    name: Annotated[str, Field(max_length=253)]
    namespace: Annotated[str, Field(max_length=253)]
    phase: Annotated[str | None, Field(max_length=64)] = None
    checksum: Annotated[str | None, Field(max_length=256)] = None
    metadata: dict[str, Annotated[str, Field(max_length=4096)]] | None = None

    model_config = ConfigDict(extra="ignore")


class FlaggerHook(str, Enum):
    """The Flagger webhook types crossfade answers."""

    confirm_promotion = "confirm-promotion"
    rollback = "rollback"
    rollout = "rollout"


def analysis(backend: Backend, state: State, spec: Spec, now: float) -> dict[str, Any]:
    """The current stage's judgement: PASS, FAIL or HOLD, why, and every gate's numbers."""
    name = source_name(spec.source)[0]
    base: dict[str, Any] = {"migration": state.name, "stage": state.stage, "status": state.status, "gates": {},
                            "triggers": [], "arms": {}, "source": {"name": name, "error": None}}
    if state.status in (ROLLED_BACK_STATUS, ABORTED_STATUS, ROLLING_BACK):
        return _answer(base, FAIL, f"crossfade rolled the candidate back: {state.reason or state.status}")
    if state.status == COMPLETED:
        return _answer(base, PASS, "the migration completed")
    if state.status not in (RUNNING, AWAITING_APPROVAL) or not state.stage:
        return _answer(base, HOLD, f"the migration is {state.status}: nothing is judged")
    try:
        windows = read_stage(backend, state, spec, now)
    except SourceError as exc:
        base["source"]["error"] = str(exc)
        return _answer(base, HOLD, f"metric source {name} cannot be read; no evidence, no decision: {exc}")
    base["arms"] = {arm: arm_metrics(cell) for arm, cell in sorted(stage_cells(state, windows).items())}
    if not judged_now(spec, state):
        return _answer(base, PASS, f"{state.stage} is the last stage")
    a = assess(spec, state, windows, now)
    base["gates"] = {g.gate: g.to_dict() for g in a.judgement.gates}
    base["triggers"] = [f.message for f in a.firings]
    if a.firings or a.judgement.failed:
        return _answer(base, FAIL, "; ".join([f.message for f in a.firings] + [g.message for g in a.judgement.failed]))
    if a.waiting_for:
        return _answer(base, HOLD, f"waiting for {a.waiting_for}")
    gates = ", ".join(f"{g.gate} {g.verdict}" for g in a.judgement.gates) or "no gates"
    return _answer(base, PASS, f"no gate fails and the evidence of {state.stage} is complete ({gates})")


def _answer(base: dict[str, Any], verdict: str, reason: str) -> dict[str, Any]:
    return {**base, "verdict": verdict, "ok": verdict == PASS, "failed": verdict == FAIL, "reason": reason}


# The verdicts for which each Flagger hook answers 200.
_FLAGGER_OK: Final = {
    FlaggerHook.confirm_promotion: {PASS},
    FlaggerHook.rollback: {FAIL},
    FlaggerHook.rollout: {PASS, HOLD},
}


# Flagger puts the token in the body: a body larger than this is not read to find one.
MAX_HOOK_BODY: Final = 65_536


def install(api: FastAPI, backend: Backend, feed: RoutingFeed, auth: Authenticator, viewer: Callable[..., Any],
            clock: Callable[[], float] = time.time, responses: dict[int | str, dict[str, Any]] | None = None) -> None:
    """Add the analysis and Flagger webhook routes over `backend` to `api`; `viewer` is the dependency that
    admits tokens of role viewer and above; `responses` are the error answers every route may give."""

    def judged(name: str) -> dict[str, Any]:
        state = views.current(backend, name)
        return analysis(backend, state, feed.spec(name, state.spec_version), clock())

    @api.get("/v1/migrations/{name}/analysis", response_model=AnalysisModel, tags=["judge"], responses=responses)
    def get_analysis(name: MigrationName, who: Principal = Depends(viewer)) -> Any:  # noqa: B008 - a local dependency
        """The current stage's judgement for Argo Rollouts' web metric provider: `jsonPath: "{$.verdict}"`,
        `successCondition: result == "PASS"`, `failureCondition: result == "FAIL"`."""
        return judged(name)

    async def hook_caller(request: Request) -> Principal:
        header = request.headers.get("authorization")
        client = request.client.host if request.client else None
        if header is None and int(request.headers.get("content-length") or 0) <= MAX_HOOK_BODY:
            try:
                body = await request.json()
            except ValueError:
                body = None
            metadata = body.get("metadata") if isinstance(body, dict) else None
            token = metadata.get("token") if isinstance(metadata, dict) else None
            if isinstance(token, str) and token:
                header = f"Bearer {token}"
        return auth.check(header, client, "viewer")

    hook_caller.required_role = "viewer"  # type: ignore[attr-defined]  # read by the route-table test

    for hook in FlaggerHook:
        _flagger_route(api, hook, hook_caller, judged, responses or {})


def _flagger_route(api: FastAPI, hook: FlaggerHook, caller: Callable[..., Any],
                   judged: Callable[[str], dict[str, Any]], responses: dict[int | str, dict[str, Any]]) -> None:
    ok = " or ".join(sorted(_FLAGGER_OK[hook]))

    def answer(name: MigrationName, payload: FlaggerPayload,
               who: Principal = Depends(caller)) -> Any:  # noqa: B008 - a local dependency
        judgement = judged(name)
        return JSONResponse(judgement, status_code=200 if judgement["verdict"] in _FLAGGER_OK[hook] else 412)

    answer.__doc__ = (f"Flagger's `{hook.value}` webhook: 200 when the judgement is {ok}, else 412 with the "
                      "judgement (which Flagger logs). Flagger sends no headers: the token may come as "
                      "`metadata.token` in its payload.")
    api.add_api_route(f"/v1/migrations/{{name}}/flagger/{hook.value}", answer, methods=["POST"],
                      response_model=AnalysisModel, name=f"flagger_{hook.name}", tags=["judge"],
                      responses={**responses, 412: {"model": AnalysisModel,
                                                    "description": "Not now: the judgement says otherwise"}})
