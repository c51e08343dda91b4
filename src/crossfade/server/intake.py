"""Telemetry intake: every window a host posts is checked (its cell, its time, the migration and stage it
names, the token's binding) and bounded per token and window before anything is stored."""

from __future__ import annotations

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
        """The windows to store and the ones skipped; `posted` are the request's window models."""
        problems = []
        cells = []
        for index, w in enumerate(posted):
            try:
                cells.append(check_cell(w.cell))
            except CellError as exc:
                problems.append(Problem(f"windows[{index}].cell", str(exc)))
        if problems:
            raise SpecError("<telemetry>", problems)
        states = dict(self.states())
        reread: set[str] = set()
        accepted: list[Window] = []
        skipped: list[Skipped] = []
        with self._lock:
            self._forget(now)
            for index, (w, cell) in enumerate(zip(posted, cells, strict=True)):
                reason = self._misfit(who, w, states.get(w.migration), now)
                if reason is not None and w.migration not in reread and who.serves(w.migration):
                    reread.add(w.migration)
                    state = self.fresh(w.migration)
                    if state is not None:
                        states[w.migration] = state
                    reason = self._misfit(who, w, state, now)
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
