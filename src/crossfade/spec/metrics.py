"""The spec's `metrics:` section: custom metrics a call site records (delivered, lost, a similarity score), how
each is judged, and the triggers that may watch them.

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
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Final

from crossfade.spec.errors import Quiet
from crossfade.spec.fields import BAD, Rule, Section, setting
from crossfade.spec.units import (
    LATENCY_METRICS,
    MAX_METRICS,
    METRIC_NAME_PATTERN,
    PERCENT_METRICS,
    TRIGGER_METRICS,
    Check,
    ShortText,
    amount,
    choice,
    format_percent,
    parse_percent,
    ratio,
    show,
    threshold_example,
    timeout,
    valid_metric_name,
)

__all__ = [
    "CALLS",
    "GATE_KEYS",
    "HIGH_GATES",
    "KINDS",
    "LOW_GATES",
    "RELATIVE_GATES",
    "SIDES",
    "SIMILARITY",
    "CustomMetric",
    "format_amount",
]

KINDS: Final = ("count", "rate", "mean", "quantile")
SIDES: Final = ("high", "low")
"""Which side of a metric is the harm (`bad:`)."""
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
EXAMPLE: Final = "{rate: delivered / sent, min: 99.9%}"
_QUANTILE_RE: Final = re.compile(r"^p([1-9][0-9]?(\.[0-9]+)?)$")


def _metric_quantile(value: object) -> float:
    """p1..p99 (p10 for the worst tenth of similarity scores, p99.9 too), or a fraction."""
    match = _QUANTILE_RE.match(value.strip()) if isinstance(value, str) else None
    if match:
        return float(match.group(1)) / 100
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < 1:
        return float(value)
    raise ValueError(f"{show(value)} is not a quantile; write p1 to p99 (p10, p50, p99.9) or a fraction such "
                     "as 0.1")


def _rate_parts(value: object) -> tuple[str, str]:
    text = value if isinstance(value, str) else ""
    numerator, slash, denominator = text.partition("/")
    numerator, denominator = numerator.strip(), denominator.strip()
    if not slash or not valid_metric_name(numerator) or not valid_metric_name(denominator):
        raise ValueError(f"{show(value)} is not a rate; write numerator / denominator with recorded metric names, "
                         "e.g. delivered / sent, or lost / calls for a share of calls")
    if numerator == denominator:
        raise ValueError(f"{show(value)} divides a metric by itself")
    if numerator == CALLS:
        raise ValueError("calls may only be a denominator (lost / calls)")
    return numerator, denominator


def _limit(value: object, data: Mapping[str, Any], context: Mapping[str, Any]) -> float | None:
    """A gate's limit: a percentage for a rate, the metric's own unit otherwise."""
    if "kind" not in data:
        raise Quiet("the kind is refused, and said so")
    return parse_percent(value) if data["kind"] == "rate" else amount(value)


_LIMIT_SCHEMA: Final = {"anyOf": [{"type": "number"}, {"type": "string", "pattern": r"^\s*-?\d+(\.\d+)?\s*%\s*$"}]}
Limit = Annotated[float | None, Check(_limit, _LIMIT_SCHEMA, "percent for a rate, else a number", with_data=True)]
OptionalRatio = Annotated[float | None, Check(ratio, {"unit": "ratio"}, "ratio (candidate / legacy)")]
MetricQuantile = Annotated[float | None, Check(
    _metric_quantile,
    {"anyOf": [{"type": "string", "pattern": r"^p[1-9][0-9]?(\.[0-9]+)?$"},
               {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1}]},
    "p1 to p99 or a fraction",
)]
MetricName = Annotated[str, Check(lambda value: value, {"type": "string", "pattern": METRIC_NAME_PATTERN},
                                  "metric name")]
PlainText = Annotated[str, Check(lambda value: value, {"type": "string"}, "text")]


@dataclass(frozen=True, slots=True)
class CustomMetric(Section):
    """One declared custom metric: what it is computed from, which side is bad, and its gates (None: off).

    For a `rate`, limits are fractions (`min: 99.9%` is 0.999) and the metric is `numerator / denominator`
    summed over the calls; otherwise limits are in the metric's own unit. `quantile` is set for kind quantile.
    """

    example: ClassVar[str] = EXAMPLE
    passed: ClassVar[tuple[str, ...]] = ("name", "numerator", "denominator")
    written: ClassVar[dict[str, tuple[str, str]]] = {
        "rate": ("numerator / denominator", "The metric is numerator / denominator summed over the calls (recorded "
                                            "metric names; calls: the arm's calls); sets kind rate."),
    }

    name: MetricName = setting("The metric's name: its key under metrics.")
    kind: Annotated[str, choice(KINDS)] = setting("How the values are judged; inferred from rate or quantile, "
                                                  "else mean.", "mean")
    bad: Annotated[str, choice(SIDES)] = setting("Which side is harmful; inferred from the gates.", "high")
    numerator: PlainText = setting("The recorded metric summed above the line of a rate.", "")
    denominator: PlainText = setting("The recorded metric (or calls) summed below the line of a rate.", "")
    quantile: MetricQuantile = setting("For kind quantile: which one.", None)
    max_increase: Limit = setting("Largest allowed candidate - legacy (a percentage for rates).", None)
    max_decrease: Limit = setting("Largest allowed legacy - candidate (a percentage for rates).", None)
    max_ratio: OptionalRatio = setting("Largest allowed candidate / legacy.", None)
    min_ratio: OptionalRatio = setting("Smallest allowed candidate / legacy.", None)
    min: Limit = setting("Smallest allowed candidate value (a floor: lower is a failure).", None)
    max: Limit = setting("Largest allowed candidate value.", None)
    description: ShortText = setting("What the metric measures, for people.", "")

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

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        """A rate is written `rate: numerator / denominator`."""
        return ("kind", "rate", "quantile", "bad", *GATE_KEYS, "description")

    @classmethod
    def prepare(cls, data: dict[str, Any], context: Mapping[str, Any]) -> dict[str, Any]:
        """The written form in the model's fields: the kind inferred from rate or quantile, the bad side from
        the gates, the rate split into numerator and denominator."""
        out = {key: value for key, value in data.items() if key != "rate"}
        kind = data.get("kind")
        if "rate" in data:
            try:
                out["numerator"], out["denominator"] = _rate_parts(data["rate"])
            except ValueError:
                pass  # said by rules
            kind = "rate" if kind in (None, *KINDS) else kind
        if "quantile" in data:
            kind = "quantile" if kind in (None, *KINDS) else kind
        out["kind"] = kind or "mean"
        if "bad" not in data:
            high = [key for key in GATE_KEYS if key in data and key in HIGH_GATES]
            low = [key for key in GATE_KEYS if key in data and key in LOW_GATES]
            out["bad"] = "low" if low and not high else "high"
        return out

    @classmethod
    def rules(cls, data: Mapping[str, Any], context: Mapping[str, Any]) -> list[Rule]:
        """The kind agrees with rate and quantile, the bad side with the gates, min with max; similarity is
        judged as the candidate's own score."""
        found: list[Rule] = []
        written = data.get("kind")
        kind = written if written in KINDS else BAD if written is not None else None
        if "rate" in data:
            try:
                _rate_parts(data["rate"])
            except ValueError as exc:
                found.append((("rate",), str(exc)))
            if kind not in (None, "rate", BAD):
                found.append((("rate",), f"a {kind} metric has no numerator / denominator; drop rate, or set "
                                         "kind: rate"))
            kind = "rate"
        if "quantile" in data:
            if kind not in (None, "quantile", BAD):
                found.append((("quantile",), f"a {kind} metric has no quantile; drop quantile, or set kind: "
                                             "quantile"))
            kind = "quantile"
        kind = kind or "mean"
        if kind == "rate" and "rate" not in data:
            found.append(((), "a rate needs its numerator and denominator, e.g. rate: delivered / sent "
                              "(or lost / calls for a share of calls)"))
        if kind == "quantile" and "quantile" not in data:
            found.append(((), "a quantile metric needs quantile, e.g. quantile: p10"))
        limits = {key: _converted(key, data[key], kind) for key in GATE_KEYS if key in data}
        low, high = limits.get("min"), limits.get("max")
        if isinstance(low, float) and isinstance(high, float) and low > high:
            found.append((("min",), f"{show(data['min'])} is above max ({show(data['max'])}); no value could pass "
                                    "both"))
        for key in ("max_increase", "max_decrease"):
            if isinstance(limits.get(key), float) and limits[key] < 0:
                found.append(((key,), f"{show(data[key])} is negative; write the allowed change as a positive "
                                      "amount (max_increase and max_decrease say the direction)"))
        bad = data.get("bad")
        if bad in SIDES:
            wrong = [key for key in limits if key in (LOW_GATES if bad == "high" else HIGH_GATES)]
            if wrong:
                right = [HIGH_GATES[LOW_GATES.index(k)] if bad == "high" else LOW_GATES[HIGH_GATES.index(k)]
                         for k in wrong]
                found.append(((wrong[0],), f"bad: {bad} says {bad} values are the harm, but {wrong[0]} limits the "
                                           f"other side; did you mean {right[0]!r}?"))
        if data.get("name") == SIMILARITY:
            if kind not in ("mean", "quantile"):
                found.append((("kind",), "similarity is one score per comparison; judge its mean ({min: 0.9}) or a "
                                         "quantile ({quantile: p10, min: 0.85})"))
            relative = [key for key in limits if key in RELATIVE_GATES]
            if relative:
                found.append(((relative[0],), "similarity is recorded for the candidate only (its answers scored "
                                              "against legacy's); bound it with min"))
        return found

    @classmethod
    def schema_extra(cls, schema: dict[str, Any]) -> None:
        """Written with its name as its key and its rate as `numerator / denominator`."""
        for key in cls.passed:
            schema["properties"].pop(key)
        schema.pop("required", None)
        schema["properties"]["rate"] = {
            "type": "string", "pattern": r"^\s*[a-z][a-z0-9_]*\s*/\s*[a-z][a-z0-9_]*\s*$",
            "description": "numerator / denominator, recorded metric names (calls: the arm's calls).",
        }


