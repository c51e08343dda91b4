"""The routing feed: one reader of the store per server, whose snapshot SDK hosts fetch and long-poll."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from crossfade.backends.base import Backend, BackendError
from crossfade.events import State
from crossfade.routing import Decision, Route, legacy_decision
from crossfade.spec import Spec, load_spec

_UNKNOWN = legacy_decision("unknown migration")

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
        self._changed: asyncio.Event | None = None
        self._stop = threading.Event()
        self._released = False
        self._kick = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Read once, then keep reading in a thread; waiters are woken on `loop`."""
        self._loop = loop
        self._changed = asyncio.Event()
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
        # Runs on the event loop: wake every waiter, and give later waiters a fresh event to wait on.
        if self._changed is not None:
            self._changed.set()
        self._changed = asyncio.Event()

    async def wait(self, etag: str | None, timeout: float) -> dict[str, Any]:
        """The snapshot as soon as its ETag differs from `etag`, or the unchanged one after `timeout`."""
        if timeout <= 0 or etag != self.etag or self._changed is None or self._released:
            return self.snapshot
        changed = self._changed
        try:
            await asyncio.wait_for(changed.wait(), timeout)
        except TimeoutError:
            pass
        return self.snapshot
