"""The shapes the HTTP API takes and returns: they generate its OpenAPI document and validate every body."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from crossfade.spec import NAME_PATTERN
from crossfade.spec.units import MAX_METRICS, METRIC_NAME_PATTERN

# Names follow the spec's rule; free text may not hold NUL, which PostgreSQL text cannot store.
Name = Annotated[str, Field(pattern=NAME_PATTERN, max_length=63)]
Text = Annotated[str, Field(max_length=4000, pattern=r"^[^\x00]*$")]
Finite = Annotated[float, Field(allow_inf_nan=False)]
Count = Annotated[int, Field(ge=0, le=2**62)]


class Problem(BaseModel):
    """One thing wrong with a request or a spec: where, and what."""

    path: str
    message: str


class Error(BaseModel):
    """Every refusal: a sentence to act on, the kind of error, and for invalid input each problem."""

    error: str
    kind: str
    problems: list[Problem] | None = None


class StateModel(BaseModel):
    """Where a migration stands: the fold of its events (see `crossfade.events.State`)."""

    name: str
    status: str
    seq: int
    head: str
    spec_version: int
    stage_index: int
    stage: str | None
    traffic: float
    shadow: float
    shadow_legacy: float
    noise: float
    dual_write: bool
    attempt: int
    stage_entered_at: float | None
    updated_at: float | None
    reason: str | None
    spec_digest: str | None
    salt: str | None
    verdicts: list[list[str]]
    rollback_step_at: float | None
    source_error: str | None = Field(None, description="Why the metric source cannot be read, while it cannot")
    routers: list[list[str | float]] = Field(
        default=[], description="Per router the spec names: [router, verified | not_implemented | failed, "
                                "candidate share it was last synced at, detail].")


class EventModel(BaseModel):
    """One hash-chained event of a migration's log."""

    migration: str
    seq: int
    type: str
    time: float
    actor: str
    reason: str | None
    payload: dict[str, Any]
    prev_hash: str
    hash: str


class EventsPage(BaseModel):
    """A page of events; `next_after` is the `after` of the next page, None at the end of the log."""

    events: list[EventModel]
    next_after: int | None


class StageModel(BaseModel):
    """One step of a migration's ladder."""

    name: str
    traffic: float
    shadow: float
    hold: float | None
    hold_text: str | None = Field(None, description="The hold as the spec writes durations, e.g. 1h30m")
    approval: bool


class ArmMetrics(BaseModel):
    """One arm's figures for the current stage: calls, errors, latency quantiles (seconds), cost."""

    calls: int
    errors: int
    error_rate: float | None
    fallbacks: int
    timeouts: int
    p50: float | None
    p95: float | None
    p99: float | None
    cost_mean: float | None
    cost_sum: float | None
    metrics: dict[str, dict[str, float | None]] | None = Field(
        None, description="Custom metrics recorded on this arm: count, sum, mean (and p10, p50, p90 when sketched)")
    first_chunk: dict[str, float | None] | None = Field(
        None, description="Streamed calls' latency to their first chunk (p50, p95, p99, seconds); absent "
                          "without streams")


class CustomMetricFigures(BaseModel):
    """A declared custom metric per arm as the spec judges it: a rate, a count, a mean or a quantile."""

    kind: str
    label: str
    bad: str = Field(description="Which side is harmful: high or low")
    candidate: float | None
    legacy: float | None


class TriggerModel(BaseModel):
    """A trigger of the spec: roll back when `metric` is above `above` (or, for a custom metric whose low values
    are the harm, below `below`) over `window` seconds."""

    metric: str
    above: float | None
    below: float | None = None
    window: float
    min_samples: int
    for_: float | None = Field(alias="for")

    model_config = ConfigDict(populate_by_name=True)


class SourceModel(BaseModel):
    """The metric source a migration is judged from, and its failure if it cannot be read now."""

    name: str
    error: str | None


class MigrationDetail(BaseModel):
    """Everything the dashboard shows of one migration."""

    state: StateModel
    spec: dict[str, Any]
    stages: list[StageModel]
    arms: dict[str, ArmMetrics]
    controller: dict[str, Any] | None = Field(description="The controller's live view: gates with their numbers, "
                                                          "firing triggers, samples, what the stage waits for")
    last_verdict: EventModel | None = Field(description="The last verdict event of the current stage")
    triggers: list[TriggerModel]
    metrics: dict[str, CustomMetricFigures] = Field(default_factory=dict,
                                                    description="The declared custom metrics per arm")
    pending_approval: dict[str, Any] | None
    source: SourceModel | None = Field(None, description="The metric source the judge reads, and why it failed "
                                                         "when it cannot be read (the stage then holds)")


class SeriesPoint(BaseModel):
    """One arm in one telemetry window: calls, error rate and latency quantiles (seconds)."""

    start: float
    arm: str
    stage: str
    calls: int
    errors: int
    error_rate: float | None
    p50: float | None
    p95: float | None
    p99: float | None


