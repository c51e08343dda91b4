"""PagerDuty Events v2: a rollback triggers an incident, completion resolves the same one (its dedup key)."""

from __future__ import annotations

import json

import pytest

from crossfade.notify import Notification
from crossfade.notify.pagerduty import create
from crossfade.registry import ProviderConfigError


def note(kind: str) -> Notification:
    return Notification(key=f"m:1:x:{kind}:pd", event_id="m:1:x", migration="m", seq=1, kind=kind, event_type=kind,
                        time=1.0, actor="controller", summary=f"m {kind}", reason="why")


def test_trigger_then_resolve_one_incident(receiver, monkeypatch) -> None:
    monkeypatch.setenv("PD_KEY", "R0UTING")
    pd = create({"routing_key_env": "PD_KEY", "url": receiver.url + "/v2/enqueue"}, "notify[0].pagerduty")
    for kind in ("rolled_back", "paused", "completed"):
        pd.send(note(kind), timeout=5)
    sent = [json.loads(body) for _, _, body in receiver.wait_for(2)]
    assert [s["event_action"] for s in sent] == ["trigger", "resolve"]  # pausing is not PagerDuty's business
    assert {s["dedup_key"] for s in sent} == {"crossfade/m"} and sent[0]["routing_key"] == "R0UTING"
    assert sent[0]["payload"]["severity"] == "critical" and sent[0]["payload"]["summary"] == "m rolled_back"


def test_a_bad_severity_is_refused() -> None:
    with pytest.raises(ProviderConfigError, match=r"notify\[1\].pagerduty.severity: one of critical"):
        create({"routing_key_env": "PD_KEY", "severity": "urgent"}, "notify[1].pagerduty")
