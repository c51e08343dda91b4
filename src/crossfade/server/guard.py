"""What every request meets before its route: security headers, a token before any body is read, a cap on
each route's body, a deadline for reading it, and (for uvicorn) caps on connections and idle sockets."""

from __future__ import annotations

import asyncio
import json
import re
import resource
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final

from starlette.concurrency import run_in_threadpool

from crossfade.backends.base import BackendUnavailable
from crossfade.server.auth import ANONYMOUS, Authenticator, AuthError, Principal

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# The dashboard is the only page: its own script and styles, no inline script, nothing from elsewhere, and it
# may not be framed. (Its charts set widths and colours by style attribute, hence style-src-attr.)
SECURITY_HEADERS: Final = (
    (b"content-security-policy",
     b"default-src 'none'; script-src 'self'; style-src 'self'; style-src-attr 'unsafe-inline'; img-src 'self' data:; "
     b"connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
)
KB: Final = 1024
# Per route (method, path pattern): the largest body accepted. Anything else that has a body: DEFAULT_BODY.
BODY_LIMITS: Final = (
    ("POST", re.compile(r"^/v1/telemetry$"), 8 * KB * KB),
    ("POST", re.compile(r"^/v1/comparisons$"), 8 * KB * KB),
    ("PUT", re.compile(r"^/v1/migrations/[^/]+$"), 1 * KB * KB),
    ("POST", re.compile(r"^/v1/decide$"), 16 * KB),
    ("POST", re.compile(r"^/v1/migrations/[^/]+/flagger/[a-z-]+$"), 16 * KB),
)
# Flagger's webhooks cannot send headers: their token comes in the body (`metadata.token`), so these routes
# authenticate once their small, capped body is read.
TOKEN_IN_BODY: Final = re.compile(r"^/v1/migrations/[^/]+/flagger/[a-z-]+$")
DEFAULT_BODY: Final = 64 * KB
BODY_TIMEOUT: Final = 30.0
# How long a store read on behalf of a request may take before the request is answered 503.
STORE_TIMEOUT: Final = 15.0


def body_limit(method: str, path: str) -> int:
    """The largest body, in bytes, a request to `method path` may carry."""
    for m, pattern, limit in BODY_LIMITS:
        if m == method and pattern.match(path):
            return limit
    return DEFAULT_BODY


# Token look-ups under way, by authenticator and Authorization header. Every SDK host's long poll comes back at
# once after a routing change, with one token whose cached entry has likely expired: one of them reads the
# store and the others wait for it, rather than a thousand reads.
_LOOKUPS: dict[tuple[int, str], asyncio.Future[None]] = {}


async def authenticate(auth: Authenticator, authorization: str | None, client: str | None, role: str,
                       host: str | None) -> Principal:
    """The caller, checked without blocking the event loop: a cached token at once, a store read in a thread
    with a deadline (BackendUnavailable past it), shared by the requests that carry the same token meanwhile."""
    principal = auth.quick(authorization, client, role, host)
    if principal is not None:
        return principal
    key = (id(auth), authorization or "")
    under_way = _LOOKUPS.get(key)
    if under_way is not None:
        await asyncio.shield(under_way)  # the look-up's own deadline bounds the wait
        principal = auth.quick(authorization, client, role, host)
        if principal is not None:
            return principal
        return await _check(auth, authorization, client, role, host)  # not found: this caller's failure counts
    under_way = _LOOKUPS[key] = asyncio.get_running_loop().create_future()
    try:
        return await _check(auth, authorization, client, role, host)
    finally:
        del _LOOKUPS[key]
        under_way.set_result(None)


async def _check(auth: Authenticator, authorization: str | None, client: str | None, role: str,
                 host: str | None) -> Principal:
    try:
        return await asyncio.wait_for(run_in_threadpool(auth.check, authorization, client, role, host), STORE_TIMEOUT)
    except TimeoutError:
        raise BackendUnavailable(f"the store did not answer a token look-up within {STORE_TIMEOUT:g}s") from None


async def refuse_unauthenticated(send: Send, exc: AuthError | BackendUnavailable) -> None:
    """Answer a request whose caller could not be checked, as the API's error handlers would."""
    if isinstance(exc, BackendUnavailable):
        await _refuse(send, 503, "BackendUnavailable", str(exc), {"Retry-After": "1"})
        return
    await _refuse(send, exc.status, exc.kind, exc.message, exc.headers)


class Guard:
    """ASGI middleware: security headers on every answer; a request with a body is authenticated before its
    body is read, refused (413) when the body passes its route's cap, and (408) when it is not sent in time."""

    def __init__(self, app: ASGIApp, auth: Authenticator) -> None:
        self.app = app
        self.auth = auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one request through the checks."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {k.lower() for k, _ in message.get("headers", [])}
                message["headers"] = [*message.get("headers", []), *(h for h in SECURITY_HEADERS if h[0] not in names)]
            await send(message)

        if scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, secured)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        client = scope["client"][0] if scope.get("client") else None
        token_in_body = TOKEN_IN_BODY.match(scope["path"]) is not None and not headers.get("authorization")
        try:
            if not token_in_body:
                # Any valid token will do here; the route checks the role it needs once the body is read.
                who = await authenticate(self.auth, headers.get("authorization"), client, "viewer",
                                         headers.get("host"))
                if who.name == ANONYMOUS:
                    raise AuthError(401, "a request with a body needs a token: send Authorization: Bearer <token>",
                                    {"WWW-Authenticate": "Bearer"})
        except (AuthError, BackendUnavailable) as exc:
            await refuse_unauthenticated(secured, exc)
            return
        limit = body_limit(scope["method"], scope["path"])
        declared = headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await _refuse(secured, 413, "PayloadTooLarge", f"the body may be at most {limit:,} bytes on this route")
            return
        try:
            body = await asyncio.wait_for(_read(receive, limit), BODY_TIMEOUT)
        except TimeoutError:
            await _refuse(secured, 408, "RequestTimeout", f"the body was not sent within {BODY_TIMEOUT:g}s")
            return
        if body is None:
            await _refuse(secured, 413, "PayloadTooLarge", f"the body may be at most {limit:,} bytes on this route")
            return
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, secured)


