"""Migration specs: YAML, a file or a dict in, a validated immutable Spec out, plus the format's JSON Schema.

Each field is declared once, in `crossfade.spec.models`; its validation (by pydantic, on the first load),
its JSON Schema, its default and its reference documentation derive from that declaration.
"""

from crossfade.spec.errors import Problem, SpecError
from crossfade.spec.example import EXAMPLE
from crossfade.spec.loading import load_spec, read_document
from crossfade.spec.models import (
    Analysis,
    CostGate,
    DualWriteRetry,
    ErrorRateGate,
    Fallback,
    Gates,
    LatencyGate,
    MismatchGate,
    RollbackPolicy,
    ShadowSettings,
    Spec,
    Stage,
    Trigger,
)
from crossfade.spec.units import (
    LATENCY_METRICS,
    NAME_PATTERN,
    ON_FAILURE,
    PERCENT_METRICS,
    QUANTILES,
    RATIO_METRICS,
    TRIGGER_METRICS,
    format_duration,
    format_percent,
    parse_duration,
    parse_percent,
)


def json_schema() -> dict:  # type: ignore[type-arg]
    """A JSON Schema (draft 2020-12) of the spec format, for editors to complete and check spec files."""
    from crossfade.spec.schema import json_schema as generate

    return generate()


__all__ = [
    "EXAMPLE",
    "LATENCY_METRICS",
    "NAME_PATTERN",
    "ON_FAILURE",
    "PERCENT_METRICS",
    "QUANTILES",
    "RATIO_METRICS",
    "TRIGGER_METRICS",
    "Analysis",
    "CostGate",
    "DualWriteRetry",
    "ErrorRateGate",
    "Fallback",
    "Gates",
    "LatencyGate",
    "MismatchGate",
    "Problem",
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
    "read_document",
]
