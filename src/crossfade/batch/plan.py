"""What a batch migration decides, as pure functions: which items a stage takes, whether a spec can judge a
batch, and the changes (verdicts, promotion, approval request, rollback) after some of a stage's items.

A stage of a batch is a share of the items, chosen by the same sticky bucketing as traffic: an item whose
bucket is below the stage's threshold belongs to it or to an earlier stage. The candidate arm's cell counts
items: `calls` items tried, `errors` items whose transform failed (after retries), `compared` items
validated and `mismatches` items the validator rejected, and the latency sketch the transform's time.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Final

from crossfade.events import (
    AWAITING_APPROVAL,
    COMPLETED,
    PAUSED,
    ROLLED_BACK,
    RUNNING,
    VERDICT,
    Change,
    State,
    promote_change,
    request_approval_change,
)
from crossfade.judge import Firing, Judgement, format_rate
from crossfade.routing import bucket, threshold
from crossfade.spec import Spec, format_duration, format_percent

# The gates that compare the candidate with legacy calls; a batch has no legacy calls to compare with.
_ARM_GATES: Final = {"error_rate": "error_rate", "latency": "latency_p95", "cost": None}
_BATCH_TRIGGERS: Final = ("error_rate", "timeout_rate", "mismatch_rate", "latency_p50", "latency_p90",
                          "latency_p95", "latency_p99")

BATCH_RESTORED: Final = "batch_restored"
"""Event type recorded when a rolled-back batch has put every touched item back."""


def check_spec(spec: Spec) -> None:
    """Refuse a spec a batch cannot judge, saying what to write instead."""
    for gate, metric in _ARM_GATES.items():
        if getattr(spec.gates, gate) is not None:
            instead = (f"watch it with a trigger (triggers: [{{metric: {metric}, above: ...}}])" if metric
                       else "a batch has no cost to compare")
            raise ValueError(
                f"batch migration {spec.name}: gates.{gate} compares the candidate with legacy calls, and a batch "
                f"has none; {instead}, and judge validation failures with gates.mismatch_rate "
                "(a spec that says nothing about gates gets error_rate and latency: write gates: {mismatch_rate: "
                "{max: 1%}} or gates: {})"
            )
    if spec.bake:
        raise ValueError(f"batch migration {spec.name}: bake {format_duration(spec.bake)} judges the calls the last "
                         "stage keeps serving after its promotion, and a batch's last stage ends when its items are "
                         "done, with nothing after them to judge; remove bake: (the gates and triggers judge every "
                         "item of the last stage before the batch completes)")
    for index, trigger in enumerate(spec.triggers):
        if trigger.metric not in _BATCH_TRIGGERS:
            raise ValueError(f"batch migration {spec.name}: triggers[{index}].metric {trigger.metric} compares with "
                             f"legacy calls; a batch can watch {', '.join(_BATCH_TRIGGERS)}")


def stage_of(salt: str, key: str, limit: int) -> bool:
    """True when an item belongs to a stage whose threshold (in buckets) is `limit`, or to one before it."""
    return bucket(salt, key) < limit


def stage_limit(spec: Spec, state: State) -> int:
    """The bucket threshold of the stage the migration stands at."""
    return threshold(spec.stages[state.stage_index].traffic)


def in_items(judgement: Judgement) -> Judgement:
    """The judgement worded for items: the mismatch gate counts the items the validator refused."""
    gates = []
    for g in judgement.gates:
        if g.gate == "mismatch_rate" and g.estimate is not None and g.lower is not None and g.upper is not None:
            where = {"FAIL": "is above", "PASS": "is within"}.get(g.verdict, "may exceed")
            level = f"{g.confidence * 100:.4f}".rstrip("0").rstrip(".")
            g = replace(g, message=(
                f"the validator refused {format_rate(g.estimate)} of {g.candidate_samples} items ({level}% CS "
                f"{format_rate(g.lower)}..{format_rate(g.upper)}) {where} the allowed {format_percent(g.limit)}"))
        gates.append(g)
    return replace(judgement, gates=tuple(gates))


def verdict_change(state: State, judgement: Judgement) -> Change | None:
    """The verdict event when the gates' verdicts changed since the last one recorded."""
    if judgement.summary() == state.verdicts:
        return None
    payload = {"stage": state.stage, "look": judgement.look, "gates": [g.to_dict() for g in judgement.gates],
               "sample_ratio": None, "latency_shift": None}
    return Change(VERDICT, ", ".join(f"{g.gate} {g.verdict}" for g in judgement.gates), payload)


def failure_change(spec: Spec, state: State, reason: str) -> Change:
    """What a failing batch does: pause (`on_failure: pause`) or roll back and restore every item at once.

    Stepping back a stage or a gradual rollback has no meaning for items already written.
    """
    if spec.on_failure == "pause":
        return Change(PAUSED, reason, {"stage": state.stage})
    return Change(ROLLED_BACK, reason, {"from_stage": state.stage, "from_traffic": state.traffic})


def during_stage(spec: Spec, state: State, judgement: Judgement, firings: tuple[Firing, ...]) -> list[Change]:
    """The changes after a batch of a stage's items: a new verdict, and a failure when a gate fails or a
    trigger fires (confidence sequences may be looked at after every item)."""
    judgement = in_items(judgement)
    changes = [c for c in (verdict_change(state, judgement),) if c is not None]
    reasons = [f.message for f in firings] + [g.message for g in judgement.failed]
    if reasons:
        changes.append(failure_change(spec, state, "; ".join(reasons)))
    return changes


def after_stage(spec: Spec, state: State, judgement: Judgement, firings: tuple[Firing, ...],
                counts: Mapping[str, int]) -> list[Change]:
    """The changes once every item of the stage is done: a failure, or the next stage (asking for an
    approval first when the spec says so). `counts` are the stage's items by outcome, for the reason."""
    changes = during_stage(spec, state, judgement, firings)
    failed = bool(changes) and changes[-1].type != VERDICT
    if failed or state.status != RUNNING:
        return changes
    if state.stage_index + 1 >= len(spec.stages):
        return changes
    past = in_items(judgement).past_limit
    if past and spec.analysis.on_inconclusive != "promote":
        # A traffic stage would wait for more evidence; a batch stage has no more items to give. An estimate
        # past its limit is never promoted (unless the spec says on_inconclusive: promote): it fails.
        reason = "the stage's items ran out with an estimate past its limit: " + "; ".join(g.message for g in past)
        return changes + [failure_change(spec, state, reason)]
    if spec.analysis.promote_when == "proven":
        unproven = [g.gate for g in judgement.gates if g.verdict != "PASS"]
        if unproven:
            return changes + [Change(PAUSED, f"stage {state.stage} done but {', '.join(unproven)} not yet PASS "
                                     "(analysis.promote_when: proven)", {"stage": state.stage})]
    gates = ", ".join(f"{g.gate} {g.verdict}" for g in judgement.gates) or "no gates"
    done = ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "no items"
    reason = f"{state.stage}: every item done ({done}); {gates}"
    if spec.stages[state.stage_index + 1].approval:
        return changes + [request_approval_change(state, spec, reason)]
    return changes + [promote_change(state, spec, reason)]


def working(state: State) -> bool:
    """True when the batch should process items: running, or completed with its last stage's items left."""
    return state.status in (RUNNING, COMPLETED)


def waiting(state: State) -> bool:
    """True when the batch waits for a person (an approval, or a resume after a pause)."""
    return state.status in (AWAITING_APPROVAL, "paused")
