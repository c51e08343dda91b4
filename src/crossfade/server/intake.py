"""Telemetry intake: every window a host posts is checked (its cell, its time, the migration and stage it
names, the token's binding) and bounded per token and window before anything is stored."""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from crossfade.events import State
from crossfade.server.auth import Principal
from crossfade.spec import Problem, Spec, SpecError
from crossfade.telemetry import CellError, Window, check_cell

MAX_AGE: Final = 86400.0
"""Seconds after its end that a window is still taken (a host cut off longer has lost it)."""
MAX_AHEAD: Final = 60.0
"""Seconds a window may start ahead of the server's clock (hosts' clocks differ a little, never by years)."""
MAX_ROWS: Final = 1000
"""Rows one token may add to one arm's window of a stage: one per process, for up to this many processes."""


@dataclass(frozen=True, slots=True)
class Skipped:
    """A posted window that was not stored, and why."""

    index: int
    reason: str


class Intake:
    """Turns posted windows into storable ones. A malformed cell refuses the whole batch (SpecError, 422): it
    is a bug or an attack. A well-formed window that does not fit the migration (unknown, another stage,
    too old, from the future, over the bound, not the token's) is skipped and reported, and never stored."""

    def __init__(self, states: Callable[[], dict[str, State]], spec: Callable[[str, int], Spec], *,
                 fresh: Callable[[str], State | None], max_rows: int = MAX_ROWS) -> None:
        self.states = states
        self.spec = spec
        # The states above may lag the store by a poll: a window that does not fit them is checked again
        # against the migration's state read now, so a host sending right after a change is not refused.
        self.fresh = fresh
        self.max_rows = max_rows
        self._rows: dict[tuple[str, str, str, str, float], int] = {}
        self._lock = threading.Lock()

    def admit(self, who: Principal, posted: Sequence[Any], now: float) -> tuple[list[Window], list[Skipped]]:
        """The windows to store and the ones skipped; `posted` are the request's window models. A window that
        does not fit the states held has its migration's state read from the store."""
        admitted = self._admit(who, posted, now, read=True)
        assert admitted is not None  # reading, it always answers
        return admitted

    def admit_held(self, who: Principal, posted: Sequence[Any], now: float
                   ) -> tuple[list[Window], list[Skipped]] | None:
        """As `admit` without I/O, for the event loop: None (nothing counted) when a window does not fit the
        states held, so that `admit` reads the store for it, in a thread."""
        return self._admit(who, posted, now, read=False)

    def _admit(self, who: Principal, posted: Sequence[Any], now: float, *, read: bool
               ) -> tuple[list[Window], list[Skipped]] | None:
        problems = []
        cells = []
        for index, w in enumerate(posted):
            try:
                cells.append(check_cell(w.cell))
            except CellError as exc:
                problems.append(Problem(f"windows[{index}].cell", str(exc)))
        if problems:
            raise SpecError("<telemetry>", problems)
        states: dict[str, State | None] = dict(self.states())
        reasons = [self._misfit(who, w, states.get(w.migration), now) for w in posted]
        stale = {w.migration for w, reason in zip(posted, reasons, strict=True)
                 if reason is not None and who.serves(w.migration)}
        if stale:
            if not read:
                return None
            for name in stale:
                states[name] = self.fresh(name)
            reasons = [self._misfit(who, w, states[w.migration], now) if w.migration in stale else reason
                       for w, reason in zip(posted, reasons, strict=True)]
        accepted: list[Window] = []
        skipped: list[Skipped] = []
        with self._lock:
            self._forget(now)
            for index, (w, cell, reason) in enumerate(zip(posted, cells, reasons, strict=True)):
                slot = (who.name, w.migration, w.stage, w.arm, w.start)
                if reason is None and self._rows.get(slot, 0) >= self.max_rows:
                    reason = f"token {who.name!r} already sent {self.max_rows} rows for this window"
                if reason is not None:
                    skipped.append(Skipped(index, reason))
                    continue
                self._rows[slot] = self._rows.get(slot, 0) + 1
                key = None if w.key is None else f"{who.name}/{w.key}"
                accepted.append(Window(w.migration, w.stage, w.arm, w.start, w.length, cell, key))
        return accepted, skipped

    def _misfit(self, who: Principal, w: Any, state: State | None, now: float) -> str | None:
        if not who.serves(w.migration):
            return f"token {who.name!r} is bound to {', '.join(who.migrations)}, not {w.migration}"
        if state is None or not state.spec_version:
            return f"no migration named {w.migration}"
        if w.start > now + MAX_AHEAD:
            return f"the window starts {w.start - now:.0f}s in the future (clocks may differ by {MAX_AHEAD:g}s)"
        if w.start + w.length < now - MAX_AGE:
            return f"the window ended more than {MAX_AGE:g}s ago"
        if w.stage == state.stage:
            return None
        names = [s.name for s in self.spec(state.name, state.spec_version).stages]
        # A host may flush the last windows of an earlier stage a little late; a later stage has none yet.
        if (w.stage in names[:max(0, state.stage_index)] and state.stage_entered_at is not None
                and w.start < state.stage_entered_at):
            return None
        return f"{w.stage!r} is not the current stage of {w.migration} ({state.stage or 'not started'})"

    def _forget(self, now: float) -> None:
        if len(self._rows) > 10_000:
            self._rows = {slot: n for slot, n in self._rows.items() if slot[4] >= now - MAX_AGE}


class TelemetryWriter:
    """Writes the telemetry of many concurrent POSTs in one transaction each time (group commit).

    Hundreds of app processes flush every window; one transaction per POST makes the store's write lock the
    server's bottleneck and holds a worker thread per waiting POST, so operator commands (and the routing
    changes they make) queue behind flushes. Here a POST waits, without holding a thread, for the batch its
    windows went into: one writer thread takes every waiting POST's windows, writes them in one call, and
    answers each POST with the outcome (the store's error, if any, reaches every POST of the batch).
    """

    def __init__(self, write: Callable[[Sequence[Window]], None], *, max_windows: int = 5_000) -> None:
        self._write = write
        self._max = max_windows
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    async def write(self, windows: Sequence[Window]) -> None:
        """Write `windows` with whatever else is waiting; raises what the store raised."""
        if not windows:
            return
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        self._queue.put((windows, loop, done))
        if self._thread is None:
            self._start()
        await done

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="crossfade-telemetry-writer", daemon=True)
                self._thread.start()

    def stop(self) -> None:
        """Write what is waiting, then end the writer thread."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout=30)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            count = len(item[0])
            while count < self._max:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)  # stop after this batch
                    break
                batch.append(item)
                count += len(item[0])
            error: BaseException | None = None
            try:
                self._write([w for windows, _, _ in batch for w in windows])
            except Exception as exc:  # the store's failure is each POST's answer
                error = exc
            for _, loop, done in batch:
                try:
                    loop.call_soon_threadsafe(_settle, done, error)
                except RuntimeError:  # the POST's loop has closed: nobody waits for the answer
                    pass


def _settle(done: asyncio.Future[None], error: BaseException | None) -> None:
    if done.done():
        return
    if error is None:
        done.set_result(None)
    else:
        done.set_exception(error)
