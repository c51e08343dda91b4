"""API tokens: the roles they carry, how they are made, and the only form in which they are stored (a hash)."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import Final

# Each role may do everything the roles before it may: a viewer reads, an SDK host also routes and sends
# telemetry, an operator also moves migrations, an admin also manages what operators cannot.
ROLES: Final = ("viewer", "sdk", "operator", "admin")
PREFIX: Final = "cf_"


def rank(role: str) -> int:
    """The role's place in ROLES; ValueError for a role that does not exist."""
    try:
        return ROLES.index(role)
    except ValueError:
        raise ValueError(f"unknown role {role!r}: use one of {', '.join(ROLES)}") from None


def new_token() -> str:
    """A fresh secret: 256 random bits, URL-safe, with a prefix that secret scanners can recognise."""
    return PREFIX + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    """What the store keeps of a token: its SHA-256 (the token has 256 bits of entropy, so no salt is needed)."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """A stored token: who it names, what it may do, its hash, and when it was made and revoked. Immutable."""

    name: str
    role: str
    hash: str
    created_at: float
    revoked_at: float | None = None
    migrations: tuple[str, ...] = ()
    """The migrations the token may send telemetry and comparisons for; empty: every migration."""

    @property
    def active(self) -> bool:
        """True until the token is revoked."""
        return self.revoked_at is None
