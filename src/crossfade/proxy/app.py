"""The proxy as an ASGI application: one request in, one upstream call (and perhaps a mirrored one) out.

Safe methods (GET, HEAD, OPTIONS) go through `Migration.arun`: the candidate's connection error, timeout or
5xx falls back to legacy (when the spec's `fallback.on_error` allows), and a stage's shadow share mirrors the
request to the other upstream off the request path, comparing the two responses (status, chosen headers, the
JSON body) with the handle's ignore paths and the stage's noise cancellation. PUT and DELETE are idempotent:
they fall back too, but are never mirrored (a mirror would write twice). POST and PATCH are neither: they go
where the key's bucket says, are recorded, and are never retried elsewhere.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import parse_qsl, urlsplit

import aiohttp
from yarl import URL

from crossfade.migration import Migration
from crossfade.routing import CANDIDATE, LEGACY

SAFE: Final = frozenset({"GET", "HEAD", "OPTIONS"})
IDEMPOTENT: Final = SAFE | {"PUT", "DELETE"}
# Hop-by-hop headers (RFC 9110 7.6.1) are the proxy's own business on each side, never forwarded.
HOP_BY_HOP: Final = frozenset({"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer",
                               "upgrade", "proxy-authenticate", "proxy-authorization", "host", "content-length"})
_KEY: Final = re.compile(r"^(header|cookie|query):([A-Za-z0-9!#$%&'*+.^_`|~-]+)$")

Scope = Mapping[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class KeySource:
    """Where a request's sticky key is read: a header, a cookie or a query parameter."""

    kind: str
    name: str

    @classmethod
    def parse(cls, text: str) -> KeySource:
        """`header:X-User-Id`, `cookie:uid` or `query:user`; ValueError saying what is valid otherwise."""
        match = _KEY.match(text)
        if match is None:
            raise ValueError(f"--key {text!r}: expected header:NAME, cookie:NAME or query:NAME, e.g. header:X-User-Id")
        kind, name = match.groups()
        return cls(kind, name.lower() if kind == "header" else name)

    def read(self, headers: list[tuple[bytes, bytes]], query: bytes) -> str | None:
        """The key of one request, or None when it carries none."""
        if self.kind == "query":
            for k, v in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
                if k == self.name:
                    return v
            return None
        wanted = b"cookie" if self.kind == "cookie" else self.name.encode()
        for k, v in headers:
            if k.lower() != wanted:
                continue
            if self.kind == "header":
                return v.decode("latin-1")
            for part in v.decode("latin-1").split(";"):
                name, _, value = part.strip().partition("=")
                if name == self.name:
                    return value
        return None


@dataclass(frozen=True, slots=True)
class ProxySettings:
    """The two upstreams, the key, what is compared, and the upstream timeout. Immutable."""

    legacy: str
    candidate: str
    key: KeySource
    compare_headers: tuple[str, ...] = ("content-type",)
    timeout: float = 30.0
    connections: int = 100

    def __post_init__(self) -> None:
        for name in ("legacy", "candidate"):
            url = urlsplit(getattr(self, name))
            if url.scheme not in ("http", "https") or not url.netloc:
                raise ValueError(f"--{name} {getattr(self, name)!r}: expected an http:// or https:// base URL, "
                                 "e.g. http://127.0.0.1:8001")


@dataclass(frozen=True, slots=True)
class ProxiedRequest:
    """One incoming request, read whole, as both arms are called with it (and as examples show it)."""

    method: str
    target: str  # path and query, as received
    headers: tuple[tuple[str, str], ...]
    body: bytes = field(repr=False)

    def __repr__(self) -> str:
        return f"{self.method} {self.target}"


@dataclass(frozen=True, slots=True)
class UpstreamResponse:
    """What an upstream answered, and which arm it was. Immutable."""

    arm: str
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes = field(repr=False)

    def __repr__(self) -> str:
        return f"HTTP {self.status} from {self.arm} ({len(self.body)} bytes)"


class UpstreamFailed(Exception):
    """An upstream answered 5xx: an error for the judge (and, from the candidate, a reason to fall back)."""

    def __init__(self, response: UpstreamResponse) -> None:
        super().__init__(f"HTTP {response.status} from {response.arm}")
        self.response = response


def comparable(compare_headers: tuple[str, ...]) -> Callable[[Any], Any]:
    """The `clean` step of the comparison: status, the chosen headers, and the body (parsed when JSON)."""
    wanted = tuple(h.lower() for h in compare_headers)

    def clean(answer: Any) -> Any:
        if not isinstance(answer, UpstreamResponse):
            return answer
        headers = dict(answer.headers)
        body: Any
        try:
            body = json.loads(answer.body) if answer.body else None
        except ValueError:
            body = answer.body.decode("utf-8", "replace")
        return {"status": answer.status, "headers": {h: headers.get(h) for h in wanted}, "body": body}

    return clean


