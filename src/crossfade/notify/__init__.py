"""Notification channels: who is told of what a migration did, one module per channel (webhook, Slack,
PagerDuty, email), each implementing `Channel`, found by name through the registry.

A spec's `notify:` is a list of targets, each naming one channel with its settings, the kinds of events it
wants (`events:`, default: all) and an optional `name`. Secrets are never in the spec: a channel takes the
name of an environment variable (`secret_env`, `url_env`, `routing_key_env`, `password_env`) and reads it
on the control plane when it sends. Delivery is the outbox's business (`crossfade.loop.NotificationOutbox`);
a channel only sends one message or raises `DeliveryError`.
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from crossfade.events import (
    APPROVAL_REQUESTED,
    PAUSED,
    RESTARTED,
    ROLLBACK_STARTED,
    ROLLED_BACK,
    STEPPED_BACK,
    VERDICT,
    Event,
)
from crossfade.registry import ConfigProblem, ProviderConfigError, Registry

# The kinds of things a target can subscribe to. Router and metric-source failures are event types other
# providers write (`router_failed`, `source_failed`): they are matched by name, so they work once written.
COMPLETED: Final = "completed"
GATE_FAILED: Final = "gate_failed"
TRIGGER_FIRED: Final = "trigger_fired"
ROUTER_FAILED: Final = "router_failed"
SOURCE_FAILED: Final = "source_failed"
TEST: Final = "test"
KINDS: Final = (
    ROLLED_BACK, ROLLBACK_STARTED, APPROVAL_REQUESTED, PAUSED, COMPLETED, RESTARTED, STEPPED_BACK,
    GATE_FAILED, TRIGGER_FIRED, ROUTER_FAILED, SOURCE_FAILED,
)  # fmt: skip
# The kinds that mean something went wrong (PagerDuty triggers on these, and resolves on the others' end).
ALARMS: Final = frozenset({ROLLED_BACK, ROLLBACK_STARTED, GATE_FAILED, TRIGGER_FIRED, ROUTER_FAILED, SOURCE_FAILED})
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TARGET_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")

registry: Registry[Channel] = Registry("notification channel", __name__)


class DeliveryError(Exception):
    """A channel could not deliver a notification now; the outbox retries it later."""


class UnknownTarget(LookupError):
    """A migration's spec has no notification target of that name."""


@dataclass(frozen=True, slots=True)
class Notification:
    """One message about one event of a migration, for one target. Immutable.

    `key` is the idempotency key: the same for every delivery attempt of this event to this target, so a
    receiver that sees it twice (the outbox delivers at least once) can drop the second.
    """

    key: str
    event_id: str
    migration: str
    seq: int
    kind: str
    event_type: str
    time: float
    actor: str
    summary: str
    reason: str | None = None
    facts: Mapping[str, Any] = field(default_factory=dict)
    link: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able form: the webhook body, and what the outbox stores."""
        return {
            "key": self.key, "event_id": self.event_id, "migration": self.migration, "seq": self.seq,
            "kind": self.kind, "event_type": self.event_type, "time": self.time, "actor": self.actor,
            "summary": self.summary, "reason": self.reason, "facts": dict(self.facts), "link": self.link,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Notification:
        """The notification a `to_dict` form describes."""
        return cls(**{**data, "facts": dict(data.get("facts") or {})})


class Channel(Protocol):
    """A place notifications go: one `send`, which raises `DeliveryError` when it did not get through."""

    def describe(self) -> str:
        """Who this reaches, for `plan` and `notify status` ("#ci-migration (Slack)")."""

    def send(self, note: Notification, *, timeout: float) -> None:
        """Deliver one notification, within `timeout` seconds, or raise `DeliveryError`."""


@dataclass(frozen=True, slots=True)
class Target:
    """One entry of a spec's `notify:`: a named channel and the kinds of events it is told of. Immutable."""

    name: str
    channel: str
    config: Mapping[str, Any]
    kinds: tuple[str, ...]

    def build(self) -> Channel:
        """The channel this target sends through."""
        return registry.create(self.channel, self.config, f"notify[{self.name}].{self.channel}")

    def wants(self, kind: str) -> bool:
        """Whether this target is told of `kind` (a test message reaches every target)."""
        return kind == TEST or kind in self.kinds


