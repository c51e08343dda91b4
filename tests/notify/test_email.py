"""Email: a real SMTP server (aiosmtpd) on loopback that requires STARTTLS and a login before it takes mail."""

from __future__ import annotations

import email
import email.policy
import shutil
import socket
import ssl
import subprocess
import threading

import pytest

from crossfade.notify import DeliveryError, Notification
from crossfade.notify.email import create
from crossfade.registry import ProviderConfigError

NOTE = Notification(key="m:7:ab:rolled_back:mail", event_id="m:7:ab", migration="m", seq=7, kind="rolled_back",
                    event_type="rolled_back", time=1_700_000_000.0, actor="controller",
                    summary="m rolled back to legacy from stage 10%: error rate 3.1% > 1%", reason="error rate",
                    facts={"gates": [{"gate": "error_rate", "verdict": "FAIL", "estimate": 0.031, "lower": 0.01,
                                      "upper": 0.05, "limit": 0.01}]})


@pytest.fixture
def smtp_server(tmp_path, monkeypatch):
    """aiosmtpd with a self-signed certificate the client is told to trust ($SSL_CERT_FILE); STARTTLS and
    AUTH (user crossfade, password hunter2) required; yields (port, received messages)."""
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult

    if shutil.which("openssl") is None:
        pytest.fail("openssl is needed to make the test certificate (Debian package openssl)")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key),
                    "-out", str(cert)], check=True, capture_output=True)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    received: list[bytes] = []
    arrived = threading.Event()

    class Handler:
        async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd's name)
            received.append(envelope.content)
            arrived.set()
            return "250 OK"

    def authenticate(server, session, envelope, mechanism, auth_data):
        ok = auth_data.login == b"crossfade" and auth_data.password == b"hunter2"
        return AuthResult(success=ok)

    with socket.socket() as probe:  # aiosmtpd's start() connects to its port, so it cannot be 0
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    controller = Controller(Handler(), hostname="127.0.0.1", port=port, tls_context=context, require_starttls=True,
                            auth_required=True, authenticator=authenticate)
    controller.start()
    try:
        yield port, received, arrived
    finally:
        controller.stop()


def test_mail_goes_through_starttls_and_login(smtp_server, monkeypatch) -> None:
    port, received, arrived = smtp_server
    monkeypatch.setenv("SMTP_PASSWORD", "hunter2")
    mail = create({"host": "127.0.0.1", "port": port, "username": "crossfade", "password_env": "SMTP_PASSWORD",
                   "from": "crossfade@example.com", "to": ["eng-managers@example.com"]}, "notify[1].email")
    assert mail.describe() == "eng-managers@example.com (email)"
    mail.send(NOTE, timeout=10)
    assert arrived.wait(30)
    message = email.message_from_bytes(received[0], policy=email.policy.default)
    assert message["Subject"] == "[crossfade] m: rolled back"
    assert message.get_content().startswith("m rolled back to legacy from stage 10%: error rate 3.1% > 1%")
    assert message["X-Crossfade-Idempotency-Key"] == NOTE.key
    assert "Gate error_rate: FAIL, estimate 0.031, interval [0.01, 0.05], limit 0.01" in message.get_content()


def test_a_wrong_password_is_a_delivery_error(smtp_server, monkeypatch) -> None:
    port, received, _ = smtp_server
    monkeypatch.setenv("SMTP_PASSWORD", "wrong")
    mail = create({"host": "127.0.0.1", "port": port, "username": "crossfade", "password_env": "SMTP_PASSWORD",
                   "from": "crossfade@example.com", "to": "ops@example.com"}, "e")
    with pytest.raises(DeliveryError, match=f"SMTP 127.0.0.1:{port}"):
        mail.send(NOTE, timeout=10)
    assert received == []


def test_a_login_without_tls_and_a_missing_recipient_are_refused() -> None:
    with pytest.raises(ProviderConfigError) as caught:
        create({"host": "smtp", "security": "none", "username": "u", "password_env": "P", "from": "a@b"},
               "notify[0].email")
    assert "notify[0].email.to: one address or a list" in str(caught.value)
    assert "notify[0].email.security: a login needs starttls or tls" in str(caught.value)
