"""The controller loop: ticks each migration every analysis interval under a lease, and appends what the
pure controller decides with optimistic concurrency; the notification outbox that tells people of it."""

from __future__ import annotations

import concurrent.futures
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import mmh3

from crossfade.backends.base import Backend, BackendError, ConflictError, UnknownMigration
from crossfade.controller import ACTOR, Assessment, assess, is_active, judged_now, step
from crossfade.events import (
    APPLIED,
    ROLLING_BACK,
    ROUTER_FAILED,
    ROUTER_SYNCED,
    SOURCE_FAILED,
    SOURCE_RECOVERED,
    Change,
    Event,
    State,
    seal,
)
from crossfade.metrics import MetricSource, SourceError, read_stage, source_name
from crossfade.metrics.telemetry import TelemetrySource
from crossfade.notify import (
    TEST,
    Channel,
    DeliveryError,
    Notification,
    UnknownTarget,
    kinds_of,
    notification,
    registry,
    targets,
)
from crossfade.notify import Target as NotifyTarget
from crossfade.registry import ProviderConfigError
from crossfade.routers import NOT_IMPLEMENTED, Router, RouterError, Target, routers_for
from crossfade.spec import Spec, load_spec
from crossfade.stagedata import StageTelemetry

if TYPE_CHECKING:
    from crossfade.backends.outbox import Delivery

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
        source: MetricSource | None = None,
        concurrency: int = 8,
        telemetry: StageTelemetry | None = None,
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
        # A control plane shares its reader with its API: an operator's promote then reads only the rows
        # flushed since the controller's last look, not the whole stage.
        self._telemetry = telemetry if telemetry is not None else StageTelemetry()
        # The stored telemetry, read incrementally, for migrations whose spec names no other source; `source`
        # replaces every spec's (a simulation judges its own simulated telemetry whatever the spec names).
        self._telemetry_source = TelemetrySource(self._telemetry)
        self.source = source
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
                specs = list(pool.map(self._spec, due))
                leased = self._leases(due, specs, now)
                results = list(pool.map(lambda state, spec: self._judge(state, spec, now, state.name in leased),
                                        due, specs))
        else:
            specs = [self._spec(state) for state in due]
            leased = self._leases(due, specs, now)
            results = [self._judge(state, spec, now, state.name in leased) for state, spec in zip(due, specs)]
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

    def _leases(self, states: Sequence[State], specs: Sequence[Spec], now: float) -> set[str]:
        """Take or renew the leases of the migrations due, all in one statement; the names this loop holds."""
        if self.dry_run:
            return {state.name for state in states}
        taken = {name.removeprefix("controller:") for name in self.backend.acquire_leases(
            {f"controller:{state.name}": 3 * spec.analysis.interval for state, spec in zip(states, specs)},
            self.holder, now)}
        for state in states:
            if state.name in taken:
                self._held.add(state.name)
            else:
                self._held.discard(state.name)
        return taken

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
        return self._judge(state, spec, now, self._lease(state, spec, now))

    def _judge(self, state: State, spec: Spec, now: float, leased: bool) -> Tick:
        """Step one migration whose lease this loop was (`leased`) or was not given."""
        self._due[state.name] = now + spec.analysis.interval
        if not leased:
            return Tick(state.name, (), None, "another controller holds the lease")
        changes: list[Change] = []
        unverified: list[str] = []
        if self._routers_of(state, spec) and not self.dry_run:
            changes, unverified = self._sync_routers(state, spec, Target.from_state(state, spec), now, recheck=True)
        try:
            if self.source is not None:
                windows = self.source.windows(self.backend, state, spec, now)
            else:
                windows = read_stage(self.backend, state, spec, now, telemetry=self._telemetry_source)
        except SourceError as exc:
            if state.status != ROLLING_BACK:
                # No evidence is not evidence: hold, neither promote nor roll back, and say so once.
                return self._source_failed(spec, state, str(exc), now, changes)
            windows = []  # a gradual rollback steps down on time alone; it needs no data to go on
        if state.source_error is not None:
            name = source_name(spec.source)[0]
            changes.append(Change(SOURCE_RECOVERED, f"metric source {name} answers again",
                                  {"stage": state.stage, "source": name}))
        assessment = (assess(spec, state, windows, now, unverified=unverified)
                      if judged_now(spec, state) else None)
        # Router events change nothing step() reads, so both go into one append, decided on the same state.
        changes += step(spec, state, windows, now, assessment=assessment, unverified=unverified)
        tick = self._append(state, changes, assessment, now)
        if not self.dry_run:
            self._roll_up(state, spec, now)
        return tick

    def _roll_up(self, state: State, spec: Spec, now: float) -> None:
        """Keep the store's totals of the stage caught up, so that the next first look at it (a controller
        that starts, `status`, a scrape) stays short. A failure waits for the next tick: it loses nothing."""
        try:
            self._telemetry.roll_up(self.backend, state, spec, now)
        except BackendError as exc:
            log.warning("%s: rolling up the stage's telemetry failed, will retry: %s", state.name, exc)

    def _source_failed(self, spec: Spec, state: State, error: str, now: float, changes: list[Change]) -> Tick:
        name = source_name(spec.source)[0]
        log.warning("%s: metric source %s failed: %s", state.name, name, error)
        if state.source_error is None:  # said once per outage (the state keeps it across restarts)
            changes = [*changes, Change(SOURCE_FAILED, f"metric source {name} cannot be read; holding the stage "
                                        f"(no promotion, no rollback) until it answers: {error}",
                                        {"stage": state.stage, "source": name, "error": error})]
        result = self._append(state, changes, None, now)
        return Tick(state.name, result.events, None, f"metric source {name} failed, holding: {error}")

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


