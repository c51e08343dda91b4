"""Tests for crossfade.spec: loading, validation messages, units, round trips and the JSON Schema."""

from __future__ import annotations

import copy
import datetime
import functools
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from crossfade.spec import (
    EXAMPLE,
    Analysis,
    CostGate,
    DualWriteRetry,
    ErrorRateGate,
    Fallback,
    Gates,
    LatencyGate,
    MismatchGate,
    Problem,
    RollbackPolicy,
    Spec,
    ShadowSettings,
    SpecError,
    Stage,
    Trigger,
    format_duration,
    format_percent,
    json_schema,
    load_spec,
    parse_duration,
    parse_percent,
)

FULL = """\
name: checkout-pricing            # [a-z0-9-], unique per backend
description: Move pricing from the rules engine to the new service
owner: payments-team
key: customer id                  # what the sticky key is (documentation)
salt: checkout-pricing            # default: name; keeps buckets stable across restarts
stages:
  - {name: shadow, traffic: 0%, shadow: 100%, noise: 10%, dual_write: true, hold: 10m}
  - {name: canary-1, traffic: 1%, hold: 30m, min_samples: 500}
  - {name: canary-10, traffic: 10%, hold: 1h}
  - {name: rollout-25, traffic: 25%, hold: 2h, approval: true}
  - {name: rollout-50, traffic: 50%, shadow_legacy: 10%, hold: 4h}
  - {name: complete, traffic: 100%}
gates:                            # candidate compared with legacy, evaluated by the controller
  error_rate: {max_increase: 0.5%}
  latency: {quantile: p95, max_ratio: 1.2}
  cost: {max_ratio: 1.5}
  mismatch_rate: {max: 1%}
triggers:                         # instant rollback on absolute thresholds
  - {metric: error_rate, above: 5%, window: 5m, min_samples: 100}
  - {metric: latency_p95_ratio, above: 2.0, for: 3m}
on_failure: rollback              # rollback | step_back | pause
rollback: {mode: gradual, steps: [50%, 25%, 10%, 0%], every: 1m}   # or {mode: immediate}
analysis: {interval: 30s, confidence: 99%, on_nodata: hold, promote_when: no_regression}
fallback: {on_error: true, timeout: 5s}
shadow: {timeout: 2s, threads: 4, max_pending: 64}
dual_write_retry: {attempts: 3, backoff: 50ms}
dual_write_after_rollback: true
allow: [test_agent_alpha]         # always candidate
deny: []                          # always legacy
notify:
  - name: ci
    slack: {url_env: SLACK_WEBHOOK_URL, channel: "#ci-migration"}
    events: [rolled_back, rollback_started, gate_failed, approval_requested, completed]
"""

FULL_SPEC = Spec(
    "checkout-pricing",
    description="Move pricing from the rules engine to the new service",
    owner="payments-team",
    key="customer id",
    salt="checkout-pricing",
    stages=(
        Stage("shadow", 0.0, shadow=1.0, hold=600.0, noise=0.1, dual_write=True),
        Stage("canary-1", 0.01, hold=1800.0, min_samples=500),
        Stage("canary-10", 0.1, hold=3600.0),
        Stage("rollout-25", 0.25, hold=7200.0, approval=True),
        Stage("rollout-50", 0.5, hold=14400.0, shadow_legacy=0.1),
        Stage("complete", 1.0),
    ),
    gates=Gates(
        error_rate=ErrorRateGate(0.005),
        latency=LatencyGate(quantile=0.95, max_ratio=1.2),
        cost=CostGate(1.5),
        mismatch_rate=MismatchGate(0.01),
    ),
    triggers=(
        Trigger("error_rate", 0.05, window=300.0, min_samples=100),
        Trigger("latency_p95_ratio", 2.0, for_=180.0),
    ),
    on_failure="rollback",
    rollback=RollbackPolicy(mode="gradual", steps=(0.5, 0.25, 0.1, 0.0), every=60.0),
    analysis=Analysis(interval=30.0, confidence=0.99, on_nodata="hold", promote_when="no_regression"),
    fallback=Fallback(on_error=True, timeout=5.0),
    shadow=ShadowSettings(timeout=2.0),
    dual_write_retry=DualWriteRetry(attempts=3, backoff=0.05),
    dual_write_after_rollback=True,
    allow=("test_agent_alpha",),
    notify=({"name": "ci", "slack": {"url_env": "SLACK_WEBHOOK_URL", "channel": "#ci-migration"},
             "events": ["rolled_back", "rollback_started", "gate_failed", "approval_requested", "completed"]},),
)

MINIMAL = "name: checkout-pricing\nstages: [{traffic: 10%}, {traffic: 50%}, {traffic: 100%}]\n"


def minimal() -> dict[str, Any]:
    return {"name": "checkout-pricing", "stages": [{"traffic": "10%"}, {"traffic": "50%"}, {"traffic": "100%"}]}


def problems(source: Any) -> list[str]:
    """Every problem of an invalid spec as "path: message"."""
    with pytest.raises(SpecError) as caught:
        load_spec(source)
    return [str(problem) for problem in caught.value.problems]


def only_problem(source: Any) -> str:
    found = problems(source)
    assert len(found) == 1, found
    return found[0]


# --- loading ---------------------------------------------------------------------------------------------


def test_full_example_loads_as_written() -> None:
    assert load_spec(FULL) == FULL_SPEC


def test_init_example_loads_and_says_the_same_as_the_full_example() -> None:
    assert load_spec(EXAMPLE) == FULL_SPEC
    assert EXAMPLE.count("#") > FULL.count("#"), "the init example explains more than the bare one"


