"""The controller loop inside the server: a background thread, lease-held, so replicas can run side by side."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from crossfade.backends.base import Backend, BackendError
from crossfade.loop import ControllerLoop, NotificationOutbox, Tick
from crossfade.stagedata import StageTelemetry

log = logging.getLogger("crossfade.server")


class ControllerThread:
    """Runs `ControllerLoop.tick` every `poll` seconds and remembers when a pass last completed (its lag)."""

    def __init__(self, backend: Backend, *, poll: float = 1.0, on_events: Callable[[], None] | None = None,
                 telemetry: StageTelemetry | None = None) -> None:
        self.on_events = on_events
        self.loop = ControllerLoop(backend, on_tick=self._ticked, telemetry=telemetry)
        self.poll = poll
        self.last_pass: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _ticked(self, tick: Tick) -> None:
        if tick.events and self.on_events is not None:
            self.on_events()

    def start(self) -> None:
        """Start ticking in a daemon thread."""
        self._thread = threading.Thread(target=self._run, name="crossfade-controller", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.loop.tick()
                self.last_pass = time.monotonic()
            except BackendError as exc:
                log.warning("controller tick failed: %s", exc)
            except Exception:  # a bug must not stop the controller of every other migration for good
                log.exception("controller tick crashed; retrying at the next poll")
            self._stop.wait(self.poll)

    def lag(self) -> float | None:
        """Seconds since the last completed pass; None before the first."""
        return None if self.last_pass is None else time.monotonic() - self.last_pass

    def stop(self) -> None:
        """Stop ticking and give the leases up, so another replica takes over at once."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        try:
            self.loop.release()
        except BackendError as exc:
            log.warning("could not release the controller's leases: %s", exc)


class OutboxThread:
    """Delivers notifications in a thread of its own, so a slow receiver never delays a controller tick (nor,
    being in the control plane, any application call)."""

    def __init__(self, backend: Backend, *, poll: float = 1.0, link: str | None = None) -> None:
        self.outbox = NotificationOutbox(backend, link=link)
        self.poll = poll
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start delivering in a daemon thread."""
        self._thread = threading.Thread(target=self._run, name="crossfade-notifier", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.outbox.run(self._stop, poll=self.poll)
            except Exception:  # a bug must not end every later notification
                log.exception("notification outbox crashed; restarting it")
                self._stop.wait(self.poll)

    def stop(self) -> None:
        """Stop delivering (a delivery under way finishes first, within its timeout)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=15)
