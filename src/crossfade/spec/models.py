"""The spec's models: every field declared once, with its type, default and documentation.

Each section is a frozen dataclass whose field types carry their converters (`crossfade.spec.units`) and
whose field metadata carries the documentation and the example a "required" message shows. Pydantic builds
the validation and the JSON Schema from these declarations when a spec is first loaded
(`crossfade.spec.validation`); the docs (`crossfade schema --markdown`) read the same declarations. The
constructors trust their arguments: ``load_spec`` is the way in for anything a user wrote.
"""

from __future__ import annotations

import hashlib
import json
import typing
from collections.abc import Mapping, Sequence
from dataclasses import KW_ONLY, MISSING, dataclass, fields
from typing import Annotated, Any, ClassVar, Final

from crossfade.canonical import canonical_json
from crossfade.spec.fields import BAD, Items, Rule, Section, key_of, setting
from crossfade.spec.errors import Problem, Problems
from crossfade.spec.metrics import (
    Below,
    CustomMetric,
    Declared,
    Threshold,
    TriggerMetric,
    prepare_trigger,
    threshold_example_of,
    trigger_rules,
)
from crossfade.spec.units import (
    LATENCY_METRICS,
    MAX_KEYS,
    MAX_NOTIFY,
    MAX_STAGES,
    MAX_TRIGGERS,
    ON_FAILURE,
    HOLD_PAST_LIMIT,
    ON_INCONCLUSIVE,
    ON_NODATA,
    PERCENT_METRICS,
    PROMOTE_WHEN,
    RATIO_METRICS,
    ROLLBACK_MODES,
    SAMPLE_RATIO,
    MAX_ATTEMPTS,
    DEFAULT_CHANGE_SHARE,
    MAX_EXAMPLES,
    MAX_NOISE_SAMPLES,
    MAX_PENDING,
    MAX_THREADS,
    Backoff,
    Bake,
    ChangeShare,
    Check,
    Confidence,
    Duration,
    Flag,
    Interval,
    Key,
    Name,
    OptionalDuration,
    OptionalTimeout,
    Percent,
    Quantile,
    Ratio,
    Salt,
    Samples,
    ShortText,
    Text,
    Timeout,
    choice,
    count,
    format_percent,
    kind,
    parse_key,
    parse_percent,
    show,
)

__all__ = [
    "Analysis",
    "CostGate",
    "DualWriteRetry",
    "ErrorRateGate",
    "Fallback",
    "Gates",
    "LatencyGate",
    "MismatchGate",
    "RollbackPolicy",
    "ShadowSettings",
    "Spec",
    "Stage",
    "Trigger",
]

# --- stages ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Stage(Section):
    """One step of the ramp: the share of traffic the candidate serves, and what must hold before moving on.

    ``traffic`` and ``shadow`` are fractions. ``shadow`` is the share of legacy-served calls that also run
    the candidate off the request path, for comparison only; ``shadow_legacy`` the share of candidate-served
    calls that also run legacy that way (the ramp-down after the switch). ``noise`` is the share of shadow
    runs that run legacy a second time, so that answers legacy gives differently each time (ids, clocks) are
    told apart from real mismatches. ``dual_write`` makes ``write`` call sites write both sides. ``hold`` is
    the minimum time (seconds) in the stage before promotion; ``None`` means promote as soon as the gates
    pass. ``min_samples`` is the number of candidate calls required before the gates may pass; ``approval``
    makes promotion out of this stage wait for a human.
    """

    example: ClassVar[str] = "{name: canary, traffic: 10%, hold: 30m}"

    name: Name = setting("Stage name; defaults to stage-N by position.", shown="stage-N")
    traffic: Percent = setting("Share of traffic the candidate serves.", example="10%")
    shadow: Percent = setting("Share of legacy calls also run on the candidate, off the path.", 0.0)
    hold: OptionalDuration = setting("Minimum time in the stage before promotion.", None)
    min_samples: Samples = setting("Candidate calls needed before the gates may pass.", 0)
    approval: Flag = setting("Wait for a human to approve promotion out of this stage.", False)
    shadow_legacy: Percent = setting("Share of candidate calls also run on legacy, off the path.", 0.0, later=True)
    noise: Percent = setting("Share of shadow runs that run legacy twice, to measure noise.", 0.0, later=True)
    dual_write: Flag = setting("write() call sites write both sides, the authoritative one first.", False,
                               later=True)

    @property
    def threshold(self) -> int:
        """The candidate's bucket threshold out of 10000: a key goes to the candidate iff its bucket is below it."""
        return round(self.traffic * 10000)

    @property
    def shadow_threshold(self) -> int:
        """The shadow bucket threshold out of 10000, like ``threshold``."""
        return round(self.shadow * 10000)

    @classmethod
    def schema_extra(cls, schema: dict[str, Any]) -> None:
        """A stage's name may be left out: the list names it by position."""
        schema["required"].remove("name")

    @classmethod
    def rules(cls, data: Mapping[str, Any], context: Mapping[str, Any]) -> list[Rule]:
        """Shadow settings a stage cannot act on: they would silently do nothing.

        (``shadow`` at 100% traffic does nothing either, but specs written before these checks may say it.)
        """
        v = cls.read(data)
        found: list[Rule] = []
        if "shadow_legacy" in data and v["shadow_legacy"] not in (0.0, BAD) and v["traffic"] == 0.0:
            found.append((("shadow_legacy",), "legacy serves every call at 0% traffic, so no candidate call is left "
                                              "for legacy to shadow; use shadow to run the candidate beside legacy"))
        if "noise" in data and v["noise"] not in (0.0, BAD) and v["shadow"] in (0.0, BAD) \
                and v["shadow_legacy"] in (0.0, BAD):
            found.append((("noise",), "noise samples are taken from shadow runs, and this stage has none; "
                                      "set shadow (or shadow_legacy) too, e.g. {shadow: 100%, noise: 10%}"))
        return found