class Series(BaseModel):
    """Per-arm figures window by window, oldest first."""

    window: float | None
    points: list[SeriesPoint]


class Action(str, Enum):
    """What an operator may ask of a migration."""

    start = "start"
    promote = "promote"
    approve = "approve"
    pause = "pause"
    resume = "resume"
    rollback = "rollback"
    abort = "abort"
    restart = "restart"
    step_back = "step-back"


class OperationRequest(BaseModel):
    """Why (required for rollback and abort), and the optional guards of an operation."""

    reason: Text | None = None
    force: bool = Field(False, description="promote past a failing gate (recorded)")
    to: float | None = Field(None, ge=0.0, le=1.0, description="step-back: the candidate's traffic to return to "
                                                              "(an earlier stage's, as a fraction); default the "
                                                              "stage before")
    dry_run: bool = Field(False, description="return the events it would write; write nothing")
    expected_seq: Count | None = Field(None, description="refuse with 409 unless this is the last event's seq")

    model_config = ConfigDict(extra="forbid")


class ApplyRequest(BaseModel):
    """A spec to store as the migration's next version (its `name`, if given, must match the path)."""

    spec: dict[str, Any]
    dry_run: bool = False
    expected_seq: Count | None = None

    model_config = ConfigDict(extra="forbid")


class OperationResult(BaseModel):
    """The events an operation wrote (or would write) and the state they lead to; none when unchanged."""

    events: list[EventModel]
    state: StateModel
    dry_run: bool


class SpecVersion(BaseModel):
    """A stored spec version."""

    migration: str
    version: int
    spec: dict[str, Any]


class Routing(BaseModel):
    """What SDK hosts route by: every migration's state and the spec versions they reference."""

    etag: str
    states: list[StateModel]
    specs: list[SpecVersion]


class DecideRequest(BaseModel):
    """A routing question from a caller in another language."""

    migration: Name
    key: Annotated[str, Field(max_length=1000)] | int

    model_config = ConfigDict(extra="forbid")


class DecisionModel(BaseModel):
    """Which arm serves the key, whether to shadow, and why."""

    arm: Literal["legacy", "candidate"]
    shadow: bool
    stage: str
    bucket: int
    reason: str


class WindowModel(BaseModel):
    """One arm's telemetry cell for one stage over one aligned window (`Cell.to_dict` form)."""

    migration: Name
    stage: Annotated[str, Field(max_length=63, pattern=r"^[^\x00\x1f]*$")]
    arm: Literal["legacy", "candidate"]
    start: Finite
    length: Annotated[float, Field(gt=0, le=86400, allow_inf_nan=False)]
    cell: dict[str, Any]
    key: Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[\x21-\x7e]+$",
                              description="The sender's idempotency key for this window (process, window, "
                                          "part): a retried write with the same key adds nothing")] | None = None


class OpenCounts(BaseModel):
    """Counters of one arm over one window: calls, and how many of them failed, fell back, timed out, were
    compared with the other arm and differed from it."""

    calls: Count
    errors: Count = 0
    fallbacks: Count = 0
    timeouts: Count = 0
    compared: Count = 0
    mismatches: Count = 0

    model_config = ConfigDict(extra="forbid")


class OpenCost(BaseModel):
    """The cost of the calls that reported one (any unit, the same for both arms): how many, their sum, and
    the sum of their squares (the cost gate needs the variance)."""

    count: Count
    sum: Finite
    sum_squares: Annotated[float, Field(ge=0, allow_inf_nan=False)]

    model_config = ConfigDict(extra="forbid")


class OpenMetric(BaseModel):
    """One custom metric's values in the window (delivered, lost, tokens): how many, their sum, and the sum of
    their squares (means and rates need the variance). Declared and judged under the spec's `metrics:`."""

    count: Count
    sum: Finite
    sum_squares: Annotated[float, Field(ge=0, allow_inf_nan=False)]

    model_config = ConfigDict(extra="forbid")


class OpenHistogram(BaseModel):
    """Latency as explicit buckets (as OpenTelemetry's explicit-bucket histogram and Prometheus' `le` buckets
    keep it): `counts[i]` values in (bounds[i-1], bounds[i]], the last count above the last bound; not
    cumulative. `sum` is the total of the values. Quantile intervals are as wide as the buckets."""

    unit: Literal["s", "ms"] = "s"
    bounds: Annotated[list[Annotated[float, Field(gt=0, allow_inf_nan=False)]], Field(max_length=500)]
    counts: Annotated[list[Count], Field(min_length=1, max_length=501)]
    sum: Annotated[float, Field(ge=0, allow_inf_nan=False)]

    model_config = ConfigDict(extra="forbid")