def test_minimal_spec_gets_documented_defaults() -> None:
    spec = load_spec(MINIMAL)
    assert spec.name == "checkout-pricing"
    assert spec.salt == "checkout-pricing"
    assert (spec.description, spec.owner, spec.key) == ("", "", "")
    assert [stage.name for stage in spec.stages] == ["stage-1", "stage-2", "stage-3"]
    assert spec.stages[0] == Stage("stage-1", 0.1, shadow=0.0, hold=None, min_samples=0, approval=False)
    assert spec.gates == Gates(error_rate=ErrorRateGate(0.01), latency=LatencyGate(0.95, 1.25))
    assert spec.gates == Gates.default()
    assert spec.triggers == ()
    assert spec.on_failure == "rollback"
    assert spec.rollback == RollbackPolicy("immediate", (), 60.0)
    assert spec.analysis == Analysis(30.0, 0.99, "hold", "no_regression")
    assert spec.fallback == Fallback(on_error=True, timeout=None)
    assert spec.shadow == ShadowSettings(timeout=5.0, threads=4, max_pending=64, noise_relative=0.2,
                                         noise_absolute=0.0003, examples=20)
    assert spec.dual_write_retry == DualWriteRetry(attempts=2, backoff=0.0)
    assert (spec.stages[0].shadow_legacy, spec.stages[0].noise, spec.stages[0].dual_write) == (0.0, 0.0, False)
    assert (spec.allow, spec.deny, spec.notify) == ((), (), ())


def test_empty_gates_mapping_means_no_gates() -> None:
    assert load_spec({**minimal(), "gates": {}}).gates == Gates(None, None, None, None)


def test_one_gate_listed_turns_the_others_off() -> None:
    spec = load_spec({**minimal(), "gates": {"latency": {}}})
    assert spec.gates == Gates(latency=LatencyGate(quantile=0.95, max_ratio=1.2))


def test_null_means_left_out() -> None:
    text = MINIMAL + "gates:\nrollback:\nanalysis: {interval: null}\ndescription:\n"
    spec = load_spec(text)
    assert spec.gates == Gates.default()
    assert spec.analysis.interval == 30.0
    assert spec.description == ""


def test_latency_quantile_accepts_names_and_fractions() -> None:
    for written, expected in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), (0.999, 0.999)]:
        spec = load_spec({**minimal(), "gates": {"latency": {"quantile": written}}})
        assert spec.gates.latency == LatencyGate(quantile=expected, max_ratio=1.2)


def test_trigger_thresholds_take_the_unit_of_their_metric() -> None:
    spec = load_spec(
        {
            **minimal(),
            "triggers": [
                {"metric": "timeout_rate", "above": "2%"},
                {"metric": "latency_p99", "above": "2s"},
                {"metric": "latency_p50", "above": 0.5},
                {"metric": "cost_ratio", "above": 3},
            ],
        }
    )
    assert [t.above for t in spec.triggers] == [0.02, 2.0, 0.5, 3.0]


def test_allow_and_deny_entries_become_text_without_duplicates() -> None:
    spec = load_spec(MINIMAL + "allow: [42, alice, 42]\ndeny: [7f9c2d1e-1b2a-4c3d-9e8f-001122334455]\n")
    assert spec.allow == ("42", "alice")
    assert spec.deny == ("7f9c2d1e-1b2a-4c3d-9e8f-001122334455",)


def test_notify_targets_are_kept_as_written_and_checked_by_their_channels() -> None:
    target = {"name": "ops", "slack": {"url_env": "SLACK_URL", "channel": "#ops"}, "events": ["rolled_back"]}
    assert load_spec({**minimal(), "notify": [target]}).notify == (target,)
    with pytest.raises(SpecError) as caught:
        load_spec({**minimal(), "notify": ["ops-channel", {"slack": {"url": "https://hooks.slack.com/x"}},
                                          {"email": {"host": "smtp", "to": "a@b"}, "events": ["boom"]}]})
    message = str(caught.value)
    assert "notify[0]: a target is a mapping" in message
    assert "notify[1].slack.url: unknown setting" in message
    assert "notify[1].slack.url_env: is the name of an environment variable" in message
    assert "notify[2].events: unknown 'boom'" in message


# --- sources ---------------------------------------------------------------------------------------------


def test_path_object_str_path_text_and_dict_load_the_same(tmp_path: Path) -> None:
    path = tmp_path / "pricing.yaml"
    path.write_text(FULL)
    as_dict = yaml.safe_load(FULL)
    assert load_spec(path) == load_spec(str(path)) == load_spec(FULL) == load_spec(as_dict) == FULL_SPEC


def test_existing_file_without_yaml_suffix_is_read_as_a_file(tmp_path: Path) -> None:
    path = tmp_path / "migration"
    path.write_text(MINIMAL)
    assert load_spec(str(path)).name == "checkout-pricing"


def test_json_file_loads(tmp_path: Path) -> None:
    path = tmp_path / "pricing.json"
    path.write_text(json.dumps(FULL_SPEC.to_dict()))
    assert load_spec(path) == FULL_SPEC