def _default_stage_names(items: list[Any]) -> list[Any]:
    """A stage without a name is called stage-N by its position."""
    return [
        {**item, "name": f"stage-{index + 1}"} if isinstance(item, Mapping) and item.get("name") is None else item
        for index, item in enumerate(items)
    ]


def _ramp_rules(items: list[Any]) -> list[Rule]:
    """Stage names are unique, traffic never decreases and ends at 100%, and every judged stage has data."""
    found: list[Rule] = []
    first_use: dict[str, int] = {}
    previous: float | None = None
    for index, item in enumerate(items):
        if not isinstance(item, Mapping):
            continue
        data = {key: value for key, value in item.items() if value is not None}
        v = Stage.read({"name": f"stage-{index + 1}", **data})
        name, traffic = v["name"], v["traffic"]
        if name is not BAD:
            if name not in first_use:
                first_use[name] = index
            elif "name" in data:
                found.append(((index, "name"), f"{name!r} is already the name of stages[{first_use[name]}]; "
                                               "stage names are unique"))
            else:
                found.append(((index,), f"its default name {name!r} is already the name of "
                                        f"stages[{first_use[name]}]; give this stage a name"))
        if traffic is not BAD:
            if previous is not None and traffic < previous:
                found.append(((index, "traffic"), f"{format_percent(traffic)} is below the previous stage's "
                                                  f"{format_percent(previous)}; traffic never decreases"))
            previous = traffic
            if index == len(items) - 1 and traffic != 1.0:
                found.append(((index, "traffic"), "the last stage must send 100% of traffic to the candidate, "
                                                  f"not {format_percent(traffic)}"))
        if index == len(items) - 1 or BAD in (traffic, v["shadow"], v["shadow_legacy"]):
            continue
        # (shadow_legacy at 0% is reported by Stage.rules already; a dual-writing stage runs the candidate's
        # writes.)
        if traffic == 0.0 and v["shadow"] == 0.0 and v["shadow_legacy"] == 0.0 and v["dual_write"] is not True:
            found.append(((index,), "at 0% traffic without shadow the candidate runs no calls, so this stage can "
                                    "never be judged or left; add shadow: 100% to run it off the request path, "
                                    "or remove the stage"))
        if traffic == 1.0 and v["shadow_legacy"] == 0.0:
            found.append(((index, "traffic"), "at 100% before the last stage legacy runs no calls, so no gate can "
                                              "compare the arms and this stage can never be left; make it the last "
                                              "stage, or add shadow_legacy: 10% so legacy runs beside it"))
    return found


# --- gates and triggers ----------------------------------------------------------------------------------

_GATE_OFF: Final = "Leave out to turn this gate off."


@dataclass(frozen=True, slots=True)
class ErrorRateGate(Section):
    """Fail when the candidate's error rate exceeds legacy's by more than ``max_increase`` (a fraction, absolute)."""

    example: ClassVar[str] = "{max_increase: 0.5%}"

    max_increase: Percent = setting("Allowed absolute increase, e.g. 0.5%.", example="0.5%")


