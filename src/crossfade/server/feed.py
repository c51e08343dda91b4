"""The routing feed: one reader of the store per server, whose snapshot SDK hosts fetch and long-poll."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import threading
import time
from collections.abc import Callable
from typing import Any, Final

from crossfade.backends.base import Backend, BackendError, BackendUnavailable
from crossfade.events import State
from crossfade.routing import Decision, Route, legacy_decision
from crossfade.server.auth import Authenticator, AuthError
from crossfade.server.guard import ASGIApp, Receive, Scope, Send, authenticate, refuse_unauthenticated
from crossfade.spec import Spec, load_spec

_UNKNOWN = legacy_decision("unknown migration")
# The longest long poll of `GET /v1/routing?wait=`, in seconds.
MAX_WAIT: Final = 60.0
_WAIT_QUERY: Final = re.compile(rb"wait=([0-9]{1,9}(?:\.[0-9]{0,9})?)")

log = logging.getLogger("crossfade.server")


def etag_of(states: list[State]) -> str:
    """A quoted ETag that changes whenever any migration gains an event (or one appears)."""
    text = ";".join(f"{s.name}:{s.seq}:{s.head}" for s in states)
    return '"' + hashlib.sha256(text.encode()).hexdigest()[:32] + '"'


class RoutingFeed:
    """Reads every migration's state every `poll` seconds; on a change, rebuilds the snapshot (states and
    the spec versions they use) and wakes the requests long-polling for it.

    However many SDK hosts wait, the store is read by this one thread; a change made through this server
    is announced at once (`poke`), one made through another replica or the database within `poll`.
    """

    def __init__(self, backend: Backend, *, poll: float = 0.25, on_change: Callable[[], None] | None = None) -> None:
        self.backend = backend
        self.poll = poll
        self.on_change = on_change
        self.etag = ""
        self.snapshot: dict[str, Any] = {"etag": "", "states": [], "specs": []}
        self.body = json.dumps(self.snapshot).encode()
        self.routes: dict[str, Route] = {}
        self.states: dict[str, State] = {}
        self._models: dict[tuple[str, int], Spec] = {}
        self.last_ok: float | None = None
        self.last_error: str | None = None
        self._specs: dict[tuple[str, int], dict[str, Any]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiters: set[asyncio.Future[None]] = set()
        self._stop = threading.Event()
        self._released = False
        self._kick = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Read once, then keep reading in a thread; waiters are woken on `loop`."""
        self._loop = loop
        self.refresh()
        self._thread = threading.Thread(target=self._run, name="crossfade-routing-feed", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the reading thread."""
        self._stop.set()
        self._kick.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def release(self) -> None:
        """Answer every long poll now and hold no new one: the server is shutting down."""
        self._released = True
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._announce)

    def poke(self) -> None:
        """Read now: this server has just changed a migration."""
        self._kick.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._kick.wait(self.poll)
            self._kick.clear()
            if not self._stop.is_set():
                self.refresh()

    def refresh(self) -> bool:
        """Read the states; True when the snapshot changed. Errors are kept for /readyz, never raised."""
        try:
            with self._lock:
                states = self.backend.states()
                etag = etag_of(states)
                if etag == self.etag:
                    self._ok()
                    return False
                specs = []
                routes = {}
                for state in states:
                    if state.spec_version:
                        key = (state.name, state.spec_version)
                        spec = self._specs.get(key)
                        if spec is None:
                            spec = self.backend.spec(state.name, state.spec_version)
                            if spec is None:
                                continue
                            self._specs[key] = spec
                        specs.append({"migration": state.name, "version": state.spec_version, "spec": spec})
                        routes[state.name] = Route.from_state(state, self.spec(state.name, state.spec_version))
                snapshot = {"etag": etag, "states": [s.to_dict() for s in states], "specs": specs}
                self.body = json.dumps(snapshot, separators=(",", ":")).encode()
                self.snapshot = snapshot
                self.routes = routes
                self.states = {s.name: s for s in states}
                self.etag = etag
                self._ok()
        except (BackendError, ValueError) as exc:  # ValueError: a stored spec this version cannot read
            self.last_error = str(exc)
            log.warning("routing feed: cannot read the store: %s", exc)
            return False
        if self.on_change is not None:
            try:
                self.on_change()
            except Exception as exc:  # the decide table lags a poll; the feed itself must keep going
                log.warning("routing feed: change listener failed: %s", exc)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._announce)
        return True

    def spec(self, name: str, version: int) -> Spec:
        """The validated spec of a migration at a version, read once and kept (versions never change)."""
        key = (name, version)
        model = self._models.get(key)
        if model is None:
            data = self._specs.get(key) or self.backend.spec(name, version)
            if data is None:
                raise BackendError(f"{name}: spec version {version} is missing from the store")
            model = self._models[key] = load_spec(data, source_name=f"{name}@{version}")
        return model

    def decide(self, name: str, key: object) -> Decision:
        """Route one key as an SDK host holding this snapshot would (legacy for an unknown migration)."""
        route = self.routes.get(name)
        return _UNKNOWN if route is None else route.decide(key)

    def _ok(self) -> None:
        self.last_ok = time.monotonic()
        self.last_error = None

    def _announce(self) -> None:
        # Runs on the event loop: wake every waiter (a future each: cheaper by far than a task each, when a
        # thousand long polls wake at once).
        waiters, self._waiters = self._waiters, set()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def wait(self, etag: str | None, timeout: float) -> dict[str, Any]:
        """The snapshot as soon as its ETag differs from `etag`, or the unchanged one after `timeout`."""
        if timeout <= 0 or etag != self.etag or self._loop is None or self._released:
            return self.snapshot
        waiter = self._loop.create_future()
        self._waiters.add(waiter)
        timer = self._loop.call_later(timeout, _wake, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiters.discard(waiter)
        return self.snapshot


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class RoutingPoll:
    """ASGI middleware that answers the SDK hosts' `GET /v1/routing` straight from the feed.

    A routing change wakes every long poll at once, and the framework's path to the route (its routing table,
    dependencies and validation) cost several times the answer itself: at 1,000 hosts, the last heard of the
    change hundreds of milliseconds late. A plain request (no query or `wait=<seconds>` up to MAX_WAIT, an
    If-None-Match of at most 200 characters) is authenticated and answered here, as the route would; any
    other goes on to the app's route, which validates it (and documents the endpoint).
    """

    def __init__(self, app: ASGIApp, feed: RoutingFeed, auth: Authenticator) -> None:
        self.app = app
        self.feed = feed
        self.auth = auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer a plain routing poll; pass anything else on."""
        if scope["type"] != "http" or scope["path"] != "/v1/routing" or scope["method"] != "GET":
            await self.app(scope, receive, send)
            return
        wait = self._wait(scope["query_string"])
        headers: dict[bytes, bytes] = {}
        for name, value in scope["headers"]:
            headers.setdefault(name, value)  # the first of repeated headers, as the route reads them
        match = headers.get(b"if-none-match")
        if wait is None or (match is not None and len(match) > 200):
            await self.app(scope, receive, send)
            return
        authorization = headers.get(b"authorization")
        host = headers.get(b"host")
        try:
            await authenticate(self.auth, None if authorization is None else authorization.decode("latin-1"),
                               scope["client"][0] if scope.get("client") else None, "sdk",
                               None if host is None else host.decode("latin-1"))
        except (AuthError, BackendUnavailable) as exc:
            await refuse_unauthenticated(send, exc)
            return
        etag_sent = None if match is None else match.decode("latin-1")
        await self.feed.wait(etag_sent, wait)
        # The ETag before the body: a refresh between the two reads pairs a new table with the old ETag, which
        # the next poll corrects; the other order could label an old table as current.
        etag = self.feed.etag
        if etag_sent == etag:
            await send({"type": "http.response.start", "status": 304, "headers": [(b"etag", etag.encode())]})
            await send({"type": "http.response.body", "body": b""})
            return
        body = self.feed.body
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"etag", etag.encode()), (b"content-length", str(len(body)).encode()),
                                (b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})

    @staticmethod
    def _wait(query: bytes) -> float | None:
        """The long poll's seconds from a query of nothing or `wait=<seconds>`; None for any other query."""
        if not query:
            return 0.0
        found = _WAIT_QUERY.fullmatch(query)
        if found is None:
            return None
        wait = float(found.group(1))
        return wait if wait <= MAX_WAIT else None
