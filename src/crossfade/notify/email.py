"""Email over SMTP: STARTTLS (or implicit TLS) and login, the password read from an environment variable."""

from __future__ import annotations

import smtplib
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any, Final

from crossfade.notify import DeliveryError, Notification, Settings, secret
from crossfade.registry import ConfigProblem

SECURITY: Final = ("starttls", "tls", "none")

SETTINGS: Final = {
    "host": "SMTP server.",
    "port": "SMTP port (default 587).",
    "security": "starttls (default), tls (implicit, port 465) or none.",
    "username": "Login name (with password_env).",
    "password_env": "Environment variable holding the SMTP password.",
    "from": "Sender address.",
    "to": "One recipient or a list.",
}


def message(note: Notification, sender: str, recipients: tuple[str, ...]) -> EmailMessage:
    """The email for one notification; its Message-ID derives from the idempotency key, so a mail system
    (or a person) can tell a redelivery from a new message."""
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = ", ".join(recipients)
    # Short enough not to be folded: the sentence with its numbers opens the body.
    msg["Subject"] = f"[crossfade] {note.migration}: {note.kind.replace('_', ' ')}"
    msg["Date"] = formatdate(note.time, usegmt=True)
    msg["Message-ID"] = make_msgid(idstring=note.key.replace(":", "."), domain="crossfade")
    msg["X-Crossfade-Idempotency-Key"] = note.key
    lines = [note.summary, ""]
    if note.reason:
        lines += [f"Reason: {note.reason}", ""]
    for gate in note.facts.get("gates", ()):
        lines.append(f"Gate {gate.get('gate')}: {gate.get('verdict')}, estimate {gate.get('estimate')}, "
                     f"interval [{gate.get('lower')}, {gate.get('upper')}], limit {gate.get('limit')}")
    for trigger in note.facts.get("triggers", ()):
        lines.append(f"Trigger: {trigger}")
    lines += ["", f"Event {note.seq} of {note.migration}, by {note.actor}."]
    if note.link:
        lines.append(f"Dashboard: {note.link}")
    msg.set_content("\n".join(lines) + "\n")
    return msg


@dataclass(frozen=True, slots=True)
class Email:
    """Sends each notification as one email through an SMTP server."""

    host: str
    port: int
    security: str
    username: str | None
    password_env: str | None
    sender: str
    to: tuple[str, ...]

    def describe(self) -> str:
        """Who this reaches."""
        return f"{', '.join(self.to)} (email)"

    def send(self, note: Notification, *, timeout: float) -> None:
        """Connect, secure, log in, send; any SMTP or network failure raises `DeliveryError`."""
        password = secret(self.password_env) if self.password_env else None
        context = ssl.create_default_context()
        try:
            if self.security == "tls":
                smtp: smtplib.SMTP = smtplib.SMTP_SSL(self.host, self.port, timeout=timeout, context=context)
            else:
                smtp = smtplib.SMTP(self.host, self.port, timeout=timeout)
            with smtp:
                if self.security == "starttls":
                    smtp.starttls(context=context)
                if self.username and password is not None:
                    smtp.login(self.username, password)
                smtp.send_message(message(note, self.sender, self.to))
        except (smtplib.SMTPException, OSError) as exc:
            raise DeliveryError(f"SMTP {self.host}:{self.port}: {exc}") from None


def create(config: Mapping[str, Any], path: str) -> Email:
    """`{host: smtp.example.com, port: 587, security: starttls, username: crossfade, password_env: SMTP_PASSWORD,
    from: crossfade@example.com, to: [eng-managers@example.com]}`."""
    s = Settings(config, path, SETTINGS)
    host = s.text("host", example="smtp.example.com")
    port = int(s.number("port", 587, low=1, high=65535))
    security = config.get("security", "starttls")
    if security not in SECURITY:
        s.problems.append(ConfigProblem(f"{path}.security", f"one of {', '.join(SECURITY)}"))
    username = s.text("username", example="crossfade") if "username" in config else None
    password_env = s.env("password_env", required=False)
    if (username is None) != (password_env is None):
        s.problems.append(ConfigProblem(f"{path}.password_env" if username else f"{path}.username",
                                        "username and password_env go together (SMTP login needs both)"))
    sender = s.text("from", example="crossfade@example.com")
    to = config.get("to")
    if isinstance(to, str):
        to = [to]
    if not isinstance(to, list) or not to or not all(isinstance(a, str) and "@" in a for a in to):
        s.problems.append(ConfigProblem(f"{path}.to", "one address or a list, like [eng-managers@example.com]"))
        to = []
    if security == "none" and username:
        s.problems.append(ConfigProblem(f"{path}.security", "a login needs starttls or tls: the password would "
                                                            "cross the network in clear"))
    s.done()
    return Email(host, port, security, username, password_env, sender, tuple(to))