def targets(entries: Sequence[Any], path: str = "notify") -> list[Target]:
    """The targets a spec's `notify:` list names, each channel's settings checked by its own module.

    Raises `ProviderConfigError` with every problem found, each with its path (`notify[1].slack.url_env`).
    """
    problems: list[ConfigProblem] = []
    found: list[Target] = []
    names: set[str] = set()
    for index, entry in enumerate(entries):
        where = f"{path}[{index}]"
        if not isinstance(entry, Mapping):
            problems.append(ConfigProblem(where, "a target is a mapping, e.g. {slack: {url_env: SLACK_URL}, "
                                                 "events: [rolled_back]}"))
            continue
        channels = [k for k in entry if k not in ("name", "events")]
        if len(channels) != 1:
            known = ", ".join(registry.names())
            what = "no channel" if not channels else f"{len(channels)} channels ({', '.join(map(str, channels))})"
            problems.append(ConfigProblem(where, f"names {what}; a target names exactly one of: {known}"))
            continue
        channel = str(channels[0])
        name = entry.get("name", channel)
        if not isinstance(name, str) or not _TARGET_NAME.match(name):
            problems.append(ConfigProblem(f"{where}.name", f"{name!r} is not a name: lower-case letters, digits, "
                                                           "'-', '_' and '.', like ops-slack"))
            continue
        if name in names:
            problems.append(ConfigProblem(f"{where}.name", f"{name!r} names two targets; give each its own name"))
        names.add(name)
        kinds = entry.get("events", list(KINDS))
        if not isinstance(kinds, list) or not kinds:
            problems.append(ConfigProblem(f"{where}.events", f"a non-empty list of: {', '.join(KINDS)}"))
            continue
        bad = [k for k in kinds if k not in KINDS]
        if bad:
            problems.append(ConfigProblem(f"{where}.events", f"unknown {', '.join(map(repr, bad))}; "
                                                             f"known: {', '.join(KINDS)}"))
            continue
        config = entry[channel]
        if config is not None and not isinstance(config, Mapping):
            problems.append(ConfigProblem(f"{where}.{channel}", "the channel's settings are a mapping"))
            continue
        try:
            registry.create(channel, config, f"{where}.{channel}")
        except ProviderConfigError as exc:
            problems.extend(exc.problems)
            continue
        found.append(Target(name, channel, dict(config or {}), tuple(kinds)))
    if problems:
        raise ProviderConfigError(problems)
    return found


def kinds_of(event: Event) -> list[str]:
    """What a recorded event means to a person: the notification kinds it is (often none)."""
    p = event.payload
    kinds = []
    if event.type in (ROLLED_BACK, ROLLBACK_STARTED, APPROVAL_REQUESTED, PAUSED, RESTARTED, STEPPED_BACK,
                      ROUTER_FAILED, SOURCE_FAILED):
        kinds.append(event.type)
    if p.get("final"):
        kinds.append(COMPLETED)
    if p.get("triggers"):
        kinds.append(TRIGGER_FIRED)
    if event.type == VERDICT and any(g.get("verdict") == "FAIL" for g in p.get("gates", ())):
        kinds.append(GATE_FAILED)
    return kinds


def summary(event: Event, kind: str) -> str:
    """The sentence a person reads first."""
    p = event.payload
    name = event.migration
    match kind:
        case "rolled_back":
            return f"{name} rolled back to legacy from stage {p.get('from_stage')}: {event.reason}"
        case "rollback_started":
            return f"{name} is rolling back from stage {p.get('from_stage')} (now {_pct(p.get('traffic'))}): " \
                   f"{event.reason}"
        case "approval_requested":
            return f"{name} waits for an approval to enter stage {p.get('next_stage')} " \
                   f"({_pct(p.get('next_traffic'))}): `crossfade approve {name}`"
        case "paused":
            return f"{name} paused at stage {p.get('stage')}: {event.reason}"
        case "completed":
            return f"{name} completed: the candidate serves {_pct(p.get('traffic'))}"
        case "restarted":
            return f"{name} restarted (attempt {p.get('attempt')})"
        case "stepped_back":
            return f"{name} stepped back to stage {p.get('stage')} ({_pct(p.get('traffic'))}): {event.reason}"
        case "gate_failed":
            failed = [g.get("gate") for g in p.get("gates", ()) if g.get("verdict") == "FAIL"]
            return f"{name}: gate {', '.join(map(str, failed))} FAILs in stage {p.get('stage')}: {event.reason}"
        case "trigger_fired":
            return f"{name}: trigger fired: {'; '.join(map(str, p.get('triggers', ())))}"
        case "test":
            return f"crossfade test notification for {name}"
    return f"{name}: {event.type}: {event.reason or ''}".rstrip(": ")


def _pct(value: Any) -> str:
    return f"{float(value) * 100:g}%" if isinstance(value, int | float) else "?"


