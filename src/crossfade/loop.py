"""The controller loop: ticks each migration every analysis interval under a lease, and appends what the
pure controller decides with optimistic concurrency."""

from __future__ import annotations

import concurrent.futures
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import mmh3

from crossfade.backends.base import Backend, BackendError, ConflictError
from crossfade.controller import ACTOR, Assessment, assess, is_active, step
from crossfade.events import ROUTER_FAILED, ROUTER_SYNCED, Change, Event, State, seal
from crossfade.routers import NOT_IMPLEMENTED, Router, RouterError, Target, routers_for
from crossfade.spec import Spec, load_spec
from crossfade.stagedata import StageTelemetry

log = logging.getLogger("crossfade.controller")

# How long a router may take, after a push, before "not verified" counts as a failure: an nginx reload or
# a mesh's config propagation is not instant. Until then the router only holds promotion back.
VERIFY_GRACE = 2.0


class Clock(Protocol):
    """Where the loop reads the time and waits: the system's, or a simulation's virtual one."""

    def now(self) -> float:
        """Seconds since the epoch."""

    def sleep(self, seconds: float, stop: threading.Event) -> None:
        """Wait `seconds`, or until `stop` is set."""


class SystemClock:
    """Real time."""

    def now(self) -> float:
        """Seconds since the epoch."""
        return time.time()

    def sleep(self, seconds: float, stop: threading.Event) -> None:
        """Wait `seconds`, or until `stop` is set."""
        stop.wait(seconds)


@dataclass(frozen=True, slots=True)
class Tick:
    """What one tick did for one migration: the events it appended, or why it did nothing."""

    migration: str
    events: tuple[Event, ...]
    assessment: Assessment | None
    skipped: str | None = None


def default_holder() -> str:
    """This process's name for leases and the events it writes: host and pid."""
    return f"{socket.gethostname()}:{os.getpid()}"


# A replica says it is alive with a lease of its own, renewed a third of the way through.
REPLICA_TTL = 15.0


def assignee(migration: str, replicas: Sequence[str]) -> str:
    """Which of the live replicas judges a migration: the highest by a hash of both (rendezvous hashing),
    so each takes an even share and a replica that comes or goes moves only its own share."""
    return max(replicas, key=lambda holder: mmh3.hash(f"{holder}\x1f{migration}", signed=False))


