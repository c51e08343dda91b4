"""The simulation's temporary store: events, states, specs and leases in memory (or in a kept database), and
telemetry windows in memory, the old ones rolled up."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from crossfade.backends.base import ConflictError
from crossfade.backends.sql import SQLBackend
from crossfade.canonical import canonical_json
from crossfade.events import Event, State
from crossfade.telemetry import Cell, Window


class SimBackend:
    """SQLite in memory for events, states, specs and leases; telemetry windows in memory, the old rolled up.

    Reads of one stage from a fixed `since` (as the controller makes them, every look) return the windows
    that ended more than `keep` seconds (or for an arm in `keep_arm`, its own) before the newest one merged into
    one window per arm, followed by the recent ones, so triggers still see their sliding windows and a look
    costs the same at any stage age. An arm's windows are merged in time order, as the controller merges them:
    its totals are the same to the last bit either way.
    """

    def __init__(self, keep: float, url: str | None = None, keep_arm: Mapping[str, float] | None = None) -> None:
        # Without a database to leave behind, events, states and specs live in memory too: one process and
        # one loop need no SQL, and creating a schema and writing every verdict cost more than judging.
        self._sql = SQLBackend(url) if url is not None else None
        self.url = url or "sqlite://"
        # A kept database gets the telemetry too, so `crossfade status` can read it after the run.
        self._write_through = url is not None
        self.keep = keep
        self.keep_arm = dict(keep_arm or {})
        self._windows: dict[tuple[str, str], dict[tuple[float, str], Window]] = {}
        # (migration, stage, since) -> (per arm, the time up to which its windows are rolled up; the rollups)
        self._rollups: dict[tuple[str, str, float], tuple[dict[str, float], dict[str, Window]]] = {}
        self._leases: dict[str, tuple[str, float]] = {}
        self._events: dict[str, list[Event]] = {}
        self._states: dict[str, State] = {}
        self._specs: dict[str, dict[int, str]] = {}

    def append(self, migration: str, expected_seq: int, events: Sequence[Event], *, state: State,
               spec: Mapping[str, Any] | None = None) -> None:
        """As SQLBackend.append."""
        if self._sql is not None:
            self._sql.append(migration, expected_seq, events, state=state, spec=spec)
        log = self._events.setdefault(migration, [])
        last = log[-1].seq if log else 0
        if last != expected_seq:
            raise ConflictError(f"migration {migration} changed concurrently: expected event {expected_seq} to "
                                f"be the last, found {last}; re-read its state and retry")
        log.extend(events)
        self._states[migration] = state
        if spec is not None:
            self._specs.setdefault(migration, {})[events[0].seq] = canonical_json(dict(spec))

    def events(self, migration: str, *, after: int = 0, limit: int | None = None) -> list[Event]:
        """As SQLBackend.events."""
        found = [e for e in self._events.get(migration, ()) if e.seq > after]
        return found if limit is None else found[:limit]

    def state(self, migration: str) -> State | None:
        """As SQLBackend.state."""
        return self._states.get(migration)

    def states(self) -> list[State]:
        """As SQLBackend.states."""
        return [self._states[name] for name in sorted(self._states)]

    def spec(self, migration: str, version: int | None = None) -> dict[str, Any] | None:
        """As SQLBackend.spec."""
        versions = self._specs.get(migration) or {}
        text = versions.get(max(versions) if version is None and versions else version)  # type: ignore[arg-type]
        return None if text is None else json.loads(text)

    def acquire_lease(self, name: str, holder: str, ttl: float, now: float) -> bool:
        """As SQLBackend.acquire_lease, in memory."""
        held = self._leases.get(name)
        if held is not None and held[0] != holder and held[1] > now:
            return False
        self._leases[name] = (holder, now + ttl)
        return True

    def acquire_leases(self, ttls: Mapping[str, float], holder: str, now: float) -> set[str]:
        """As SQLBackend.acquire_leases, in memory."""
        return {name for name, ttl in ttls.items() if self.acquire_lease(name, holder, ttl, now)}

    def lease_holders(self, prefix: str, now: float) -> list[str]:
        """As SQLBackend.lease_holders, in memory."""
        return sorted({h for n, (h, until) in self._leases.items() if n.startswith(prefix) and until > now})

    def release_lease(self, name: str, holder: str) -> None:
        """As SQLBackend.release_lease, in memory."""
        if self._leases.get(name, ("", 0.0))[0] == holder:
            del self._leases[name]

    def close(self) -> None:
        """Release the database."""
        if self._sql is not None:
            self._sql.close()

    def write_windows(self, windows: Sequence[Window]) -> None:
        """Keep windows; rows for one window add up."""
        if self._write_through:
            self._sql.write_windows(windows)
        for w in windows:
            stored = self._windows.setdefault((w.migration, w.stage), {})
            key = (w.start, w.arm)
            if key in stored:
                merged = Cell()
                merged.merge(stored[key].cell)
                merged.merge(w.cell)
                w = replace(w, cell=merged)
            stored[key] = w

    def windows(self, migration: str, *, stage: str | None = None, since: float | None = None,
                until: float | None = None) -> list[Window]:
        """Windows starting in [since, until), in time order; one stage's read from `since` rolls up the old."""
        if stage is None or until is not None:
            found = [w for (m, _), ws in self._windows.items() if m == migration for w in ws.values()
                     if (stage is None or w.stage == stage) and (since is None or w.start >= since)
                     and (until is None or w.start < until)]
            return sorted(found, key=lambda w: (w.start, w.arm, w.stage))
        stored = self._windows.get((migration, stage), {})
        since = -math.inf if since is None else since
        newest = max((w.start + w.length for w in stored.values()), default=-math.inf)
        rolled_until, rolled = self._rollups.setdefault((migration, stage, since), ({}, {}))
        horizons = {arm: newest - self.keep_arm.get(arm, self.keep) for (_, arm) in stored}
        recent = []
        for (start, arm), w in sorted(stored.items()):
            if start < rolled_until.get(arm, since):
                continue
            if start + w.length <= horizons[arm]:
                old = rolled.get(arm)
                cell = Cell()
                if old is not None:
                    cell.merge(old.cell)
                cell.merge(w.cell)
                first = old.start if old is not None else w.start
                rolled[arm] = Window(migration, stage, arm, first, start + w.length - first, cell)
                del stored[(start, arm)]
            else:
                recent.append(w)
        for arm, horizon in horizons.items():
            rolled_until[arm] = max(rolled_until.get(arm, since), horizon)
        return sorted(rolled.values(), key=lambda w: w.arm) + recent
