"""PagerDuty Events API v2: trigger an incident when a migration rolls back or fails, resolve it when the
migration completes or restarts. One incident per migration (its dedup key), so retries and repeated
failures fold into it."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from crossfade.notify import ALARMS, COMPLETED, TEST, Notification, Settings, secret
from crossfade.notify._http import post
from crossfade.registry import ConfigProblem

EVENTS_URL: Final = "https://events.pagerduty.com/v2/enqueue"
SEVERITIES: Final = ("critical", "error", "warning", "info")
RESOLVING: Final = frozenset({COMPLETED, "restarted"})

SETTINGS: Final = {
    "routing_key_env": "Environment variable holding the Events v2 integration's routing key.",
    "severity": "critical, error, warning or info (default critical).",
    "url": "The Events v2 endpoint (default PagerDuty's; a relay's otherwise).",
}


def event(note: Notification, routing_key: str, severity: str) -> dict[str, Any] | None:
    """The Events v2 body for a notification; None for kinds that neither raise nor clear an incident."""
    dedup = f"crossfade/{note.migration}"
    if note.kind in RESOLVING:
        return {"routing_key": routing_key, "event_action": "resolve", "dedup_key": dedup}
    if note.kind not in ALARMS and note.kind != TEST:
        return None
    body: dict[str, Any] = {
        "routing_key": routing_key, "event_action": "trigger", "dedup_key": dedup,
        "payload": {"summary": note.summary[:1024], "source": f"crossfade/{note.migration}",
                    "severity": "info" if note.kind == TEST else severity, "component": note.migration,
                    "class": note.kind, "custom_details": {"reason": note.reason, "event": note.event_id,
                                                           **note.facts}},
    }
    if note.link:
        body["links"] = [{"href": note.link, "text": "crossfade dashboard"}]
    return body


@dataclass(frozen=True, slots=True)
class PagerDuty:
    """Raises and resolves one PagerDuty incident per migration through an integration's routing key."""

    routing_key_env: str
    url: str
    severity: str

    def describe(self) -> str:
        """Who this reaches."""
        return f"PagerDuty service ${self.routing_key_env} ({self.severity})"

    def send(self, note: Notification, *, timeout: float) -> None:
        """Trigger or resolve; other kinds of notification are not PagerDuty's and are skipped."""
        body = event(note, secret(self.routing_key_env), self.severity)
        if body is not None:
            post(self.url, json.dumps(body).encode(), {}, timeout=timeout)


def create(config: Mapping[str, Any], path: str) -> PagerDuty:
    """`{routing_key_env: PAGERDUTY_ROUTING_KEY, severity: critical}`; `url` only to reach a relay."""
    s = Settings(config, path, SETTINGS)
    key = s.env("routing_key_env") or ""
    url = s.url("url", EVENTS_URL)
    severity = config.get("severity", "critical")
    if severity not in SEVERITIES:
        s.problems.append(ConfigProblem(f"{path}.severity", f"one of {', '.join(SEVERITIES)}"))
    s.done()
    return PagerDuty(key, url, severity)