async def _read(receive: Receive, limit: int) -> bytes | None:
    """The whole body, or None as soon as it passes `limit`."""
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"".join(parts)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        parts.append(chunk)
        if not message.get("more_body", False):
            return b"".join(parts)


async def _refuse(send: Send, status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> None:
    body = json.dumps({"error": message, "kind": kind}).encode()
    extra = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"), *extra]})
    await send({"type": "http.response.body", "body": body})


def _descriptors() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return 65536 if soft == resource.RLIM_INFINITY else soft


def default_backlog() -> int:
    """Connections the kernel may queue, which is also how many the event loop accepts in one go: a quarter
    of the process's descriptors at most, so a burst of them cannot exhaust the rest."""
    return max(16, min(2048, _descriptors() // 4))


def default_max_connections() -> int:
    """Open connections to allow: at most 1,000, and short of the process's descriptor limit by 64 (files,
    the database, threads) plus one accept burst (`default_backlog`)."""
    return max(16, min(1000, _descriptors() - 64 - default_backlog()))


try:  # uvicorn's protocol over the httptools parser (C), when installed; h11's (pure Python) otherwise
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as _HTTP_PROTOCOL
except ImportError:  # pragma: no cover - httptools is in the server extra
    from uvicorn.protocols.http.h11_impl import H11Protocol as _HTTP_PROTOCOL  # type: ignore[assignment]


def guarded_protocol(max_connections: int, header_timeout: float) -> type[asyncio.Protocol]:
    """uvicorn's HTTP/1.1 protocol (over httptools when installed: a routing change answers every long poll at
    once, and h11's parser in Python costs more than the answer), closing connections beyond
    `max_connections` at once and any connection that has not sent a complete request head within
    `header_timeout` seconds (idle or trickling sockets)."""

    class Guarded(_HTTP_PROTOCOL):
        """uvicorn's protocol with a connection cap and a deadline for the request head."""

        _head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            """Count the connection; close it at once when too many are open, else start its head deadline."""
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                transport.close()
                return
            self._head_timer = self.loop.call_later(header_timeout, self._head_late)

        def data_received(self, data: bytes) -> None:
            """Parse; once a request's head is complete (a cycle began), its deadline is met."""
            super().data_received(data)
            if self.cycle is not None and self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def connection_lost(self, exc: Exception | None) -> None:
            """Forget the deadline with the connection."""
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None
            super().connection_lost(exc)

        def _head_late(self) -> None:
            self._head_timer = None
            if self.cycle is None and not self.transport.is_closing():
                self.transport.close()

    return Guarded