class ControllerLoop:
    """Runs the controller for every active migration of a backend (or the `names` given).

    Several loops may run against one backend (replicas of `crossfade serve`, or `run-controller`s): they
    share the migrations, each judging those `assignee` gives it among the replicas alive, and per
    migration only the holder of its lease acts; a lease lasts three intervals, so a loop that dies is
    replaced within that time. Up to `concurrency` migrations are judged at once. The state is always re-read
    from the backend before a step, and the step's events are appended with the sequence number they were
    decided on, so a loop killed at any point, or racing another, never loses or doubles a transition.
    """

    def __init__(
        self,
        backend: Backend,
        *,
        clock: Clock | None = None,
        holder: str | None = None,
        names: Iterable[str] | None = None,
        on_tick: Callable[[Tick], None] | None = None,
        dry_run: bool = False,
        concurrency: int = 8,
    ) -> None:
        self.backend = backend
        self.concurrency = concurrency
        self.clock = clock or SystemClock()
        self.holder = holder or default_holder()
        self.actor = f"{ACTOR}@{self.holder}"
        self.names = set(names) if names is not None else None
        self.on_tick = on_tick
        # A dry run decides as usual and hands the sealed events to on_tick, but neither takes a lease nor
        # appends anything.
        self.dry_run = dry_run
        self._due: dict[str, float] = {}
        self._specs: dict[tuple[str, int], Spec] = {}
        self._held: set[str] = set()
        self._telemetry = StageTelemetry()
        self._beat_at = float("-inf")
        self._routers: dict[tuple[str, int], list[Router]] = {}
        # Per (migration, router): the last target its data plane was verified at; a router whose entry
        # differs from the current target is synced again at every poll until it verifies.
        self._verified: dict[tuple[str, str], Target] = {}
        # Per (migration, router): the target last pushed, and when (loop clock), for the verify grace.
        self._pushed: dict[tuple[str, str], tuple[Target, float]] = {}

    def _spec(self, state: State) -> Spec:
        key = (state.name, state.spec_version)
        spec = self._specs.get(key)
        if spec is None:
            data = self.backend.spec(state.name, state.spec_version)
            if data is None:
                raise BackendError(f"{state.name}: spec version {state.spec_version} is missing")
            spec = self._specs[key] = load_spec(data, source_name=f"{state.name}@{state.spec_version}")
        return spec

    def tick(self) -> list[Tick]:
        """One pass: every active migration whose interval has come is stepped once; between its ticks, and
        after it stopped, a migration whose routers lag its routing state has them synced."""
        now = self.clock.now()
        replicas = self._alive(now)
        due = []
        between = []
        for state in self.backend.states():
            if (self.names is not None and state.name not in self.names) or assignee(state.name, replicas) != self.holder:
                self._let_go(state.name)  # not ours, or another replica's share: hand its lease over at once
                self._telemetry.forget(state.name)
                continue
            if is_active(state) and self._due.get(state.name, 0.0) <= now:
                due.append(state)
            else:
                # Only the routers have work here: a routing change (a rollback above all) reaches them at
                # the next poll, not the next interval.
                between.append(state)
        if len(due) > 1 and self.concurrency > 1:
            # Migrations are judged side by side: most of a step is waiting on the store. Results are
            # handed to on_tick from this thread, in the order of the states.
            with concurrent.futures.ThreadPoolExecutor(min(self.concurrency, len(due))) as pool:
                results = list(pool.map(lambda state: self.tick_one(state, now), due))
        else:
            results = [self.tick_one(state, now) for state in due]
        for state in between:
            result = self.reconcile(state, now)
            if result is not None:
                results.append(result)
            elif not is_active(state):
                self._let_go(state.name)
                self._telemetry.forget(state.name)
        if self.on_tick is not None:
            for result in results:
                self.on_tick(result)
        return results

    def _routers_of(self, state: State, spec: Spec) -> list[Router]:
        key = (state.name, state.spec_version)
        routers = self._routers.get(key)
        if routers is None:
            routers = self._routers[key] = routers_for(spec) if spec.routers else []
        return routers

    def reconcile(self, state: State, now: float) -> Tick | None:
        """Bring the spec's routers to the migration's current target, between ticks; None when none lags."""
        if state.spec_version == 0 or self.dry_run:
            return None
        spec = self._spec(state)
        target = Target.from_state(state, spec)
        if all(self._verified.get((state.name, r.name)) == target for r in self._routers_of(state, spec)):
            return None
        if not self._lease(state, spec, now):
            return None
        changes, _ = self._sync_routers(state, spec, target, now, recheck=False)
        return self._append(state, changes, None, now)

    def _sync_routers(self, state: State, spec: Spec, target: Target, now: float, *, recheck: bool
                      ) -> tuple[list[Change], list[str]]:
        """Sync and verify every router; the events to record, and the routers not verified at `target`.

        `recheck` verifies routers already verified at this target too (at every tick, to catch drift: an
        operator's kubectl edit, an nginx restarted with an old config).
        """
        changes: list[Change] = []
        unverified: list[str] = []
        recorded = {r[0]: r for r in state.routers}
        for router in self._routers_of(state, spec):
            key = (state.name, router.name)
            if not recheck and self._verified.get(key) == target:
                continue
            started = time.monotonic()
            verification = None
            try:
                pushed = self._pushed.get(key)
                if pushed is None or pushed[0] != target:
                    router.sync(target)
                    pushed = self._pushed[key] = (target, now)
                verification = router.verify(target)
                detail = f"{router.name}: {verification.detail or verification.status}"
            except (RouterError, OSError) as exc:
                self._pushed.pop(key, None)
                pushed = None
                detail = f"{router.name}: {exc}"
            took = round((time.monotonic() - started) * 1000, 1)
            numbers = {"router": router.name, **target.to_dict(), "took_ms": took}
            if verification is not None and (verification.verified or verification.status == NOT_IMPLEMENTED):
                self._verified[key] = target
                entry = (router.name, verification.status, target.candidate)
                if recorded.get(router.name, ())[:3] != entry:
                    changes.append(Change(ROUTER_SYNCED, f"{router.name} at {target.describe()}: "
                                          f"{verification.detail or verification.status}",
                                          {**numbers, "verification": verification.status}))
                continue
            self._verified.pop(key, None)
            unverified.append(f"{detail}; wanted {target.describe()}")
            if pushed is not None and now - pushed[1] < VERIFY_GRACE:
                continue  # pushed moments ago: a reload or a mesh's propagation may still be under way
            # Not there after the grace (or drifted from it since): push again at the next pass, and say so.
            self._pushed.pop(key, None)
            last = recorded.get(router.name)
            if last is None or last[1] != "failed" or last[2] != target.candidate or last[3] != detail:
                changes.append(Change(ROUTER_FAILED, detail, {**numbers, "error": detail}))
            log.warning("%s: router %s not at %s: %s", state.name, router.name, target.describe(), detail)
        return changes, unverified

    def _lease(self, state: State, spec: Spec, now: float) -> bool:
        if self.dry_run:
            return True
        if self.backend.acquire_lease(f"controller:{state.name}", self.holder, 3 * spec.analysis.interval, now):
            self._held.add(state.name)
            return True
        self._held.discard(state.name)
        return False

    def _append(self, state: State, changes: list[Change], assessment: Assessment | None, now: float) -> Tick:
        if not changes:
            return Tick(state.name, (), assessment)
        after, events = seal(state, changes, actor=self.actor, now=now)
        if self.dry_run:
            return Tick(state.name, tuple(events), assessment, "dry run: nothing written")
        try:
            self.backend.append(state.name, state.seq, events, state=after)
        except ConflictError as exc:
            # Someone (an operator, most likely) moved the migration since it was read: decide again soon.
            self._due[state.name] = now
            return Tick(state.name, (), assessment, f"conflict, will re-read: {exc}")
        for event in events:
            log.info("%s #%d %s: %s", event.migration, event.seq, event.type, event.reason)
        return Tick(state.name, tuple(events), assessment)

    def tick_one(self, state: State, now: float) -> Tick:
        """Step one migration now, if this loop holds (or can take) its lease."""
        spec = self._spec(state)
        self._due[state.name] = now + spec.analysis.interval
        if not self._lease(state, spec, now):
            return Tick(state.name, (), None, "another controller holds the lease")
        changes: list[Change] = []
        unverified: list[str] = []
        if self._routers_of(state, spec) and not self.dry_run:
            changes, unverified = self._sync_routers(state, spec, Target.from_state(state, spec), now, recheck=True)
        windows = self._telemetry.windows(self.backend, state, spec, now)
        assessment = (assess(spec, state, windows, now, unverified=unverified)
                      if state.stage_index + 1 < len(spec.stages) else None)
        # Router events change nothing step() reads, so both go into one append, decided on the same state.
        changes += step(spec, state, windows, now, assessment=assessment, unverified=unverified)
        return self._append(state, changes, assessment, now)

    def _alive(self, now: float) -> list[str]:
        """The replicas alive, this one included (read at every pass, so a replica that lets go is replaced
        at once); renews this one's own lease when due."""
        if self.dry_run:
            return [self.holder]
        if now >= self._beat_at:
            self.backend.acquire_lease(f"replica:{self.holder}", self.holder, REPLICA_TTL, now)
            self._beat_at = now + REPLICA_TTL / 3
        return sorted({*self.backend.lease_holders("replica:", now), self.holder})

    def _let_go(self, name: str) -> None:
        if name in self._held:
            self._held.discard(name)
            self.backend.release_lease(f"controller:{name}", self.holder)

    def release(self) -> None:
        """Give up every lease this loop holds, so another loop can take over at once."""
        for name in list(self._held):
            self._let_go(name)
        if not self.dry_run:
            self.backend.release_lease(f"replica:{self.holder}", self.holder)

    def run(self, stop: threading.Event | None = None, *, poll: float = 1.0) -> None:
        """Tick until `stop` is set. A backend error is logged and retried at the next poll."""
        stop = stop or threading.Event()
        try:
            while not stop.is_set():
                try:
                    self.tick()
                except BackendError as exc:
                    log.warning("controller tick failed: %s", exc)
                due = min(self._due.values(), default=self.clock.now() + poll)
                self.clock.sleep(max(0.0, min(poll, due - self.clock.now())), stop)
        finally:
            try:
                self.release()
            except BackendError as exc:
                log.warning("could not release the controller's leases: %s", exc)