def _converted(key: str, value: object, kind: object) -> Any:
    try:
        if key in ("max_ratio", "min_ratio"):
            return ratio(value)
        return parse_percent(value) if kind == "rate" else amount(value)
    except ValueError:
        return BAD


def _plain(number: float) -> str:
    return f"{number:.6g}"


def format_amount(metric: CustomMetric, value: float) -> str:
    """A value of `metric` for people: a percentage for a rate, a plain number otherwise."""
    return format_percent(value) if metric.kind == "rate" else _plain(value)


class Declared:
    """The `metrics:` mapping (name -> settings) read as a tuple of CustomMetrics in the spec's order; the
    names, and which of them read without a problem, are told to the triggers (the validation context)."""

    __slots__ = ()

    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> Any:
        from crossfade.spec.validation import declared_schema

        return declared_schema(handler(source))

    def __get_pydantic_json_schema__(self, core_schema: Any, handler: Any) -> Any:
        item = handler.resolve_ref_schema(handler(core_schema)).get("items", {})
        return {
            "type": "object",
            "maxProperties": MAX_METRICS,
            "propertyNames": {"pattern": METRIC_NAME_PATTERN, "not": {"enum": [*TRIGGER_METRICS, CALLS]}},
            "patternProperties": {METRIC_NAME_PATTERN: item},
            "additionalProperties": False,
        }