class OpenWindowModel(BaseModel):
    """One arm's telemetry for one stage over one window, in the open form any language can produce."""

    migration: Name
    stage: Annotated[str, Field(max_length=63, pattern=r"^[^\x00\x1f]*$")]
    arm: Literal["legacy", "candidate"]
    start: Annotated[float, Field(allow_inf_nan=False, description="Window start, seconds since the epoch")]
    length: Annotated[float, Field(gt=0, le=86400, allow_inf_nan=False, description="Window length, seconds")]
    counts: OpenCounts
    cost: OpenCost | None = None
    latency: OpenHistogram | None = None
    first_chunk: Annotated[OpenHistogram | None, Field(
        description="Streamed calls' latency to their first chunk (`latency` is to their end), for a "
                    "`latency_first_chunk` gate")] = None
    metrics: Annotated[dict[Annotated[str, Field(pattern=METRIC_NAME_PATTERN)], OpenMetric],
                       Field(max_length=MAX_METRICS)] | None = None

    model_config = ConfigDict(extra="forbid", title="crossfade open telemetry window")


class TelemetryBatch(BaseModel):
    """Telemetry windows: the Python SDK's compact form (`cell`) or the open form (`counts`, `cost`,
    `latency`, `first_chunk`, `metrics`) that clients in any language can produce; rows for one window add up."""

    windows: Annotated[list[WindowModel | OpenWindowModel], Field(max_length=10_000)]


class SkippedModel(BaseModel):
    """A posted window that was not stored, and why."""

    index: int
    reason: str


class Written(BaseModel):
    """How many rows were stored, and for telemetry the windows skipped (with why)."""

    written: int
    skipped: list[SkippedModel] = []


class WindowsPage(BaseModel):
    """Stored telemetry windows (rows for the same window merged)."""

    windows: list[WindowModel]


class StageWindows(BaseModel):
    """The current stage's telemetry as the controller reads it: windows older than the triggers and the change
    detector look back over rolled up by hour of the stay, newer ones with the rows of each window merged."""

    stage: Annotated[str, Field(max_length=63, pattern=r"^[^\x00\x1f]*$")] | None = Field(
        description="The stage read (none: the migration is in no stage)")
    entered: Finite | None = Field(description="When that stage was entered (the stay the windows belong to)")
    windows: list[WindowModel]


class FieldWindowModel(BaseModel):
    """Shadow comparison counts of one field path of one stage over a window."""

    migration: Name
    stage: Annotated[str, Field(max_length=63, pattern=r"^[^\x00]*$")]
    path: Annotated[str, Field(max_length=1000, pattern=r"^[^\x00]*$")]
    start: Finite
    length: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    counts: dict[str, Count]


class ExampleModel(BaseModel):
    """A kept mismatch example (arguments, answers, diff; after the SDK's redact hook)."""

    migration: Name
    stage: Annotated[str, Field(max_length=63, pattern=r"^[^\x00]*$")]
    path: Annotated[str, Field(max_length=1000, pattern=r"^[^\x00]*$")]
    time: Finite
    detail: dict[str, Any]


class ComparisonBatch(BaseModel):
    """Shadow comparison counts and examples flushed by an SDK host."""

    rows: Annotated[list[FieldWindowModel], Field(max_length=10_000)] = []
    examples: Annotated[list[ExampleModel], Field(max_length=1_000)] = []
    keep: Annotated[int, Field(ge=1, le=1000)] = 20


class Comparisons(BaseModel):
    """Comparison counts, one row per stage and field path."""

    rows: list[FieldWindowModel]


class Examples(BaseModel):
    """Kept mismatch examples, newest first."""

    examples: list[ExampleModel]


class TokenModel(BaseModel):
    """A token's name, role and lifetime (never its secret or hash)."""

    name: str
    role: str
    created_at: float
    revoked_at: float | None


class Health(BaseModel):
    """Liveness or readiness, with what is wrong when not ready."""

    status: Literal["ok", "unavailable"]
    detail: str | None = None


def open_telemetry_schema() -> dict[str, Any]:
    """The JSON Schema of a `POST /v1/telemetry` body in the open form, as the package ships it
    (`crossfade/schemas/telemetry.schema.json`, printed by `crossfade schema --telemetry`)."""

    class OpenTelemetryBatch(BaseModel):
        """Telemetry windows in the open form: counts, cost sums and latency buckets per arm and window."""

        windows: Annotated[list[OpenWindowModel], Field(max_length=10_000)]

        model_config = ConfigDict(title="crossfade open telemetry batch")

    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            **OpenTelemetryBatch.model_json_schema()}


class NotificationStatus(str, Enum):
    """Where a notification's delivery stands."""

    pending = "pending"
    delivered = "delivered"
    failed = "failed"


class NotificationModel(BaseModel):
    """One notification of one event to one target, and its delivery."""

    key: str = Field(description="idempotency key: the same on every delivery attempt")
    migration: str
    seq: int
    kind: str
    target: str
    channel: str
    status: NotificationStatus
    attempts: int
    created_at: float
    next_at: float
    last_attempt_at: float | None
    delivered_at: float | None
    last_error: str | None
    summary: str | None


class NotifyTestRequest(BaseModel):
    """Which migration's target to send a test message to."""

    migration: str = Field(pattern=NAME_PATTERN, max_length=63)
    target: str = Field(min_length=1, max_length=63)

    model_config = ConfigDict(extra="forbid")
