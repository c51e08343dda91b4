"""The generic webhook: a signed JSON POST to a real receiver on loopback, which checks the signature itself."""

from __future__ import annotations

import hashlib
import hmac
import json
import time

import pytest

from crossfade.notify import DeliveryError, Notification
from crossfade.notify.webhook import SIGNATURE_HEADER, create, sign, verify_signature
from crossfade.registry import ProviderConfigError

NOTE = Notification(key="m:3:abc:rolled_back:hook", event_id="m:3:abc", migration="m", seq=3, kind="rolled_back",
                    event_type="rolled_back", time=1.0, actor="controller", summary="m rolled back", reason="errors")


def receiver_accepts(secret: str, header: str, body: bytes, now: float) -> bool:
    """What a receiver written from the documentation does: HMAC-SHA256 over "<t>.<body>", recent t."""
    fields = dict(part.split("=", 1) for part in header.split(","))
    expected = hmac.new(secret.encode(), fields["t"].encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, fields["v1"]) and abs(now - int(fields["t"])) <= 300


def test_the_receiver_gets_a_signed_body_with_the_event_id_and_idempotency_key(receiver, monkeypatch) -> None:
    monkeypatch.setenv("HOOK_SECRET", "s3cret")
    hook = create({"url": receiver.url + "/hook", "secret_env": "HOOK_SECRET"}, "notify[0].webhook")
    hook.send(NOTE, timeout=5)
    [(path, headers, body)] = receiver.wait_for(1)
    assert path == "/hook"
    assert json.loads(body)["summary"] == "m rolled back"
    assert headers["Idempotency-Key"] == NOTE.key and headers["X-Crossfade-Event"] == "m:3:abc"
    assert receiver_accepts("s3cret", headers[SIGNATURE_HEADER], body, time.time())
    assert not receiver_accepts("other", headers[SIGNATURE_HEADER], body, time.time())
    assert "s3cret" not in body.decode()


def test_verify_signature_refuses_tampering_and_replay() -> None:
    body = b'{"a":1}'
    header = sign("k", 1000, body)
    assert verify_signature("k", header, body, now=1100)
    assert not verify_signature("k", header, b'{"a":2}', now=1100)
    assert not verify_signature("k", header, body, now=1000 + 301)
    assert not verify_signature("k", "garbage", body, now=1000)


def test_a_refusing_or_absent_receiver_is_a_delivery_error(receiver, monkeypatch) -> None:
    receiver.down = True
    hook = create({"url": receiver.url}, "w")
    with pytest.raises(DeliveryError, match="answered 503"):
        hook.send(NOTE, timeout=5)
    receiver.close()
    with pytest.raises(DeliveryError, match="unreachable"):
        hook.send(NOTE, timeout=5)
    monkeypatch.delenv("NOPE", raising=False)
    with pytest.raises(DeliveryError, match="NOPE is not set"):
        create({"url": receiver.url, "secret_env": "NOPE"}, "w").send(NOTE, timeout=5)


def test_settings_are_checked_with_their_paths() -> None:
    with pytest.raises(ProviderConfigError) as caught:
        create({"url": "ftp://x", "secret_env": "not a name", "extra": 1}, "notify[2].webhook")
    assert str(caught.value).split("; ") == [
        "notify[2].webhook.extra: unknown setting (known: url, secret_env)",
        "notify[2].webhook.url: 'ftp://x' is not an http(s) URL",
        "notify[2].webhook.secret_env: is the name of an environment variable holding the secret, like "
        "CROSSFADE_SECRET (secrets never go in the spec)",
    ]