@dataclass(frozen=True, slots=True)
class LatencyGate(Section):
    """Fail when the candidate's latency ``quantile`` exceeds legacy's times ``max_ratio``."""

    example: ClassVar[str] = "{quantile: p95, max_ratio: 1.2}"

    quantile: Quantile = setting("Which quantile to compare.", 0.95)
    max_ratio: Ratio = setting("Largest allowed candidate / legacy ratio.", 1.2)


@dataclass(frozen=True, slots=True)
class CostGate(Section):
    """Fail when the candidate's mean cost per call exceeds legacy's times ``max_ratio``."""

    example: ClassVar[str] = "{max_ratio: 1.5}"

    max_ratio: Ratio = setting("Largest allowed candidate / legacy ratio.", example="1.5")


@dataclass(frozen=True, slots=True)
class MismatchGate(Section):
    """Fail when more than ``max`` (a fraction) of shadowed calls produce output that differs from legacy."""

    example: ClassVar[str] = "{max: 1%}"

    max: Percent = setting("Largest allowed mismatch rate.", example="1%")


@dataclass(frozen=True, slots=True)
class Gates(Section):
    """The comparisons between candidate and legacy that must pass before a stage is promoted; ``None`` is off."""

    example: ClassVar[str] = "{error_rate: {max_increase: 0.5%}}"

    error_rate: ErrorRateGate | None = setting(f"Error rate may rise by at most max_increase. {_GATE_OFF}", None)
    latency: LatencyGate | None = setting(f"Latency quantile may grow by at most max_ratio. {_GATE_OFF}", None)
    cost: CostGate | None = setting(f"Mean cost per call may grow by at most max_ratio. {_GATE_OFF}", None)
    mismatch_rate: MismatchGate | None = setting(
        f"Share of shadowed calls whose output differs from legacy. {_GATE_OFF}", None
    )
    latency_first_chunk: LatencyGate | None = setting(
        f"Streams' latency to their first chunk (mig.stream, astream) may grow by at most max_ratio. {_GATE_OFF}",
        None,
    )

    @classmethod
    def default(cls) -> Gates:
        """The gates of a spec that says nothing about gates: error rate +1% at most, p95 latency x1.25 at most."""
        return cls(error_rate=ErrorRateGate(max_increase=0.01), latency=LatencyGate(quantile=0.95, max_ratio=1.25))


@dataclass(frozen=True, slots=True)
class Trigger(Section):
    """An absolute threshold that rolls back at once: ``metric`` above ``above`` over a sliding ``window``.

    ``above`` is a fraction for rate metrics, seconds for ``latency_pNN`` and a plain number for ratios.
    ``min_samples`` is the number of candidate calls in the window below which the trigger stays quiet;
    ``for_`` (``for`` in YAML) is how long the condition must persist before it fires, ``None`` for at once.
    A trigger on a custom metric (declared under ``metrics:``) has ``above`` or, for a floor, ``below``
    instead (the other is None); built-in metrics always have ``above``.
    """

    example: ClassVar[str] = "{metric: error_rate, above: 5%, window: 5m}"

    metric: TriggerMetric = setting("What to watch: a built-in metric, or a custom one declared under metrics.",
                                    example="error_rate")
    above: Threshold = setting("Threshold: a percentage for *_rate, a duration for latency_pNN, a number for "
                               "*_ratio; for a custom metric, a percentage for a rate and a number otherwise.",
                               example=threshold_example_of)
    window: Duration = setting("Sliding window the metric is measured over.", 300.0)
    min_samples: Samples = setting("Candidate calls needed in the window before it may fire.", 0)
    for_: OptionalDuration = setting("How long the threshold must stay crossed before it fires.", None)
    below: Below = setting("For a custom metric whose low values are the harm: fires below this threshold.", None)

    @classmethod
    def prepare(cls, data: dict[str, Any], context: Mapping[str, Any]) -> dict[str, Any]:
        """A trigger on a custom metric may watch below instead of above."""
        return prepare_trigger(data, context)

    @classmethod
    def rules(cls, data: Mapping[str, Any], context: Mapping[str, Any]) -> list[Rule]:
        """A trigger on a custom metric sets exactly one of above or below."""
        return trigger_rules(data, context)

    @classmethod
    def schema_extra(cls, schema: dict[str, Any]) -> None:
        """The threshold's unit follows the metric; a custom metric's trigger may watch below instead."""
        schema["required"] = ["metric"]
        schema["oneOf"] = [{"required": ["above"]}, {"required": ["below"]}]
        schema["allOf"] = [
            {
                "if": {"properties": {"metric": {"enum": list(metrics)}}, "required": ["metric"]},
                "then": {"properties": {"above": {"unit": unit}}},
            }
            for metrics, unit in ((PERCENT_METRICS, "percent"), (LATENCY_METRICS, "duration"), (RATIO_METRICS, "ratio"))
        ]