def metric_names_problem(name: object) -> str | None:
    """Why `name` cannot name a custom metric, or None."""
    if not valid_metric_name(name):
        return (f"{show(name)} is not a metric name; use lowercase letters, digits and _, starting with a letter "
                "(at most 63), e.g. delivered")
    if name in TRIGGER_METRICS or name == CALLS:
        return f"{name!r} is a built-in metric; give yours another name"
    return None


# --- triggers --------------------------------------------------------------------------------------------


def _trigger_metric(value: object, data: Mapping[str, Any], context: Mapping[str, Any]) -> str:
    """A built-in metric or one declared under `metrics:`."""
    known = (*TRIGGER_METRICS, *context.get("named", ()))
    if value in known:
        return value  # type: ignore[return-value]
    close = difflib.get_close_matches(str(value), known, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    declare = (" (a custom metric is declared under metrics: first, e.g. metrics: {lost: {kind: count}})"
               if valid_metric_name(value) else "")
    raise ValueError(f"unknown metric {show(value)}; {hint}known metrics: {', '.join(known)}{declare}")


def _custom(metric: object, context: Mapping[str, Any]) -> Any:
    """The kind of the custom metric a trigger watches; BAD if it is declared with problems; None if built in."""
    if metric in context.get("declared", {}):
        return context["declared"][metric]
    return BAD if metric in context.get("named", ()) else None


def _above(value: object, data: Mapping[str, Any], context: Mapping[str, Any]) -> float | None:
    if "metric" not in data:
        raise Quiet("the metric is missing or refused, and said so")
    metric, kind = data["metric"], _custom(data["metric"], context)
    if kind is BAD:
        raise Quiet("the metric's declaration has problems, said there")
    if kind is not None:
        return None if value is None else parse_percent(value) if kind == "rate" else amount(value)
    if metric in PERCENT_METRICS:
        return parse_percent(value)
    if metric in LATENCY_METRICS:
        return timeout(value)
    return ratio(value)


def _below(value: object, data: Mapping[str, Any], context: Mapping[str, Any]) -> float | None:
    if "metric" not in data:
        raise Quiet("the metric is missing or refused, and said so")
    metric, kind = data["metric"], _custom(data["metric"], context)
    if kind is BAD:
        raise Quiet("the metric's declaration has problems, said there")
    if kind is None:
        if value is None:
            return None
        raise ValueError(f"{metric} is watched from above; below is for custom metrics whose low values are the harm")
    return None if value is None else parse_percent(value) if kind == "rate" else amount(value)


TriggerMetric = Annotated[str, Check(
    _trigger_metric,
    {"anyOf": [{"enum": list(TRIGGER_METRICS)}, {"type": "string", "pattern": METRIC_NAME_PATTERN}]},
    "a built-in metric, or one declared under metrics",
    with_data=True,
)]
Threshold = Annotated[float | None, Check(
    _above,
    {"anyOf": [{"type": "number"}, {"type": "string"}]},
    "percent for *_rate, duration for latency_pNN, number for *_ratio; for a custom metric, percent for a rate",
    with_data=True,
)]
Below = Annotated[float | None, Check(_below, {"anyOf": [{"type": "number"}, {"type": "string"}]},
                                        "as above, for custom metrics whose low values are the harm",
                                        with_data=True)]


def threshold_example_of(data: Mapping[str, Any], context: Mapping[str, Any]) -> str | None:
    """A trigger's threshold is asked for in the unit of its metric, and not at all while the metric is wrong
    or is a custom one (which takes above or below, a rule says)."""
    metric = data.get("metric")
    if metric not in TRIGGER_METRICS:
        return None
    return threshold_example(metric)


def trigger_rules(data: Mapping[str, Any], context: Mapping[str, Any]) -> list[Rule]:
    """A trigger on a custom metric sets exactly one of above or below."""
    kind = _custom(data.get("metric"), context)
    if kind in (None, BAD):
        return []
    if ("above" in data) == ("below" in data):
        example = "0.5%" if kind == "rate" else "0"
        return [((), f"a trigger on {data['metric']} needs exactly one of above or below, e.g. above: {example}")]
    return []


def prepare_trigger(data: dict[str, Any], context: Mapping[str, Any]) -> dict[str, Any]:
    """A trigger on a custom metric may leave `above` out (it watches `below`)."""
    if _custom(data.get("metric"), context) not in (None, BAD) and "above" not in data:
        return {**data, "above": None}
    return data