def facts(event: Event, kind: str) -> dict[str, Any]:
    """The numbers behind the message: per failing gate its estimate, interval and limit; stage and traffic."""
    p = event.payload
    out: dict[str, Any] = {k: p[k] for k in ("stage", "from_stage", "traffic", "from_traffic", "next_stage")
                           if k in p}
    gates = [g for g in p.get("gates", ()) if kind != GATE_FAILED or g.get("verdict") == "FAIL"]
    if gates:
        out["gates"] = [dict(g) for g in gates]
    if p.get("triggers"):
        out["triggers"] = list(p["triggers"])
    return out


def notification(event: Event, kind: str, target: str, *, link: str | None = None) -> Notification:
    """The message one target gets for one event."""
    event_id = f"{event.migration}:{event.seq}:{event.hash[:16]}"
    return Notification(
        key=f"{event_id}:{kind}:{target}", event_id=event_id, migration=event.migration, seq=event.seq,
        kind=kind, event_type=event.type, time=event.time, actor=event.actor, summary=summary(event, kind),
        reason=event.reason, facts=facts(event, kind), link=link,
    )


def json_schema() -> dict[str, Any]:
    """The JSON Schema of one `notify:` entry, each channel's settings taken from its module's `SETTINGS`."""
    channels = {}
    for name in registry.names():
        settings = importlib.import_module(f"{__name__}.{name}").SETTINGS
        channels[name] = {"type": "object", "description": f"The {name} channel's settings.",
                          "additionalProperties": False,
                          "properties": {key: {"description": text} for key, text in settings.items()}}
    return {
        "type": "object", "additionalProperties": False, "minProperties": 1,
        "description": "One target: exactly one channel with its settings; `events` (default: all) and `name`.",
        "properties": {
            "name": {"type": "string", "pattern": _TARGET_NAME.pattern, "description": "The target's name."},
            "events": {"type": "array", "minItems": 1, "items": {"enum": list(KINDS)},
                       "description": "The kinds of events this target is told of."},
            **channels,
        },
    }


# -- helpers the channel modules share -------------------------------------------------------------


class Settings:
    """Reads one channel's settings, collecting every problem with its path, then raising them together."""

    def __init__(self, config: Mapping[str, Any], path: str, keys: Sequence[str]) -> None:
        self.config = config
        self.path = path
        self.problems: list[ConfigProblem] = []
        for key in config:
            if key not in keys:
                self.problems.append(ConfigProblem(f"{path}.{key}", f"unknown setting (known: {', '.join(keys)})"))

    def text(self, key: str, default: str | None = None, *, example: str = "") -> str:
        """A required (or defaulted) string setting."""
        value = self.config.get(key, default)
        if not isinstance(value, str) or not value:
            self.problems.append(ConfigProblem(f"{self.path}.{key}", f"is required, a text like {example!r}"))
            return ""
        return value

    def url(self, key: str, default: str | None = None) -> str:
        """An http(s) URL setting."""
        value = self.text(key, default, example="https://hooks.example.com/crossfade")
        if value and not value.startswith(("http://", "https://")):
            self.problems.append(ConfigProblem(f"{self.path}.{key}", f"{value!r} is not an http(s) URL"))
        return value

    def env(self, key: str, *, required: bool = True) -> str | None:
        """The name of an environment variable holding a secret (never the secret itself)."""
        value = self.config.get(key)
        if value is None and not required:
            return None
        if not isinstance(value, str) or not _ENV_NAME.match(value):
            self.problems.append(ConfigProblem(
                f"{self.path}.{key}", f"is the name of an environment variable holding the secret, like "
                                      f"CROSSFADE_{key.removesuffix('_env').upper()} (secrets never go in the spec)"))
            return None
        return value

    def number(self, key: str, default: float, *, low: float, high: float) -> float:
        """A number within [low, high]."""
        value = self.config.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
            self.problems.append(ConfigProblem(f"{self.path}.{key}", f"a number from {low:g} to {high:g}"))
            return default
        return float(value)

    def flag(self, key: str, default: bool) -> bool:
        """A true/false setting."""
        value = self.config.get(key, default)
        if not isinstance(value, bool):
            self.problems.append(ConfigProblem(f"{self.path}.{key}", "true or false"))
            return default
        return value

    def done(self) -> None:
        """Raise every problem found, if any."""
        if self.problems:
            raise ProviderConfigError(self.problems)


def secret(env: str | None) -> str:
    """The value of a secret's environment variable, read when sending; unset is a delivery failure."""
    if env is None:
        return ""
    value = os.environ.get(env)
    if not value:
        raise DeliveryError(f"environment variable {env} is not set where notifications are sent")
    return value
