"""Generic webhook: the notification as a JSON body, signed with HMAC-SHA256 over a timestamp and the body.

Headers: `X-Crossfade-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`, the event id
(`X-Crossfade-Event`) and the idempotency key (`Idempotency-Key`, the same on every retry). A receiver
checks the signature with `verify_signature` (or the same three lines of its own) and refuses a timestamp
older than a few minutes, so a captured request cannot be replayed later.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from crossfade.notify import Notification, Settings, secret
from crossfade.notify._http import post

SIGNATURE_HEADER: Final = "X-Crossfade-Signature"
TOLERANCE: Final = 300.0

SETTINGS: Final = {
    "url": "Where to POST (http or https).",
    "secret_env": "Environment variable holding the HMAC-SHA256 signing key (unsigned without it).",
}


def sign(key: str, timestamp: int, body: bytes) -> str:
    """The signature header's value for a body sent at `timestamp`."""
    mac = hmac.new(key.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify_signature(key: str, header: str, body: bytes, *, now: float, tolerance: float = TOLERANCE) -> bool:
    """True when `header` signs `body` with `key` and its timestamp is within `tolerance` seconds of `now`."""
    try:
        fields = dict(part.split("=", 1) for part in header.split(","))
        timestamp = int(fields["t"])
    except (KeyError, ValueError):
        return False
    if abs(now - timestamp) > tolerance:
        return False
    return hmac.compare_digest(sign(key, timestamp, body), f"t={timestamp},v1={fields.get('v1', '')}")


@dataclass(frozen=True, slots=True)
class Webhook:
    """POSTs each notification as JSON to one URL, signed when a secret is configured."""

    url: str
    secret_env: str | None

    def describe(self) -> str:
        """Who this reaches."""
        return f"{self.url} (webhook)"

    def send(self, note: Notification, *, timeout: float) -> None:
        """POST the notification; a non-2xx answer or no answer raises `DeliveryError`."""
        body = json.dumps(note.to_dict(), sort_keys=True).encode()
        headers = {"X-Crossfade-Event": note.event_id, "Idempotency-Key": note.key}
        if self.secret_env is not None:
            headers[SIGNATURE_HEADER] = sign(secret(self.secret_env), int(time.time()), body)
        post(self.url, body, headers, timeout=timeout)


def create(config: Mapping[str, Any], path: str) -> Webhook:
    """`{url: https://..., secret_env: CROSSFADE_WEBHOOK_SECRET}`; without `secret_env` nothing is signed."""
    s = Settings(config, path, SETTINGS)
    hook = Webhook(s.url("url"), s.env("secret_env", required=False))
    s.done()
    return hook
