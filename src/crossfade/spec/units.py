"""The spec's units and value types: durations, percentages, names, counts, each one converter and one schema.

A value type is an ``Annotated`` alias whose ``Check`` carries the converter (plain value in, typed value out,
or ValueError with a message a user can act on), the JSON Schema it is written as and a label for the docs.
Pydantic reads the ``Check`` when it validates a spec (`crossfade.spec.validation`); nothing here imports it,
so ``import crossfade`` stays light.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from typing import Annotated, Any, Final


__all__ = [
    "NAME_PATTERN",
    "Check",
    "format_duration",
    "format_percent",
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
HOLD_PAST_LIMIT: Final = ("last_promotion", "every_stage")
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
_PERCENT_HINT: Final = "write e.g. 10%, 2.5% or the fraction 0.025"
DURATION_PATTERN: Final = (
    r"^\s*(?=\d)(\d+(\.\d+)?d)?(\d+(\.\d+)?h)?(\d+(\.\d+)?m(?!s))?(\d+(\.\d+)?s)?(\d+(\.\d+)?ms)?\s*$"
)
PERCENT_PATTERN: Final = r"^\s*\d+(\.\d+)?\s*%\s*$"

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
DEFAULT_CHANGE_SHARE: Final = 0.25
MAX_CHANGE_SHARE: Final = 0.5


# --- durations and percentages ---------------------------------------------------------------------------


def parse_duration(value: object) -> float:
    """Seconds in a duration: ``250ms``, ``30s``, ``5m``, ``1h30m``, ``1d``, ``1.5s``; a bare number is seconds.

    Raises ValueError, with an example of a valid value, for anything else or a negative duration.
    """
    if isinstance(value, bool):
        raise ValueError(f"{show(value)} is not a duration; {_DURATION_HINT}")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ValueError(f"{show(value)} is not a duration; {_DURATION_HINT}")
        if value < 0:
            raise ValueError(f"{show(value)} is negative; a duration is 0 or more, {_DURATION_HINT}")
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        if _BARE_NUMBER_RE.fullmatch(text):
            return parse_duration(float(Decimal(text)))
        match = _DURATION_RE.fullmatch(text)
        if match and any(match.groups()):
            parts = match.groupdict().items()
            return float(sum(Decimal(number) * _DURATION_UNITS[unit] for unit, number in parts if number))
    raise ValueError(f"{show(value)} is not a duration; {_DURATION_HINT}")


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
        raise ValueError(f"{show(value)} is not a percentage; {_PERCENT_HINT}")
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{show(value)} is not a percentage; {_PERCENT_HINT}")
    if value < 0:
        raise ValueError(f"{show(value)} is negative; {_PERCENT_HINT}")
    if value > 1:
        raise ValueError(
            f"{show(value)} is not a fraction between 0 and 1; write {show(value)}% if you mean a percentage"
        )
    return float(value)


def format_percent(fraction: float) -> str:
    """A fraction as percentage text: ``0.025`` -> ``"2.5%"``, ``0.1`` -> ``"10%"``, ``0.0001`` -> ``"0.01%"``."""
    # Rounding to 10 places hides float noise such as 0.1 * 100 == 10.000000000000002.
    return f"{_plain(round(fraction * 100, 10))}%"


def _plain(number: float) -> str:
    """A number in positional notation without trailing zeros (never ``1e-05``), so it parses back."""
    return f"{number:.10f}".rstrip("0").rstrip(".")


def show(value: object) -> str:
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


_KIND: Final = {str: "text", bool: "true/false", int: "a number", float: "a number"}


def kind(value: object) -> str:
    """What a value is, in a user's words: text, a number, a mapping, a list, nothing (null)."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return _KIND.get(type(value), type(value).__name__)


# --- the value types -------------------------------------------------------------------------------------


class Check:
    """How one value type is read (``convert``), written in JSON Schema (``schema``) and named in the docs.

    ``schema`` may be ``{"unit": name}``: a reference to a shared definition of `UNITS`. With ``with_data``
    the converter also gets the fields of the same section read before it (a trigger's threshold takes the
    unit of its metric).
    """

    __slots__ = ("convert", "schema", "label", "with_data")

    def __init__(self, convert: Callable[..., Any], schema: dict[str, Any] | Callable[[], dict[str, Any]],
                 label: str, *,
                 with_data: bool = False) -> None:
        self.convert = convert
        self.schema = schema
        self.label = label
        self.with_data = with_data

    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> Any:
        from crossfade.spec.validation import check_schema

        return check_schema(self)

    def __get_pydantic_json_schema__(self, core_schema: Any, handler: Any) -> dict[str, Any]:
        return self.schema() if callable(self.schema) else dict(self.schema)