# --- policies --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RollbackPolicy(Section):
    """How a rollback moves traffic back: all at once, or down through ``steps`` (fractions) ``every`` seconds.

    Steps at or above the traffic of the moment a rollback starts are skipped by the controller.
    """

    example: ClassVar[str] = "{mode: gradual, steps: [50%, 10%, 0%], every: 1m}"

    mode: Annotated[str, choice(ROLLBACK_MODES)] = setting("Immediate, or gradual through steps.", "immediate")
    steps: Annotated[tuple[Percent, ...], Items("[50%, 25%, 10%, 0%]", 100, "steps")] = setting(
        "For gradual: strictly decreasing traffic levels ending at 0%.", ()
    )
    every: Duration = setting("Time between gradual steps.", 60.0)

    @classmethod
    def rules(cls, data: Mapping[str, Any], context: Mapping[str, Any]) -> list[Rule]:
        """Steps go with mode gradual, strictly decrease and end at 0%."""
        v = cls.read(data)
        found: list[Rule] = []
        steps = data.get("steps", ())
        good = isinstance(steps, list | tuple)
        if good:
            previous: float | None = None
            for index, item in enumerate(steps):
                try:
                    step = parse_percent(item)
                except ValueError:
                    good = False
                    continue
                if previous is not None and step >= previous:
                    found.append((("steps", index), f"{format_percent(step)} is not below the previous step's "
                                                    f"{format_percent(previous)}; steps strictly decrease"))
                    good = False
                if index == len(steps) - 1 and step != 0.0:
                    found.append((("steps", index), f"the last step must be 0%, not {format_percent(step)}"))
                    good = False
                previous = step
        if v["mode"] == "gradual" and good and not steps:
            found.append((("steps",), "a gradual rollback needs steps, e.g. steps: [50%, 25%, 10%, 0%]"))
        if v["mode"] == "immediate" and good and steps:
            found.append((("steps",), "steps are only used by mode: gradual; set mode: gradual or drop steps"))
        return found


@dataclass(frozen=True, slots=True)
class Analysis(Section):
    """How the judge looks at the evidence: how often, how sure, what to do without data, when to promote.

    ``promote_when: no_regression`` promotes once no gate shows the candidate worse; ``proven`` waits until
    every gate shows, at ``confidence``, that it is within bounds.

    ``sample_ratio`` is what a broken split of calls between the arms (chi-square p < 0.001) does:
    ``report`` (the default) shows it; ``hold`` holds the stage. Holding is for keys of even popularity
    (or routing per request): with sticky keys of skewed popularity the arms' share of calls differs from
    their share of keys without anything being wrong (a 10% stage may see 5% of the calls).

    With ``hold_past_limit: every_stage`` (the default), no stage is left while a gate's estimate is past its
    limit without the evidence to fail it yet: the stage is extended, and its users stay at its share while
    its own calls decide. ``last_promotion`` extends only the stage before the last (full-traffic) stage, the
    bake and shadow stages (where holding costs users nothing); a live earlier stage whose hold has passed
    moves on and the next stage, with more calls, decides (at 20 calls/s a 1% stage brings 0.2 candidate
    calls/s, too few to tell errors 1% -> 3% from the +1 pp limit in less than about 15 hours: held there, it
    was caught in 52% of 6.5-hour runs, moved on, in all, after about as many candidate calls served faster).
    Each stage's gates keep their own alpha, so which stages a candidate reaches changes no false-FAIL bound.
    With ``promote_when: proven`` every stage waits for its gates' proof. ``max_stage_time`` (seconds, None for no limit) is how long an extension may last,
    counted from stage entry; ``on_inconclusive`` is what happens then: ``hold`` (the default) keeps waiting,
    ``promote`` moves on, ``pause`` pauses for a person.

    ``change_share`` is the share of the spec's alpha (1 - confidence) given to change detection (see
    `crossfade.changes`): a fault that starts late in a stage, diluted by the stage's good data, is caught by
    the candidate's recent calls alone. The gates share the rest. 0 turns change detection off.
    """

    example: ClassVar[str] = "{interval: 30s, confidence: 99%}"

    interval: Interval = setting("How often the controller evaluates.", 30.0)
    confidence: Confidence = setting("Confidence of gate verdicts, between 50% and 100%.", 0.99)
    on_nodata: Annotated[str, choice(ON_NODATA)] = setting(
        "What to do while there is no data: keep waiting, or pause.", "hold"
    )
    promote_when: Annotated[str, choice(PROMOTE_WHEN)] = setting(
        "no_regression: no gate shows harm; proven: every gate shows the candidate within bounds.", "no_regression"
    )
    sample_ratio: Annotated[str, choice(SAMPLE_RATIO)] = setting(
        "When calls per arm do not match the traffic split (p < 0.001): report it, or hold the stage (for keys "
        "of even popularity).", "report", later=True
    )
    on_inconclusive: Annotated[str, choice(ON_INCONCLUSIVE)] = setting(
        "After max_stage_time with a gate's estimate still past its limit (or, with proven, a gate not proven): "
        "keep holding, promote, or pause.", "hold", later=True
    )
    hold_past_limit: Annotated[str, choice(HOLD_PAST_LIMIT)] = setting(
        "Which stages a gate's estimate past its limit (not yet failing) extends: every_stage; or "
        "last_promotion, the stage before the last, the bake and shadow stages (live earlier stages move on, "
        "the next stage decides with more calls).", "every_stage", later=True
    )
    max_stage_time: OptionalDuration = setting(
        "How long a stage may be extended while a gate is undecided (none: no limit).", None, later=True
    )
    change_share: ChangeShare = setting(
        "Share of 1 - confidence spent on detecting a change in the candidate's recent calls (a fault that starts "
        "late); 0% turns it off, at most 50%.", DEFAULT_CHANGE_SHARE, later=True
    )


