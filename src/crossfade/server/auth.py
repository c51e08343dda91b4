"""Who is calling: bearer tokens looked up by hash, roles checked, and failed attempts rate-limited."""

from __future__ import annotations

import hmac
import ipaddress
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

from crossfade.backends.base import Backend
from crossfade.tokens import ROLES, rank, token_hash

ANONYMOUS = "anonymous"


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller of one request: the token's name (the actor of the events it causes), its role, and the
    migrations it may send telemetry for (empty: every one)."""

    name: str
    role: str
    migrations: tuple[str, ...] = ()

    def serves(self, migration: str) -> bool:
        """Whether this caller may send telemetry and comparisons for `migration`."""
        return not self.migrations or migration in self.migrations


class AuthError(Exception):
    """A request refused before it reached its route: the status, what to tell the caller, extra headers."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}

    @property
    def kind(self) -> str:
        """The error's name in the answer's body."""
        return {401: "Unauthorized", 403: "Forbidden", 429: "TooManyAttempts"}.get(self.status, "AuthError")


LOOPBACK_HOSTS: Final = ("localhost", "127.0.0.1", "::1")


class Authenticator:
    """Checks bearer tokens against the backend's hashes, with a short cache and a limit on failures.

    A token found is cached for `cache_ttl` seconds (so `/v1/decide` does not query the store per call); a
    revoked token therefore stops working within that time. Tokens never found are not cached: a token
    created a moment ago works at once. `max_failures` wrong tokens from one address within `window`
    seconds make that address wait out the window (429) for further wrong tokens, which turns guessing into a
    slow crawl; a valid token is looked up first, so it is never refused for others' mistakes. The tables
    of cached tokens and of failing addresses are bounded by evicting their oldest entries.

    Open reads (`open_reads`) answer callers on loopback without a token only when the request's Host is
    one of `allowed_hosts`, so a web page whose name was rebound to 127.0.0.1 cannot read through a browser.
    """

    def __init__(
        self,
        backend: Backend,
        *,
        open_reads: bool = False,
        allowed_hosts: Iterable[str] = LOOPBACK_HOSTS,
        cache_ttl: float = 2.0,
        max_failures: int = 10,
        window: float = 60.0,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.backend = backend
        self.open_reads = open_reads
        self.allowed_hosts = frozenset(h.lower().strip("[]") for h in allowed_hosts)
        self.cache_ttl = cache_ttl
        self.max_failures = max_failures
        self.window = window
        self.max_entries = max_entries
        self.clock = clock
        self._cache: OrderedDict[str, tuple[Principal, float]] = OrderedDict()
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def quick(self, authorization: str | None, client: str | None, role: str, host: str | None = None
              ) -> Principal | None:
        """The caller when no store read is needed to tell (a cached token, an open read); None when one is.

        Raises AuthError as `check` would for a request without a token or a cached token of too small a role.
        """
        if not authorization:
            return self._anonymous(client, role, host)
        secret = _secret(authorization)
        if secret is None:
            return None
        cached = self._cache.get(token_hash(secret))
        if cached is None or cached[1] <= self.clock():
            return None
        return _allowed(cached[0], role)

    def check(self, authorization: str | None, client: str | None, role: str, host: str | None = None
              ) -> Principal:
        """The caller, if allowed `role`; AuthError (401, 403 or 429) otherwise. May read the store."""
        if not authorization:
            return self._anonymous(client, role, host)
        address = client or "unknown"
        secret = _secret(authorization)
        principal = self._lookup(secret) if secret is not None else None
        if principal is None:
            self._refuse_if_limited(address)
            self._fail(address)
            raise AuthError(401, "unknown or revoked token", {"WWW-Authenticate": 'Bearer error="invalid_token"'})
        return _allowed(principal, role)

    def _anonymous(self, client: str | None, role: str, host: str | None) -> Principal:
        if self.open_reads and rank(role) == 0 and _loopback(client) and self.host_allowed(host):
            return Principal(ANONYMOUS, ROLES[0])
        raise AuthError(401, f"this needs a token with role {role} or above: send Authorization: Bearer <token> "
                             "(crossfade token create --role ROLE --name NAME makes one)",
                        {"WWW-Authenticate": "Bearer"})

    def host_allowed(self, host: str | None) -> bool:
        """Whether a Host header (port and brackets ignored) names this server as allowed."""
        if not host:
            return False
        name = host.strip().lower()
        if name.startswith("["):
            name = name[1:name.find("]")] if "]" in name else name[1:]
        elif name.count(":") == 1:
            name = name.partition(":")[0]
        return name in self.allowed_hosts

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
            with self._lock:
                self._cache.pop(digest, None)
            return None
        principal = Principal(record.name, record.role, tuple(record.migrations))
        with self._lock:
            self._cache[digest] = (principal, now + self.cache_ttl)
            self._cache.move_to_end(digest)
            while len(self._cache) > self.max_entries:
                self._cache.popitem(last=False)
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
            now = self.clock()
            failures = self._failures.setdefault(address, deque())
            failures.append(now)
            self._failures.move_to_end(address)
            if len(self._failures) > self.max_entries:
                # Forget addresses whose failures are all past the window, then the oldest that are not locked
                # out; a locked-out address is forgotten only when every entry is one.
                for stale in [a for a, f in self._failures.items() if not f or f[-1] <= now - self.window]:
                    del self._failures[stale]
                for free in [a for a, f in self._failures.items() if len(f) < self.max_failures]:
                    if len(self._failures) <= self.max_entries:
                        break
                    del self._failures[free]
                while len(self._failures) > self.max_entries:
                    self._failures.popitem(last=False)


def _secret(authorization: str) -> str | None:
    scheme, _, secret = authorization.partition(" ")
    secret = secret.strip()
    return secret if scheme.lower() == "bearer" and secret else None


def _allowed(principal: Principal, role: str) -> Principal:
    if rank(principal.role) < rank(role):
        raise AuthError(403, f"token {principal.name!r} has role {principal.role}; this needs {role} or above")
    return principal


def _loopback(client: str | None) -> bool:
    if not client:
        return False
    try:
        return ipaddress.ip_address(client).is_loopback
    except ValueError:
        return False