UNITS: Final[dict[str, dict[str, Any]]] = {
    "name": {
        "type": "string",
        "pattern": NAME_PATTERN,
        "description": "1-63 lowercase letters, digits and hyphens, starting and ending with a letter or digit.",
    },
    "percent": {
        "description": "A percentage such as 2.5%, or a fraction between 0 and 1.",
        "anyOf": [{"type": "string", "pattern": PERCENT_PATTERN}, {"type": "number", "minimum": 0, "maximum": 1}],
    },
    "duration": {
        "description": "A duration such as 250ms, 30s, 5m, 1h30m or 1d, or a number of seconds.",
        "anyOf": [{"type": "string", "pattern": DURATION_PATTERN}, {"type": "number", "exclusiveMinimum": 0}],
    },
    "ratio": {"type": "number", "minimum": 1e-6, "maximum": MAX_RATIO, "description": "Candidate / legacy, e.g. 1.5."},
    "count": {"type": "integer", "minimum": 0, "maximum": MAX_COUNT},
}
"""The shared definitions (``$defs``) of the JSON Schema, one per unit."""


def _text(value: object, limit: int = MAX_TEXT) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected text, got {kind(value)}")
    if len(value) > limit:
        raise ValueError(f"{len(value):,} characters; at most {limit:,}")
    return value


def _short_text(value: object) -> str:
    return _text(value, MAX_SHORT_TEXT)


def _salt(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int) or value == "":
        raise ValueError(f"expected non-empty text such as checkout-pricing-v2, got {show(value)}")
    return _text(str(value), MAX_SHORT_TEXT)


def _name(value: object) -> str:
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise ValueError(
            f"{show(value)} is not a valid name; use 1-63 lowercase letters, digits and hyphens, "
            "starting and ending with a letter or digit, e.g. checkout-pricing"
        )
    return value


def _positive_duration(value: object, limit: float = MAX_DURATION) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError(f"{show(value)} is not a positive duration; {_DURATION_HINT}")
    if seconds > limit:
        raise ValueError(f"{show(value)} is longer than {format_duration(limit)}, the most this setting allows")
    return seconds


def timeout(value: object) -> float:
    """A positive duration of at most an hour."""
    return _positive_duration(value, MAX_TIMEOUT)


def _interval(value: object) -> float:
    seconds = _positive_duration(value, DAY)
    if seconds < MIN_INTERVAL:
        raise ValueError(f"{show(value)} is shorter than {format_duration(MIN_INTERVAL)}; the controller "
                         "looks at most ten times a second")
    return seconds


def _backoff(value: object) -> float:
    seconds = parse_duration(value)
    if seconds > MAX_BACKOFF:
        raise ValueError(f"{show(value)} is longer than {format_duration(MAX_BACKOFF)}; the retries of a dual "
                         "write run on the request path")
    return seconds


def _bake(value: object) -> float:
    """A bake time: a duration, 0 for none."""
    seconds = parse_duration(value)
    if seconds < 0:
        raise ValueError(f"{show(value)} is negative; give how long the last stage is judged, e.g. 1h, or 0")
    if seconds > MAX_DURATION:
        raise ValueError(f"{show(value)} is longer than {format_duration(MAX_DURATION)}, the most bake allows")
    return seconds


def _change_share(value: object) -> float:
    """The share of alpha for change detection: a percent from 0% (off) to 50%."""
    share = parse_percent(value)
    if not 0.0 <= share <= MAX_CHANGE_SHARE:
        raise ValueError(f"{format_percent(share)} is not a usable share; pick one from 0% (no change detection) "
                         f"to {format_percent(MAX_CHANGE_SHARE)}, e.g. 25%")
    return share


def _bounded_count(low: int, high: int) -> Callable[[object], int]:
    def convert(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"{show(value)} is not a whole number of {low} or more and at most {high:,}")
        return value

    return convert