@dataclass(frozen=True, slots=True)
class Fallback(Section):
    """Whether a failed candidate call is retried on legacy, and how long a candidate call may take (seconds)."""

    example: ClassVar[str] = "{on_error: true, timeout: 5s}"

    on_error: Flag = setting("Retry a failed candidate call on legacy.", True)
    timeout: OptionalTimeout = setting("Longest a candidate call may take.", None)


@dataclass(frozen=True, slots=True)
class ShadowSettings(Section):
    """How shadow runs are carried out: their timeout, worker threads, bound on pending runs, the noise
    thresholds (fractions) a field's difference must clear to be a mismatch, and examples kept per field.

    ``noise`` is the noise sampling share every shadowing stage takes unless it sets its own;
    ``noise_samples`` the legacy-vs-legacy samples a stage needs (across all processes) before any of its
    comparisons is judged: until then they are held, then counted, so none is judged against an unknown
    noise rate.
    """

    example: ClassVar[str] = "{timeout: 5s, threads: 4, max_pending: 64}"

    timeout: Timeout = setting("Longest a shadow run may take.", 5.0)
    threads: Annotated[int, count(1, MAX_THREADS)] = setting(
        "Worker threads for shadow runs of synchronous call sites.", 4
    )
    max_pending: Annotated[int, count(1, MAX_PENDING)] = setting(
        "Shadow runs waiting at most; further ones are dropped and counted.", 64
    )
    noise_relative: Percent = setting("|raw - noise| / (raw + noise) a field must exceed to be a mismatch.", 0.2)
    noise_absolute: Percent = setting("|raw - noise| rate a field must exceed to be a mismatch.", 0.0003)
    examples: Annotated[int, count(0, MAX_EXAMPLES)] = setting("Newest mismatch examples kept per field.", 20)
    noise: Percent = setting("Noise sampling share of every shadowing stage that sets none.", 0.0, later=True)
    noise_samples: Annotated[int, count(1, MAX_NOISE_SAMPLES)] = setting(
        "Legacy-vs-legacy samples a stage needs before its comparisons are judged.", 30, later=True
    )
    mismatch_below: Percent = setting(
        "A graded comparison's score (compare= returning 0..1) below this is a mismatch.", 0.5, later=True
    )
    compare: Comparator = setting(
        "A comparator (crossfade.compare) by name, or {name: {settings}}: equal, text, structure, embedding. Used "
        "where the call site passes no compare= of its own.", None, later=True, hashed=False
    )


@dataclass(frozen=True, slots=True)
class DualWriteRetry(Section):
    """How often the non-authoritative side of a dual write is tried in all, and the pause (seconds) between."""

    example: ClassVar[str] = "{attempts: 3, backoff: 50ms}"

    attempts: Annotated[int, count(1, MAX_ATTEMPTS)] = setting("Tries in all, the first included.", 2)
    backoff: Backoff = setting("Pause between tries.", 0.0)


