"""The spec's `metrics:` section: custom metrics a call site records (delivered, lost, a similarity score), how
each is judged, and its part of the JSON Schema. Kept apart from spec.py, which calls it while reading a spec.

    metrics:
      delivery: {rate: delivered / sent, min: 99.9%, max_decrease: 0.1%}   # bad: low, inferred from its gates
      lost: {kind: count, max: 0}
      tokens: {kind: mean, max_ratio: 1.2}
      similarity: {quantile: p10, min: 0.85}                              # graded comparisons (built in)

A metric's kind is `count` (the sum of its values: lost messages), `rate` (the sum of one metric over the sum
of another, or over `calls`), `mean` (the mean of its values; the default) or `quantile` (`quantile: p10`).
Each gate bounds one side: `max_increase`, `max_ratio` and `max` guard against values too high;
`max_decrease`, `min_ratio` and `min` against values too low. `bad: high | low` says which side is harmful and
must agree with the gates (it is inferred from them when left out). Relative gates compare the candidate with
legacy; `min` and `max` bound the candidate alone.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from crossfade.spec import (
    TRIGGER_METRICS,
    _BAD,
    _choice,
    _join,
    _kind,
    _ratio,
    _show,
    format_percent,
    parse_percent,
)
from crossfade.telemetry import MAX_METRICS, METRIC_NAME_PATTERN, valid_metric_name

if TYPE_CHECKING:
    from crossfade.spec import _Reader

KINDS: Final = ("count", "rate", "mean", "quantile")
BAD: Final = ("high", "low")
SIMILARITY: Final = "similarity"
"""The built-in metric a graded comparison (`compare=` returning a score in [0, 1]) records for the candidate."""
CALLS: Final = "calls"
"""The denominator of a per-call rate (`rate: lost / calls`): the arm's calls."""
HIGH_GATES: Final = ("max_increase", "max_ratio", "max")
"""Gates that fail a candidate whose value is too high."""
LOW_GATES: Final = ("max_decrease", "min_ratio", "min")
"""Gates that fail a candidate whose value is too low (floor gates: a decrease is the harm)."""
RELATIVE_GATES: Final = ("max_increase", "max_decrease", "max_ratio", "min_ratio")
GATE_KEYS: Final = ("max_increase", "max_decrease", "max_ratio", "min_ratio", "min", "max")
_KEYS: Final = ("kind", "rate", "quantile", "bad", *GATE_KEYS, "description")
_EXAMPLE: Final = "{rate: delivered / sent, min: 99.9%}"
_MAX_AMOUNT: Final = 1e18


@dataclass(frozen=True, slots=True)
class CustomMetric:
    """One declared custom metric: what it is computed from, which side is bad, and its gates (None: off).

    For a `rate`, limits are fractions (`min: 99.9%` is 0.999) and the metric is `numerator / denominator`
    summed over the calls; otherwise limits are in the metric's own unit. `quantile` is set for kind quantile.
    """

    name: str
    kind: str = "mean"
    bad: str = "high"
    numerator: str = ""
    denominator: str = ""
    quantile: float | None = None
    max_increase: float | None = None
    max_decrease: float | None = None
    max_ratio: float | None = None
    min_ratio: float | None = None
    min: float | None = None
    max: float | None = None
    description: str = ""

    @property
    def gates(self) -> tuple[tuple[str, float], ...]:
        """(gate key, limit) of each gate set, in a fixed order."""
        return tuple((key, getattr(self, key)) for key in GATE_KEYS if getattr(self, key) is not None)

    @property
    def recorded(self) -> tuple[str, ...]:
        """The recorded metric names this one is computed from."""
        if self.kind == "rate":
            return (self.numerator,) if self.denominator == CALLS else (self.numerator, self.denominator)
        return (self.name,)

    @property
    def label(self) -> str:
        """How people read the metric: `delivery (delivered / sent)`, `similarity p10`, `lost total`."""
        if self.kind == "rate":
            return f"{self.name} ({self.numerator} / {self.denominator})"
        if self.kind == "quantile":
            return f"{self.name} p{_plain(self.quantile * 100)}"  # type: ignore[operator]
        return f"{self.name} total" if self.kind == "count" else f"{self.name} mean"

    def to_dict(self) -> dict[str, Any]:
        """The canonical plain form (`load_spec` reads it back to an equal metric)."""
        out: dict[str, Any] = {"kind": self.kind, "bad": self.bad}
        if self.kind == "rate":
            out["rate"] = f"{self.numerator} / {self.denominator}"
        if self.quantile is not None:
            out["quantile"] = self.quantile
        out.update(self.gates)
        if self.description:
            out["description"] = self.description
        return out