class Proxy:
    """The ASGI application: routes by key through a migration handle, forwards with pooled connections."""

    def __init__(self, migration: Migration, settings: ProxySettings, *, ignore: tuple[str, ...] = ()) -> None:
        self.settings = settings
        self.migration = migration.with_options(clean=comparable(settings.compare_headers), ignore=ignore)
        self._migration = migration
        self._ignore = ignore
        self._writes: Migration | None = None
        self._session: aiohttp.ClientSession | None = None
        self._bases = {LEGACY: settings.legacy.rstrip("/"), CANDIDATE: settings.candidate.rstrip("/")}

    def _writes_view(self) -> Migration:
        # PUT and DELETE may fall back but are never mirrored: the handle refuses shadows for writes (made at
        # the first such request, so a proxy that sees none logs no refusal).
        if self._writes is None:
            self._writes = self._migration.with_options(clean=comparable(self.settings.compare_headers),
                                                        ignore=self._ignore, writes=True)
        return self._writes

    def _pool(self) -> aiohttp.ClientSession:
        session = self._session
        if session is None:
            # aiohttp: a C HTTP parser and a keep-alive pool per host. Measured on loopback it spends about a
            # tenth of httpx's CPU per request, and the proxy's added latency is mostly CPU.
            connector = aiohttp.TCPConnector(limit=self.settings.connections, limit_per_host=self.settings.connections)
            session = self._session = aiohttp.ClientSession(
                connector=connector, auto_decompress=False, skip_auto_headers=("User-Agent", "Accept-Encoding"),
                timeout=aiohttp.ClientTimeout(total=self.settings.timeout), cookie_jar=aiohttp.DummyCookieJar())
        return session

    async def aclose(self) -> None:
        """Close the upstream connection pool."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _forward(self, arm: str, request: ProxiedRequest) -> UpstreamResponse:
        async with self._pool().request(request.method, URL(self._bases[arm] + request.target, encoded=True),
                                        headers=request.headers,
                                        data=request.body or None, allow_redirects=False) as response:
            body = await response.read()
            answer = UpstreamResponse(arm, response.status,
                                      tuple((k, v) for k, v in response.headers.items() if k.lower() not in HOP_BY_HOP),
                                      body)
        if response.status >= 500:
            raise UpstreamFailed(answer)
        return answer

    async def legacy(self, request: ProxiedRequest) -> UpstreamResponse:
        """Forward to the legacy upstream."""
        return await self._forward(LEGACY, request)

    async def candidate(self, request: ProxiedRequest) -> UpstreamResponse:
        """Forward to the candidate upstream."""
        return await self._forward(CANDIDATE, request)

    async def handle(self, request: ProxiedRequest, key: str | None) -> UpstreamResponse:
        """The response for one request: routed, recorded, perhaps mirrored; 5xx answers are passed through."""
        try:
            if key is None:
                # No key, no enrollment: such a request stays on legacy and is not part of the experiment.
                return await self.legacy(request)
            if request.method in SAFE:
                return await self.migration.arun(key, self.legacy, self.candidate, request)
            if request.method in IDEMPOTENT:
                return await self._writes_view().arun(key, self.legacy, self.candidate, request)
            decision = self.migration.decide(key)
            with self.migration.observe(decision):
                return await (self.candidate if decision.candidate else self.legacy)(request)
        except UpstreamFailed as failed:
            return failed.response

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        raw_headers = scope["headers"]
        query = scope.get("query_string", b"")
        target = scope.get("raw_path", scope["path"].encode()).decode("latin-1") + (
            "?" + query.decode("latin-1") if query else "")
        headers = tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in raw_headers
                        if k.decode("latin-1").lower() not in HOP_BY_HOP)
        request = ProxiedRequest(scope["method"], target, headers, b"".join(chunks))
        try:
            response = await self.handle(request, self.settings.key.read(raw_headers, query))
        except TimeoutError:
            await _plain(send, 504, "upstream timed out")
            return
        except aiohttp.ClientError as exc:
            await _plain(send, 502, f"upstream unreachable: {type(exc).__name__}")
            return
        headers_out = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers]
        headers_out.append((b"x-crossfade-arm", response.arm.encode()))
        headers_out.append((b"content-length", str(len(response.body)).encode()))
        await send({"type": "http.response.start", "status": response.status, "headers": headers_out})
        await send({"type": "http.response.body", "body": b"" if request.method == "HEAD" else response.body})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return


async def _plain(send: Send, status: int, text: str) -> None:
    body = (text + "\n").encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