# --- providers: each checks its own settings, found by name in its registry ------------------------------


def _comparator(value: object) -> Any:
    from crossfade.compare import from_spec
    from crossfade.registry import ProviderConfigError

    try:
        from_spec(value, "shadow.compare")
    except ProviderConfigError as exc:
        raise Problems([Problem(problem.path, problem.message) for problem in exc.problems]) from None
    return json.loads(json.dumps(value))


_COMPARATORS: Final = ("equal", "text", "structure", "embedding")


def _comparator_schema() -> dict[str, Any]:
    return {
        "anyOf": [
            {"enum": list(_COMPARATORS)},
            {
                "type": "object", "minProperties": 1, "maxProperties": 1, "additionalProperties": False,
                "description": "One comparator with its settings.",
                "properties": {name: {"description": f"The {name} comparator's settings."} for name in _COMPARATORS},
            },
        ],
    }


Comparator = Annotated[Any, Check(_comparator, _comparator_schema, "a comparator by name, or {name: {settings}}")]


def _notify(value: object) -> tuple[Any, ...]:
    from crossfade.notify import targets
    from crossfade.registry import ProviderConfigError

    entries = _entries(value, "[{slack: {url_env: SLACK_WEBHOOK_URL}, events: [rolled_back]}]")
    problems: list[Problem] = []
    if len(entries) > MAX_NOTIFY:
        problems.append(Problem("notify", f"{len(entries)} entries; at most {MAX_NOTIFY}"))
    if entries:
        try:
            targets(entries)
        except ProviderConfigError as exc:
            problems += [Problem(problem.path, problem.message) for problem in exc.problems]
    if problems:
        raise Problems(problems)
    return tuple(entries)


def _notify_schema() -> dict[str, Any]:
    from crossfade.notify import json_schema

    return {"type": "array", "items": json_schema()}


def _routers(value: object) -> tuple[Any, ...]:
    from crossfade.routers import check

    items = _entries(value, "[{nginx: {conf: /etc/nginx/conf.d/crossfade.conf}}]")
    problems = check(items)
    if problems:
        raise Problems([Problem(problem.path, problem.message) for problem in problems])
    return tuple(items)


def _routers_schema() -> dict[str, Any]:
    from crossfade.routers import ROUTERS

    return {
        "type": "array",
        "items": {
            "type": "object", "minProperties": 1, "maxProperties": 1, "additionalProperties": False,
            "description": "One router: its name, and its settings (checked by the router's own module).",
            "properties": {name: {"type": ["object", "null"]} for name in ROUTERS.names()},
        },
    }


def _source(value: object) -> dict[str, Any]:
    from crossfade.metrics import REGISTRY
    from crossfade.registry import ProviderConfigError

    example = "{prometheus: {url: http://prometheus:9090, preset: istio}}"
    if not isinstance(value, Mapping) or len(value) != 1:
        raise ValueError(f"expected one metric source, e.g. {example}; known: {', '.join(REGISTRY.names())}")
    (name, settings), = value.items()
    if settings is not None and not isinstance(settings, Mapping):
        raise Problems([Problem(f"source.{name}", f"expected the source's settings as a mapping, e.g. {example}")])
    try:
        REGISTRY.create(str(name), settings, f"source.{name}")
    except ProviderConfigError as exc:
        raise Problems([Problem(problem.path, problem.message) for problem in exc.problems]) from None
    return {str(name): dict(settings or {})}


def _source_schema() -> dict[str, Any]:
    from crossfade.metrics import REGISTRY

    return {
        "type": "object", "minProperties": 1, "maxProperties": 1, "additionalProperties": False,
        "properties": {name: {"description": f"The settings of the {name} metric source (checked by it)."}
                       for name in REGISTRY.names()},
    }


def _entries(value: object, example: str) -> list[Any]:
    if not isinstance(value, list | tuple):
        raise ValueError(f"expected a list, e.g. {example}; got {kind(value)}")
    return list(value)


# --- the spec --------------------------------------------------------------------------------------------


def _allow_and_deny(data: Mapping[str, Any]) -> list[Rule]:
    try:
        allow, deny = _keys(data.get("allow", ())), _keys(data.get("deny", ()))
    except ValueError:
        return []
    return [
        (("deny", index), f"{show(entry)} is also in allow; a key is either always candidate (allow) or always "
                          "legacy (deny)")
        for index, entry in enumerate(deny)
        if entry in allow
    ]


