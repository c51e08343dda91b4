"""Who is calling: bearer tokens looked up by hash, roles checked, and failed attempts rate-limited."""

from __future__ import annotations

import hmac
import ipaddress
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from crossfade.backends.base import Backend
from crossfade.tokens import ROLES, rank, token_hash

ANONYMOUS = "anonymous"


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller of one request: the token's name (the actor of the events it causes) and its role."""

    name: str
    role: str


class AuthError(Exception):
    """A request refused before it reached its route: the status, what to tell the caller, extra headers."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


class Authenticator:
    """Checks bearer tokens against the backend's hashes, with a short cache and a limit on failures.

    A token found is cached for `cache_ttl` seconds (so `/v1/decide` does not query the store per call); a
    revoked token therefore stops working within that time. Tokens never found are not cached: a token
    created a moment ago works at once. `max_failures` wrong tokens from one address within `window`
    seconds make that address wait out the window (429), which turns guessing into a slow crawl.
    """

    def __init__(
        self,
        backend: Backend,
        *,
        open_reads: bool = False,
        cache_ttl: float = 2.0,
        max_failures: int = 10,
        window: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.backend = backend
        self.open_reads = open_reads
        self.cache_ttl = cache_ttl
        self.max_failures = max_failures
        self.window = window
        self.clock = clock
        self._cache: dict[str, tuple[Principal, float]] = {}
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def check(self, authorization: str | None, client: str | None, role: str) -> Principal:
        """The caller, if allowed `role`; AuthError (401, 403 or 429) otherwise."""
        needed = rank(role)
        address = client or "unknown"
        self._refuse_if_limited(address)
        if not authorization:
            if self.open_reads and needed == 0 and _loopback(client):
                return Principal(ANONYMOUS, ROLES[0])
            raise AuthError(401, f"this needs a token with role {role} or above: send Authorization: Bearer <token> "
                                 "(crossfade token create --role ROLE --name NAME makes one)",
                            {"WWW-Authenticate": "Bearer"})
        scheme, _, secret = authorization.partition(" ")
        principal = self._lookup(secret.strip()) if scheme.lower() == "bearer" and secret.strip() else None
        if principal is None:
            self._fail(address)
            raise AuthError(401, "unknown or revoked token", {"WWW-Authenticate": 'Bearer error="invalid_token"'})
        if rank(principal.role) < needed:
            raise AuthError(403, f"token {principal.name!r} has role {principal.role}; this needs {role} or above")
        return principal

    def _lookup(self, secret: str) -> Principal | None:
        digest = token_hash(secret)
        now = self.clock()
        cached = self._cache.get(digest)
        if cached is not None and cached[1] > now:
            return cached[0]
        record = self.backend.token_by_hash(digest)
        # The store found the row by its hash; comparing again in constant time keeps a timing side channel
        # out of whatever index lookup the database did.
        if record is None or not hmac.compare_digest(record.hash, digest):
            self._cache.pop(digest, None)
            return None
        principal = Principal(record.name, record.role)
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[digest] = (principal, now + self.cache_ttl)
        return principal

    def _refuse_if_limited(self, address: str) -> None:
        with self._lock:
            failures = self._failures.get(address)
            if not failures:
                return
            now = self.clock()
            while failures and failures[0] <= now - self.window:
                failures.popleft()
            if len(failures) >= self.max_failures:
                wait = max(1, round(failures[0] + self.window - now))
                raise AuthError(429, f"too many failed token attempts from {address}; retry in {wait}s",
                                {"Retry-After": str(wait)})

    def _fail(self, address: str) -> None:
        with self._lock:
            if len(self._failures) > 10_000:
                self._failures.clear()
            self._failures.setdefault(address, deque()).append(self.clock())


def _loopback(client: str | None) -> bool:
    if not client:
        return False
    try:
        return ipaddress.ip_address(client).is_loopback
    except ValueError:
        return False