def _plain(number: float) -> str:
    return f"{number:.6g}"


def read_metrics(reader: _Reader, value: object) -> Any:
    """The `metrics:` section as CustomMetrics, every problem recorded on `reader`; _BAD when unusable."""
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        reader.problem("metrics", f"expected a mapping of metric names to settings, e.g. {{delivery: {_EXAMPLE}}}; "
                                  f"got {_kind(value)}")
        return _BAD
    if len(value) > MAX_METRICS:
        reader.problem("metrics", f"{len(value)} metrics; at most {MAX_METRICS}")
        return _BAD
    metrics = []
    ok = True
    for name, item in value.items():
        path = f"metrics.{name}"
        if not valid_metric_name(name):
            reader.problem(path, f"{_show(name)} is not a metric name; use lowercase letters, digits and _, "
                                 "starting with a letter (at most 63), e.g. delivered")
            ok = False
            continue
        if name in TRIGGER_METRICS or name == CALLS:
            reader.problem(path, f"{name!r} is a built-in metric; give yours another name")
            ok = False
            continue
        metric = _read_metric(reader, name, item, path)
        if metric is _BAD:
            ok = False
        else:
            metrics.append(metric)
    return tuple(metrics) if ok else _BAD


def _read_metric(reader: _Reader, name: str, item: object, path: str) -> Any:
    data = reader.mapping(item if item is not None else {}, path, _KEYS, _EXAMPLE)
    if data is None:
        return _BAD
    before = len(reader.problems)
    kind = reader.get(data, "kind", path, _choice(KINDS), None)
    numerator = denominator = ""
    if "rate" in data:
        parts = reader.get(data, "rate", path, _rate_parts)
        if parts is not _BAD:
            numerator, denominator = parts
        if kind not in (None, "rate", _BAD):
            reader.problem(_join(path, "rate"), f"a {kind} metric has no numerator / denominator; drop rate, or "
                                                "set kind: rate")
        kind = "rate"
    quantile = None
    if "quantile" in data:
        quantile = reader.get(data, "quantile", path, _metric_quantile)
        if kind not in (None, "quantile", _BAD):
            reader.problem(_join(path, "quantile"), f"a {kind} metric has no quantile; drop quantile, or set "
                                                    "kind: quantile")
        kind = "quantile"
    kind = kind or "mean"
    if kind == "rate" and "rate" not in data:
        reader.problem(path, "a rate needs its numerator and denominator, e.g. rate: delivered / sent "
                             "(or lost / calls for a share of calls)")
    if kind == "quantile" and "quantile" not in data:
        reader.problem(path, "a quantile metric needs quantile, e.g. quantile: p10")
    limits = _read_gates(reader, data, path, kind)
    bad = _read_bad(reader, data, path, limits)
    if name == SIMILARITY:
        _check_similarity(reader, path, kind, limits)
    if len(reader.problems) > before or _BAD in (kind, quantile, *limits.values()):
        return _BAD
    description = data.get("description", "")
    if not isinstance(description, str):
        reader.problem(_join(path, "description"), f"expected text, got {_kind(description)}")
        return _BAD
    return CustomMetric(name, kind, bad, numerator, denominator, quantile, description=description[:1000], **limits)


