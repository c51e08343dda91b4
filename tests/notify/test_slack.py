"""Slack: the incoming-webhook message (verdict sentence, gate numbers, dashboard link), its URL from the
environment, posted to a real HTTP receiver standing in for Slack."""

from __future__ import annotations

import json

import pytest

from crossfade.notify import DeliveryError, Notification
from crossfade.notify.slack import create
from crossfade.registry import ProviderConfigError

GATE = {"gate": "error_rate", "verdict": "FAIL", "estimate": 0.031, "lower": 0.012, "upper": 0.05, "limit": 0.01}
NOTE = Notification(key="k", event_id="m:4:x", migration="m", seq=4, kind="gate_failed", event_type="verdict",
                    time=1.0, actor="controller", summary="m: gate error_rate FAILs in stage 10%",
                    facts={"gates": [GATE]}, link="https://cf.example.com/#/m/m")


def test_the_message_carries_the_sentence_numbers_and_link(receiver, monkeypatch) -> None:
    monkeypatch.setenv("SLACK_URL", receiver.url + "/services/T0/B0/xyz")
    slack = create({"url_env": "SLACK_URL", "channel": "#ci-migration"}, "notify[0].slack")
    assert slack.describe() == "#ci-migration (Slack)"
    slack.send(NOTE, timeout=5)
    [(path, _, body)] = receiver.wait_for(1)
    message = json.loads(body)
    assert path == "/services/T0/B0/xyz"
    assert "gate error_rate FAILs" in message["text"]
    shown = json.dumps(message["blocks"])
    assert "0.031 [0.012, 0.05], limit 0.01" in shown and "<https://cf.example.com/#/m/m|dashboard>" in shown


def test_an_unset_url_variable_fails_delivery_without_naming_the_secret(monkeypatch) -> None:
    monkeypatch.delenv("SLACK_URL", raising=False)
    with pytest.raises(DeliveryError, match="SLACK_URL is not set"):
        create({"url_env": "SLACK_URL"}, "s").send(NOTE, timeout=5)


def test_a_url_in_the_spec_is_refused() -> None:
    with pytest.raises(ProviderConfigError, match=r"notify\[0\].slack.url: unknown setting"):
        create({"url": "https://hooks.slack.com/services/secret"}, "notify[0].slack")