def _keys(value: object) -> tuple[str, ...]:
    """An allow or deny list as the rules read it; ValueError if any of it is refused (reported elsewhere)."""
    if not isinstance(value, list | tuple) or len(value) > MAX_KEYS:
        raise ValueError("not a list of keys")
    return tuple(dict.fromkeys(parse_key(item) for item in value))


Keys = Annotated[tuple[Key, ...], Items("[user-42, 1017]", MAX_KEYS, "keys", unique=True)]


@dataclass(frozen=True, slots=True)
class Spec(Section):
    """A validated migration: its identity, its stages, and the gates, triggers and policies that move it.

    Build one with ``load_spec``; the constructor trusts its arguments. ``salt`` defaults to ``name``.
    """

    example: ClassVar[str] = "{name: checkout-pricing, stages: [...]}"

    name: Name = setting("Migration name, unique per backend.", example="checkout-pricing")
    _: KW_ONLY
    description: Text = setting("What is being migrated, for people.", "")
    owner: ShortText = setting("Who answers for this migration.", "")
    key: ShortText = setting("What the sticky key is (documentation only), e.g. customer id.", "")
    salt: Salt = setting("Bucketing salt; defaults to name. Change it to reshuffle which keys are enrolled.", "",
                       shown="the name")
    stages: Annotated[tuple[Stage, ...], Items(
        "[{traffic: 10%}, {traffic: 100%}]", MAX_STAGES, "stages",
        empty="needs at least one stage, e.g. [{traffic: 10%}, {traffic: 100%}]",
        prepare=_default_stage_names, rules=_ramp_rules,
    )] = setting("The ramp. Traffic never decreases; the last stage is 100%.",
                 example="[{traffic: 10%}, {traffic: 50%}, {traffic: 100%}]")
    gates: Gates = setting("Candidate compared with legacy before each promotion. Leave out for the defaults "
                           "(error_rate +1%, p95 latency x1.25); {} for no gates.", factory=Gates.default)
    metrics: Annotated[tuple[CustomMetric, ...], Declared()] = setting(
        "Custom metrics recorded by the call site (obs.metric, metrics=, mig.record) and how each is judged; "
        "similarity is the built-in score of graded comparisons.", (), later=True, mapping=True
    )
    triggers: Annotated[tuple[Trigger, ...], Items(
        "[{metric: error_rate, above: 5%, window: 5m}]", MAX_TRIGGERS, "triggers",
    )] = setting("Instant rollback on absolute thresholds.", ())
    on_failure: Annotated[str, choice(ON_FAILURE)] = setting("What a failed gate does.", "rollback")
    rollback: RollbackPolicy = setting("How traffic goes back to legacy.", factory=RollbackPolicy)
    analysis: Analysis = setting("How the judge looks at the evidence.", factory=Analysis)
    fallback: Fallback = setting("What happens when a candidate call fails.", factory=Fallback)
    shadow: ShadowSettings = setting("How shadow runs are carried out, off the request path.",
                                     factory=ShadowSettings, later=True)
    dual_write_retry: DualWriteRetry = setting("How the non-authoritative side of a dual write is retried.",
                                               factory=DualWriteRetry, later=True)
    allow: Keys = setting("Keys always sent to the candidate.", ())
    deny: Keys = setting("Keys always kept on legacy.", ())
    notify: Annotated[tuple[Any, ...], Check(_notify, _notify_schema, "list of notification targets")] = setting(
        "Who is told of what: each target names one channel (webhook, slack, pagerduty, email) with its settings, "
        "the kinds of events it wants (`events`, default all: rolled_back, rollback_started, approval_requested, "
        "paused, completed, restarted, stepped_back, gate_failed, trigger_fired, router_failed, source_failed) and "
        "an optional `name`. Secrets only by environment variable name (`*_env`).", ()
    )
    source: Annotated[Mapping[str, Any] | None, Check(_source, _source_schema, "one metric source")] = setting(
        "Where the judge reads each arm's metrics: one source by name with its settings, e.g. {prometheus: {url: "
        "http://prometheus:9090, preset: istio}}; telemetry (the default) reads what SDK hosts and clients post. "
        "Each source checks its own settings.", None, later=True
    )
    dual_write_after_rollback: Flag = setting(
        "Keep writing both sides after a rollback or abort from a dual_write stage, so the candidate's store stays "
        "current for the next attempt (writes go to legacy first).", False, later=True
    )
    routers: Annotated[tuple[Any, ...], Check(_routers, _routers_schema, "list of routers")] = setting(
        "Traffic routers that make a mesh, gateway or proxy follow the migration, each {name: {settings}} (sdk, "
        "nginx, istio, gateway_api); default: the SDK.", (), later=True
    )
    bake: Bake = setting(
        "How long the last stage is still judged (gates against the last legacy measured, change detection, "
        "triggers) before the migration completes; a failure meanwhile rolls back. Its end waits for a final look "
        "(at most as long again) until enough calls would show a step in its last minute.", 0.0, later=True
    )

    def __post_init__(self) -> None:
        if not self.salt:
            # Frozen: the only way to fill a derived default is to go around __setattr__.
            object.__setattr__(self, "salt", self.name)

    @classmethod
    def prepare(cls, data: dict[str, Any], context: Mapping[str, Any]) -> dict[str, Any]:
        """Every stage that shadows and sets no noise share of its own takes ``shadow.noise``."""
        shadow, stages = data.get("shadow"), data.get("stages")
        if not isinstance(shadow, Mapping) or shadow.get("noise") is None or not isinstance(stages, list | tuple):
            return data
        try:
            noise = parse_percent(shadow["noise"])
        except ValueError:
            return data
        filled = []
        for stage in stages:
            if isinstance(stage, Mapping) and stage.get("noise") is None:
                v = Stage.read({key: value for key, value in stage.items() if value is not None})
                if v["shadow"] not in (0.0, BAD) or v["shadow_legacy"] not in (0.0, BAD):
                    stage = {**stage, "noise": noise}
            filled.append(stage)
        return {**data, "stages": filled}

    @classmethod
    def rules(cls, data: Mapping[str, Any], context: Mapping[str, Any]) -> list[Rule]:
        """A key is in allow or in deny, not both."""
        return _allow_and_deny(data)

    def metric(self, name: str) -> CustomMetric | None:
        """The custom metric declared as ``name``, or None."""
        for metric in self.metrics:
            if metric.name == name:
                return metric
        return None

    def stage_index(self, name: str) -> int:
        """The position of the stage called ``name``; KeyError naming the known stages if there is none."""
        for index, stage in enumerate(self.stages):
            if stage.name == name:
                return index
        known = ", ".join(stage.name for stage in self.stages)
        raise KeyError(f"no stage {name!r} in migration {self.name!r}; its stages are {known}")

    def to_dict(self) -> dict[str, Any]:
        """The canonical plain form: fractions and seconds as numbers, unset optional values left out.

        ``load_spec(spec.to_dict()) == spec`` holds, and the result is valid against ``json_schema()``.
        Settings added after the first release are left out at their defaults, so that the digest of a
        spec written before them does not change (re-applying it is still a no-op).
        """
        return plain(self)

    def digest(self) -> str:
        """The sha256 hex digest of the canonical JSON of ``to_dict()``: equal specs, equal digests.

        The same spelling the event log and the backend hash (`canonical.canonical_json`), so the digest an
        `applied` event records is the one the stored spec row carries.
        """
        return hashlib.sha256(canonical_json(self.to_dict()).encode()).hexdigest()