def _read_gates(reader: _Reader, data: Mapping[str, Any], path: str, kind: str) -> dict[str, Any]:
    limits: dict[str, Any] = {}
    for key in GATE_KEYS:
        if key not in data:
            continue
        if key in ("max_ratio", "min_ratio"):
            convert = _ratio
        elif kind == "rate":
            convert = parse_percent
        else:
            convert = _amount
        limits[key] = reader.get(data, key, path, convert)
    low, high = limits.get("min"), limits.get("max")
    if isinstance(low, float) and isinstance(high, float) and low > high:
        reader.problem(_join(path, "min"), f"{_show(data['min'])} is above max ({_show(data['max'])}); no value "
                                           "could pass both")
    for key in ("max_increase", "max_decrease"):
        if isinstance(limits.get(key), float) and limits[key] < 0:
            reader.problem(_join(path, key), f"{_show(data[key])} is negative; write the allowed change as a "
                                             "positive amount (max_increase and max_decrease say the direction)")
    return limits


def _read_bad(reader: _Reader, data: Mapping[str, Any], path: str, limits: Mapping[str, Any]) -> str:
    high = [key for key in limits if key in HIGH_GATES]
    low = [key for key in limits if key in LOW_GATES]
    if "bad" not in data:
        return "low" if low and not high else "high"
    bad = reader.get(data, "bad", path, _choice(BAD))
    if bad is _BAD:
        return "high"
    wrong = low if bad == "high" else high
    if wrong:
        right = [HIGH_GATES[LOW_GATES.index(k)] if bad == "high" else LOW_GATES[HIGH_GATES.index(k)] for k in wrong]
        reader.problem(_join(path, wrong[0]), f"bad: {bad} says {'high' if bad == 'high' else 'low'} values are the "
                                              f"harm, but {wrong[0]} limits the other side; did you mean "
                                              f"{right[0]!r}?")
    return bad


def _check_similarity(reader: _Reader, path: str, kind: str, limits: Mapping[str, Any]) -> None:
    if kind not in ("mean", "quantile"):
        reader.problem(_join(path, "kind"), "similarity is one score per comparison; judge its mean "
                                            "({min: 0.9}) or a quantile ({quantile: p10, min: 0.85})")
    relative = [key for key in limits if key in RELATIVE_GATES]
    if relative:
        reader.problem(_join(path, relative[0]), "similarity is recorded for the candidate only (its answers "
                                                 "scored against legacy's); bound it with min")


_QUANTILE_RE: Final = re.compile(r"^p([1-9][0-9]?(\.[0-9]+)?)$")


def _metric_quantile(value: object) -> float:
    """p1..p99 (p10 for the worst tenth of similarity scores, p99.9 too), or a fraction."""
    match = _QUANTILE_RE.match(value.strip()) if isinstance(value, str) else None
    if match:
        return float(match.group(1)) / 100
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < 1:
        return float(value)
    raise ValueError(f"{_show(value)} is not a quantile; write p1 to p99 (p10, p50, p99.9) or a fraction such "
                     "as 0.1")


def _rate_parts(value: object) -> tuple[str, str]:
    text = value if isinstance(value, str) else ""
    numerator, slash, denominator = text.partition("/")
    numerator, denominator = numerator.strip(), denominator.strip()
    if not slash or not valid_metric_name(numerator) or not valid_metric_name(denominator):
        raise ValueError(f"{_show(value)} is not a rate; write numerator / denominator with recorded metric names, "
                         "e.g. delivered / sent, or lost / calls for a share of calls")
    if numerator == denominator:
        raise ValueError(f"{_show(value)} divides a metric by itself")
    if numerator == CALLS:
        raise ValueError("calls may only be a denominator (lost / calls)")
    return numerator, denominator


def _amount(value: object) -> float:
    """A limit in the metric's own unit: a number, or a percentage (`2%` is 0.02)."""
    if isinstance(value, str) and value.strip().endswith("%"):
        return parse_percent(value)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
            or abs(value) > _MAX_AMOUNT:
        raise ValueError(f"{_show(value)} is not a limit; write a number such as 0.85 or 250, or a percentage "
                         "such as 99.9%")
    return float(value)


# --- triggers -----------------------------------------------------------------------------------------------


