"""Migration specs: YAML, a file or a dict in, a validated immutable Spec out, plus the format's JSON Schema."""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, field, fields
from decimal import Decimal
from pathlib import Path
from typing import Any, Final

import yaml

from crossfade.canonical import canonical_json
from crossfade.telemetry import METRIC_NAME_PATTERN

__all__ = [
    "EXAMPLE",
    "Analysis",
    "CostGate",
    "ErrorRateGate",
    "Fallback",
    "Gates",
    "LatencyGate",
    "MismatchGate",
    "Problem",
    "DualWriteRetry",
    "RollbackPolicy",
    "ShadowSettings",
    "Spec",
    "SpecError",
    "Stage",
    "Trigger",
    "format_duration",
    "format_percent",
    "json_schema",
    "load_spec",
    "parse_duration",
    "parse_percent",
]

NAME_PATTERN: Final = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
"""What migration and stage names look like: a DNS label, so names fit URLs, metrics labels and file names."""

PERCENT_METRICS: Final = ("error_rate", "timeout_rate", "fallback_rate", "mismatch_rate")
"""Trigger metrics measured as rates; their thresholds are percentages."""

LATENCY_METRICS: Final = ("latency_p50", "latency_p90", "latency_p95", "latency_p99")
"""Trigger metrics measured as candidate latency quantiles; their thresholds are durations."""

RATIO_METRICS: Final = (
    "latency_p50_ratio",
    "latency_p90_ratio",
    "latency_p95_ratio",
    "latency_p99_ratio",
    "cost_ratio",
)
"""Trigger metrics measured as candidate / legacy; their thresholds are plain numbers."""

TRIGGER_METRICS: Final = PERCENT_METRICS + LATENCY_METRICS + RATIO_METRICS
"""Every metric a trigger may watch."""

ON_FAILURE: Final = ("rollback", "step_back", "pause")
"""What the controller does when a gate fails: back to 0%, back one stage, or hold still for a human."""

ROLLBACK_MODES: Final = ("immediate", "gradual")
ON_NODATA: Final = ("hold", "pause")
PROMOTE_WHEN: Final = ("no_regression", "proven")
SAMPLE_RATIO: Final = ("report", "hold")
ON_INCONCLUSIVE: Final = ("hold", "promote", "pause")
QUANTILES: Final = {"p50": 0.5, "p90": 0.9, "p95": 0.95, "p99": 0.99}

_NAME_RE: Final = re.compile(NAME_PATTERN)
_NUMBER = r"\d+(?:\.\d+)?"
# Units must come largest first and at most once, so "1h30m" reads one way only; `m(?!s)` keeps
# the minutes group from eating the "m" of "ms".
_DURATION_RE: Final = re.compile(
    rf"(?:(?P<d>{_NUMBER})d)?(?:(?P<h>{_NUMBER})h)?(?:(?P<m>{_NUMBER})m(?!s))?"
    rf"(?:(?P<s>{_NUMBER})s)?(?:(?P<ms>{_NUMBER})ms)?"
)
_DURATION_UNITS: Final = {
    "ms": Decimal("0.001"),
    "s": Decimal(1),
    "m": Decimal(60),
    "h": Decimal(3600),
    "d": Decimal(86400),
}
_PERCENT_RE: Final = re.compile(r"(-?\d+(?:\.\d+)?)\s*%")
_BARE_NUMBER_RE: Final = re.compile(r"-?\d+(?:\.\d+)?")
_DURATION_HINT: Final = "write e.g. 250ms, 30s, 5m, 1h30m"

# Every field has a range a working migration stays inside; beyond it a value is a slip (or an attack) that
# would overflow a clock, start thousands of threads or make the judge divide by nothing.
DAY: Final = 86400.0
MAX_DURATION: Final = 366 * DAY
MAX_TIMEOUT: Final = 3600.0
MIN_INTERVAL: Final = 0.1
MAX_COUNT: Final = 10**12
MAX_RATIO: Final = 1e6
MAX_THREADS: Final = 64
MAX_PENDING: Final = 100_000
MAX_EXAMPLES: Final = 1000
MAX_NOISE_SAMPLES: Final = 100_000
MAX_ATTEMPTS: Final = 10
MAX_BACKOFF: Final = 60.0
MAX_STAGES: Final = 100
MAX_TRIGGERS: Final = 100
MAX_KEYS: Final = 10_000
MAX_NOTIFY: Final = 100
MAX_TEXT: Final = 10_000
MAX_SHORT_TEXT: Final = 1000
# A document's size counted value by value with YAML aliases expanded, and its nesting: a few dozen aliases
# can stand for billions of values, which every reader of the spec would walk.
MAX_VALUES: Final = 100_000
MAX_DEPTH: Final = 32
_PERCENT_HINT: Final = "write e.g. 10%, 2.5% or the fraction 0.025"


# --- units -----------------------------------------------------------------------------------------------


def parse_duration(value: object) -> float:
    """Seconds in a duration: ``250ms``, ``30s``, ``5m``, ``1h30m``, ``1d``, ``1.5s``; a bare number is seconds.

    Raises ValueError, with an example of a valid value, for anything else or a negative duration.
    """
    if isinstance(value, bool):
        raise ValueError(f"{_show(value)} is not a duration; {_DURATION_HINT}")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ValueError(f"{_show(value)} is not a duration; {_DURATION_HINT}")
        if value < 0:
            raise ValueError(f"{_show(value)} is negative; a duration is 0 or more, {_DURATION_HINT}")
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        if _BARE_NUMBER_RE.fullmatch(text):
            return parse_duration(float(Decimal(text)))
        match = _DURATION_RE.fullmatch(text)
        if match and any(match.groups()):
            parts = match.groupdict().items()
            return float(sum(Decimal(number) * _DURATION_UNITS[unit] for unit, number in parts if number))
    raise ValueError(f"{_show(value)} is not a duration; {_DURATION_HINT}")


