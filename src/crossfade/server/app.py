"""The control plane's ASGI app: the migrations API, the SDK's routing feed and telemetry intake, decisions
for other languages, health, Prometheus metrics and the dashboard."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path as FilePath
from typing import Annotated, Any

from fastapi import BackgroundTasks, Depends, FastAPI, Header, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from crossfade import __version__
from crossfade.backends.base import (
    Backend,
    BackendError,
    BackendUnavailable,
    ConflictError,
    UnknownMigration,
)
from crossfade.events import (
    WEIGHS_PROGRESS,
    Change,
    StageProgress,
    State,
    TransitionError,
    apply_change,
    operation,
    position,
    seal,
)
from crossfade.controller import stage_progress
from crossfade.notify import UnknownTarget
from crossfade.program import Program
from crossfade.server import judging, programs as program_routes, views
from crossfade.server.auth import LOOPBACK_HOSTS, Authenticator, AuthError, Principal
from crossfade.server.control import ControllerThread, OutboxThread
from crossfade.server.feed import MAX_WAIT, RoutingFeed, RoutingPoll
from crossfade.server.guard import Guard, authenticate
from crossfade.server.intake import Intake, TelemetryWriter
from crossfade.server.metrics import CrossfadeCollector, registry
from crossfade.server.models import (
    Action,
    ApplyRequest,
    ComparisonBatch,
    Comparisons,
    DecideRequest,
    DecisionModel,
    Error,
    EventsPage,
    Examples,
    Health,
    MigrationDetail,
    NotificationModel,
    NotificationStatus,
    NotifyTestRequest,
    OperationRequest,
    OperationResult,
    Routing,
    Series,
    SpecVersion,
    StageWindows,
    StateModel,
    OpenWindowModel,
    TelemetryBatch,
    TokenModel,
    WindowModel,
    WindowsPage,
    Written,
)
from crossfade.shadow import Example, FieldWindow
from crossfade.spec import NAME_PATTERN, Problem, Spec, SpecError, load_spec
from crossfade.metrics import SourceError, read_stage
from crossfade.metrics.telemetry import TelemetrySource
from crossfade.stagedata import StageTelemetry
from crossfade.telemetry import OpenWindowError, Window, open_cell

log = logging.getLogger("crossfade.server")

DASHBOARD = FilePath(__file__).with_name("dashboard")

MigrationName = Annotated[str, Path(pattern=NAME_PATTERN, max_length=63, description="The migration's name")]

_bearer = HTTPBearer(auto_error=False, description="A token from `crossfade token create`")


def _clean(value: Any) -> Any:
    # JSON has no NaN or infinity: a sketch or cost that produced one is shown as null, never a 500.
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


class CleanJSONResponse(JSONResponse):
    """JSON with every non-finite float as null."""

    def render(self, content: Any) -> bytes:
        """Encode `content` compactly, UTF-8, without NaN."""
        return json.dumps(_clean(content), ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


def _error(status: int, kind: str, message: str, problems: Sequence[Problem] | None = None,
           headers: dict[str, str] | None = None) -> CleanJSONResponse:
    body: dict[str, Any] = {"error": message, "kind": kind}
    if problems is not None:
        body["problems"] = [{"path": p.path, "message": p.message} for p in problems]
    return CleanJSONResponse(body, status_code=status, headers=headers)


# Every route may answer with these; declared so the OpenAPI document (and schemathesis) knows them.
_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": Error, "description": "The body is not JSON"},
    401: {"model": Error, "description": "No token, or an unknown or revoked one"},
    403: {"model": Error, "description": "The token's role is too small"},
    408: {"model": Error, "description": "The body was not sent in time"},
    413: {"model": Error, "description": "The body is larger than this route accepts"},
    422: {"model": Error, "description": "Invalid input: every problem, with where it is"},
    429: {"model": Error, "description": "Too many failed token attempts from this address"},
    503: {"model": Error, "description": "The store cannot be reached now"},
}
_MIGRATION_ERRORS: dict[int | str, dict[str, Any]] = {
    **_ERRORS, 404: {"model": Error, "description": "No migration of that name"},
}
_CHANGE_ERRORS: dict[int | str, dict[str, Any]] = {
    **_MIGRATION_ERRORS, 409: {"model": Error, "description": "Refused by the migration's state, or a concurrent change"},
}


def require(role: str) -> Callable[..., Any]:
    """A dependency that admits callers whose token has `role` or above (see `Authenticator.check`)."""

    async def dependency(request: Request,
                         credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> Principal:
        # A cached token costs no I/O; a miss is a store read in a thread, so a hung store never stalls the loop.
        return await authenticate(request.app.state.auth, request.headers.get("authorization"),
                                  request.client.host if request.client else None, role, request.headers.get("host"))

    dependency.required_role = role  # type: ignore[attr-defined]  # read by the route-table test
    return dependency


Viewer = Annotated[Principal, Depends(require("viewer"))]
Sdk = Annotated[Principal, Depends(require("sdk"))]
Operator = Annotated[Principal, Depends(require("operator"))]
Admin = Annotated[Principal, Depends(require("admin"))]


def create_app(
    backend: Backend,
    *,
    open_reads: bool = False,
    allowed_hosts: Sequence[str] = (),
    controller: bool = True,
    feed_poll: float = 0.25,
    controller_poll: float = 1.0,
    clock: Callable[[], float] = time.time,
    programs: Sequence[Program] = (),
) -> FastAPI:
    """The control plane over `backend`, whose owner closes it.

    `programs` are the programs whose progress `GET /v1/programs` and the dashboard show.

    With `controller`, the controller loop runs in a background thread (lease-held: replicas are safe).
    With `open_reads`, read-only endpoints answer callers on loopback without a token when the request's
    Host is loopback's or one of `allowed_hosts`.
    """
    feed = RoutingFeed(backend, poll=feed_poll)
    # The migration page (polled), every /metrics scrape, a promote and the controller read each stage's
    # telemetry: one incremental reader serves them all, so each pays for the rows written since the last
    # read by any of them, not for the stage's history.
    telemetry = StageTelemetry()
    ctl = (ControllerThread(backend, poll=controller_poll, on_events=feed.poke, telemetry=telemetry)
           if controller else None)
    # Notifications go out wherever the controller runs; links point at $CROSSFADE_PUBLIC_URL's dashboard.
    notifier = OutboxThread(backend, link=os.environ.get("CROSSFADE_PUBLIC_URL")) if controller else None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        feed.start(asyncio.get_running_loop())
        if ctl is not None:
            ctl.start()
        if notifier is not None:
            notifier.start()
        try:
            yield
        finally:
            if notifier is not None:
                notifier.stop()
            if ctl is not None:
                ctl.stop()
            telemetry_writer.stop()
            feed.stop()

    app = FastAPI(
        title="crossfade control plane", version=__version__, lifespan=lifespan,
        default_response_class=CleanJSONResponse,
        # Swagger UI and ReDoc load scripts from a CDN: none may run on the origin that holds an operator's
        # token. The OpenAPI document stays at /openapi.json for any viewer run elsewhere.
        docs_url=None, redoc_url=None,
        description="Migrations, their routing, telemetry and audit log. Bearer tokens with roles "
                    "viewer < sdk < operator < admin.",
    )
    app.state.backend = backend
    auth = app.state.auth = Authenticator(backend, open_reads=open_reads,
                                          allowed_hosts=(*LOOPBACK_HOSTS, *allowed_hosts))
    app.add_middleware(RoutingPoll, feed=feed, auth=auth)  # inside the Guard: its headers on every answer
    app.add_middleware(Guard, auth=auth)
    intake = Intake(lambda: feed.states, feed.spec, fresh=backend.state)
    telemetry_writer = TelemetryWriter(backend.write_windows)
    app.state.feed = feed
    app.state.controller = ctl
    app.state.clock = clock
    telemetry_source = TelemetrySource(telemetry)
    collector = CrossfadeCollector(
        backend, controller_lag=(ctl.lag if ctl is not None else lambda: None),
        feed_age=lambda: None if feed.last_ok is None else time.monotonic() - feed.last_ok,
        stage_windows=lambda state: telemetry.windows(backend, state, feed.spec(state.name, state.spec_version),
                                                      clock()),
        spec=feed.spec, clock=clock,
    )
    metrics_registry = registry(collector)
    _install_error_handlers(app)

    # -- migrations ------------------------------------------------------------------------------

    @app.get("/v1/migrations", response_model=list[StateModel], tags=["migrations"], responses=_ERRORS)
    def list_migrations(who: Viewer) -> Any:
        """Every migration's state, by name."""
        return [s.to_dict() for s in backend.states()]

    @app.get("/v1/migrations/{name}", response_model=MigrationDetail, responses=_MIGRATION_ERRORS, tags=["migrations"])
    def get_migration(name: MigrationName, who: Viewer) -> Any:
        """Spec, state, stage ladder, per-arm figures, the controller's view with each gate's numbers, the last
        verdict, triggers and any pending approval."""
        state = views.current(backend, name)
        spec, now = feed.spec(name, state.spec_version), clock()
        try:
            windows, error = read_stage(backend, state, spec, now, telemetry=telemetry_source), None
        except SourceError as exc:
            windows, error = [], str(exc)
        return views.detail(backend, state, spec, now, windows, error)

    @app.get("/v1/migrations/{name}/state", response_model=StateModel, responses=_MIGRATION_ERRORS, tags=["migrations"])
    def get_state(name: MigrationName, who: Viewer) -> Any:
        """The migration's state alone."""
        return views.current(backend, name).to_dict()

    @app.get("/v1/migrations/{name}/spec", response_model=SpecVersion, responses=_MIGRATION_ERRORS, tags=["migrations"])
    def get_spec(name: MigrationName, who: Viewer,
                 version: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None) -> Any:
        """A stored spec version (the latest when `version` is omitted)."""
        data = backend.spec(name, version)
        if data is None:
            raise UnknownMigration(f"{name} has no spec" + ("" if version is None else f" version {version}"))
        if version is None:
            version = views.current(backend, name).spec_version
        return {"migration": name, "version": version, "spec": data}

    @app.get("/v1/migrations/{name}/events", response_model=EventsPage, responses=_MIGRATION_ERRORS, tags=["migrations"])
    def get_events(name: MigrationName, who: Viewer,
                   after: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
                   limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> Any:
        """The audit log, oldest first, a page at a time: pass `next_after` as `after` for the next page."""
        views.current(backend, name)
        events = backend.events(name, after=after, limit=limit + 1)
        more = len(events) > limit
        events = events[:limit]
        return {"events": [e.to_dict() for e in events], "next_after": events[-1].seq if more else None}

    @app.get("/v1/migrations/{name}/series", response_model=Series, responses=_MIGRATION_ERRORS, tags=["migrations"])
    def get_series(name: MigrationName, who: Viewer,
                   seconds: Annotated[float, Query(gt=0, le=7 * 86400)] = views.SERIES_SECONDS) -> Any:
        """Per arm and telemetry window: calls, error rate and p50/p95/p99 latency, over the last `seconds`."""
        state = views.current(backend, name)
        now = clock()
        return views.series(backend, name, now - seconds, feed.spec(name, state.spec_version), now)

    @app.get("/v1/migrations/{name}/telemetry", response_model=WindowsPage, responses=_MIGRATION_ERRORS,
             tags=["telemetry"])
    def get_telemetry(name: MigrationName, who: Viewer,
                      stage: Annotated[str | None, Query(max_length=63, pattern=r"^[^\x00]*$")] = None,
                      since: Annotated[float | None, Query(allow_inf_nan=False)] = None,
                      until: Annotated[float | None, Query(allow_inf_nan=False)] = None) -> Any:
        """Stored telemetry windows (rows of one window merged), in time order."""
        return {"windows": [_window_dict(w) for w in backend.windows(name, stage=stage, since=since, until=until)]}

    @app.get("/v1/migrations/{name}/stage-telemetry", response_model=StageWindows, responses=_MIGRATION_ERRORS,
             tags=["telemetry"])
    def get_stage_telemetry(name: MigrationName, who: Viewer) -> Any:
        """The current stage's stored telemetry as the controller reads it, from the reader that serves
        /metrics and the migration page: old windows by hour of the stay, recent ones with the rows of each
        window merged. A few hundred windows whatever the stage's age and the processes writing, where
        `/telemetry` sends every window of the stage."""
        state = views.current(backend, name)
        spec = feed.spec(name, state.spec_version)
        windows = telemetry.windows(backend, state, spec, clock()) if state.stage else []
        return {"stage": state.stage, "entered": state.stage_entered_at, "windows": [_window_dict(w) for w in windows]}

    @app.get("/v1/migrations/{name}/comparisons", response_model=Comparisons, tags=["telemetry"], responses=_ERRORS)
    def get_comparisons(name: MigrationName, who: Viewer,
                        stage: Annotated[str | None, Query(max_length=63, pattern=r"^[^\x00]*$")] = None) -> Any:
        """Shadow comparison counts, one row per stage and field path."""
        return {"rows": [_field_dict(r) for r in backend.comparisons(name, stage=stage)]}

    @app.get("/v1/migrations/{name}/examples", response_model=Examples, tags=["telemetry"], responses=_ERRORS)
    def get_examples(name: MigrationName, who: Viewer,
                     stage: Annotated[str | None, Query(max_length=63, pattern=r"^[^\x00]*$")] = None,
                     path: Annotated[str | None, Query(max_length=1000, pattern=r"^[^\x00]*$")] = None,
                     limit: Annotated[int | None, Query(ge=1, le=1000)] = None) -> Any:
        """Kept mismatch examples, newest first."""
        found = backend.examples(name, stage=stage, path=path, limit=limit)
        return {"examples": [{"migration": e.migration, "stage": e.stage, "path": e.path, "time": e.time,
                              "detail": dict(e.detail)} for e in found]}

    @app.put("/v1/migrations/{name}", response_model=OperationResult, responses=_CHANGE_ERRORS, tags=["operations"])
    def put_migration(name: MigrationName, body: ApplyRequest, who: Operator, answered: BackgroundTasks) -> Any:
        """Validate and store a spec as the migration's next version (a new migration when none exists).
        Unchanged specs write nothing (no events in the answer)."""
        data = dict(body.spec)
        data.setdefault("name", name)
        if data["name"] != name:
            raise SpecError("<request>", [Problem("name", f"{data['name']!r} differs from the path's {name!r}")])
        spec = load_spec(data, source_name=name)
        state = backend.state(name) or State(name)
        _expect(state, body.expected_seq)
        change = apply_change(state, spec, state.seq + 1)
        if change is None:
            return {"events": [], "state": state.to_dict(), "dry_run": body.dry_run}
        return _commit(state, spec, [change], who, body.dry_run, answered, store_spec=spec.to_dict())

    @app.post("/v1/migrations/{name}/{action}", response_model=OperationResult, responses=_CHANGE_ERRORS,
              tags=["operations"])
    def operate(name: MigrationName, action: Action, who: Operator, answered: BackgroundTasks,
                body: OperationRequest | None = None) -> Any:
        """Move the migration: start, promote, approve, pause, resume, rollback, abort, restart or step-back
        (`to`: an earlier stage's traffic). The event's actor is the token's name; rollback and abort need a
        reason."""
        request = body or OperationRequest()
        # The server's own controller may record a verdict between this read and the append: when that is
        # all that changed, the command is decided again (not when the caller named the event it expects).
        for attempt in range(3):
            state = views.current(backend, name)
            _expect(state, request.expected_seq)
            spec = feed.spec(name, state.spec_version)
            progress = _progress(action, state, spec)
            changes = operation(action.value, state, spec, request.reason, force=request.force, progress=progress,
                                to=request.to)
            try:
                return _commit(state, spec, changes, who, request.dry_run, answered)
            except ConflictError:
                fresh = backend.state(name)
                moved = fresh is None or position(fresh) != position(state)
                if request.expected_seq is not None or attempt == 2 or moved:
                    raise
        raise AssertionError("unreachable")

    def _progress(action: Action, state: State, spec: Spec) -> StageProgress:
        # Only a command that weighs the stage reads its telemetry: a pause or a rollback, which must reach
        # the hosts fast, never waits for the rows flushed since the last look.
        if action.value not in WEIGHS_PROGRESS or not state.stage:
            return StageProgress(0.0, 0, 0)
        now = clock()
        try:
            windows = read_stage(backend, state, spec, now, telemetry=telemetry_source)
        except SourceError:
            windows = []  # nothing known of the stage: a plain promote waits, a forced one says what it skipped
        return stage_progress(spec, state, windows, now)

    async def _poke() -> None:
        # A coroutine, run on the event loop as soon as the answer is sent: a plain function would first wait
        # for a worker thread (and the GIL) while a thousand hosts wait for the change.
        feed.poke()

    def _commit(state: State, spec: Spec, changes: list[Change], who: Principal, dry_run: bool,
                answered: BackgroundTasks, store_spec: dict[str, Any] | None = None) -> dict[str, Any]:
        after, events = seal(state, changes, actor=who.name, now=clock())
        if not dry_run:
            backend.append(state.name, state.seq, events, state=after, spec=store_spec)
            # The feed is told once the operator has the answer: the change wakes every SDK host's long poll
            # at once, and the operator's answer would otherwise wait behind them all.
            answered.add_task(_poke)
            log.info("%s: %s by %s", state.name, ", ".join(e.type for e in events), who.name)
        return {"events": [e.to_dict() for e in events], "state": after.to_dict(), "dry_run": dry_run}

    # -- the judge of other controllers (Argo Rollouts, Flagger) ---------------------------------

    judging.install(app, backend, feed, app.state.auth, require("viewer"), clock, _MIGRATION_ERRORS)

    # -- programs of migrations ------------------------------------------------------------------

    program_routes.install(app, programs, backend, require("viewer"),
                           {**_ERRORS, 404: {"model": Error, "description": "No program of that name"}},
                           lambda status, kind, message: _error(status, kind, message))

    # -- SDK hosts -------------------------------------------------------------------------------

    @app.get("/v1/routing", response_model=Routing, tags=["sdk"],
             responses={**_ERRORS, 304: {"description": "Unchanged since the ETag sent in If-None-Match"}})
    async def get_routing(
        who: Sdk,
        wait: Annotated[float, Query(ge=0, le=MAX_WAIT, allow_inf_nan=False,
                                     description="Long poll: with If-None-Match, hold the answer up to this many "
                                                 "seconds until something changes")] = 0.0,
        if_none_match: Annotated[str | None, Header(max_length=200)] = None,
    ) -> Response:
        """Every migration's state and the spec versions they use: what an SDK host routes by. Answers 304
        when the ETag sent in If-None-Match is still current (after up to `wait` seconds of long poll)."""
        await feed.wait(if_none_match, wait)
        etag = feed.etag
        if if_none_match is not None and if_none_match == etag:
            return Response(status_code=304, headers={"ETag": etag})
        return Response(feed.body, media_type="application/json", headers={"ETag": etag})

    @app.post("/v1/decide", response_model=DecisionModel, tags=["sdk"], responses=_ERRORS)
    async def decide(body: DecideRequest, who: Sdk) -> Any:
        """Route one key, for callers in other languages (an SDK host decides locally, without I/O)."""
        d = feed.decide(body.migration, body.key)
        return {"arm": d.arm, "shadow": d.shadow, "stage": d.stage, "bucket": d.bucket, "reason": d.reason}

    @app.post("/v1/telemetry", response_model=Written, tags=["sdk"], responses=_ERRORS)
    async def post_telemetry(body: TelemetryBatch, who: Sdk) -> Any:
        """Store telemetry windows, in the SDK's compact form or the open form (counts, cost sums and latency
        buckets per arm and window, see `OpenWindowModel`); rows for one window add up, a row whose key was
        stored already adds nothing. A malformed cell refuses the batch (422); a window that does not fit its
        migration (unknown, not the current stage, too old or ahead, over the bound per token and window, of
        a migration the token is not bound to) is skipped and listed, never stored."""
        posted = [w if isinstance(w, WindowModel) else WindowModel(
            migration=w.migration, stage=w.stage, arm=w.arm, start=w.start, length=w.length, cell=_compact(w, i))
            for i, w in enumerate(body.windows)]
        now = clock()
        # Checked here, on the event loop, unless a window needs its migration's state read from the store:
        # a thread per flush, at a hundred flushes a second, costs more than the check (and its hand-offs
        # contend for the GIL with the answers to the hosts' long polls).
        admitted = intake.admit_held(who, posted, now)
        windows, skipped = admitted or await run_in_threadpool(intake.admit, who, posted, now)
        await telemetry_writer.write(windows)  # with the other POSTs waiting: one transaction, no thread held
        if skipped:
            log.warning("telemetry from %s: %d of %d windows skipped, first: %s", who.name, len(skipped),
                        len(body.windows), skipped[0].reason)
        return {"written": len(windows), "skipped": [{"index": s.index, "reason": s.reason} for s in skipped]}

    @app.post("/v1/comparisons", response_model=Written, tags=["sdk"], responses=_ERRORS)
    def post_comparisons(body: ComparisonBatch, who: Sdk) -> Any:
        """Store shadow comparison counts and mismatch examples flushed by SDK hosts (403 for a migration a
        bound token does not serve)."""
        foreign = sorted({x.migration for x in (*body.rows, *body.examples) if not who.serves(x.migration)})
        if foreign:
            raise AuthError(403, f"token {who.name!r} is bound to {', '.join(who.migrations)}, "
                                 f"not {', '.join(foreign)}")
        rows = [FieldWindow(r.migration, r.stage, r.path, r.start, r.length, dict(r.counts)) for r in body.rows]
        examples = [Example(e.migration, e.stage, e.path, e.time, e.detail) for e in body.examples]
        backend.write_comparisons(rows, examples, keep=body.keep)
        return {"written": len(rows) + len(examples)}

    # -- administration --------------------------------------------------------------------------

    # -- notifications ---------------------------------------------------------------------------

    @app.get("/v1/notifications", response_model=list[NotificationModel], tags=["notifications"], responses=_ERRORS)
    def list_notifications(who: Viewer, migration: Annotated[str | None, Query(max_length=63)] = None,
                           status: Annotated[NotificationStatus | None, Query()] = None,
                           limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> Any:
        """Notifications newest first, with each one's delivery: pending (with its next attempt and last
        error), delivered, or failed for good."""
        outbox = getattr(backend, "outbox", None)
        if outbox is None:
            return []
        return [d.to_dict() for d in outbox.list(migration, status=status.value if status else None, limit=limit)]

    @app.post("/v1/notifications/test", response_model=NotificationModel, tags=["notifications"],
              responses=_CHANGE_ERRORS)
    def test_notification(body: NotifyTestRequest, who: Operator) -> Any:
        """Queue a test message to one target of a migration; it is delivered (and retried) like any other."""
        from crossfade.loop import NotificationOutbox

        views.current(backend, body.migration)
        outbox = NotificationOutbox(backend, link=os.environ.get("CROSSFADE_PUBLIC_URL"))
        note = outbox.test(body.migration, body.target)
        return next(d.to_dict() for d in outbox.store.list(body.migration) if d.key == note.key)

    @app.get("/v1/tokens", response_model=list[TokenModel], tags=["admin"], responses=_ERRORS)
    def list_tokens(who: Admin) -> Any:
        """Every token's name, role and lifetime; secrets and hashes are never shown."""
        return [{"name": t.name, "role": t.role, "created_at": t.created_at, "revoked_at": t.revoked_at}
                for t in backend.tokens()]

    # -- operations of the service itself --------------------------------------------------------

    @app.get("/healthz", response_model=Health, tags=["service"])
    async def healthz() -> Any:
        """The process answers."""
        return {"status": "ok"}

    @app.get("/readyz", response_model=Health, tags=["service"],
             responses={503: {"model": Health, "description": "The store cannot be read"}})
    async def readyz() -> Any:
        """The store was read within the last few seconds."""
        fresh = feed.last_ok is not None and time.monotonic() - feed.last_ok < max(5.0, 4 * feed.poll)
        if fresh:
            return {"status": "ok"}
        return CleanJSONResponse({"status": "unavailable", "detail": feed.last_error or "the store was not read yet"},
                                 status_code=503)

    @app.get("/metrics", tags=["service"], response_class=Response, responses={
        **_ERRORS, 200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}},
                         "description": "Prometheus text exposition"}})
    def metrics(who: Viewer) -> Response:
        """Prometheus metrics: per migration stage, traffic, verdicts, rollbacks; per arm calls, errors and
        latency histograms; the controller's lag."""
        return Response(generate_latest(metrics_registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", include_in_schema=False)
    def dashboard() -> FileResponse:
        return FileResponse(DASHBOARD / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=DASHBOARD), name="static")
    return app


def _expect(state: State, expected: int | None) -> None:
    if expected is not None and expected != state.seq:
        raise ConflictError(f"migration {state.name} changed concurrently: expected event {expected} to be the last, "
                            f"found {state.seq}; re-read its state and retry")


def _compact(window: WindowModel | OpenWindowModel, index: int) -> dict[str, Any]:
    """The compact cell form of a posted window: as sent, or converted from the open form."""
    if isinstance(window, WindowModel):
        return window.cell
    cost, latency, first_chunk = (None if part is None else part.model_dump()
                                  for part in (window.cost, window.latency, window.first_chunk))
    metrics = None if window.metrics is None else {k: v.model_dump() for k, v in window.metrics.items()}
    try:
        cell = open_cell(window.counts.model_dump(), cost, latency, metrics, first_chunk)
    except OpenWindowError as exc:
        raise SpecError("<telemetry>", [Problem(f"windows[{index}].{exc.field}", str(exc))]) from None
    return cell.to_dict()


def _window_dict(w: Window) -> dict[str, Any]:
    return {"migration": w.migration, "stage": w.stage, "arm": w.arm, "start": w.start, "length": w.length,
            "cell": w.cell.to_dict()}


def _field_dict(r: FieldWindow) -> dict[str, Any]:
    return {"migration": r.migration, "stage": r.stage, "path": r.path, "start": r.start, "length": r.length,
            "counts": dict(r.counts)}


def _install_error_handlers(app: FastAPI) -> None:
    """Each error a user can cause gets its status and a sentence; none becomes a 500."""

    @app.exception_handler(AuthError)
    async def on_auth(request: Request, exc: AuthError) -> Response:
        return _error(exc.status, exc.kind, exc.message, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException) -> Response:
        # FastAPI's own refusals (a body that is not JSON, an unknown path): the same shape as ours.
        return _error(exc.status_code, "HTTPError", str(exc.detail), headers=dict(exc.headers or {}))

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, exc: RequestValidationError) -> Response:
        problems = [Problem(".".join(str(p) for p in e.get("loc", ())), str(e.get("msg", "invalid")))
                    for e in exc.errors()]
        return _error(422, "InvalidRequest", f"{len(problems)} problem(s) in the request", problems)

    @app.exception_handler(SpecError)
    async def on_spec(request: Request, exc: SpecError) -> Response:
        return _error(422, "SpecError", str(exc), exc.problems)

    @app.exception_handler(TransitionError)
    async def on_transition(request: Request, exc: TransitionError) -> Response:
        return _error(409, "TransitionError", str(exc))

    @app.exception_handler(ConflictError)
    async def on_conflict(request: Request, exc: ConflictError) -> Response:
        return _error(409, "ConflictError", str(exc))

    @app.exception_handler(UnknownMigration)
    async def on_unknown(request: Request, exc: UnknownMigration) -> Response:
        return _error(404, "UnknownMigration", str(exc).strip("'\""))

    @app.exception_handler(UnknownTarget)
    async def on_unknown_target(request: Request, exc: UnknownTarget) -> Response:
        return _error(404, "UnknownTarget", str(exc).strip("'\""))

    @app.exception_handler(BackendUnavailable)
    async def on_unavailable(request: Request, exc: BackendUnavailable) -> Response:
        return _error(503, "BackendUnavailable", str(exc), headers={"Retry-After": "1"})

    @app.exception_handler(BackendError)
    async def on_backend(request: Request, exc: BackendError) -> Response:
        log.error("store error on %s %s: %s", request.method, request.url.path, exc)
        return _error(500, "BackendError", str(exc))