def trigger_metric(names: Sequence[str]) -> Any:
    """The converter of a trigger's `metric`: a built-in one or a metric declared under `metrics:`."""
    known = (*TRIGGER_METRICS, *names)

    def convert(value: object) -> str:
        if value in known:
            return value  # type: ignore[return-value]
        close = difflib.get_close_matches(str(value), known, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        declare = (" (a custom metric is declared under metrics: first, e.g. metrics: {lost: {kind: count}})"
                   if valid_metric_name(value) else "")
        raise ValueError(f"unknown metric {_show(value)}; {hint}known metrics: {', '.join(known)}{declare}")

    return convert


def read_custom_threshold(reader: _Reader, data: Mapping[str, Any], path: str, metric: CustomMetric
                          ) -> tuple[Any, Any]:
    """(above, below) of a trigger on a custom metric: exactly one is set (a percentage for a rate)."""
    convert = parse_percent if metric.kind == "rate" else _amount
    example = "0.5%" if metric.kind == "rate" else "0"
    if ("above" in data) == ("below" in data):
        reader.problem(path, f"a trigger on {metric.name} needs exactly one of above or below, e.g. above: {example}")
        return _BAD, _BAD
    if "above" in data:
        return reader.get(data, "above", path, convert), None
    return None, reader.get(data, "below", path, convert)


def format_amount(metric: CustomMetric, value: float) -> str:
    """A value of `metric` for people: a percentage for a rate, a plain number otherwise."""
    return format_percent(value) if metric.kind == "rate" else _plain(value)


# --- JSON Schema ----------------------------------------------------------------------------------------------


def json_schema() -> dict[str, Any]:
    """The schema of the `metrics:` section (its `$ref`s point into the spec schema's `$defs`)."""
    limit = {"anyOf": [{"type": "number"}, {"type": "string", "pattern": r"^\s*-?\d+(\.\d+)?\s*%\s*$"}]}
    metric = {
        "type": "object",
        "additionalProperties": False,
        "description": "One custom metric and its gates. kind: count (sum of values), rate (numerator / "
                       "denominator), mean (default) or quantile. max_increase, max_ratio and max guard against "
                       "high values; max_decrease, min_ratio and min against low ones.",
        "properties": {
            "kind": {"enum": list(KINDS), "description": "How the values are judged; inferred from rate or "
                                                         "quantile, else mean."},
            "rate": {"type": "string", "pattern": r"^\s*[a-z][a-z0-9_]*\s*/\s*[a-z][a-z0-9_]*\s*$",
                     "description": "numerator / denominator, recorded metric names (calls: the arm's calls)."},
            "quantile": {"description": "For kind quantile: which one.",
                         "anyOf": [{"type": "string", "pattern": r"^p[1-9][0-9]?(\.[0-9]+)?$"},
                                   {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1}]},
            "bad": {"enum": list(BAD), "description": "Which side is harmful; inferred from the gates."},
            "max_increase": {**limit, "description": "Largest allowed candidate - legacy (a percentage for rates)."},
            "max_decrease": {**limit, "description": "Largest allowed legacy - candidate (a percentage for rates)."},
            "max_ratio": {"$ref": "#/$defs/ratio", "description": "Largest allowed candidate / legacy."},
            "min_ratio": {"$ref": "#/$defs/ratio", "description": "Smallest allowed candidate / legacy."},
            "min": {**limit, "description": "Smallest allowed candidate value (a floor: lower is a failure)."},
            "max": {**limit, "description": "Largest allowed candidate value."},
            "description": {"type": "string"},
        },
    }
    return {
        "type": "object",
        "maxProperties": MAX_METRICS,
        "description": "Custom metrics recorded by the call site (obs.metric, metrics=, mig.record) and how each "
                       "is judged; similarity is the built-in score of graded comparisons.",
        "propertyNames": {"pattern": METRIC_NAME_PATTERN, "not": {"enum": [*TRIGGER_METRICS, CALLS]}},
        "patternProperties": {METRIC_NAME_PATTERN: metric},
        "additionalProperties": False,
    }

