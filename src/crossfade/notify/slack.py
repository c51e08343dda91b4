"""Slack incoming webhook: the verdict sentence, the numbers behind it and a link to the dashboard."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from crossfade.notify import ALARMS, Notification, Settings, secret
from crossfade.notify._http import post

SETTINGS: Final = {
    "url_env": "Environment variable holding the Slack incoming-webhook URL.",
    "channel": "The channel the webhook posts to, as plans show it (#ci-migration).",
}


def blocks(note: Notification) -> dict[str, Any]:
    """The Slack message: a plain-text fallback and Block Kit sections (summary, gate numbers, link)."""
    icon = ":rotating_light:" if note.kind in ALARMS else ":information_source:"
    text = f"{icon} {note.summary}"
    sections: list[dict[str, Any]] = [{"type": "section", "text": {"type": "mrkdwn", "text": text}}]
    lines = []
    for gate in note.facts.get("gates", ()):
        low, high = gate.get("lower"), gate.get("upper")
        interval = f" [{low:.4g}, {high:.4g}]" if isinstance(low, int | float) and isinstance(high, int | float) else ""
        estimate = gate.get("estimate")
        shown = f"{estimate:.4g}" if isinstance(estimate, int | float) else "n/a"
        lines.append(f"*{gate.get('gate')}* {gate.get('verdict')}: {shown}{interval}, limit {gate.get('limit')}")
    for trigger in note.facts.get("triggers", ()):
        lines.append(f"trigger: {trigger}")
    if lines:
        sections.append({"type": "section", "text": {"type": "mrkdwn", "text": "\n".join(lines)}})
    context = f"event {note.seq} by {note.actor}"
    if note.link:
        context += f" · <{note.link}|dashboard>"
    sections.append({"type": "context", "elements": [{"type": "mrkdwn", "text": context}]})
    return {"text": text, "blocks": sections}


@dataclass(frozen=True, slots=True)
class Slack:
    """Posts to a Slack channel through an incoming webhook whose URL is in an environment variable."""

    url_env: str
    channel: str | None

    def describe(self) -> str:
        """Who this reaches."""
        return f"{self.channel or '$' + self.url_env} (Slack)"

    def send(self, note: Notification, *, timeout: float) -> None:
        """Post the message; Slack answers 200 "ok" or an error."""
        post(secret(self.url_env), json.dumps(blocks(note)).encode(), {}, timeout=timeout)


def create(config: Mapping[str, Any], path: str) -> Slack:
    """`{url_env: SLACK_WEBHOOK_URL, channel: "#ci-migration"}`: the channel is shown in plans (an incoming
    webhook posts to the channel it was made for)."""
    s = Settings(config, path, SETTINGS)
    url_env = s.env("url_env") or ""
    channel = s.text("channel", example="#ci-migration") if "channel" in config else None
    s.done()
    return Slack(url_env, channel)
