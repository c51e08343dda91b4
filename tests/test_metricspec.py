"""The spec's metrics: section: reading, path-precise errors, the canonical form and the JSON Schema."""

from __future__ import annotations

import jsonschema
import pytest

from crossfade.spec.metrics import CustomMetric
from crossfade.spec import SpecError, json_schema, load_spec

BASE = {"name": "m", "stages": [{"traffic": "10%"}, {"traffic": "100%"}]}

FULL = {
    **BASE,
    "metrics": {
        "delivery": {"rate": "delivered / sent", "min": "99.9%", "max_decrease": "0.1%"},
        "loss": {"rate": "lost / calls", "max": "0.5%"},
        "lost": {"kind": "count", "max": 0},
        "tokens": {"kind": "mean", "max_ratio": 1.2, "max_increase": 50},
        "queue_time": {"quantile": "p99", "bad": "high", "max_ratio": 1.5},
        "similarity": {"quantile": "p10", "min": 0.85},
    },
    "triggers": [{"metric": "lost", "above": 0, "window": "5m"}, {"metric": "delivery", "below": "99%"}],
    "shadow": {"mismatch_below": 0.6},
}


def test_every_kind_reads_and_round_trips():
    spec = load_spec(FULL)
    assert spec.metric("delivery") == CustomMetric("delivery", "rate", "low", "delivered", "sent",
                                                   max_decrease=0.001, min=0.999)
    assert spec.metric("loss").recorded == ("lost",)
    assert spec.metric("similarity").quantile == 0.1 and spec.metric("similarity").bad == "low"
    assert spec.metric("tokens").kind == "mean" and spec.metric("lost").kind == "count"
    assert spec.triggers[1].below == 0.99 and spec.triggers[1].above is None
    assert spec.shadow.mismatch_below == 0.6
    assert load_spec(spec.to_dict()) == spec
    jsonschema.validate(FULL, json_schema())
    jsonschema.validate(spec.to_dict(), json_schema())


def test_a_spec_without_metrics_keeps_its_digest():
    spec = load_spec(BASE)
    assert "metrics" not in spec.to_dict() and "shadow" not in spec.to_dict()


@pytest.mark.parametrize("metrics, triggers, problem", [
    ({"lost": {"kind": "cont"}}, [], 'metrics.lost.kind: "cont" is not one of count, rate, mean, quantile'),
    ({"lost": {"kidn": "count"}}, [], "metrics.lost.kidn: unknown key; did you mean 'kind'?"),
    ({"Lost": {}}, [], 'metrics.Lost: "Lost" is not a metric name'),
    ({"error_rate": {}}, [], "metrics.error_rate: 'error_rate' is a built-in metric"),
    ({"d": {"rate": "delivered"}}, [], 'metrics.d.rate: "delivered" is not a rate; write numerator / denominator'),
    ({"d": {"rate": "calls / sent"}}, [], "metrics.d.rate: calls may only be a denominator"),
    ({"d": {"kind": "count", "rate": "a / b"}}, [], "metrics.d.rate: a count metric has no numerator"),
    ({"d": {"kind": "rate"}}, [], "metrics.d: a rate needs its numerator and denominator"),
    ({"q": {"kind": "quantile"}}, [], "metrics.q: a quantile metric needs quantile"),
    ({"q": {"quantile": "p100"}}, [], 'metrics.q.quantile: "p100" is not a quantile'),
    ({"d": {"rate": "a / b", "min": "120%"}}, [], "metrics.d.min:"),
    ({"d": {"bad": "high", "min": 3}}, [], "metrics.d.min: bad: high says high values are the harm, but min limits "
                                           "the other side; did you mean 'max'?"),
    ({"d": {"bad": "low", "max_ratio": 2}}, [], "did you mean 'min_ratio'?"),
    ({"d": {"min": 5, "max": 1}}, [], "metrics.d.min: 5 is above max (1)"),
    ({"d": {"max_increase": -1}}, [], "metrics.d.max_increase: -1 is negative"),
    ({"similarity": {"kind": "count"}}, [], "metrics.similarity.kind: similarity is one score per comparison"),
    ({"similarity": {"max_decrease": 0.1}}, [], "similarity is recorded for the candidate only"),
    ({"lost": {"kind": "count"}}, [{"metric": "lots", "above": 0}],
     "triggers[0].metric: unknown metric \"lots\"; did you mean 'lost'?"),
    ({}, [{"metric": "lost", "above": 0}], "a custom metric is declared under metrics: first"),
    ({"lost": {"kind": "count"}}, [{"metric": "lost"}], "triggers[0]: a trigger on lost needs exactly one of above "
                                                        "or below"),
    ({"lost": {"kind": "count"}}, [{"metric": "lost", "above": "a lot"}], 'triggers[0].above: "a lot" is not a '
                                                                         "limit"),
    ({}, [{"metric": "error_rate", "above": "5%", "below": "1%"}], "triggers[0].below: error_rate is watched from "
                                                                   "above"),
    ("lost", [], "metrics: expected a mapping of metric names to settings"),
])
def test_mistakes_are_reported_at_their_path(metrics, triggers, problem):
    with pytest.raises(SpecError) as caught:
        load_spec({**BASE, "metrics": metrics, "triggers": triggers})
    assert problem in str(caught.value)


def test_a_trigger_on_a_broken_declaration_reports_the_declaration_only():
    with pytest.raises(SpecError) as caught:
        load_spec({**BASE, "metrics": {"lost": {"kind": "cont"}}, "triggers": [{"metric": "lost", "above": 0}]})
    assert len(caught.value.problems) == 1
