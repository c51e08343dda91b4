"""The notify package: targets read from a spec's `notify:`, what each event means to a person, and the
message with its stable idempotency key."""

from __future__ import annotations

import pytest

from crossfade.events import Event
from crossfade.notify import (
    KINDS,
    Notification,
    kinds_of,
    notification,
    registry,
    targets,
)
from crossfade.registry import ProviderConfigError


def event(type: str, seq: int = 5, reason: str | None = "why", **payload) -> Event:
    return Event.create("m", seq, type, time=100.0, actor="controller", reason=reason, payload=payload,
                        prev_hash="0" * 64)


def test_every_channel_is_found_by_its_file() -> None:
    assert registry.names() == ["email", "pagerduty", "slack", "webhook"]


def test_targets_default_to_every_kind_and_take_a_name() -> None:
    [hook, slack] = targets([{"webhook": {"url": "https://x.example/h"}},
                             {"name": "ops", "slack": {"url_env": "S"}, "events": ["rolled_back"]}])
    assert (hook.name, hook.channel, hook.kinds) == ("webhook", "webhook", KINDS)
    assert (slack.name, slack.wants("rolled_back"), slack.wants("paused"), slack.wants("test")) == \
        ("ops", True, False, True)


def test_target_problems_are_all_reported_with_paths() -> None:
    with pytest.raises(ProviderConfigError) as caught:
        targets([{"webhook": {"url": "https://x"}, "slack": {"url_env": "S"}}, {"events": ["paused"]},
                 {"webhook": {"url": "https://x"}}, {"webhook": {"url": "https://y"}}, {"name": "Bad Name", "teams": {}}])
    problems = [str(p) for p in caught.value.problems]
    assert problems[0].startswith("notify[0]: names 2 channels (webhook, slack)")
    assert problems[1].startswith("notify[1]: names no channel; a target names exactly one of: email, pagerduty")
    assert problems[2] == "notify[3].name: 'webhook' names two targets; give each its own name"
    assert problems[3].startswith("notify[4].name: 'Bad Name' is not a name")


def test_kinds_of_events() -> None:
    assert kinds_of(event("rolled_back", from_stage="ten", triggers=["error rate 9% > 5%"])) == \
        ["rolled_back", "trigger_fired"]
    assert kinds_of(event("promoted", stage_index=3, stage="all", traffic=1.0, final=True)) == ["completed"]
    assert kinds_of(event("promoted", stage_index=1, stage="ten", traffic=0.1)) == []
    assert kinds_of(event("verdict", gates=[{"gate": "latency", "verdict": "FAIL"}])) == ["gate_failed"]
    assert kinds_of(event("verdict", gates=[{"gate": "latency", "verdict": "PASS"}])) == []
    assert kinds_of(event("router_failed", router="istio")) == ["router_failed"]
    assert kinds_of(event("source_failed", source="prometheus")) == ["source_failed"]


def test_a_notification_says_what_happened_and_keeps_its_key() -> None:
    rolled = event("rolled_back", from_stage="ten", from_traffic=0.1, reason="error rate 3.1% > 1%")
    note = notification(rolled, "rolled_back", "ops", link="https://cf/#/m/m")
    assert note.summary == "m rolled back to legacy from stage ten: error rate 3.1% > 1%"
    assert note.key == f"m:5:{rolled.hash[:16]}:rolled_back:ops" == notification(rolled, "rolled_back", "ops").key
    assert note.facts == {"from_stage": "ten", "from_traffic": 0.1}
    assert Notification.from_dict(note.to_dict()) == note
    failed = event("verdict", stage="ten", gates=[{"gate": "error_rate", "verdict": "FAIL", "estimate": 0.03},
                                                  {"gate": "latency", "verdict": "PASS"}])
    assert notification(failed, "gate_failed", "ops").facts["gates"] == [
        {"gate": "error_rate", "verdict": "FAIL", "estimate": 0.03}]