def test_missing_yaml_file_is_reported_as_missing_not_parsed_as_text(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.yaml")
    with pytest.raises(SpecError) as caught:
        load_spec(missing)
    assert caught.value.source == missing
    assert "no such file" in str(caught.value)


def test_source_labels() -> None:
    for source, label in [(MINIMAL + "bogus: 1\n", "<text>"), ({**minimal(), "bogus": 1}, "<dict>")]:
        with pytest.raises(SpecError) as caught:
            load_spec(source)
        assert caught.value.source == label
        assert str(caught.value).splitlines()[1].startswith(f"{label}: bogus: ")
    with pytest.raises(SpecError) as caught:
        load_spec(MINIMAL + "bogus: 1\n", source_name="<stdin>")
    assert caught.value.source == "<stdin>"


def test_unsupported_source_type_is_a_spec_error() -> None:
    with pytest.raises(SpecError, match="expected a file path, YAML text or a mapping"):
        load_spec(42)  # type: ignore[arg-type]


def test_file_problems_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "pricing.yaml"
    path.write_text(MINIMAL.replace("50%", "5%").replace("100%", "90%"))
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    lines = str(caught.value).splitlines()
    assert lines[0] == f"2 problems in {path}:"
    assert lines[1:] == [
        f"{path}: stages[1].traffic: 5% is below the previous stage's 10%; traffic never decreases",
        f"{path}: stages[2].traffic: the last stage must send 100% of traffic to the candidate, not 90%",
    ]


def test_every_mistake_in_a_file_is_reported_at_once(tmp_path: Path) -> None:
    path = tmp_path / "pricing.yaml"
    path.write_text(
        "name: Checkout\n"
        "stages:\n"
        "  - {traffic: 10%, hold: ten minutes}\n"
        "  - {traffic: 100%}\n"
        "on_failure: explode\n"
    )
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    err = caught.value
    assert [p.path for p in err.problems] == ["name", "stages[0].hold", "on_failure"]
    assert str(err).splitlines()[0] == f"3 problems in {path}:"
    assert all(line.startswith(f"{path}: ") for line in str(err).splitlines()[1:])


def test_yaml_syntax_error_names_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\nstages:\n  - {traffic: 10%\n  - {traffic: 100%}\n")
    message = only_problem(path)
    assert re.match(r"line \d+, column \d+: invalid YAML: ", message), message


def test_duplicate_yaml_key_is_an_error_not_silently_the_last() -> None:
    message = only_problem(MINIMAL + "name: other\n")
    assert message.startswith("line 3, column 1: ")
    assert "duplicate key 'name'" in message


def test_json_syntax_error_names_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{"name": "x",\n "stages": [}\n')
    assert re.match(r"line 2, column \d+: ", only_problem(path))


def test_empty_and_non_mapping_documents() -> None:
    assert "the spec is empty" in only_problem("")
    assert "expected a mapping" in only_problem("- name: x\n")


# --- rules: each message names the path and says what would be valid ----------------------------------


def with_(change: dict[str, Any]) -> dict[str, Any]:
    spec = minimal()
    spec.update(change)
    return spec


def with_stage(index: int, **fields: Any) -> dict[str, Any]:
    spec = minimal()
    spec["stages"][index].update(fields)
    return spec


def gradual(steps: list[Any], **more: Any) -> dict[str, Any]:
    return {"mode": "gradual", "steps": steps, **more}


RULES = [
    # (spec, path, words the message must contain)
    (with_({"name": "Checkout_Pricing"}), "name", ["lowercase letters, digits and hyphens"]),
    (with_({"name": "-edge"}), "name", ["starting and ending with a letter or digit"]),
    (with_({"name": "x" * 64}), "name", ["1-63"]),
    ({"stages": minimal()["stages"]}, "name", ["required", "e.g. name: checkout-pricing"]),
    ({"name": "x"}, "stages", ["required", "traffic: 10%"]),
    (with_({"stages": []}), "stages", ["at least one stage"]),
    (with_({"stages": {"traffic": "100%"}}), "stages", ["expected a list", "got a mapping"]),
    (with_({"stages": [{"traffic": "10%"}, "fast", {"traffic": "100%"}]}), "stages[1]", ["expected a mapping"]),
    (with_({"stages": [{"hold": "1m"}, {"traffic": "100%"}]}), "stages[0].traffic", ["required", "10%"]),
    (with_stage(0, traffic="150%"), "stages[0].traffic", ["above 100%"]),
    (with_stage(0, traffic="-1%"), "stages[0].traffic", ["below 0%"]),
    (with_stage(0, traffic=10), "stages[0].traffic", ["write 10%"]),
    (with_stage(0, shadow="lots"), "stages[0].shadow", ["not a percentage", "10%"]),
    (
        with_stage(1, traffic="5%"),
        "stages[1].traffic",
        ["5% is below the previous stage's 10%; traffic never decreases"],
    ),
    (with_stage(2, traffic="90%"), "stages[2].traffic", ["last stage must send 100%", "not 90%"]),
    (with_stage(0, name="Canary"), "stages[0].name", ["not a valid name"]),
    (
        {"name": "x", "stages": [{"name": "a", "traffic": "1%"}, {"name": "a", "traffic": "100%"}]},
        "stages[1].name",
        ["already the name of stages[0]", "unique"],
    ),
    (
        {"name": "x", "stages": [{"name": "stage-2", "traffic": "1%"}, {"traffic": "100%"}]},
        "stages[1]",
        ["default name 'stage-2'", "give this stage a name"],
    ),
    (
        with_stage(1, hold="ten minutes"),
        "stages[1].hold",
        ['"ten minutes" is not a duration; write e.g. 250ms, 30s, 5m, 1h30m'],
    ),
    (with_stage(1, hold="0s"), "stages[1].hold", ["not a positive duration"]),
    (with_stage(1, hold=-5), "stages[1].hold", ["negative"]),
    (with_stage(1, min_samples=-1), "stages[1].min_samples", ["whole number of 0 or more"]),
    (with_stage(1, min_samples=2.5), "stages[1].min_samples", ["whole number"]),
    (with_stage(1, approval="yes please"), "stages[1].approval", ["true or false"]),
    (with_stage(1, hodl="5m"), "stages[1].hodl", ["unknown key", "did you mean 'hold'?", "valid keys: name, traffic"]),
    (with_({"stagess": []}), "stagess", ["unknown key", "did you mean 'stages'?"]),
    ({"name": "x", "stagess": [{"traffic": "100%"}]}, "stagess", ["did you mean 'stages'?"]),
    (with_({"zzz": 1}), "zzz", ["unknown key", "valid keys: name, description"]),
    (with_({"gates": []}), "gates", ["expected a mapping"]),
    (with_({"gates": {"latency": {"quantile": "p97"}}}), "gates.latency.quantile", ["p50, p90, p95, p99", "0.95"]),
    (with_({"gates": {"latency": {"max_ratio": "fast"}}}), "gates.latency.max_ratio", ["not a ratio", "1.5"]),
    (with_({"gates": {"latency": {"max_ratio": 0}}}), "gates.latency.max_ratio", ["positive"]),
    (with_({"gates": {"latencyy": {}}}), "gates.latencyy", ["did you mean 'latency'?"]),
    (with_({"gates": {"cost": {}}}), "gates.cost.max_ratio", ["required", "1.5"]),
    (with_({"gates": {"cost": [1.5]}}), "gates.cost", ["expected a mapping, e.g. {max_ratio: 1.5}"]),
    (with_({"gates": {"error_rate": {"max_increase": 2}}}), "gates.error_rate.max_increase", ["write 2%"]),
    (with_({"gates": {"mismatch_rate": {"maximum": "1%"}}}), "gates.mismatch_rate.maximum", ["did you mean 'max'?"]),
    (with_({"triggers": {"metric": "error_rate"}}), "triggers", ["expected a list"]),
    (
        with_({"triggers": [{"metric": "errors", "above": "5%"}]}),
        "triggers[0].metric",
        ["did you mean 'error_rate'?", "known metrics: error_rate, timeout_rate"],
    ),
    (with_({"triggers": [{"metric": "error_rate"}]}), "triggers[0].above", ["required", "5%"]),
    (with_({"triggers": [{"metric": "error_rate", "above": 5}]}), "triggers[0].above", ["write 5%"]),
    (with_({"triggers": [{"metric": "latency_p95", "above": "5%"}]}), "triggers[0].above", ["not a duration"]),
    (with_({"triggers": [{"metric": "cost_ratio", "above": "2x"}]}), "triggers[0].above", ["not a ratio"]),
    (with_({"triggers": [{"metric": "error_rate", "above": "5%", "window": "soon"}]}), "triggers[0].window", ["30s"]),
    (with_({"triggers": [{"metric": "error_rate", "above": "5%", "for": 0}]}), "triggers[0].for", ["positive"]),
    (with_({"on_failure": "explode"}), "on_failure", ["rollback, step_back, pause"]),
    (with_({"rollback": {"mode": "slow"}}), "rollback.mode", ["immediate, gradual"]),
    (with_({"rollback": {"mode": "gradual"}}), "rollback.steps", ["needs steps"]),
    (with_({"rollback": {"steps": ["50%", "0%"]}}), "rollback.steps", ["only used by mode: gradual"]),
    (with_({"rollback": gradual(["50%", "50%", "0%"])}), "rollback.steps[1]", ["strictly decrease"]),
    (with_({"rollback": gradual(["50%", "10%"])}), "rollback.steps[1]", ["last step must be 0%", "not 10%"]),
    (with_({"rollback": gradual(["50%", "lots", "0%"])}), "rollback.steps[1]", ["not a percentage"]),
    (with_({"rollback": gradual(["50%", "0%"], every="often")}), "rollback.every", ["not a duration"]),
    (with_({"analysis": {"interval": "0ms"}}), "analysis.interval", ["positive"]),
    (with_({"analysis": {"confidence": "50%"}}), "analysis.confidence", ["between 50% and 100%"]),
    (with_({"analysis": {"confidence": "100%"}}), "analysis.confidence", ["between 50% and 100%"]),
    (with_({"analysis": {"on_nodata": "promote"}}), "analysis.on_nodata", ["hold, pause"]),
    (with_({"analysis": {"promote_when": "always"}}), "analysis.promote_when", ["no_regression, proven"]),
    (with_({"fallback": {"on_error": "sure"}}), "fallback.on_error", ["true or false"]),
    (with_({"fallback": {"timeout": "never"}}), "fallback.timeout", ["not a duration"]),
    (with_({"fallback": "legacy"}), "fallback", ["expected a mapping", "got text"]),
    (with_({"allow": ["a", "b"], "deny": ["b"]}), "deny[0]", ['"b" is also in allow']),
    (with_({"allow": [{"id": 1}]}), "allow[0]", ["text or a whole number"]),
    (with_({"deny": "alice"}), "deny", ["expected a list"]),
    (with_({"owner": ["a", "b"]}), "owner", ["expected text"]),
    (with_({"salt": ""}), "salt", ["non-empty"]),
    (with_({"notify": "ops"}), "notify", ["expected a list"]),
    (with_stage(0, shadow_legacy="lots"), "stages[0].shadow_legacy", ["not a percentage"]),
    (
        {"name": "x", "stages": [{"traffic": "0%", "shadow_legacy": "10%"}, {"traffic": "100%"}]},
        "stages[0].shadow_legacy",
        ["legacy serves every call at 0% traffic", "use shadow"],
    ),
    (with_stage(0, noise="5%"), "stages[0].noise", ["noise samples are taken from shadow runs", "shadow: 100%"]),
    (with_stage(0, noise=5), "stages[0].noise", ["write 5%"]),
    (with_stage(0, dual_write="yes"), "stages[0].dual_write", ["true or false"]),
    (with_({"shadow": {"threads": 0}}), "shadow.threads", ["whole number of 1 or more"]),
    (with_({"shadow": {"max_pending": "lots"}}), "shadow.max_pending", ["whole number of 1 or more"]),
    (with_({"shadow": {"timeout": "0s"}}), "shadow.timeout", ["not a positive duration"]),
    (with_({"shadow": {"noise_relative": 30}}), "shadow.noise_relative", ["write 30%"]),
    (with_({"shadow": {"timout": "1s"}}), "shadow.timout", ["did you mean 'timeout'?"]),
    (with_({"shadow": "on"}), "shadow", ["expected a mapping", "{timeout: 5s"]),
    (with_({"dual_write_retry": {"attempts": 0}}), "dual_write_retry.attempts", ["1 or more"]),
    (with_({"dual_write_retry": {"backoff": "soon"}}), "dual_write_retry.backoff", ["not a duration"]),
]


@pytest.mark.parametrize(("spec", "path", "words"), RULES, ids=[f"{i}-{rule[1]}" for i, rule in enumerate(RULES)])
def test_rule_message_names_the_path_and_what_is_valid(spec: dict[str, Any], path: str, words: list[str]) -> None:
    message = only_problem(spec)
    assert message.startswith(f"{path}: "), message
    for word in words:
        assert word in message, message


def test_problems_keep_their_paths_in_the_error() -> None:
    with pytest.raises(SpecError) as caught:
        load_spec(with_stage(1, traffic="5%"))
    assert caught.value.problems == (
        Problem("stages[1].traffic", "5% is below the previous stage's 10%; traffic never decreases"),
    )
    assert isinstance(caught.value, ValueError)


def test_many_problems_in_many_sections_are_all_reported() -> None:
    found = problems(
        {
            "name": "Bad",
            "stages": [{"traffic": "10%", "hodl": "5m"}, {"traffic": "5%"}, {"traffic": "100%"}],
            "gates": {"latency": {"quantile": "p97"}},
            "triggers": [{"metric": "errors", "above": "5%"}],
            "rollback": {"mode": "gradual", "steps": ["50%", "60%", "0%"]},
            "analysis": {"on_nodata": "promote"},
            "allow": ["a"],
            "deny": ["a"],
        }
    )
    assert [message.split(":")[0] for message in found] == [
        "name",
        "stages[0].hodl",
        "stages[1].traffic",
        "gates.latency.quantile",
        "triggers[0].metric",
        "rollback.steps[1]",
        "analysis.on_nodata",
        "deny[0]",
    ]


# --- units -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "seconds"),
    [
        ("250ms", 0.25),
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("2h", 7200.0),
        ("1d", 86400.0),
        ("1.5s", 1.5),
        ("1m30.5s", 90.5),
        ("1d2h3m4s5ms", 93784.005),
        (" 10m ", 600.0),
        (45, 45.0),
        (0.5, 0.5),
        ("12", 12.0),
    ],
)
def test_parse_duration(written: object, seconds: float) -> None:
    assert parse_duration(written) == seconds


@pytest.mark.parametrize(
    "bad", ["ten minutes", "", "m", "30m1h", "5 min", "1h1h", "-5s", True, None, [], float("nan"), -1]
)
def test_parse_duration_refuses_with_an_example(bad: object) -> None:
    with pytest.raises(ValueError, match=r"30s"):
        parse_duration(bad)


@pytest.mark.parametrize(
    ("seconds", "written"),
    [
        (5400, "1h30m"),
        (0.25, "250ms"),
        (30, "30s"),
        (0, "0s"),
        (1.5, "1.5s"),
        (86400, "1d"),
        (90.5, "1m30.5s"),
        (60.0, "1m"),
        (0.0005, "0.5ms"),
    ],
)
def test_format_duration(seconds: float, written: str) -> None:
    assert format_duration(seconds) == written


def test_format_duration_refuses_negative() -> None:
    with pytest.raises(ValueError):
        format_duration(-1)


@given(st.integers(min_value=0, max_value=400 * 86_400_000))
def test_duration_text_round_trips_to_the_millisecond(millis: int) -> None:
    seconds = millis / 1000
    text = format_duration(seconds)
    assert parse_duration(text) == pytest.approx(seconds, abs=1e-9)
    assert format_duration(parse_duration(text)) == text


@pytest.mark.parametrize(
    ("written", "fraction"),
    [
        ("2.5%", 0.025),
        (0.025, 0.025),
        (1, 1.0),
        (0, 0.0),
        ("100%", 1.0),
        ("0%", 0.0),
        ("0.01%", 0.0001),
        ("10 %", 0.1),
        ("0.5", 0.5),
    ],
)
def test_parse_percent(written: object, fraction: float) -> None:
    assert parse_percent(written) == fraction


def test_bare_number_above_one_suggests_a_percent_sign() -> None:
    with pytest.raises(ValueError, match="write 50% if you mean a percentage"):
        parse_percent(50)
    with pytest.raises(ValueError, match="write 2.5%"):
        parse_percent(2.5)


@pytest.mark.parametrize("bad", ["abc", "101%", "-1%", -0.1, True, None, "%", float("inf")])
def test_parse_percent_refuses(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_percent(bad)


@pytest.mark.parametrize(
    ("fraction", "written"), [(0.025, "2.5%"), (0.1, "10%"), (0.0001, "0.01%"), (1.0, "100%"), (0.0, "0%")]
)
def test_format_percent(fraction: float, written: str) -> None:
    assert format_percent(fraction) == written


@given(st.integers(min_value=0, max_value=1_000_000))
def test_percent_text_round_trips(millionths: int) -> None:
    fraction = millionths / 1_000_000
    assert parse_percent(format_percent(fraction)) == pytest.approx(fraction, abs=1e-12)
    assert parse_percent(fraction) == fraction


# --- the model -------------------------------------------------------------------------------------------


def test_stage_thresholds_are_out_of_ten_thousand() -> None:
    spec = load_spec(FULL)
    assert [stage.threshold for stage in spec.stages] == [0, 100, 1000, 2500, 5000, 10000]
    assert spec.stages[0].shadow_threshold == 10000
    assert Stage("s", parse_percent("0.01%")).threshold == 1
    assert Stage("s", 0.07).threshold == 700


def test_stage_index() -> None:
    assert FULL_SPEC.stage_index("canary-10") == 2
    with pytest.raises(KeyError, match="shadow, canary-1"):
        FULL_SPEC.stage_index("nope")


def test_models_are_immutable() -> None:
    with pytest.raises(AttributeError):
        FULL_SPEC.name = "other"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        FULL_SPEC.stages[0].traffic = 1.0  # type: ignore[misc]


def test_to_dict_is_plain_json_and_round_trips() -> None:
    for spec in (FULL_SPEC, load_spec(MINIMAL), load_spec({**minimal(), "gates": {}})):
        plain = spec.to_dict()
        assert json.loads(json.dumps(plain)) == plain
        assert load_spec(plain) == spec
        assert load_spec(yaml.safe_dump(plain)) == spec
    assert FULL_SPEC.to_dict()["stages"][0] == {
        "name": "shadow",
        "traffic": 0.0,
        "shadow": 1.0,
        "hold": 600.0,
        "min_samples": 0,
        "approval": False,
        "noise": 0.1,
        "dual_write": True,
    }
    assert FULL_SPEC.to_dict()["triggers"][1]["for"] == 180.0


def test_digest_is_the_sha256_of_canonical_json() -> None:
    import hashlib

    from crossfade.events import canonical_json

    canonical = json.dumps(FULL_SPEC.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert FULL_SPEC.digest() == hashlib.sha256(canonical.encode()).hexdigest()
    unicode = load_spec({"name": "m", "owner": "équipe paiements", "stages": [{"traffic": "100%"}]})
    assert unicode.digest() == hashlib.sha256(canonical_json(unicode.to_dict()).encode()).hexdigest()
    assert load_spec(EXAMPLE).digest() == FULL_SPEC.digest()
    assert load_spec(FULL.replace("hold: 4h", "hold: 3h")).digest() != FULL_SPEC.digest()


def test_settings_added_later_are_left_out_at_their_defaults_so_old_digests_hold() -> None:
    plain = load_spec(MINIMAL).to_dict()
    assert "shadow" not in plain and "dual_write_retry" not in plain
    assert set(plain["stages"][0]) == {"name", "traffic", "shadow", "min_samples", "approval"}
    # The digest the first release computed for this spec, before shadow settings existed.
    assert load_spec(MINIMAL).digest() == "1c3231bdd34a4dc4a083ddbbb372fc7458f16234bbaabd7bd7e195c283d96a49"


@st.composite
def spec_dicts(draw: st.DrawFn) -> dict[str, Any]:
    """Valid specs in the YAML vocabulary: percent text, duration text, optional sections."""
    levels = sorted(draw(st.lists(st.integers(0, 9999), max_size=6))) + [10000]
    stages = []
    for index, level in enumerate(levels):
        stage: dict[str, Any] = {"traffic": format_percent(level / 10000)}
        if draw(st.booleans()):
            stage["name"] = f"s{index}"
        if draw(st.booleans()):
            stage["hold"] = format_duration(draw(st.integers(1, 10**8)) / 1000)
        if level == 0 and index < len(levels) - 1:
            stage["shadow"] = draw(st.integers(1, 10000)) / 10000  # a 0% stage without shadow is refused
        elif draw(st.booleans()):
            stage["shadow"] = draw(st.integers(0, 10000)) / 10000
        if level > 0 and draw(st.booleans()):
            stage["shadow_legacy"] = draw(st.integers(1, 10000)) / 10000
            stage["noise"] = draw(st.sampled_from(["0%", "5%", 0.5]))
        stage["dual_write"] = draw(st.booleans())
        stage["min_samples"] = draw(st.integers(0, 10**6))
        stage["approval"] = draw(st.booleans())
        stages.append(stage)
    spec: dict[str, Any] = {"name": draw(st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True))}
    spec["stages"] = stages
    if draw(st.booleans()):
        spec["gates"] = draw(
            st.fixed_dictionaries(
                {},
                optional={
                    "error_rate": st.builds(lambda n: {"max_increase": f"{n}%"}, st.integers(0, 100)),
                    "latency": st.builds(
                        lambda q, r: {"quantile": q, "max_ratio": r},
                        st.sampled_from(["p50", "p90", "p95", "p99", 0.75]),
                        st.floats(1.0, 10.0),
                    ),
                    "cost": st.builds(lambda r: {"max_ratio": r}, st.floats(0.1, 10.0)),
                    "mismatch_rate": st.builds(lambda n: {"max": n / 100}, st.integers(0, 100)),
                },
            )
        )
    shadowed = any(s.get("shadow") or s.get("shadow_legacy") for s in stages[:-1])
    if not shadowed and "mismatch_rate" in spec.get("gates", {}):
        del spec["gates"]["mismatch_rate"]  # refused: no stage compares answers
    spec["triggers"] = draw(
        st.lists(
            st.one_of(
                st.builds(lambda n: {"metric": "error_rate", "above": f"{n}%"}, st.integers(0, 100)),
                st.builds(lambda ms: {"metric": "latency_p99", "above": f"{ms}ms", "for": "1m"}, st.integers(1, 10**5)),
                st.builds(lambda r: {"metric": "cost_ratio", "above": r, "window": 90}, st.floats(0.5, 5.0)),
            ),
            max_size=3,
        )
    )
    if draw(st.booleans()):
        spec["rollback"] = {"mode": "gradual", "steps": ["50%", "5%", "0%"], "every": "30s"}
    spec["on_failure"] = draw(st.sampled_from(["rollback", "step_back", "pause"]))
    spec["allow"] = draw(st.lists(st.text("abc", min_size=1, max_size=3), max_size=3, unique=True))
    spec["deny"] = draw(st.lists(st.integers(0, 99), max_size=3, unique=True))
    return spec


@settings(deadline=None)  # a loaded machine (both cores busy) takes 400 ms for an example
@given(spec_dicts())
def test_any_valid_spec_round_trips_through_to_dict_yaml_and_json(data: dict[str, Any]) -> None:
    spec = load_spec(data)
    assert load_spec(spec.to_dict()) == spec
    assert load_spec(yaml.safe_dump(spec.to_dict())) == spec
    assert load_spec(spec.to_dict()).digest() == spec.digest()
    traffic = [stage.traffic for stage in spec.stages]
    assert traffic == sorted(traffic) and traffic[-1] == 1.0


# --- JSON Schema -----------------------------------------------------------------------------------------


def _validate(instance: Any, schema: dict[str, Any], root: dict[str, Any], path: str = "") -> list[str]:
    """Errors of ``instance`` against the subset of JSON Schema that json_schema() uses (no jsonschema needed)."""
    if "$ref" in schema:
        target = root
        for part in schema["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        errors = _validate(instance, target, root, path)
        schema = {k: v for k, v in schema.items() if k != "$ref"}
    else:
        errors = []
    types = {"object": dict, "array": list, "string": str, "boolean": bool, "integer": int, "number": (int, float)}
    if "type" in schema:
        wanted = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if isinstance(instance, bool):
            ok = "boolean" in wanted
        else:
            ok = any(isinstance(instance, types[t]) for t in wanted)
        if not ok:
            return errors + [f"{path}: not {wanted}"]
    if "enum" in schema and instance not in schema["enum"]:
        errors.append(f"{path}: not in enum")
    if "pattern" in schema and isinstance(instance, str) and not re.search(schema["pattern"], instance):
        errors.append(f"{path}: does not match {schema['pattern']}")
    if isinstance(instance, (int, float)) and not isinstance(instance, bool):
        for key, check in {
            "minimum": lambda v, b: v >= b,
            "maximum": lambda v, b: v <= b,
            "exclusiveMinimum": lambda v, b: v > b,
            "exclusiveMaximum": lambda v, b: v < b,
        }.items():
            if key in schema and not check(instance, schema[key]):
                errors.append(f"{path}: violates {key}")
    if isinstance(instance, list):
        if len(instance) < schema.get("minItems", 0):
            errors.append(f"{path}: too few items")
        for index, item in enumerate(instance):
            errors += _validate(item, schema.get("items", {}), root, f"{path}[{index}]")
    if isinstance(instance, dict):
        properties = schema.get("properties", {})
        errors += [f"{path}: missing {key}" for key in schema.get("required", []) if key not in instance]
        for key, value in instance.items():
            if key in properties:
                errors += _validate(value, properties[key], root, f"{path}.{key}")
            elif schema.get("additionalProperties") is False:
                errors.append(f"{path}: unexpected {key}")
    if "anyOf" in schema and all(_validate(instance, option, root, path) for option in schema["anyOf"]):
        errors.append(f"{path}: matches no anyOf option")
    for part in schema.get("allOf", []):
        if "if" in part:
            if not _validate(instance, part["if"], root, path):
                errors += _validate(instance, part["then"], root, path)
        else:
            errors += _validate(instance, part, root, path)
    return errors


def test_schema_structure() -> None:
    schema = json_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["required"] == ["name", "stages"]
    # routers, source, bake and metrics are left out of to_dict() when unset (the digest of a spec without them
    # stays as it was).
    assert set(schema["properties"]) == set(FULL_SPEC.to_dict()) | {"routers", "source", "bake", "metrics"}
    assert json.loads(json.dumps(schema)) == schema
    assert json_schema() is not json_schema(), "callers may change their copy"

    def objects(node: Any) -> list[dict[str, Any]]:
        found = []
        if isinstance(node, dict):
            if node.get("type") == "object":
                found.append(node)
            for value in node.values():
                found += objects(value)
        elif isinstance(node, list):
            for value in node:
                found += objects(value)
        return found

    every_object = objects(schema)
    assert len(every_object) >= 10
    assert all(node["additionalProperties"] is False and node.get("description") for node in every_object)
    stage = schema["properties"]["stages"]["items"]
    assert set(stage["properties"]) == {
        "name", "traffic", "shadow", "hold", "min_samples", "approval", "shadow_legacy", "noise", "dual_write",
    }
    assert stage["required"] == ["traffic"]
    assert schema["properties"]["on_failure"]["enum"] == ["rollback", "step_back", "pause"]


@pytest.mark.parametrize("good", ["250ms", "30s", "5m", "1h30m", "1d", "1.5s", "1m30.5s"])
def test_schema_duration_pattern_matches_what_the_loader_accepts(good: str) -> None:
    pattern = json_schema()["$defs"]["duration"]["anyOf"][0]["pattern"]
    assert re.search(pattern, good)
    for bad in ["", "ten minutes", "30m1h", "5 min", "m"]:
        assert not re.search(pattern, bad), bad


def test_schema_accepts_the_examples_and_canonical_form() -> None:
    schema = json_schema()
    for instance in (yaml.safe_load(FULL), yaml.safe_load(EXAMPLE), yaml.safe_load(MINIMAL), FULL_SPEC.to_dict()):
        assert _validate(instance, schema, schema) == []


def test_schema_rejects_what_the_loader_rejects() -> None:
    schema = json_schema()
    for bad in (
        with_stage(0, hodl="5m"),
        with_stage(0, hold="ten minutes"),
        with_({"on_failure": "explode"}),
        with_({"triggers": [{"metric": "latency_p95", "above": "5%"}]}),
        {"stages": [{"traffic": "100%"}]},
    ):
        assert _validate(bad, schema, schema), bad


def test_schema_with_jsonschema() -> None:
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is not installed; the tests above stand in")
    schema = json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    validator.validate(yaml.safe_load(FULL))
    validator.validate(FULL_SPEC.to_dict())
    assert not validator.is_valid(copy.deepcopy(with_stage(0, hodl="5m")))


# --- hostile specs: every field bounded, nothing hangs or crashes, validate and apply agree ---------------

HOSTILE = {
    "hold: 99999999999999999999d": with_stage(0, hold="99999999999999999999d"),
    "hold: 1.7e308": with_stage(0, hold=1.7e308),
    "interval: 1e-300": with_({"analysis": {"interval": 1e-300}}),
    "shadow.threads: 10**9": with_({"shadow": {"threads": 10**9}}),
    "shadow.threads: 10000": with_({"shadow": {"threads": 10_000}}),
    "max_pending: 10**12": with_({"shadow": {"max_pending": 10**12}}),
    "examples: 10**9": with_({"shadow": {"examples": 10**9}}),
    "fallback.timeout: 1e300": with_({"fallback": {"timeout": 1e300}}),
    "dual_write_retry.attempts: 10**6": with_({"dual_write_retry": {"attempts": 10**6}}),
    "dual_write_retry.backoff: 1d": with_({"dual_write_retry": {"backoff": "1d"}}),
    "max_ratio: 1e308": with_({"gates": {"cost": {"max_ratio": 1e308}}}),
    "min_samples: 10**30": with_stage(0, min_samples=10**30),
    "trigger window: 10**20s": with_({"triggers": [{"metric": "error_rate", "above": "5%", "window": 10**20}]}),
    "lone surrogate in description": with_({"description": "caf\udce9"}),
    "NUL in owner": with_({"owner": "a\x00b"}),
    "huge description": with_({"description": "x" * 100_001}),
    "notify nested 400 deep": with_({"notify": [functools.reduce(lambda a, _: {"a": a}, range(400), {})]}),
    "a date in notify": with_({"notify": [{"at": datetime.date(2024, 1, 1)}]}),
    "1000 stages": with_({"stages": [{"traffic": "100%", "name": f"s{i}"} for i in range(1000)]}),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_values_are_refused_with_a_spec_error(name: str) -> None:
    assert problems(HOSTILE[name])


def _bomb(under: str) -> str:
    levels = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, 10):
        previous = f"*a{i - 1}"
        levels.append(f"a{i}: &a{i} [{', '.join([previous] * 9)}]")
    anchors = "\n".join(f"x-{line}" for line in levels)  # unknown keys hold the anchors
    return f"{anchors}\nname: bomb\nstages: [{{traffic: 100%}}]\n{under}: *a9\n"


@pytest.mark.parametrize("under", ["notify", "allow"])
def test_yaml_alias_bombs_are_refused_not_expanded(under: str) -> None:
    found = problems(_bomb(under))
    assert any("values" in p for p in found), found


def test_a_bomb_under_traffic_and_a_self_referencing_document_are_refused() -> None:
    bomb = _bomb("notify").replace("notify: *a9", "").replace("stages: [{traffic: 100%}]",
                                                             "stages: [{traffic: *a9}]")
    assert any("values" in p for p in problems(bomb))
    assert problems("&loop [*loop]")
    assert problems("name: x\nstages: &s [{traffic: 100%, name: *s}]\n")


def test_deep_yaml_and_json_are_spec_errors(tmp_path: Path) -> None:
    assert problems("[" * 100_000 + "]" * 100_000)
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    assert problems(deep)


def test_values_at_the_bounds_load_and_round_trip() -> None:
    spec = load_spec(with_({"shadow": {"threads": 64, "max_pending": 100_000, "examples": 1000},
                            "analysis": {"interval": "100ms"}, "stages": [{"traffic": "100%", "hold": "366d"}]}))
    assert load_spec(spec.to_dict()) == spec


@pytest.mark.parametrize("name", list(HOSTILE))
def test_validate_and_apply_agree_on_every_hostile_spec(name: str, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from crossfade.cli import app

    data = HOSTILE[name]
    try:
        text = json.dumps(data)
    except (TypeError, ValueError):
        text = yaml.safe_dump(data)
    path = tmp_path / "spec.yaml"
    try:
        path.write_text(text, encoding="utf-8")
    except UnicodeEncodeError:
        pytest.skip("a lone surrogate cannot be written to a file; load_spec refuses it from a dict")
    runner = CliRunner()
    validated = runner.invoke(app, ["validate", str(path)])
    applied = runner.invoke(app, ["apply", str(path), "--url", f"sqlite:///{tmp_path / 'cf.db'}"])
    assert (validated.exit_code == 0) == (applied.exit_code == 0), (validated.output, applied.output)
    assert validated.exception is None or isinstance(validated.exception, SystemExit)
    assert applied.exception is None or isinstance(applied.exception, SystemExit)


def test_routers_are_kept_raw_checked_by_their_modules_and_left_out_when_empty() -> None:
    routers = [{"nginx": {"conf": "/etc/nginx/conf.d/checkout.conf", "listen": "127.0.0.1:8080",
                          "legacy": ["127.0.0.1:8001"], "candidate": "127.0.0.1:8002"}}]
    spec = load_spec({"name": "m", "stages": [{"traffic": "100%"}], "routers": routers})
    assert spec.routers == tuple(routers) and spec.to_dict()["routers"] == routers
    assert load_spec(spec.to_dict()) == spec
    assert "routers" not in load_spec({"name": "m", "stages": [{"traffic": "100%"}]}).to_dict()
    with pytest.raises(SpecError) as caught:
        load_spec({"name": "m", "stages": [{"traffic": "100%"}], "routers": [{"ngnix": {}}, "istio"]})
    text = str(caught.value)
    assert "routers[0].ngnix: unknown router 'ngnix' (did you mean 'nginx'?)" in text
    assert "routers[1]: expected one router as {name: {settings}}" in text
    with pytest.raises(SpecError, match="routers: expected a list"):
        load_spec({"name": "m", "stages": [{"traffic": "100%"}], "routers": {"nginx": {}}})


def test_stages_that_can_never_have_data_are_refused_with_the_fix():
    empty = only_problem({"name": "m", "stages": [{"traffic": "0%"}, {"traffic": "100%"}]})
    assert empty.startswith("stages[0]: at 0% traffic without shadow") and "add shadow: 100%" in empty
    full = only_problem({"name": "m", "stages": [{"traffic": "100%"}, {"traffic": "100%"}]})
    assert full.startswith("stages[0].traffic: at 100% before the last stage") and "shadow_legacy" in full
    load_spec({"name": "m", "stages": [{"traffic": "0%", "shadow": "100%"},
                                       {"traffic": "100%", "shadow_legacy": "10%"}, {"traffic": "100%"}]})


def test_a_mismatch_gate_without_a_shadow_stage_is_accepted_for_the_answers_a_validator_compares():
    # A batch migration's validator compares every item it writes: its stages need no shadow.
    spec = load_spec({**minimal(), "gates": {"mismatch_rate": {"max": "1%"}}})
    assert spec.gates.mismatch_rate.max == 0.01


def test_on_inconclusive_and_max_stage_time_are_read_and_checked():
    spec = load_spec({**minimal(), "analysis": {"on_inconclusive": "pause", "max_stage_time": "6h"}})
    assert (spec.analysis.on_inconclusive, spec.analysis.max_stage_time) == ("pause", 6 * 3600.0)
    assert spec.to_dict()["analysis"]["on_inconclusive"] == "pause"
    assert "on_inconclusive" not in load_spec(minimal()).to_dict()["analysis"]
    bad = only_problem({**minimal(), "analysis": {"on_inconclusive": "maybe"}})
    assert bad.startswith("analysis.on_inconclusive:") and "hold" in bad and "promote" in bad


def test_a_source_names_one_registered_source_whose_settings_it_checks() -> None:
    assert load_spec(minimal()).source is None and "source" not in load_spec(minimal()).to_dict()
    telemetry = load_spec({**minimal(), "source": {"telemetry": {}}})
    assert telemetry.source == {"telemetry": {}} and load_spec(telemetry.to_dict()) == telemetry
    for source, path, message in (
        ({"prometheus": {}, "telemetry": {}}, "source", "expected one metric source"),
        ({"prometheus": "http://p:9090"}, "source.prometheus", "settings as a mapping"),
        ({"graphite": {}}, "source.graphite", "known: prometheus, telemetry"),
        ({"prometheus": {"url": "http://p:9090", "preset": "istio", "step": 0}}, "source.prometheus.step", "between"),
    ):
        with pytest.raises(SpecError) as caught:
            load_spec({**minimal(), "source": source})
        assert any(p.path == path and message in p.message for p in caught.value.problems), caught.value.problems