def _flag(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{show(value)} is not true or false")
    return value


def ratio(value: object) -> float:
    """A plain positive number, candidate / legacy."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise ValueError(
            f"{show(value)} is not a ratio; write a plain positive number such as 1.5 (candidate / legacy)"
        )
    if not 1e-6 <= value <= MAX_RATIO:
        raise ValueError(f"{show(value)} is not a usable ratio; pick one between 0.000001 and {MAX_RATIO:,.0f}")
    return float(value)


def _quantile(value: object) -> float:
    if isinstance(value, str) and value.strip() in QUANTILES:
        return QUANTILES[value.strip()]
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < 1:
        return float(value)
    raise ValueError(
        f"{show(value)} is not a quantile; write one of {', '.join(QUANTILES)} or a fraction such as 0.95"
    )


def _confidence(value: object) -> float:
    fraction = parse_percent(value)
    if not 0.5 < fraction < 1:
        raise ValueError(
            f"{format_percent(fraction)} is not a usable confidence; pick one between 50% and 100%, e.g. 99%"
        )
    return fraction


def threshold_example(metric: object) -> str:
    """How a trigger's threshold is written for ``metric``: a percentage, a duration or a ratio."""
    return "5%" if metric in PERCENT_METRICS else "2s" if metric in LATENCY_METRICS else "2.0"


def parse_key(value: object) -> str:
    """A sticky key of an allow or deny list, as text."""
    if isinstance(value, bool) or not isinstance(value, str | int) or len(str(value)) > MAX_SHORT_TEXT:
        raise ValueError(f"expected a key as text or a whole number (at most {MAX_SHORT_TEXT} characters), "
                         f"got {kind(value)}")
    return str(value)


def choice(options: Sequence[str]) -> Check:
    """A value that is one of ``options``."""

    def convert(value: object) -> str:
        if value not in options:
            raise ValueError(f"{show(value)} is not one of {', '.join(options)}")
        return value  # type: ignore[return-value]

    return Check(convert, {"enum": list(options)}, f"one of {', '.join(options)}")


def count(low: int, high: int) -> Check:
    """A whole number from ``low`` to ``high``."""
    return Check(_bounded_count(low, high), {"type": "integer", "minimum": low, "maximum": high},
                 f"whole number, {low} to {high:,}")


Text = Annotated[str, Check(_text, {"type": "string", "maxLength": MAX_TEXT}, "text")]
ShortText = Annotated[str, Check(_short_text, {"type": "string", "maxLength": MAX_SHORT_TEXT}, "text")]
Salt = Annotated[str, Check(_salt, {"type": ["string", "integer"], "minLength": 1}, "text or a whole number")]
Name = Annotated[str, Check(_name, {"unit": "name"}, "name (a DNS label)")]
Flag = Annotated[bool, Check(_flag, {"type": "boolean"}, "true or false")]
Percent = Annotated[float, Check(parse_percent, {"unit": "percent"}, "percent")]
Confidence = Annotated[float, Check(_confidence, {"unit": "percent"}, "percent, between 50% and 100%")]
Duration = Annotated[float, Check(_positive_duration, {"unit": "duration"}, "duration")]
OptionalDuration = Annotated[float | None, Check(_positive_duration, {"unit": "duration"}, "duration")]
Timeout = Annotated[float, Check(timeout, {"unit": "duration"}, "duration, at most 1h")]
OptionalTimeout = Annotated[float | None, Check(timeout, {"unit": "duration"}, "duration, at most 1h")]
Interval = Annotated[float, Check(_interval, {"unit": "duration"}, "duration, 100ms to 1d")]
Bake = Annotated[float, Check(_bake, {"anyOf": [{"type": "string", "pattern": DURATION_PATTERN},
                                                  {"type": "number", "minimum": 0}]}, "duration, 0 for none")]
ChangeShare = Annotated[float, Check(_change_share, {"unit": "percent"}, "percent, 0% to 50%")]
Backoff = Annotated[float, Check(_backoff, {"unit": "duration"}, "duration, at most 1m")]
Samples = Annotated[int, Check(_bounded_count(0, MAX_COUNT), {"unit": "count"}, "whole number")]
Ratio = Annotated[float, Check(ratio, {"unit": "ratio"}, "ratio (candidate / legacy)")]
Quantile = Annotated[float, Check(
    _quantile,
    {"anyOf": [{"enum": list(QUANTILES)}, {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1}]},
    "p50, p90, p95, p99 or a fraction",
)]
Key = Annotated[str, Check(parse_key, {"type": ["string", "integer"]}, "text or a whole number")]


# --- custom metrics --------------------------------------------------------------------------------------

METRIC_NAME_PATTERN: Final = r"^[a-z][a-z0-9_]{0,62}$"
"""What a custom metric's name looks like: a Prometheus label value and a YAML key without quoting."""
MAX_METRICS: Final = 64
"""Custom metrics one spec (and one telemetry cell) may hold."""
_METRIC_NAME_RE: Final = re.compile(METRIC_NAME_PATTERN)
_MAX_AMOUNT: Final = 1e18


def valid_metric_name(name: object) -> bool:
    """Whether `name` may name a custom metric (METRIC_NAME_PATTERN)."""
    return isinstance(name, str) and _METRIC_NAME_RE.match(name) is not None


def amount(value: object) -> float:
    """A limit in a metric's own unit: a number, or a percentage (`2%` is 0.02)."""
    if isinstance(value, str) and value.strip().endswith("%"):
        return parse_percent(value)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
            or abs(value) > _MAX_AMOUNT:
        raise ValueError(f"{show(value)} is not a limit; write a number such as 0.85 or 250, or a percentage "
                         "such as 99.9%")
    return float(value)