# -- the notification outbox ---------------------------------------------------------------------------

# Retry delays: doubling from BACKOFF_FIRST up to BACKOFF_CAP, so a receiver back after an hour's outage hears
# within five minutes; a notification still undelivered after GIVE_UP is marked failed (and shown as such).
BACKOFF_FIRST = 5.0
BACKOFF_CAP = 300.0
GIVE_UP = 48 * 3600.0
NOTIFY_LEASE = "notifier"
# Renewed before every send (each at most `timeout`, 10 s), so a deliverer killed mid-pass is replaced within this.
NOTIFY_LEASE_TTL = 30.0


def backoff(attempts: int) -> float:
    """Seconds to wait after the `attempts`-th failed attempt (1-based)."""
    return min(BACKOFF_CAP, BACKOFF_FIRST * 2 ** min(attempts - 1, 16))


class NotificationOutbox:
    """Turns each migration's event log into notifications and delivers them, at least once.

    Queueing reads the events after a per-migration cursor and writes one row per (event, kind, target)
    together with the new cursor, in one transaction: a process killed at any point either queued all of an
    event's notifications or none, and the next pass picks up where the cursor stands. Delivery sends due rows
    and then marks them; killed between the two, a row is sent again with the same idempotency key, which a
    receiver may use to drop the repeat. Only the holder of the notifier lease delivers, so replicas do not
    send in parallel. Targets come from the spec in force at each event, so enabling `notify:` on an old
    migration does not replay its history. Stores without an outbox (a control plane's HTTP client) do nothing.
    """

    def __init__(self, backend: Backend, *, clock: Clock | None = None, holder: str | None = None,
                 link: str | None = None, timeout: float = 10.0) -> None:
        self.backend = backend
        self.store = getattr(backend, "outbox", None)
        self.clock = clock or SystemClock()
        self.holder = holder or default_holder()
        self.link = link.rstrip("/") if link else None
        self.timeout = timeout
        self._targets: dict[tuple[str, int], list[NotifyTarget]] = {}
        self._channels: dict[tuple[str, str], Channel] = {}

    def targets(self, migration: str, version: int) -> list[NotifyTarget]:
        """The notification targets of one spec version (none when it has none, or they no longer validate)."""
        key = (migration, version)
        if key not in self._targets:
            data = self.backend.spec(migration, version) if version else None
            try:
                self._targets[key] = targets((data or {}).get("notify") or [])
            except ProviderConfigError as exc:
                log.warning("%s@%d: notify targets not usable, nothing queued: %s", migration, version, exc)
                self._targets[key] = []
        return self._targets[key]

    def enqueue(self, now: float) -> int:
        """Queue the notifications of every event past each migration's cursor; returns how many were queued."""
        # The outbox's rows live with the SQL store: imported only when a store has an outbox.
        from crossfade.backends.outbox import Queued
        if self.store is None:
            return 0
        queued = 0
        for state in self.backend.states():
            cursor, version = self.store.cursor(state.name)
            if state.seq <= cursor:
                continue
            if version == state.spec_version and not self.targets(state.name, version):
                # Every event since the cursor was written under this spec, which tells no one: nothing to
                # read or write. The cursor stays; the next spec version is read from there.
                continue
            events = self.backend.events(state.name, after=cursor, limit=500)
            rows = []
            for event in events:
                if event.type == APPLIED:
                    version = int(event.payload["version"])
                for kind in kinds_of(event):
                    for target in self.targets(state.name, version):
                        if target.wants(kind):
                            note = notification(event, kind, target.name, link=self._link(state.name))
                            rows.append(Queued(note.key, event.seq, kind, target.name, target.channel,
                                               target.config, note.to_dict()))
            if events and self.store.enqueue(state.name, cursor, events[-1].seq, version, rows, now):
                queued += len(rows)
        return queued

    def _link(self, migration: str) -> str | None:
        return f"{self.link}/#/m/{migration}" if self.link else None

    def deliver(self, now: float) -> list[tuple[Delivery, str | None]]:
        """Send every due notification once, if this process holds the notifier lease; returns each delivery
        tried with its error (None when it got through)."""
        from crossfade.backends.outbox import DELIVERED, FAILED, PENDING
        if self.store is None:
            return []
        # A read first: an idle outbox writes nothing (the lease is a write, which SQLite serializes).
        due = self.store.due(now)
        if not due or not self.backend.acquire_lease(NOTIFY_LEASE, self.holder, NOTIFY_LEASE_TTL, now):
            return []
        tried: list[tuple[Delivery, str | None]] = []
        for row in due:
            # Renewed before each send: a slow receiver must not let the lease lapse mid-pass.
            if not self.backend.acquire_lease(NOTIFY_LEASE, self.holder, NOTIFY_LEASE_TTL, self.clock.now()):
                break
            error: str | None = None
            try:
                key = (row.channel, json.dumps(row.config, sort_keys=True))
                channel = self._channels.get(key)
                if channel is None:
                    channel = self._channels[key] = registry.create(row.channel, row.config, f"notify[{row.target}]")
                channel.send(Notification.from_dict(row.note), timeout=self.timeout)
            except (DeliveryError, ProviderConfigError) as exc:
                error = str(exc)
            except Exception as exc:  # a channel's bug must not stop every other delivery for good
                log.exception("notification %s: the channel crashed", row.key)
                error = f"{type(exc).__name__}: {exc}"
            done = self.clock.now()
            if error is None:
                self.store.settle(row.id, now=done, status=DELIVERED, next_at=done, error=None)
            else:
                gone = done - row.created_at >= GIVE_UP
                self.store.settle(row.id, now=done, status=FAILED if gone else PENDING,
                                  next_at=done + backoff(row.attempts + 1), error=error)
                log.warning("notification %s to %s failed (attempt %d): %s", row.key, row.target,
                            row.attempts + 1, error)
            tried.append((row, error))
        return tried

    def pump(self) -> int:
        """Queue, then deliver what is due; returns how many deliveries were tried."""
        now = self.clock.now()
        self.enqueue(now)
        return len(self.deliver(self.clock.now()))

    def test(self, migration: str, target: str) -> Notification:
        """Queue a test message to one target of a migration's current spec (delivered like any other)."""
        from crossfade.backends.outbox import Queued
        state = self.backend.state(migration)
        if state is None:
            raise UnknownMigration(f"no migration named {migration!r}; apply a spec first")
        if self.store is None:
            raise BackendError(f"{self.backend.url} keeps no notification outbox; test through the control plane")
        found = {t.name: t for t in self.targets(migration, state.spec_version)}
        if target not in found:
            raise UnknownTarget(f"{migration} has no notify target {target!r}; its targets: "
                                f"{', '.join(found) or 'none (add one under notify: in the spec)'}")
        now = self.clock.now()
        key = f"{migration}:test:{now:.6f}:{target}"
        note = Notification(key=key, event_id=f"{migration}:test:{now:.6f}", migration=migration, seq=state.seq,
                            kind=TEST, event_type=TEST, time=now, actor=self.holder,
                            summary=f"crossfade test notification for {migration} to {target}",
                            link=self._link(migration))
        self.store.add(migration, Queued(key, state.seq, TEST, target, found[target].channel, found[target].config,
                                         note.to_dict()), now)
        return note

    def run(self, stop: threading.Event, *, poll: float = 1.0) -> None:
        """Pump until `stop` is set; a store error is logged and retried at the next poll."""
        while not stop.is_set():
            try:
                self.pump()
            except BackendError as exc:
                log.warning("notification outbox pass failed: %s", exc)
            self.clock.sleep(poll, stop)
        self.release()

    def release(self) -> None:
        """Give the notifier lease up, so another process delivers at once."""
        try:
            self.backend.release_lease(NOTIFY_LEASE, self.holder)
        except BackendError as exc:
            log.warning("could not release the notifier lease: %s", exc)