def format_duration(seconds: float) -> str:
    """The shortest text for a number of seconds, to the millisecond: ``1h30m``, ``250ms``, ``30s``, ``0s``."""
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{seconds!r} is not a duration in seconds")
    if seconds == 0:
        return "0s"
    if seconds < 0.001:
        return f"{_plain(seconds * 1000)}ms"
    days, rest = divmod(round(seconds * 1000), 86_400_000)
    hours, rest = divmod(rest, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, millis = divmod(rest, 1000)
    parts = [f"{n}{unit}" for n, unit in ((days, "d"), (hours, "h"), (minutes, "m")) if n]
    if secs and millis:
        parts.append(f"{secs}.{millis:03d}".rstrip("0") + "s")
    elif secs:
        parts.append(f"{secs}s")
    elif millis:
        parts.append(f"{millis}ms")
    return "".join(parts)


def parse_percent(value: object) -> float:
    """A fraction in [0, 1] from ``"2.5%"`` or from a fraction such as ``0.025``.

    A bare number above 1 is refused rather than guessed at: ``traffic: 50`` could mean 50% or a typo,
    and a migration is the wrong place to guess. The message suggests writing ``50%``.
    """
    if isinstance(value, str):
        text = value.strip()
        match = _PERCENT_RE.fullmatch(text)
        if match:
            percent = Decimal(match.group(1))
            if percent < 0:
                raise ValueError(f"{text} is below 0%")
            if percent > 100:
                raise ValueError(f"{text} is above 100%")
            return float(percent / 100)
        if _BARE_NUMBER_RE.fullmatch(text):
            return parse_percent(float(Decimal(text)))
        raise ValueError(f"{_show(value)} is not a percentage; {_PERCENT_HINT}")
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{_show(value)} is not a percentage; {_PERCENT_HINT}")
    if value < 0:
        raise ValueError(f"{_show(value)} is negative; {_PERCENT_HINT}")
    if value > 1:
        raise ValueError(
            f"{_show(value)} is not a fraction between 0 and 1; write {_show(value)}% if you mean a percentage"
        )
    return float(value)


def format_percent(fraction: float) -> str:
    """A fraction as percentage text: ``0.025`` -> ``"2.5%"``, ``0.1`` -> ``"10%"``, ``0.0001`` -> ``"0.01%"``."""
    # Rounding to 10 places hides float noise such as 0.1 * 100 == 10.000000000000002.
    return f"{_plain(round(fraction * 100, 10))}%"


def _plain(number: float) -> str:
    """A number in positional notation without trailing zeros (never ``1e-05``), so it parses back."""
    return f"{number:.10f}".rstrip("0").rstrip(".")


def _show(value: object) -> str:
    """A value as it appears in a message: text quoted, everything else as YAML would spell it."""
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


# --- models ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Stage:
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

    name: str
    traffic: float
    shadow: float = 0.0
    hold: float | None = None
    min_samples: int = 0
    approval: bool = False
    shadow_legacy: float = 0.0
    noise: float = 0.0
    dual_write: bool = False

    @property
    def threshold(self) -> int:
        """The candidate's bucket threshold out of 10000: a key goes to the candidate iff its bucket is below it."""
        return round(self.traffic * 10000)

    @property
    def shadow_threshold(self) -> int:
        """The shadow bucket threshold out of 10000, like ``threshold``."""
        return round(self.shadow * 10000)


@dataclass(frozen=True, slots=True)
class ErrorRateGate:
    """Fail when the candidate's error rate exceeds legacy's by more than ``max_increase`` (a fraction, absolute)."""

    max_increase: float


@dataclass(frozen=True, slots=True)
class LatencyGate:
    """Fail when the candidate's latency ``quantile`` exceeds legacy's times ``max_ratio``."""

    quantile: float = 0.95
    max_ratio: float = 1.2


@dataclass(frozen=True, slots=True)
class CostGate:
    """Fail when the candidate's mean cost per call exceeds legacy's times ``max_ratio``."""

    max_ratio: float


@dataclass(frozen=True, slots=True)
class MismatchGate:
    """Fail when more than ``max`` (a fraction) of shadowed calls produce output that differs from legacy."""

    max: float


@dataclass(frozen=True, slots=True)
class Gates:
    """The comparisons between candidate and legacy that must pass before a stage is promoted; ``None`` is off."""

    error_rate: ErrorRateGate | None = None
    latency: LatencyGate | None = None
    cost: CostGate | None = None
    mismatch_rate: MismatchGate | None = None
    latency_first_chunk: LatencyGate | None = None
    """Like ``latency``, on streams' latency to their first chunk (``mig.stream``/``astream``)."""

    @classmethod
    def default(cls) -> Gates:
        """The gates of a spec that says nothing about gates: error rate +1% at most, p95 latency x1.25 at most."""
        return cls(error_rate=ErrorRateGate(max_increase=0.01), latency=LatencyGate(quantile=0.95, max_ratio=1.25))


@dataclass(frozen=True, slots=True)
class Trigger:
    """An absolute threshold that rolls back at once: ``metric`` above ``above`` over a sliding ``window``.

    ``above`` is a fraction for rate metrics, seconds for ``latency_pNN`` and a plain number for ratios.
    ``min_samples`` is the number of candidate calls in the window below which the trigger stays quiet;
    ``for_`` (``for`` in YAML) is how long the condition must persist before it fires, ``None`` for at once.
    A trigger on a custom metric (declared under ``metrics:``) has ``above`` or, for a floor, ``below``
    instead (the other is None); built-in metrics always have ``above``.
    """

    metric: str
    above: float | None
    window: float = 300.0
    min_samples: int = 0
    for_: float | None = None
    below: float | None = None


@dataclass(frozen=True, slots=True)
class RollbackPolicy:
    """How a rollback moves traffic back: all at once, or down through ``steps`` (fractions) ``every`` seconds.

    Steps at or above the traffic of the moment a rollback starts are skipped by the controller.
    """

    mode: str = "immediate"
    steps: tuple[float, ...] = ()
    every: float = 60.0


@dataclass(frozen=True, slots=True)
class Analysis:
    """How the judge looks at the evidence: how often, how sure, what to do without data, when to promote.

    ``promote_when: no_regression`` promotes once no gate shows the candidate worse; ``proven`` waits until
    every gate shows, at ``confidence``, that it is within bounds.

    ``sample_ratio`` is what a broken split of calls between the arms (chi-square p < 0.001) does:
    ``report`` (the default) shows it; ``hold`` holds the stage. Holding is for keys of even popularity
    (or routing per request): with sticky keys of skewed popularity the arms' share of calls differs from
    their share of keys without anything being wrong (a 10% stage may see 5% of the calls).

    A stage is not left while a gate's estimate is past its limit without the evidence to fail it yet (or,
    with ``proven``, while a gate is not proven): the stage is extended. ``max_stage_time`` (seconds, None for
    no limit) is how long such an extension may last, counted from stage entry; ``on_inconclusive`` is what
    happens then: ``hold`` (the default) keeps waiting, ``promote`` moves on, ``pause`` pauses for a person.

    ``change_share`` is the share of the spec's alpha (1 - confidence) given to change detection (see
    `crossfade.changes`): a fault that starts late in a stage, diluted by the stage's good data, is caught by
    the candidate's recent calls alone. The gates share the rest. 0 turns change detection off.
    """

    interval: float = 30.0
    confidence: float = 0.99
    on_nodata: str = "hold"
    promote_when: str = "no_regression"
    sample_ratio: str = "report"
    on_inconclusive: str = "hold"
    max_stage_time: float | None = None
    change_share: float = 0.25


@dataclass(frozen=True, slots=True)
class Fallback:
    """Whether a failed candidate call is retried on legacy, and how long a candidate call may take (seconds)."""

    on_error: bool = True
    timeout: float | None = None


@dataclass(frozen=True, slots=True)
class ShadowSettings:
    """How shadow runs are carried out: their timeout, worker threads, bound on pending runs, the noise
    thresholds (fractions) a field's difference must clear to be a mismatch, and examples kept per field.

    ``noise`` is the noise sampling share every shadowing stage takes unless it sets its own;
    ``noise_samples`` the legacy-vs-legacy samples a stage needs (across all processes) before any of its
    comparisons is judged: until then they are held, then counted, so none is judged against an unknown
    noise rate.
    """

    timeout: float = 5.0
    threads: int = 4
    max_pending: int = 64
    noise_relative: float = 0.2
    noise_absolute: float = 0.0003
    examples: int = 20
    mismatch_below: float = 0.5
    """A graded comparison (``compare=`` returning a score in [0, 1]) scoring below this is a mismatch."""
    noise: float = 0.0
    noise_samples: int = 30
    compare: Any = field(default=None, hash=False)
    """A comparator by name (``text``) or with settings (``{structure: {ignore: [$.id]}}``): see crossfade.compare.
    Used where the call site passes no ``compare=`` of its own."""


@dataclass(frozen=True, slots=True)
class DualWriteRetry:
    """How often the non-authoritative side of a dual write is tried in all, and the pause (seconds) between."""

    attempts: int = 2
    backoff: float = 0.0


@dataclass(frozen=True, slots=True)
class Spec:
    """A validated migration: its identity, its stages, and the gates, triggers and policies that move it.

    Build one with ``load_spec``; the constructor trusts its arguments. ``salt`` defaults to ``name``.
    """

    name: str
    _: KW_ONLY
    description: str = ""
    owner: str = ""
    key: str = ""
    salt: str = ""
    stages: tuple[Stage, ...]
    gates: Gates = field(default_factory=Gates.default)
    triggers: tuple[Trigger, ...] = ()
    on_failure: str = "rollback"
    rollback: RollbackPolicy = field(default_factory=RollbackPolicy)
    analysis: Analysis = field(default_factory=Analysis)
    fallback: Fallback = field(default_factory=Fallback)
    shadow: ShadowSettings = field(default_factory=ShadowSettings)
    dual_write_retry: DualWriteRetry = field(default_factory=DualWriteRetry)
    dual_write_after_rollback: bool = False
    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    notify: tuple[Any, ...] = ()
    source: Mapping[str, Any] | None = None
    routers: tuple[Any, ...] = ()
    metrics: tuple[Any, ...] = ()
    """The custom metrics declared under ``metrics:`` (``metricspec.CustomMetric``), in the spec's order."""
    # Seconds the last stage is judged for before the migration is completed (0: completed on entry).
    bake: float = 0.0

    def __post_init__(self) -> None:
        if not self.salt:
            # Frozen: the only way to fill a derived default is to go around __setattr__.
            object.__setattr__(self, "salt", self.name)

    def metric(self, name: str) -> Any:
        """The custom metric declared as ``name`` (a ``metricspec.CustomMetric``), or None."""
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
        gates: dict[str, Any] = {}
        if self.gates.error_rate is not None:
            gates["error_rate"] = {"max_increase": self.gates.error_rate.max_increase}
        if self.gates.latency is not None:
            gates["latency"] = {"quantile": self.gates.latency.quantile, "max_ratio": self.gates.latency.max_ratio}
        if self.gates.cost is not None:
            gates["cost"] = {"max_ratio": self.gates.cost.max_ratio}
        if self.gates.mismatch_rate is not None:
            gates["mismatch_rate"] = {"max": self.gates.mismatch_rate.max}
        if self.gates.latency_first_chunk is not None:
            first = self.gates.latency_first_chunk
            gates["latency_first_chunk"] = {"quantile": first.quantile, "max_ratio": first.max_ratio}
        return {
            "name": self.name,
            "description": self.description,
            "owner": self.owner,
            "key": self.key,
            "salt": self.salt,
            "stages": [
                _without_none(
                    {
                        "name": stage.name,
                        "traffic": stage.traffic,
                        "shadow": stage.shadow,
                        "hold": stage.hold,
                        "min_samples": stage.min_samples,
                        "approval": stage.approval,
                        **_unless_default(stage, "shadow_legacy", "noise", "dual_write"),
                    }
                )
                for stage in self.stages
            ],
            "gates": gates,
            "triggers": [
                _without_none(
                    {
                        "metric": trigger.metric,
                        "above": trigger.above,
                        "window": trigger.window,
                        "min_samples": trigger.min_samples,
                        "for": trigger.for_,
                        "below": trigger.below,
                    }
                )
                for trigger in self.triggers
            ],
            "on_failure": self.on_failure,
            "rollback": {"mode": self.rollback.mode, "steps": list(self.rollback.steps), "every": self.rollback.every},
            "analysis": {
                "interval": self.analysis.interval,
                "confidence": self.analysis.confidence,
                "on_nodata": self.analysis.on_nodata,
                "promote_when": self.analysis.promote_when,
                # Left out at its default so that specs written before it keep their digest.
                **({} if self.analysis.sample_ratio == "report" else {"sample_ratio": self.analysis.sample_ratio}),
                **({} if self.analysis.on_inconclusive == "hold"
                   else {"on_inconclusive": self.analysis.on_inconclusive}),
                **({} if self.analysis.max_stage_time is None else {"max_stage_time": self.analysis.max_stage_time}),
                **_change_detection_dict(self.analysis),
            },
            "fallback": _without_none({"on_error": self.fallback.on_error, "timeout": self.fallback.timeout}),
            **({} if self.shadow == ShadowSettings() else {"shadow": _shadow_fields(self.shadow)}),
            **({} if self.dual_write_retry == DualWriteRetry() else {"dual_write_retry": _fields(self.dual_write_retry)}),
            **({"dual_write_after_rollback": True} if self.dual_write_after_rollback else {}),
            "allow": list(self.allow),
            "deny": list(self.deny),
            "notify": list(self.notify),
            # Left out when unset so that specs written before metric sources keep their digest.
            **({} if self.source is None else {"source": json.loads(json.dumps(self.source))}),
            # Left out when empty so that specs written before routers existed keep their digest.
            **({"routers": list(self.routers)} if self.routers else {}),
            # Left out when empty so that specs written before custom metrics keep their digest.
            **({"metrics": {m.name: m.to_dict() for m in self.metrics}} if self.metrics else {}),
            **_bake_dict(self),
        }

    def digest(self) -> str:
        """The sha256 hex digest of the canonical JSON of ``to_dict()``: equal specs, equal digests.

        The same spelling the event log and the backend hash (`canonical.canonical_json`), so the digest an
        `applied` event records is the one the stored spec row carries.
        """
        return hashlib.sha256(canonical_json(self.to_dict()).encode()).hexdigest()


# -- bake and change detection (issue 10): read, written and described here, apart from the rest -----------

DEFAULT_CHANGE_SHARE: Final = 0.25
MAX_CHANGE_SHARE: Final = 0.5


def _bake_dict(spec: Spec) -> dict[str, Any]:
    """`bake` in a spec's plain form; left out when 0 so specs written before it keep their digest."""
    return {"bake": spec.bake} if spec.bake else {}


def _change_detection_dict(analysis: Analysis) -> dict[str, Any]:
    """`analysis.change_share` in a spec's plain form; left out at its default (digests stay)."""
    return {} if analysis.change_share == DEFAULT_CHANGE_SHARE else {"change_share": analysis.change_share}


def _bake(value: object) -> float:
    """A bake time: a duration, 0 for none."""
    seconds = parse_duration(value)
    if seconds < 0:
        raise ValueError(f"{_show(value)} is negative; give how long the last stage is judged, e.g. 1h, or 0")
    if seconds > MAX_DURATION:
        raise ValueError(f"{_show(value)} is longer than {format_duration(MAX_DURATION)}, the most bake allows")
    return seconds


def _change_share(value: object) -> float:
    """The share of alpha for change detection: a percent from 0% (off) to 50%."""
    share = parse_percent(value)
    if not 0.0 <= share <= MAX_CHANGE_SHARE:
        raise ValueError(f"{format_percent(share)} is not a usable share; pick one from 0% (no change detection) "
                         f"to {format_percent(MAX_CHANGE_SHARE)}, e.g. 25%")
    return share


def _bake_schema() -> dict[str, Any]:
    return {"bake": {"$ref": "#/$defs/duration", "default": "0s",
                     "description": "How long the last stage is still judged (gates against the last legacy "
                                    "measured, change detection, triggers) before the migration completes; a "
                                    "failure meanwhile rolls back."}}


def _change_detection_schema() -> dict[str, Any]:
    return {"change_share": {"$ref": "#/$defs/percent", "default": "25%",
                             "description": "Share of 1 - confidence spent on detecting a change in the "
                                            "candidate's recent calls (a fault that starts late); 0% turns it "
                                            "off, at most 50%."}}


def _without_none(mapping: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in mapping.items() if value is not None}


def _fields(model: Any) -> dict[str, Any]:
    return {f.name: getattr(model, f.name) for f in fields(model)}


def _shadow_fields(shadow: ShadowSettings) -> dict[str, Any]:
    # The settings added later are left out at their defaults, so older specs keep their digest.
    return {**{k: v for k, v in _fields(shadow).items() if k not in ("noise", "noise_samples", "compare")},
            **_unless_default(shadow, "noise", "noise_samples", "compare")}


def _unless_default(model: Any, *names: str) -> dict[str, Any]:
    defaults = {f.name: f.default for f in fields(model)}
    return {name: getattr(model, name) for name in names if getattr(model, name) != defaults[name]}


# --- errors ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a spec: where (``stages[2].traffic``, or ``line 3, column 5``) and what."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class SpecError(ValueError):
    """A spec that cannot be used, with every problem found in it; ``source`` is the file, ``<text>`` or ``<dict>``."""

    def __init__(self, source: str, problems: Sequence[Problem]) -> None:
        self.source = source
        self.problems = tuple(problems)
        count = len(self.problems)
        lines = [f"{count} problem{'s' if count != 1 else ''} in {source}:"]
        lines += [f"{source}: {problem}" for problem in self.problems]
        super().__init__("\n".join(lines))


# --- loading ---------------------------------------------------------------------------------------------

_FILE_SUFFIXES: Final = (".yaml", ".yml", ".json")


def load_spec(source: str | os.PathLike[str] | Mapping[str, Any], *, source_name: str | None = None) -> Spec:
    """A validated Spec from a file path, YAML text or a mapping; SpecError listing every problem otherwise.

    A str without a newline that names an existing file, or ends in .yaml/.yml/.json, is read as a file;
    any other str is YAML text. ``source_name`` replaces the file name, ``<text>`` or ``<dict>`` in messages.
    """
    if isinstance(source, Mapping):
        label = source_name or "<dict>"
        data: object = source
    elif isinstance(source, os.PathLike) or (isinstance(source, str) and _names_a_file(source)):
        label = source_name or os.fspath(source)
        data = _read_file(Path(source), label)
    elif isinstance(source, str):
        label = source_name or "<text>"
        data = _parse_yaml(source, label)
    else:
        raise SpecError(
            source_name or "<spec>",
            [Problem("", f"expected a file path, YAML text or a mapping, got {type(source).__name__}")],
        )
    plain = _plain_problems(data)
    if plain:
        raise SpecError(label, plain)
    reader = _Reader()
    try:
        spec = reader.spec(data)
    except (ArithmeticError, RecursionError, TypeError, ValueError) as exc:
        # A spec is input from anyone who may apply one: whatever the checks above missed is still its
        # problem, said in one line, never an exception of another kind.
        raise SpecError(label, [*reader.problems, Problem("", f"cannot be read: {exc}")]) from None
    if reader.problems:
        raise SpecError(label, reader.problems)
    return spec


def _plain_problems(data: object) -> list[Problem]:
    """What keeps `data` from being plain JSON-like data of bounded size and depth: types JSON cannot hold
    (dates, sets, bytes, keys that are not text), text that is not UTF-8 or holds NUL, numbers out of range,
    more than MAX_VALUES values with aliases expanded, or nesting deeper than MAX_DEPTH. Stops early."""
    problems: list[Problem] = []
    stack: list[tuple[object, str, int]] = [(data, "", 0)]
    seen = 0
    while stack and len(problems) < 20:
        value, path, depth = stack.pop()
        seen += 1
        if seen > MAX_VALUES:
            return [Problem("", f"the document holds more than {MAX_VALUES:,} values (counting what YAML aliases "
                                "repeat); a spec is far smaller")]
        if depth > MAX_DEPTH:
            return [Problem(path, f"nested too deeply (more than {MAX_DEPTH} levels; a spec is a few levels deep)")]
        if isinstance(value, Mapping):
            for key, item in value.items():
                if not isinstance(key, str):
                    problems.append(Problem(path, f"keys must be text, found {_kind(key)} {_show(key)}"))
                    continue
                stack.append((key, path, depth + 1))
                stack.append((item, _join(path, key), depth + 1))
        elif isinstance(value, list | tuple):
            stack.extend((item, f"{path}[{i}]", depth + 1) for i, item in enumerate(value))
        elif isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                problems.append(Problem(path, "text must be valid Unicode (it holds a lone surrogate)"))
                continue
            if "\x00" in value:
                problems.append(Problem(path, "text must not hold a NUL character"))
        elif isinstance(value, bool) or value is None:
            continue
        elif isinstance(value, int):
            if abs(value) >= 2**63:
                problems.append(Problem(path, f"{value} is too large a number"))
        elif isinstance(value, float):
            if not math.isfinite(value):
                problems.append(Problem(path, f"{_show(value)} is not a finite number"))
        else:
            problems.append(Problem(path, f"{_kind(value)} cannot be stored (quote it to make it text)"))
    return problems


def _names_a_file(text: str) -> bool:
    if "\n" in text or not text.strip():
        return False
    if text.lower().endswith(_FILE_SUFFIXES):
        return True
    try:
        return Path(text).is_file()
    except (OSError, ValueError):
        # One-line YAML such as "{name: x, ...}" can be too long or odd to be a path at all.
        return False


def _read_file(path: Path, label: str) -> object:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(label, [Problem("", "no such file")]) from None
    except UnicodeDecodeError:
        raise SpecError(label, [Problem("", "is not UTF-8 text")]) from None
    except OSError as exc:
        raise SpecError(label, [Problem("", f"cannot be read: {exc.strerror or exc}")]) from None
    if path.suffix.lower() == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise SpecError(label, [Problem(f"line {exc.lineno}, column {exc.colno}", exc.msg)]) from None
        except RecursionError:
            raise SpecError(label, [Problem("", "nested too deeply (a spec is a few levels deep)")]) from None
    return _parse_yaml(text, label)


def read_document(path: Path, label: str) -> object:
    """The parsed contents of a YAML or JSON file; SpecError (under `label`) when it cannot be read."""
    return _read_file(path, label)


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys, which plain YAML silently resolves to the last one."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
            except TypeError:
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark, f"found duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _parse_yaml(text: str, label: str) -> object:
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        message = exc.problem or exc.context or "invalid YAML"
        if exc.context and exc.problem:
            message = f"{exc.problem} ({exc.context})"
        raise SpecError(label, [Problem(where, f"invalid YAML: {message}")]) from None
    except yaml.YAMLError as exc:
        raise SpecError(label, [Problem("", f"invalid YAML: {exc}")]) from None
    except RecursionError:
        # PyYAML parses nesting by recursion: a document nested hundreds of levels deep exhausts the stack.
        raise SpecError(label, [Problem("", "invalid YAML: nested too deeply (a spec is a few levels deep)")]) from None


class _Bad:
    """The value of a field that had a problem: cross-field checks skip it, and no Spec is returned."""

    def __repr__(self) -> str:
        return "<invalid>"


_BAD: Final = _Bad()
_MISSING: Final = object()

_KIND: Final = {str: "text", bool: "true/false", int: "a number", float: "a number"}


def _kind(value: object) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return _KIND.get(type(value), type(value).__name__)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


class _Reader:
    """Turns plain data into models, recording every problem instead of stopping at the first."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []
        # Paths a misspelled key was taken for: "did you mean 'max'?" already says it, so a second
        # "max: required" for the same slip would only be noise.
        self.suggested: set[str] = set()

    def problem(self, path: str, message: str) -> None:
        self.problems.append(Problem(path, message))

    # generic helpers

    def mapping(self, value: object, path: str, keys: Sequence[str], example: str) -> dict[str, Any] | None:
        """The mapping at ``path`` with null values dropped (null means "left out"), after reporting unknown keys."""
        if not isinstance(value, Mapping):
            self.problem(path, f"expected a mapping, e.g. {example}; got {_kind(value)}")
            return None
        for key in value:
            if key not in keys:
                close = difflib.get_close_matches(str(key), keys, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                self.problem(_join(path, str(key)), f"unknown key; {hint}valid keys: {', '.join(keys)}")
                self.suggested.update(_join(path, match) for match in close)
        return {key: item for key, item in value.items() if key in keys and item is not None}

    def sequence(self, value: object, path: str, example: str) -> list[Any] | None:
        if not isinstance(value, list | tuple):
            self.problem(path, f"expected a list, e.g. {example}; got {_kind(value)}")
            return None
        return list(value)

    def get(
        self,
        data: Mapping[str, Any],
        key: str,
        path: str,
        convert: Callable[[Any], Any],
        default: Any = _MISSING,
        example: str = "",
    ) -> Any:
        """``convert(data[key])``, ``default`` when absent, or _BAD after recording why not."""
        where = _join(path, key)
        if key not in data:
            if default is _MISSING:
                if where in self.suggested:
                    return _BAD
                self.problem(where, f"required{f', e.g. {key}: {example}' if example else ''}")
                return _BAD
            return default
        try:
            return convert(data[key])
        except ValueError as exc:
            self.problem(where, str(exc))
            return _BAD

    # sections

    def spec(self, data: object) -> Spec:
        if data is None:
            self.problem("", "the spec is empty; write at least {name: checkout-pricing, stages: [{traffic: 100%}]}")
            return Spec("", stages=())
        top = self.mapping(data, "", _SPEC_KEYS, "{name: checkout-pricing, stages: [...]}")
        if top is None:
            return Spec("", stages=())
        name = self.get(top, "name", "", _name, example="checkout-pricing")
        description = self.get(top, "description", "", _text, "")
        owner = self.get(top, "owner", "", _short_text, "")
        key = self.get(top, "key", "", _short_text, "")
        salt = self.get(top, "salt", "", _salt, "")
        shadow = self.shadow_settings(top.get("shadow", {}))
        stages = self.stages(top.get("stages", _MISSING), 0.0 if shadow is _BAD else shadow.noise)
        gates = self.gates(top["gates"]) if "gates" in top else Gates.default()
        metrics = self.metrics(top.get("metrics"))
        # A trigger may name a declared metric whose declaration has problems of its own (reported there).
        named = [str(k) for k in top["metrics"]] if isinstance(top.get("metrics"), Mapping) else []
        triggers = self.triggers(top.get("triggers", []), () if metrics is _BAD else metrics, named)
        on_failure = self.get(top, "on_failure", "", _choice(ON_FAILURE), "rollback")
        rollback = self.rollback(top.get("rollback", {}))
        analysis = self.analysis(top.get("analysis", {}))
        fallback = self.fallback(top.get("fallback", {}))
        dual_write_retry = self.dual_write_retry(top.get("dual_write_retry", {}))
        keep_dual_writes = self.get(top, "dual_write_after_rollback", "", _flag, False)
        allow = self.keys(top.get("allow", []), "allow")
        deny = self.keys(top.get("deny", []), "deny")
        raw_notify = top.get("notify")
        if isinstance(raw_notify, list) and len(raw_notify) > MAX_NOTIFY:
            self.problem("notify", f"{len(raw_notify)} entries; at most {MAX_NOTIFY}")
        notify = self.notify(top.get("notify", []))
        source = self.source(top.get("source"))
        routers = self.routers(top.get("routers", []))
        bake = self.get(top, "bake", "", _bake, 0.0)
        if stages is not _BAD and gates is not _BAD:
            self.data_shapes(stages, gates)
        if allow is not _BAD and deny is not _BAD:
            for index, entry in enumerate(deny):
                if entry in allow:
                    self.problem(
                        f"deny[{index}]",
                        f"{_show(entry)} is also in allow; a key is either always candidate (allow) "
                        "or always legacy (deny)",
                    )
        return Spec(
            name,
            description=description,
            owner=owner,
            key=key,
            salt=salt,
            stages=stages,
            gates=gates,
            triggers=triggers,
            on_failure=on_failure,
            rollback=rollback,
            analysis=analysis,
            fallback=fallback,
            shadow=shadow,
            dual_write_retry=dual_write_retry,
            dual_write_after_rollback=keep_dual_writes,
            allow=allow,
            deny=deny,
            notify=tuple(notify or ()),
            source=source,
            routers=tuple(routers or ()),
            metrics=() if metrics is _BAD else metrics,
            bake=bake,
        )

    def metrics(self, value: object) -> Any:
        """The custom metrics (crossfade.metricspec reads them)."""
        from crossfade.metricspec import read_metrics

        return read_metrics(self, value)

    def notify(self, value: object) -> Any:
        entries = self.sequence(value, "notify", "[{slack: {url_env: SLACK_WEBHOOK_URL}, events: [rolled_back]}]")
        if not entries:
            return entries
        # Each channel checks its own settings (crossfade.notify, through the registry).
        from crossfade.notify import targets
        from crossfade.registry import ProviderConfigError

        try:
            targets(entries)
        except ProviderConfigError as exc:
            for problem in exc.problems:
                self.problem(problem.path, problem.message)
        return entries

    def routers(self, value: object) -> list[Any] | None:
        """The raw router list; each entry is checked by its own router module (found in the registry)."""
        from crossfade.routers import check

        items = self.sequence(value, "routers", "[{nginx: {conf: /etc/nginx/conf.d/crossfade.conf}}]")
        if items is None:
            return None
        for problem in check(items):
            self.problem(problem.path, problem.message)
        return items

    def stages(self, value: object, noise: float = 0.0) -> Any:
        """The stages; `noise` (the spec's `shadow.noise`) is the noise share of every stage that shadows and
        does not set its own."""
        if value is _MISSING:
            if "stages" not in self.suggested:
                self.problem("stages", "required, e.g. stages: [{traffic: 10%}, {traffic: 50%}, {traffic: 100%}]")
            return _BAD
        items = self.sequence(value, "stages", "[{traffic: 10%}, {traffic: 100%}]")
        if items is None:
            return _BAD
        if not items:
            self.problem("stages", "needs at least one stage, e.g. [{traffic: 10%}, {traffic: 100%}]")
            return _BAD
        if len(items) > MAX_STAGES:
            self.problem("stages", f"{len(items)} stages; at most {MAX_STAGES}")
            return _BAD
        stages: list[Stage] = []
        first_use: dict[str, int] = {}
        previous: float | None = None
        for index, item in enumerate(items):
            path = f"stages[{index}]"
            data = self.mapping(item, path, _STAGE_KEYS, "{name: canary, traffic: 10%, hold: 30m}")
            if data is None:
                continue
            name = self.get(data, "name", path, _name, f"stage-{index + 1}")
            traffic = self.get(data, "traffic", path, parse_percent, example="10%")
            shadow = self.get(data, "shadow", path, parse_percent, 0.0)
            shadow_legacy = self.get(data, "shadow_legacy", path, parse_percent, 0.0)
            shadows = shadow not in (0.0, _BAD) or shadow_legacy not in (0.0, _BAD)
            stage = Stage(
                name=name,
                traffic=traffic,
                shadow=shadow,
                hold=self.get(data, "hold", path, _positive_duration, None),
                min_samples=self.get(data, "min_samples", path, _samples, 0),
                approval=self.get(data, "approval", path, _flag, False),
                shadow_legacy=shadow_legacy,
                noise=self.get(data, "noise", path, parse_percent, noise if shadows else 0.0),
                dual_write=self.get(data, "dual_write", path, _flag, False),
            )
            self.stage_shadows(stage, data, path)
            if name is not _BAD:
                if name not in first_use:
                    first_use[name] = index
                elif "name" in data:
                    self.problem(
                        _join(path, "name"),
                        f"{name!r} is already the name of stages[{first_use[name]}]; stage names are unique",
                    )
                else:
                    self.problem(
                        path,
                        f"its default name {name!r} is already the name of stages[{first_use[name]}]; "
                        "give this stage a name",
                    )
            if traffic is not _BAD:
                if previous is not None and traffic < previous:
                    self.problem(
                        _join(path, "traffic"),
                        f"{format_percent(traffic)} is below the previous stage's {format_percent(previous)}; "
                        "traffic never decreases",
                    )
                previous = traffic
                if index == len(items) - 1 and traffic != 1.0:
                    self.problem(
                        _join(path, "traffic"),
                        f"the last stage must send 100% of traffic to the candidate, not {format_percent(traffic)}",
                    )
            stages.append(stage)
        return tuple(stages)

    def data_shapes(self, stages: tuple[Stage, ...], gates: Gates) -> None:
        """Report stages and gates that can never have data: the stage would wait for it for ever."""
        judged = stages[:-1]
        for index, stage in enumerate(judged):
            if _BAD in (stage.traffic, stage.shadow, stage.shadow_legacy):
                continue
            # (shadow_legacy at 0% is reported by stage_shadows already; a dual-writing stage runs the
            # candidate's writes.)
            if stage.traffic == 0.0 and stage.shadow == 0.0 and stage.shadow_legacy == 0.0 \
                    and stage.dual_write is not True:
                self.problem(
                    f"stages[{index}]",
                    "at 0% traffic without shadow the candidate runs no calls, so this stage can never be judged "
                    "or left; add shadow: 100% to run it off the request path, or remove the stage",
                )
            if stage.traffic == 1.0 and stage.shadow_legacy == 0.0:
                self.problem(
                    f"stages[{index}].traffic",
                    "at 100% before the last stage legacy runs no calls, so no gate can compare the arms and this "
                    "stage can never be left; make it the last stage, or add shadow_legacy: 10% so legacy runs "
                    "beside it",
                )

    def stage_shadows(self, stage: Stage, data: Mapping[str, Any], path: str) -> None:
        """Report shadow settings a stage cannot act on: they would silently do nothing.

        (``shadow`` at 100% traffic does nothing either, but specs written before these checks may say it.)
        """
        if "shadow_legacy" in data and stage.shadow_legacy not in (0.0, _BAD) and stage.traffic == 0.0:
            self.problem(
                _join(path, "shadow_legacy"),
                "legacy serves every call at 0% traffic, so no candidate call is left for legacy to shadow; "
                "use shadow to run the candidate beside legacy",
            )
        if "noise" in data and stage.noise not in (0.0, _BAD) and stage.shadow in (0.0, _BAD) \
                and stage.shadow_legacy in (0.0, _BAD):
            self.problem(
                _join(path, "noise"),
                "noise samples are taken from shadow runs, and this stage has none; "
                "set shadow (or shadow_legacy) too, e.g. {shadow: 100%, noise: 10%}",
            )

    def shadow_settings(self, value: object) -> Any:
        data = self.mapping(value, "shadow", _SHADOW_KEYS, "{timeout: 5s, threads: 4, max_pending: 64}")
        if data is None:
            return _BAD
        return ShadowSettings(
            timeout=self.get(data, "timeout", "shadow", _timeout, 5.0),
            threads=self.get(data, "threads", "shadow", _bounded_count(1, MAX_THREADS), 4),
            max_pending=self.get(data, "max_pending", "shadow", _bounded_count(1, MAX_PENDING), 64),
            noise_relative=self.get(data, "noise_relative", "shadow", parse_percent, 0.2),
            noise_absolute=self.get(data, "noise_absolute", "shadow", parse_percent, 0.0003),
            examples=self.get(data, "examples", "shadow", _bounded_count(0, MAX_EXAMPLES), 20),
            mismatch_below=self.get(data, "mismatch_below", "shadow", parse_percent, 0.5),
            noise=self.get(data, "noise", "shadow", parse_percent, 0.0),
            noise_samples=self.get(data, "noise_samples", "shadow", _bounded_count(1, MAX_NOISE_SAMPLES), 30),
            compare=self.comparator(data.get("compare")),
        )

    def comparator(self, value: object) -> Any:
        if value is None:
            return None
        from crossfade.compare import from_spec
        from crossfade.registry import ProviderConfigError

        try:
            from_spec(value, "shadow.compare")
        except ProviderConfigError as exc:
            for problem in exc.problems:
                self.problem(problem.path, problem.message)
            return _BAD
        return json.loads(json.dumps(value))

    def dual_write_retry(self, value: object) -> Any:
        data = self.mapping(value, "dual_write_retry", _DUAL_WRITE_RETRY_KEYS, "{attempts: 3, backoff: 50ms}")
        if data is None:
            return _BAD
        return DualWriteRetry(
            attempts=self.get(data, "attempts", "dual_write_retry", _bounded_count(1, MAX_ATTEMPTS), 2),
            backoff=self.get(data, "backoff", "dual_write_retry", _backoff, 0.0),
        )

    def gates(self, value: object) -> Any:
        data = self.mapping(value, "gates", _GATES_KEYS, "{error_rate: {max_increase: 0.5%}}")
        if data is None:
            return _BAD
        parts: dict[str, Any] = {}
        for key, (keys, example, build) in _GATE_READERS.items():
            if key in data:
                gate = self.mapping(data[key], f"gates.{key}", keys, example)
                parts[key] = _BAD if gate is None else build(self, gate, f"gates.{key}")
        return Gates(**parts)

    def triggers(self, value: object, custom: Sequence[Any] = (), named: Sequence[str] = ()) -> Any:
        items = self.sequence(value, "triggers", "[{metric: error_rate, above: 5%, window: 5m}]")
        if items is None:
            return _BAD
        if len(items) > MAX_TRIGGERS:
            self.problem("triggers", f"{len(items)} triggers; at most {MAX_TRIGGERS}")
            return _BAD
        triggers: list[Trigger] = []
        for index, item in enumerate(items):
            path = f"triggers[{index}]"
            data = self.mapping(item, path, _TRIGGER_KEYS, "{metric: error_rate, above: 5%, window: 5m}")
            if data is None:
                continue
            declared = {m.name: m for m in custom}
            metric = self.get(data, "metric", path, _declared_metric(named),
                              example="error_rate")
            below = None
            if metric is _BAD or (metric in named and metric not in declared):
                above = _BAD
            elif metric in declared:
                from crossfade.metricspec import read_custom_threshold

                above, below = read_custom_threshold(self, data, path, declared[metric])
            else:
                above = self.get(data, "above", path, _threshold_reader(metric), example=_threshold_example(metric))
                if "below" in data:
                    self.problem(_join(path, "below"), f"{metric} is watched from above; below is for custom "
                                                       "metrics whose low values are the harm")
            triggers.append(
                Trigger(
                    metric=metric,
                    above=above,
                    window=self.get(data, "window", path, _positive_duration, 300.0),
                    min_samples=self.get(data, "min_samples", path, _samples, 0),
                    for_=self.get(data, "for", path, _positive_duration, None),
                    below=below,
                )
            )
        return tuple(triggers)

    def rollback(self, value: object) -> Any:
        data = self.mapping(value, "rollback", _ROLLBACK_KEYS, "{mode: gradual, steps: [50%, 10%, 0%], every: 1m}")
        if data is None:
            return _BAD
        mode = self.get(data, "mode", "rollback", _choice(ROLLBACK_MODES), "immediate")
        every = self.get(data, "every", "rollback", _positive_duration, 60.0)
        steps: Any = ()
        if "steps" in data:
            items = self.sequence(data["steps"], "rollback.steps", "[50%, 25%, 10%, 0%]")
            steps = _BAD if items is None else self.steps(items)
        if mode == "gradual" and steps == ():
            self.problem("rollback.steps", "a gradual rollback needs steps, e.g. steps: [50%, 25%, 10%, 0%]")
        if mode == "immediate" and steps not in ((), _BAD):
            self.problem("rollback.steps", "steps are only used by mode: gradual; set mode: gradual or drop steps")
        return RollbackPolicy(mode=mode, steps=steps, every=every)

    def steps(self, items: list[Any]) -> Any:
        steps: list[float] = []
        previous: float | None = None
        ok = True
        for index, item in enumerate(items):
            path = f"rollback.steps[{index}]"
            try:
                step = parse_percent(item)
            except ValueError as exc:
                self.problem(path, str(exc))
                ok = False
                continue
            if previous is not None and step >= previous:
                self.problem(
                    path,
                    f"{format_percent(step)} is not below the previous step's {format_percent(previous)}; "
                    "steps strictly decrease",
                )
                ok = False
            if index == len(items) - 1 and step != 0.0:
                self.problem(path, f"the last step must be 0%, not {format_percent(step)}")
                ok = False
            previous = step
            steps.append(step)
        return tuple(steps) if ok else _BAD

    def analysis(self, value: object) -> Any:
        data = self.mapping(value, "analysis", _ANALYSIS_KEYS, "{interval: 30s, confidence: 99%}")
        if data is None:
            return _BAD
        return Analysis(
            interval=self.get(data, "interval", "analysis", _interval, 30.0),
            confidence=self.get(data, "confidence", "analysis", _confidence, 0.99),
            on_nodata=self.get(data, "on_nodata", "analysis", _choice(ON_NODATA), "hold"),
            promote_when=self.get(data, "promote_when", "analysis", _choice(PROMOTE_WHEN), "no_regression"),
            sample_ratio=self.get(data, "sample_ratio", "analysis", _choice(SAMPLE_RATIO), "report"),
            on_inconclusive=self.get(data, "on_inconclusive", "analysis", _choice(ON_INCONCLUSIVE), "hold"),
            max_stage_time=self.get(data, "max_stage_time", "analysis", _positive_duration, None),
            change_share=self.get(data, "change_share", "analysis", _change_share, DEFAULT_CHANGE_SHARE),
        )

    def fallback(self, value: object) -> Any:
        data = self.mapping(value, "fallback", _FALLBACK_KEYS, "{on_error: true, timeout: 5s}")
        if data is None:
            return _BAD
        return Fallback(
            on_error=self.get(data, "on_error", "fallback", _flag, True),
            timeout=self.get(data, "timeout", "fallback", _timeout, None),
        )

    def source(self, value: object) -> Any:
        """The metric source: `{name: {settings}}`, its settings checked by the source itself (the registry)."""
        from crossfade.metrics import REGISTRY
        from crossfade.registry import ProviderConfigError

        if value is None:
            return None
        example = "{prometheus: {url: http://prometheus:9090, preset: istio}}"
        if not isinstance(value, Mapping) or len(value) != 1:
            self.problem("source", f"expected one metric source, e.g. {example}; known: {', '.join(REGISTRY.names())}")
            return _BAD
        (name, settings), = value.items()
        if settings is not None and not isinstance(settings, Mapping):
            self.problem(f"source.{name}", f"expected the source's settings as a mapping, e.g. {example}")
            return _BAD
        try:
            REGISTRY.create(str(name), settings, f"source.{name}")
        except ProviderConfigError as exc:
            for problem in exc.problems:
                self.problem(problem.path, problem.message)
            return _BAD
        return {str(name): dict(settings or {})}

    def keys(self, value: object, path: str) -> Any:
        """An allow or deny list: sticky keys as strings, duplicates dropped, order kept."""
        items = self.sequence(value, path, "[user-42, 1017]")
        if items is None:
            return _BAD
        if len(items) > MAX_KEYS:
            self.problem(path, f"{len(items)} keys; at most {MAX_KEYS}")
            return _BAD
        keys: dict[str, None] = {}
        ok = True
        for index, item in enumerate(items):
            if isinstance(item, bool) or not isinstance(item, str | int) or len(str(item)) > MAX_SHORT_TEXT:
                self.problem(f"{path}[{index}]", f"expected a key as text or a whole number (at most "
                                                 f"{MAX_SHORT_TEXT} characters), got {_kind(item)}")
                ok = False
            else:
                keys[str(item)] = None
        return tuple(keys) if ok else _BAD


def _gate_error_rate(reader: _Reader, data: Mapping[str, Any], path: str) -> ErrorRateGate:
    return ErrorRateGate(max_increase=reader.get(data, "max_increase", path, parse_percent, example="0.5%"))


def _gate_latency(reader: _Reader, data: Mapping[str, Any], path: str) -> LatencyGate:
    return LatencyGate(
        quantile=reader.get(data, "quantile", path, _quantile, 0.95),
        max_ratio=reader.get(data, "max_ratio", path, _ratio, 1.2),
    )


def _gate_cost(reader: _Reader, data: Mapping[str, Any], path: str) -> CostGate:
    return CostGate(max_ratio=reader.get(data, "max_ratio", path, _ratio, example="1.5"))


def _gate_mismatch(reader: _Reader, data: Mapping[str, Any], path: str) -> MismatchGate:
    return MismatchGate(max=reader.get(data, "max", path, parse_percent, example="1%"))


_SPEC_KEYS: Final = (
    "name", "description", "owner", "key", "salt", "stages", "gates", "triggers",
    "on_failure", "rollback", "analysis", "fallback", "shadow", "dual_write_retry", "allow", "deny", "notify",
    "source", "dual_write_after_rollback", "routers", "metrics", "bake",
)  # fmt: skip
_STAGE_KEYS: Final = (
    "name", "traffic", "shadow", "hold", "min_samples", "approval", "shadow_legacy", "noise", "dual_write",
)  # fmt: skip
_SHADOW_KEYS: Final = (
    "timeout", "threads", "max_pending", "noise_relative", "noise_absolute", "examples", "mismatch_below", "noise",
    "noise_samples", "compare",
)  # fmt: skip
_DUAL_WRITE_RETRY_KEYS: Final = ("attempts", "backoff")
_GATES_KEYS: Final = ("error_rate", "latency", "cost", "mismatch_rate", "latency_first_chunk")
_GATE_READERS: Final[dict[str, tuple[tuple[str, ...], str, Callable[[_Reader, Mapping[str, Any], str], Any]]]] = {
    "error_rate": (("max_increase",), "{max_increase: 0.5%}", _gate_error_rate),
    "latency": (("quantile", "max_ratio"), "{quantile: p95, max_ratio: 1.2}", _gate_latency),
    "cost": (("max_ratio",), "{max_ratio: 1.5}", _gate_cost),
    "mismatch_rate": (("max",), "{max: 1%}", _gate_mismatch),
    "latency_first_chunk": (("quantile", "max_ratio"), "{quantile: p95, max_ratio: 1.2}", _gate_latency),
}
_TRIGGER_KEYS: Final = ("metric", "above", "window", "min_samples", "for", "below")
_ROLLBACK_KEYS: Final = ("mode", "steps", "every")
_ANALYSIS_KEYS: Final = (
    "interval", "confidence", "on_nodata", "promote_when", "sample_ratio", "on_inconclusive", "max_stage_time",
    "change_share",
)  # fmt: skip
_FALLBACK_KEYS: Final = ("on_error", "timeout")


# converters: value -> typed value, or ValueError with a message a user can act on


def _text(value: object, limit: int = MAX_TEXT) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected text, got {_kind(value)}")
    if len(value) > limit:
        raise ValueError(f"{len(value):,} characters; at most {limit:,}")
    return value


def _short_text(value: object) -> str:
    return _text(value, MAX_SHORT_TEXT)


def _salt(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int) or value == "":
        raise ValueError(f"expected non-empty text such as checkout-pricing-v2, got {_show(value)}")
    return _text(str(value), MAX_SHORT_TEXT)


def _name(value: object) -> str:
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise ValueError(
            f"{_show(value)} is not a valid name; use 1-63 lowercase letters, digits and hyphens, "
            "starting and ending with a letter or digit, e.g. checkout-pricing"
        )
    return value


def _positive_duration(value: object, limit: float = MAX_DURATION) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError(f"{_show(value)} is not a positive duration; {_DURATION_HINT}")
    if seconds > limit:
        raise ValueError(f"{_show(value)} is longer than {format_duration(limit)}, the most this setting allows")
    return seconds


def _timeout(value: object) -> float:
    return _positive_duration(value, MAX_TIMEOUT)


def _interval(value: object) -> float:
    seconds = _positive_duration(value, DAY)
    if seconds < MIN_INTERVAL:
        raise ValueError(f"{_show(value)} is shorter than {format_duration(MIN_INTERVAL)}; the controller "
                         "looks at most ten times a second")
    return seconds


def _backoff(value: object) -> float:
    seconds = parse_duration(value)
    if seconds > MAX_BACKOFF:
        raise ValueError(f"{_show(value)} is longer than {format_duration(MAX_BACKOFF)}; the retries of a dual "
                         "write run on the request path")
    return seconds


def _samples(value: object) -> int:
    return _bounded_count(0, MAX_COUNT)(value)


def _bounded_count(low: int, high: int) -> Callable[[object], int]:
    def convert(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"{_show(value)} is not a whole number of {low} or more and at most {high:,}")
        return value

    return convert


def _flag(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{_show(value)} is not true or false")
    return value


def _ratio(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise ValueError(
            f"{_show(value)} is not a ratio; write a plain positive number such as 1.5 (candidate / legacy)"
        )
    if not 1e-6 <= value <= MAX_RATIO:
        raise ValueError(f"{_show(value)} is not a usable ratio; pick one between 0.000001 and {MAX_RATIO:,.0f}")
    return float(value)


def _quantile(value: object) -> float:
    if isinstance(value, str) and value.strip() in QUANTILES:
        return QUANTILES[value.strip()]
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < 1:
        return float(value)
    raise ValueError(
        f"{_show(value)} is not a quantile; write one of {', '.join(QUANTILES)} or a fraction such as 0.95"
    )


def _confidence(value: object) -> float:
    fraction = parse_percent(value)
    if not 0.5 < fraction < 1:
        raise ValueError(
            f"{format_percent(fraction)} is not a usable confidence; pick one between 50% and 100%, e.g. 99%"
        )
    return fraction


def _choice(options: Sequence[str]) -> Callable[[object], str]:
    def convert(value: object) -> str:
        if value not in options:
            raise ValueError(f"{_show(value)} is not one of {', '.join(options)}")
        return value  # type: ignore[return-value]

    return convert


def _declared_metric(declared: Sequence[str]) -> Callable[[object], str]:
    from crossfade.metricspec import trigger_metric

    return trigger_metric(declared)  # type: ignore[no-any-return]


def _threshold_reader(metric: str) -> Callable[[object], float]:
    if metric in PERCENT_METRICS:
        return parse_percent
    if metric in LATENCY_METRICS:
        return _timeout
    return _ratio


def _threshold_example(metric: str) -> str:
    return "5%" if metric in PERCENT_METRICS else "2s" if metric in LATENCY_METRICS else "2.0"


# --- JSON Schema -----------------------------------------------------------------------------------------

_DURATION_PATTERN: Final = (
    r"^\s*(?=\d)(\d+(\.\d+)?d)?(\d+(\.\d+)?h)?(\d+(\.\d+)?m(?!s))?(\d+(\.\d+)?s)?(\d+(\.\d+)?ms)?\s*$"
)
_PERCENT_PATTERN: Final = r"^\s*\d+(\.\d+)?\s*%\s*$"


def _source_names() -> list[str]:
    from crossfade.metrics import REGISTRY

    return REGISTRY.names()
def _router_names() -> list[str]:
    from crossfade.routers import ROUTERS

    return ROUTERS.names()


def json_schema() -> dict[str, Any]:
    """A JSON Schema (draft 2020-12) of the spec format, for editors to complete and check spec files."""
    from crossfade.metricspec import json_schema as metrics_schema
    from crossfade.notify import json_schema as notify_schema

    def ref(name: str) -> dict[str, Any]:
        return {"$ref": f"#/$defs/{name}"}

    def obj(description: str, properties: dict[str, Any], required: Sequence[str] = ()) -> dict[str, Any]:
        schema: dict[str, Any] = {
            "type": "object",
            "description": description,
            "properties": properties,
            "additionalProperties": False,
        }
        if required:
            schema["required"] = list(required)
        return schema

    def described(base: str, description: str, **extra: Any) -> dict[str, Any]:
        return {"$ref": f"#/$defs/{base}", "description": description, **extra}

    gate_off = "Leave out to turn this gate off."
    trigger = obj(
        "Rolls back at once when a metric crosses an absolute threshold.",
        {
            "metric": {
                "description": "What to watch: a built-in metric, or a custom one declared under metrics.",
                "anyOf": [{"enum": list(TRIGGER_METRICS)}, {"type": "string", "pattern": METRIC_NAME_PATTERN}],
            },
            "above": {
                "description": "Threshold: a percentage for *_rate, a duration for latency_pNN, a number for *_ratio; "
                "for a custom metric, a percentage for a rate and a number otherwise.",
                "anyOf": [{"type": "number"}, {"type": "string"}],
            },
            "below": {
                "description": "For a custom metric whose low values are the harm: fires below this threshold.",
                "anyOf": [{"type": "number"}, {"type": "string"}],
            },
            "window": described("duration", "Sliding window the metric is measured over.", default="5m"),
            "min_samples": described("count", "Candidate calls needed in the window before it may fire.", default=0),
            "for": described("duration", "How long the threshold must stay crossed before it fires."),
        },
        ["metric"],
    )
    trigger["oneOf"] = [{"required": ["above"]}, {"required": ["below"]}]
    trigger["allOf"] = [
        {
            "if": {"properties": {"metric": {"enum": list(metrics)}}, "required": ["metric"]},
            "then": {"properties": {"above": ref(kind)}},
        }
        for metrics, kind in ((PERCENT_METRICS, "percent"), (LATENCY_METRICS, "duration"), (RATIO_METRICS, "ratio"))
    ]
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://crossfade.dev/schemas/spec.json",
        "title": "crossfade migration spec",
        "description": "Moves live traffic from a legacy implementation to a candidate in stages, with gates "
        "and automatic rollback.",
        "type": "object",
        "additionalProperties": False,
        "required": ["name", "stages"],
        "properties": {
            "name": described("name", "Migration name, unique per backend."),
            "description": {"type": "string", "description": "What is being migrated, for people."},
            "owner": {"type": "string", "description": "Who answers for this migration."},
            "key": {"type": "string", "description": "What the sticky key is (documentation only), e.g. customer id."},
            "salt": {
                "type": ["string", "integer"],
                "minLength": 1,
                "description": "Bucketing salt; defaults to name. Change it to reshuffle which keys are enrolled.",
            },
            "stages": {
                "type": "array",
                "minItems": 1,
                "description": "The ramp. Traffic never decreases; the last stage is 100%.",
                "items": obj(
                    "One step of the ramp.",
                    {
                        "name": described("name", "Stage name; defaults to stage-N by position."),
                        "traffic": described("percent", "Share of traffic the candidate serves."),
                        "shadow": described(
                            "percent", "Share of legacy calls also run on the candidate, off the path.", default="0%"
                        ),
                        "hold": described("duration", "Minimum time in the stage before promotion."),
                        "min_samples": described(
                            "count", "Candidate calls needed before the gates may pass.", default=0
                        ),
                        "approval": {
                            "type": "boolean",
                            "default": False,
                            "description": "Wait for a human to approve promotion out of this stage.",
                        },
                        "shadow_legacy": described(
                            "percent", "Share of candidate calls also run on legacy, off the path.", default="0%"
                        ),
                        "noise": described(
                            "percent", "Share of shadow runs that run legacy twice, to measure noise.", default="0%"
                        ),
                        "dual_write": {
                            "type": "boolean",
                            "default": False,
                            "description": "write() call sites write both sides, the authoritative one first.",
                        },
                    },
                    ["traffic"],
                ),
            },
            "gates": obj(
                "Candidate compared with legacy before each promotion. Leave out for the defaults "
                "(error_rate +1%, p95 latency x1.25); {} for no gates.",
                {
                    "error_rate": obj(
                        f"Error rate may rise by at most max_increase (absolute). {gate_off}",
                        {"max_increase": described("percent", "Allowed absolute increase, e.g. 0.5%.")},
                        ["max_increase"],
                    ),
                    "latency": obj(
                        f"Latency quantile may grow by at most max_ratio. {gate_off}",
                        {
                            "quantile": {
                                "description": "Which quantile to compare.",
                                "default": "p95",
                                "anyOf": [
                                    {"enum": list(QUANTILES)},
                                    {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
                                ],
                            },
                            "max_ratio": described("ratio", "Largest allowed candidate / legacy ratio.", default=1.2),
                        },
                    ),
                    "cost": obj(
                        f"Mean cost per call may grow by at most max_ratio. {gate_off}",
                        {"max_ratio": described("ratio", "Largest allowed candidate / legacy ratio.")},
                        ["max_ratio"],
                    ),
                    "mismatch_rate": obj(
                        f"Share of shadowed calls whose output differs from legacy. {gate_off}",
                        {"max": described("percent", "Largest allowed mismatch rate.")},
                        ["max"],
                    ),
                    "latency_first_chunk": obj(
                        f"Streams' latency to their first chunk may grow by at most max_ratio. {gate_off}",
                        {
                            "quantile": {
                                "description": "Which quantile to compare.",
                                "default": "p95",
                                "anyOf": [
                                    {"enum": list(QUANTILES)},
                                    {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
                                ],
                            },
                            "max_ratio": described("ratio", "Largest allowed candidate / legacy ratio.", default=1.2),
                        },
                    ),
                },
            ),
            "triggers": {"type": "array", "items": trigger, "description": "Instant rollback on absolute thresholds."},
            "metrics": metrics_schema(),
            "on_failure": {"enum": list(ON_FAILURE), "default": "rollback", "description": "What a failed gate does."},
            "rollback": obj(
                "How traffic goes back to legacy.",
                {
                    "mode": {"enum": list(ROLLBACK_MODES), "default": "immediate"},
                    "steps": {
                        "type": "array",
                        "items": ref("percent"),
                        "description": "For gradual: strictly decreasing traffic levels ending at 0%.",
                    },
                    "every": described("duration", "Time between gradual steps.", default="1m"),
                },
            ),
            "analysis": obj(
                "How the judge looks at the evidence.",
                {
                    "interval": described("duration", "How often the controller evaluates.", default="30s"),
                    "confidence": described(
                        "percent", "Confidence of gate verdicts, between 50% and 100%.", default="99%"
                    ),
                    "on_nodata": {
                        "enum": list(ON_NODATA),
                        "default": "hold",
                        "description": "What to do while there is no data: keep waiting, or pause.",
                    },
                    "promote_when": {
                        "enum": list(PROMOTE_WHEN),
                        "default": "no_regression",
                        "description": "no_regression: no gate shows harm; "
                        "proven: every gate shows the candidate within bounds.",
                    },
                    "sample_ratio": {
                        "enum": list(SAMPLE_RATIO),
                        "default": "report",
                        "description": "When calls per arm do not match the traffic split (p < 0.001): report "
                        "it, or hold the stage (for keys of even popularity).",
                    },
                    "on_inconclusive": {
                        "enum": list(ON_INCONCLUSIVE),
                        "default": "hold",
                        "description": "After max_stage_time with a gate's estimate still past its limit (or, "
                        "with proven, a gate not proven): keep holding, promote, or pause.",
                    },
                    "max_stage_time": described(
                        "duration", "How long a stage may be extended while a gate is undecided (none: no limit)."
                    ),
                    **_change_detection_schema(),
                },
            ),
            "fallback": obj(
                "What happens when a candidate call fails.",
                {
                    "on_error": {
                        "type": "boolean",
                        "default": True,
                        "description": "Retry a failed candidate call on legacy.",
                    },
                    "timeout": described("duration", "Longest a candidate call may take."),
                },
            ),
            "shadow": obj(
                "How shadow runs are carried out, off the request path.",
                {
                    "timeout": described("duration", "Longest a shadow run may take.", default="5s"),
                    "threads": {
                        "type": "integer", "minimum": 1, "maximum": MAX_THREADS, "default": 4,
                        "description": "Worker threads for shadow runs of synchronous call sites.",
                    },
                    "max_pending": {
                        "type": "integer", "minimum": 1, "maximum": MAX_PENDING, "default": 64,
                        "description": "Shadow runs waiting at most; further ones are dropped and counted.",
                    },
                    "noise_relative": described(
                        "percent", "|raw - noise| / (raw + noise) a field must exceed to be a mismatch.", default="20%"
                    ),
                    "noise_absolute": described(
                        "percent", "|raw - noise| rate a field must exceed to be a mismatch.", default="0.03%"
                    ),
                    "examples": described("count", "Newest mismatch examples kept per field.", default=20),
                    "mismatch_below": described(
                        "percent", "A graded comparison's score (compare= returning 0..1) below this is a mismatch.",
                        default=0.5,
                    ),
                    "noise": described(
                        "percent", "Noise sampling share of every shadowing stage that sets none.", default="0%"
                    ),
                    "noise_samples": {
                        "type": "integer", "minimum": 1, "maximum": MAX_NOISE_SAMPLES, "default": 30,
                        "description": "Legacy-vs-legacy samples a stage needs before its comparisons are judged.",
                    },
                    "compare": {
                        "description": "A comparator (crossfade.compare) by name, or {name: {settings}}: "
                                       "equal, text, structure, embedding.",
                        "anyOf": [
                            {"enum": ["equal", "text", "structure", "embedding"]},
                            {
                                "type": "object", "minProperties": 1, "maxProperties": 1,
                                "additionalProperties": False, "description": "One comparator with its settings.",
                                "properties": {name: {"description": f"The {name} comparator's settings."}
                                               for name in ("equal", "text", "structure", "embedding")},
                            },
                        ],
                    },
                },
            ),
            "dual_write_retry": obj(
                "How the non-authoritative side of a dual write is retried.",
                {
                    "attempts": {
                        "type": "integer", "minimum": 1, "maximum": MAX_ATTEMPTS, "default": 2,
                        "description": "Tries in all, the first included.",
                    },
                    "backoff": described("duration", "Pause between tries.", default="0s"),
                },
            ),
            **_bake_schema(),
            "dual_write_after_rollback": {
                "type": "boolean", "default": False,
                "description": "Keep writing both sides after a rollback or abort from a dual_write stage, so the "
                               "candidate's store stays current for the next attempt (writes go to legacy first).",
            },
            "allow": {
                "type": "array",
                "items": {"type": ["string", "integer"]},
                "description": "Keys always sent to the candidate.",
            },
            "deny": {
                "type": "array",
                "items": {"type": ["string", "integer"]},
                "description": "Keys always kept on legacy.",
            },
            "notify": {
                "type": "array",
                "description": "Who is told of what: each target names one channel (webhook, slack, pagerduty, "
                               "email) with its settings, the kinds of events it wants (`events`, default all: "
                               "rolled_back, rollback_started, approval_requested, paused, completed, restarted, "
                               "stepped_back, gate_failed, trigger_fired, router_failed, source_failed) and an "
                               "optional `name`. Secrets only by environment variable name (`*_env`).",
                "items": notify_schema(),
            },
            "source": {
                "type": "object", "minProperties": 1, "maxProperties": 1, "additionalProperties": False,
                "description": "Where the judge reads each arm's metrics: one source by name with its settings, "
                "e.g. {prometheus: {url: http://prometheus:9090, preset: istio}}; telemetry (the default) reads "
                "what SDK hosts and clients post. Each source checks its own settings.",
                "properties": {name: {"description": f"The settings of the {name} metric source (checked by it)."}
                               for name in _source_names()},
            },
            "routers": {
                "type": "array",
                "description": "Traffic routers that make a mesh, gateway or proxy follow the migration, "
                               "each {name: {settings}} (sdk, nginx, istio, gateway_api); default: the SDK.",
                "items": {
                    "type": "object", "minProperties": 1, "maxProperties": 1, "additionalProperties": False,
                    "description": "One router: its name, and its settings (checked by the router's own module).",
                    "properties": {name: {"type": ["object", "null"]} for name in _router_names()},
                },
            },
        },
        "$defs": {
            "name": {
                "type": "string",
                "pattern": NAME_PATTERN,
                "description": "1-63 lowercase letters, digits and hyphens, "
                "starting and ending with a letter or digit.",
            },
            "percent": {
                "description": "A percentage such as 2.5%, or a fraction between 0 and 1.",
                "anyOf": [
                    {"type": "string", "pattern": _PERCENT_PATTERN},
                    {"type": "number", "minimum": 0, "maximum": 1},
                ],
            },
            "duration": {
                "description": "A duration such as 250ms, 30s, 5m, 1h30m or 1d, or a number of seconds.",
                "anyOf": [
                    {"type": "string", "pattern": _DURATION_PATTERN},
                    {"type": "number", "exclusiveMinimum": 0},
                ],
            },
            "ratio": {"type": "number", "minimum": 1e-6, "maximum": MAX_RATIO,
                      "description": "Candidate / legacy, e.g. 1.5."},
            "count": {"type": "integer", "minimum": 0, "maximum": MAX_COUNT},
        },
    }


# --- the example for `crossfade init` --------------------------------------------------------------------

EXAMPLE: Final = """\
# A crossfade migration: moves live traffic from a legacy implementation to a candidate, stage by stage.
# Percentages may be written 10% or as fractions (0.1); durations as 250ms, 30s, 5m, 1h30m or 1d.
name: checkout-pricing            # [a-z0-9-], unique per backend
description: Move pricing from the rules engine to the new service
owner: payments-team
key: customer id                  # what the sticky key is (documentation only)
salt: checkout-pricing            # default: name; keeps buckets stable across restarts and hosts

# The ramp. Each stage sends `traffic` of the keys to the candidate; raising it never moves an enrolled
# key back. `shadow` also runs the candidate, off the request path, on that share of legacy calls.
# `noise` runs legacy twice on that share of shadow runs, so fields legacy itself answers differently each time
# (ids, timestamps) are reported as noise, not as mismatches. `shadow_legacy` runs legacy in the shadow of
# candidate calls while legacy is ramped down; `dual_write` writes both sides at `write` call sites.
# `hold` is the least time in a stage; `min_samples` the least candidate calls; `approval` waits for a human.
stages:
  - {name: shadow, traffic: 0%, shadow: 100%, noise: 10%, dual_write: true, hold: 10m}
  - {name: canary-1, traffic: 1%, hold: 30m, min_samples: 500}
  - {name: canary-10, traffic: 10%, hold: 1h}
  - {name: rollout-25, traffic: 25%, hold: 2h, approval: true}
  - {name: rollout-50, traffic: 50%, shadow_legacy: 10%, hold: 4h}
  - {name: complete, traffic: 100%}   # the last stage is always 100%

# Candidate compared with legacy, with statistics that stay valid however often they are looked at.
# Leave `gates` out for the defaults (error_rate +1%, p95 latency x1.25); `gates: {}` turns them all off.
gates:
  error_rate: {max_increase: 0.5%}          # absolute: 1.0% -> 1.5% is the most allowed
  latency: {quantile: p95, max_ratio: 1.2}  # p50 | p90 | p95 | p99
  cost: {max_ratio: 1.5}
  mismatch_rate: {max: 1%}                  # share of shadowed calls whose output differs

# Instant rollback on absolute thresholds, without waiting for a gate's verdict.
triggers:
  - {metric: error_rate, above: 5%, window: 5m, min_samples: 100}
  - {metric: latency_p95_ratio, above: 2.0, for: 3m}

# Custom metrics the call site records (obs.metric, metrics=, mig.record), judged like the built-in gates;
# triggers may watch them too ({metric: lost, above: 0}). similarity: scores of graded comparisons.
# metrics:
#   delivery: {rate: delivered / sent, min: 99.9%}
#   lost: {kind: count, max: 0}
#   similarity: {quantile: p10, min: 0.85}

on_failure: rollback              # when a gate fails: rollback | step_back | pause
rollback: {mode: gradual, steps: [50%, 25%, 10%, 0%], every: 1m}   # or {mode: immediate}
analysis: {interval: 30s, confidence: 99%, on_nodata: hold, promote_when: no_regression}
# A stage whose gate estimate is past its limit without the evidence to fail yet is extended; add e.g.
# `max_stage_time: 12h, on_inconclusive: pause` to analysis to hand it to a person after a while.
fallback: {on_error: true, timeout: 5s}   # retry failed candidate calls on legacy
shadow: {timeout: 2s, threads: 4, max_pending: 64}   # shadow runs: bounded, dropped (and counted) when full
dual_write_retry: {attempts: 3, backoff: 50ms}        # the non-authoritative side of a dual write
dual_write_after_rollback: true   # a rollback keeps both stores written (legacy first)

allow: [test_agent_alpha]         # keys always sent to the candidate
deny: []                          # keys always kept on legacy
notify:                           # who is told of what; secrets only by environment variable name
  - name: ci
    slack: {url_env: SLACK_WEBHOOK_URL, channel: "#ci-migration"}
    events: [rolled_back, rollback_started, gate_failed, approval_requested, completed]
# Where the judge reads each arm's metrics (default: the telemetry SDK hosts post). When a mesh splits the
# traffic, read Prometheus instead (presets: istio, envoy, nginx; or your own per-arm PromQL queries):
# source: {prometheus: {url: "http://prometheus:9090", preset: istio, arms: {legacy: v1, candidate: v2}}}
# routers: where traffic is split outside the app (default: the SDK in the app), e.g.
#   - nginx: {conf: /etc/nginx/conf.d/checkout.conf, listen: 127.0.0.1:8080, key: "header:X-User-Id",
#             legacy: 127.0.0.1:8001, candidate: 127.0.0.1:8002}
"""
"""The commented example spec that ``crossfade init`` writes."""