def plain(value: Any) -> Any:
    """A model as plain JSON-like data: unset (None) values and later settings at their defaults left out."""
    if isinstance(value, Section):
        out: dict[str, Any] = {}
        for f in fields(value):  # type: ignore[arg-type]
            item = getattr(value, f.name)
            if item is None:
                continue
            if f.metadata.get("later"):
                default = f.default_factory() if f.default_factory is not MISSING else f.default
                if item == default:
                    continue
            if f.metadata.get("mapping"):
                out[key_of(f)] = {entry.name: entry.to_dict() for entry in item}
            else:
                out[key_of(f)] = plain(item)
        return out
    if isinstance(value, tuple | list):
        return [plain(item) for item in value]
    if isinstance(value, Mapping):
        return json.loads(json.dumps(value))
    return value


def sections(root: type = Spec) -> Sequence[type]:
    """Every section reachable from ``root``, ``root`` first, each once: the order of the reference docs."""
    found: list[type] = [root]
    for f in fields(root):  # type: ignore[arg-type]
        for inner in _section_types(typing.get_type_hints(root, include_extras=True)[f.name]):
            if inner not in found:
                found += [s for s in sections(inner) if s not in found]
    return found


def _section_types(hint: Any) -> list[type]:
    if isinstance(hint, type) and issubclass(hint, Section):
        return [hint]
    return [s for arg in typing.get_args(hint) for s in _section_types(arg)]
