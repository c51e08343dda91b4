"""One process's client: connect to a backend, keep the routing table fresh, flush telemetry, apply specs."""

from __future__ import annotations

import atexit
import concurrent.futures
import getpass
import logging
import os
import random
import threading
import time
import uuid
import weakref
from dataclasses import replace
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from crossfade.backends import open_backend
from crossfade.backends.base import (
    Backend,
    BackendError,
    BackendUnavailable,
    redact_url,
)
from crossfade.events import (
    Change,
    Event,
    State,
    apply_change,
    seal,
)
from crossfade.migration import Migration, shadow_settings
from crossfade.routing import (
    CANDIDATE,
    Decision,
    Route,
    RoutingTable,
    legacy_decision,
)
from crossfade.shadow import (
    ComparisonLog,
    Example,
    Options,
    ShadowRunner,
)
from crossfade.spec import ShadowSettings, Spec, load_spec
from crossfade.telemetry import Recorder, Window, cell_key

log = logging.getLogger("crossfade")

# Windows sent in one write: well under the control plane's cap on a telemetry body.
FLUSH_CHUNK = 500

DEFAULT_URL = "sqlite:///./crossfade.db"

_NO_SHADOW_SETTINGS = ShadowSettings()

# Shared decisions for calls crossfade sends to legacy for reasons of its own.
_UNKNOWN = legacy_decision("unknown migration")
_STALE = legacy_decision("routing table stale")



def _os_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # getuser raises when no user name can be found (containers without passwd)
        return f"uid-{os.getuid()}" if hasattr(os, "getuid") else "unknown"


def connect(
    url: str | None = None,
    *,
    refresh: float = 1.0,
    window: float = 10.0,
    stale_after: float = 60.0,
    candidate_threads: int = 32,
    token: str | None = None,
) -> Client:
    """A client of the backend at `url` (default: `CROSSFADE_URL`, else `sqlite:///./crossfade.db`).

    `url` may name a control plane (`http://host:8765`): `token` (default: `CROSSFADE_TOKEN`) then
    authenticates to it, and the app host needs no database credentials. It never raises because the
    backend is away: calls then route to legacy until it answers.
    """
    return Client(
        url or os.environ.get("CROSSFADE_URL") or DEFAULT_URL,
        refresh=refresh,
        window=window,
        stale_after=stale_after,
        candidate_threads=candidate_threads,
        token=token or os.environ.get("CROSSFADE_TOKEN"),
    )


class Client:
    """One process's connection to crossfade: the routing table, the telemetry recorder, and operations.

    A background thread refreshes the routing table every `refresh` seconds and flushes telemetry windows.
    If the backend stops answering, the last table keeps serving; after `stale_after` seconds without a
    successful refresh every call goes to legacy, until the backend answers again.
    """

    def __init__(
        self,
        url: str | Backend,
        *,
        refresh: float = 1.0,
        window: float = 10.0,
        stale_after: float = 60.0,
        candidate_threads: int = 32,
        flush_attempts: int = 5,
        max_pending_windows: int = 10_000,
        clock: Callable[[], float] | None = None,
        background: bool = True,
        token: str | None = None,
    ) -> None:
        if refresh <= 0 or stale_after <= 0:
            raise ValueError("refresh and stale_after must be positive numbers of seconds")
        # Only the redacted form is ever shown or logged; the URL itself opens the backend.
        self.url = redact_url(url if isinstance(url, str) else url.url)
        self._target = url if isinstance(url, str) else url.url
        self._token = token
        self.refresh_interval = refresh
        self.stale_after = stale_after
        # A simulation passes its virtual clock (seconds): calls then take the virtual time their arms
        # advance it by, and windows and events carry virtual timestamps. Without one, real time.
        self.time: Callable[[], float] = clock or time.time
        if clock is None:
            self.recorder = Recorder(window)
        else:
            virtual_ns = lambda: round(clock() * 1e9)  # noqa: E731 - one clock read as both wall and monotonic
            self.recorder = Recorder(window, clock=virtual_ns, monotonic=virtual_ns)
        self.counters = {
            "refresh_failures": 0, "flush_failures": 0, "dropped_windows": 0, "dropped_calls": 0,
            "recording_errors": 0, "internal_errors": 0, "key_errors": 0,
            "shadow_runs": 0, "shadow_compared": 0, "shadow_mismatches": 0, "shadow_dropped": 0,
            "shadow_timeouts": 0, "shadow_errors": 0, "shadow_refused_writes": 0,
            "dual_writes": 0, "dual_write_divergences": 0,
            "comparison_flush_failures": 0, "dropped_comparison_rows": 0, "rejected_windows": 0,
        }
        self._counters_lock = threading.Lock()
        self.comparisons = ComparisonLog(window)
        self._comparisons_pending: list[tuple[Any, int]] = []
        self._runners: dict[str, ShadowRunner] = {}
        self._runners_lock = threading.Lock()
        self._backend: Backend | None = None if isinstance(url, str) else url
        self._backend_lock = threading.Lock()
        self._routes: Mapping[str, Route] = {}
        self._absent = _UNKNOWN
        self._last_ok = time.monotonic()
        self._specs: dict[tuple[str, int], Spec] = {}
        # Windows not yet written, oldest first: kept while the backend is away (bounded), each with the
        # idempotency key it was first sent with, so a write retried after a lost answer is not counted twice.
        self._pending: list[Window] = []
        self._max_pending = max_pending_windows
        self._process = uuid.uuid4().hex
        self._parts = 0
        self._flush_attempts = flush_attempts
        # Every process closes its windows at the same instants; each flushes at its own point of the window
        # so that a control plane fed by hundreds of them sees their writes spread out, not in one burst.
        self._window = window
        self._flush_offset = random.uniform(0.0, 0.8 * window)
        self._flush_at = 0.0
        self._candidate_threads = candidate_threads
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._slots = threading.BoundedSemaphore(candidate_threads)
        self._handles: dict[tuple[str, Options], Migration] = {}
        self._views: weakref.WeakSet[Migration] = weakref.WeakSet()  # every handle and view, to re-bind
        self._stop = threading.Event()
        # Set by a backend that learns of a change by itself (a control plane's long poll): refresh now.
        self._wake = threading.Event()
        self._closed = False
        if self._backend is not None:
            self._watch(self._backend)
        self._thread: threading.Thread | None = None
        try:
            self.refresh()
        except BackendError as exc:
            log.warning("crossfade: backend %s unavailable (%s); routing everything to legacy until it answers",
                        self.url, exc)
        # Without the background thread (simulations, one-shot commands) the owner calls refresh() and
        # flush() itself.
        self._background = background
        if background:
            self._start_thread()
        _live_clients.add(self)

    # -- backend and routing table -------------------------------------------------------------

    def backend(self) -> Backend:
        """The backend, opened on first use; raises BackendUnavailable when it cannot be reached."""
        backend = self._backend
        if backend is not None:
            return backend
        with self._backend_lock:
            if self._backend is None:
                self._backend = open_backend(self._target, token=self._token)
                self._watch(self._backend)
            return self._backend

    def _watch(self, backend: Backend) -> None:
        subscribe = getattr(backend, "subscribe", None)
        if subscribe is not None:
            subscribe(self._poke)

    def _poke(self) -> None:
        self._wake.set()

    def refresh(self) -> RoutingTable:
        """Fetch every migration's state now and swap in the new routing table."""
        backend = self.backend()
        routes: dict[str, Route] = {}
        old = self._routes
        for state in backend.states():
            route = old.get(state.name)
            if route is None or route.version != state.seq or self._absent is _STALE:
                route = Route.from_state(state, self._spec(state.name, state.spec_version))
            routes[state.name] = route
        self._set_routes(routes, _UNKNOWN)
        self._last_ok = time.monotonic()
        self.recorder.resync()
        return RoutingTable(routes, time.time())

    def _set_routes(self, routes: Mapping[str, Route], absent: Decision) -> None:
        self._routes = routes
        self._absent = absent
        for handle in list(self._views):
            handle._bind(routes.get(handle.name))

    @property
    def table(self) -> RoutingTable:
        """The routing table calls are decided on right now."""
        return RoutingTable(self._routes, time.time())

    def _spec(self, name: str, version: int) -> Spec:
        spec = self._specs.get((name, version))
        if spec is None:
            data = self.backend().spec(name, version)
            if data is None:
                raise BackendError(f"{name}: spec version {version} is missing from the backend")
            spec = self._specs[(name, version)] = load_spec(data, source_name=f"{name}@{version}")
        return spec

    def _install(self, state: State, spec: Spec) -> None:
        # A change made here is seen by this process's next decision, without waiting for a refresh.
        self._specs[(state.name, state.spec_version)] = spec
        self._set_routes({**self._routes, state.name: Route.from_state(state, spec)}, self._absent)

    def _tick(self) -> None:
        try:
            self.refresh()
        except Exception as exc:
            self.counters["refresh_failures"] += 1
            if time.monotonic() - self._last_ok > self.stale_after and self._absent is not _STALE:
                log.warning("crossfade: no routing refresh for %gs (%s); routing everything to legacy",
                            self.stale_after, exc)
                self._set_routes({}, _STALE)
        for runner in list(self._runners.values()):
            runner.sweep()
        now = self.time()
        if now >= self._flush_at:
            self.flush()
            # The next window closes at the next boundary and is collected `grace` after it.
            self._flush_at = (now // self._window + 1) * self._window + self.recorder.grace + self._flush_offset
        else:
            self._share_noise(waiting_only=True)

    def wait_for_shadows(self, timeout: float = 30.0) -> bool:
        """Wait until every shadow run of a sync call site handed over before this call has finished and been
        compared; False if `timeout` (seconds) passed first. For tests, scripts and shutdown: a request path
        never needs it. Async call sites' shadow runs are tasks of their loop: `await await_shadows()`."""
        deadline = time.monotonic() + timeout
        return all(runner.wait(deadline - time.monotonic()) for runner in list(self._runners.values()))

    async def await_shadows(self, timeout: float = 30.0) -> bool:
        """`wait_for_shadows` for async call sites: wait until the shadow tasks started on the running loop
        have finished; False if `timeout` (seconds) passed first."""
        deadline = time.monotonic() + timeout
        for runner in list(self._runners.values()):
            if not await runner.wait_tasks(deadline - time.monotonic()):
                return False
        return True

    def flush(self, *, everything: bool = False) -> int:
        """Write closed telemetry windows (all of them with `everything`); returns how many were written.

        While the backend cannot be reached, windows are kept and retried at each tick until it answers,
        at most `max_pending_windows` of them: past that the oldest are dropped and counted. A batch the
        backend refuses (it will never take it) is dropped and counted at once. Never raises.
        """
        self._flush_comparisons(everything=everything)
        self._share_noise(waiting_only=False)
        collected = self.recorder.collect(everything=everything)
        if collected:
            self._parts += 1
            key = f"{self._process}.{self._parts}"
            self._pending += [replace(w, key=key) for w in collected]
        self._bound_pending()
        written = 0
        while self._pending:
            chunk = self._pending[:FLUSH_CHUNK]
            try:
                self.backend().write_windows(chunk)
            except BackendUnavailable as exc:
                self.counters["flush_failures"] += 1
                log.warning("crossfade: telemetry flush failed (%s); %d windows kept until the backend answers",
                            exc, len(self._pending))
                break
            except Exception as exc:
                self.counters["flush_failures"] += 1
                self.counters["rejected_windows"] += len(chunk)
                self._drop(chunk)
                log.warning("crossfade: %d telemetry windows refused, dropped: %s", len(chunk), exc)
            else:
                written += len(chunk)
            del self._pending[:len(chunk)]
        return written

    def _bound_pending(self) -> None:
        excess = len(self._pending) - self._max_pending
        if excess > 0:
            self._drop(self._pending[:excess])
            del self._pending[:excess]

    def _drop(self, windows: Sequence[Window]) -> None:
        self.counters["dropped_windows"] += len(windows)
        self.counters["dropped_calls"] += sum(w.cell.calls for w in windows)

    def _flush_comparisons(self, *, everything: bool = False) -> None:
        # Like telemetry: retried on the next ticks, then dropped and counted, never raised.
        rows, examples = self.comparisons.collect(everything=everything)
        batch = self._comparisons_pending + ([((rows, examples), 0)] if rows or examples else [])
        self._comparisons_pending = []
        for (rows, examples), tries in batch:
            try:
                by_migration: dict[str, list[Example]] = {}
                for example in examples:
                    by_migration.setdefault(example.migration, []).append(example)
                backend = self.backend()
                backend.write_comparisons(rows, [])
                self.comparisons.written(rows)
                rows = []
                for name, kept in by_migration.items():
                    backend.write_comparisons([], kept, keep=self._shadow_settings(name).examples)
            except Exception as exc:
                self.counters["comparison_flush_failures"] += 1
                if tries + 1 < self._flush_attempts:
                    self._comparisons_pending.append(((rows, examples), tries + 1))
                else:
                    self.counters["dropped_comparison_rows"] += len(rows)
                    self.comparisons.written(rows)  # given up: no longer waiting to be written
                log.warning("crossfade: shadow comparison flush failed (%s)", exc)

    def _count_judged(self, name: str, stage: str, judged: int, mismatches: int) -> None:
        """Count judged comparisons on the candidate's cell of the stage, where the mismatch_rate gate reads them."""
        if not judged:
            return
        recorder = self.recorder
        cell = recorder.cell(recorder.monotonic(), cell_key(name, stage, CANDIDATE))
        try:
            cell.compared += judged
            cell.mismatches += mismatches
        finally:
            recorder.done()
        if mismatches:
            self.count("shadow_mismatches", mismatches)

    def _share_noise(self, *, waiting_only: bool) -> None:
        """Read the totals of the stages that sample noise from the backend, so every process judges on
        every process's noise samples, and judge the comparisons held until their noise rate is known."""
        for name, stage in self.comparisons.to_share(waiting_only=waiting_only):
            try:
                self.comparisons.share(name, stage, self.backend().comparisons(name, stage=stage))
                settings = self._shadow_settings(name)
                judged, mismatches = self.comparisons.resolve(
                    name, stage, noise_samples=settings.noise_samples, relative=settings.noise_relative,
                    absolute=settings.noise_absolute,
                )
                self._count_judged(name, stage, judged, mismatches)
            except Exception as exc:  # the next tick tries again; held comparisons wait meanwhile
                self.counters["comparison_flush_failures"] += 1
                log.debug("crossfade: reading the noise totals of %s failed (%s)", name, exc)

    def count(self, name: str, amount: int = 1) -> None:
        """Add to a health counter from any thread (shadow workers count concurrently)."""
        with self._counters_lock:
            self.counters[name] += amount

    def _shadow_settings(self, name: str) -> ShadowSettings:
        route = self._routes.get(name)
        return route.spec.shadow if route is not None and route.spec is not None else _NO_SHADOW_SETTINGS

    def _runner(self, name: str, settings: ShadowSettings) -> ShadowRunner:
        """The shadow runner of a migration, (re)made when its spec's shadow settings change."""
        runner = self._runners.get(name)
        if runner is not None and (runner.threads, runner.max_pending, runner.timeout) == (
            settings.threads, settings.max_pending, settings.timeout
        ):
            return runner
        with self._runners_lock:
            runner = self._runners.get(name)
            if runner is None or (runner.threads, runner.max_pending, runner.timeout) != (
                settings.threads, settings.max_pending, settings.timeout
            ):
                old = runner
                runner = self._runners[name] = ShadowRunner(
                    threads=settings.threads, max_pending=settings.max_pending, timeout=settings.timeout,
                    name=f"shadow-{name}", on_hang=self._shadow_hung,
                )
                if old is not None:
                    # Runs under way finish on their own threads; nothing new goes to the old runner.
                    old.close(drain=0.0)
                if self._closed:
                    runner.close(drain=0.0)
        return runner

    def _shadow_hung(self, handle: Migration, route: Route, decision: Decision, *_: Any) -> None:
        # Called with what `Migration._shadow` handed off: (handle, route, decision, ...).
        stage, served_arm = decision.stage, decision.arm
        settings = shadow_settings(route)
        self.count("shadow_timeouts", 1)
        self.comparisons.count(handle.name, stage, "timeouts")
        handle._record_shadow_run(stage, served_arm, round(settings.timeout * 1e9), failed=True, timed_out=True)

    def _start_thread(self) -> None:
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="crossfade-refresh", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            self._wake.wait(self.refresh_interval)
            self._wake.clear()
            if self._stop.is_set():
                return
            self._tick()

    def _after_fork(self) -> None:
        # The child has none of the parent's threads, and any lock one of them held stays held here for ever:
        # every lock is new, the backend builds a new engine, and the copied buffers are the parent's to flush.
        self._counters_lock = threading.Lock()
        self.recorder.reset()
        self.comparisons.reset()
        self._comparisons_pending = []
        # The parent's shadow workers do not exist here; the child starts its own on first use.
        self._runners = {}
        self._runners_lock = threading.Lock()
        self._pending = []
        self._process = uuid.uuid4().hex
        self._backend_lock = threading.Lock()
        self._executor = None
        self._slots = threading.BoundedSemaphore(self._candidate_threads)
        after_fork = getattr(self._backend, "after_fork", None)
        if after_fork is not None:
            after_fork()
        if not self._closed and self._background:
            self._start_thread()

    def close(self) -> None:
        """Stop the background thread, flush all telemetry, and release the backend."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
        with self._runners_lock:
            runners = list(self._runners.values())
        for runner in runners:
            # Waiting runs are cancelled; runs under way get until their timeout to finish and be counted.
            cancelled = runner.close()
            self.count("shadow_dropped", cancelled)
            runner.sweep()
        try:
            self.flush(everything=True)
            if self._pending:
                self.flush(everything=True)
        except Exception as exc:
            log.warning("crossfade: final telemetry flush failed: %s", exc)
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        if self._backend is not None:
            self._backend.close()
        _live_clients.discard(self)

    async def aclose(self) -> None:
        """`close` from async code: the shadow tasks on this loop are cancelled and awaited first, so none
        is left pending."""
        for runner in list(self._runners.values()):
            await runner.aclose()
        self.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stats(self) -> dict[str, Any]:
        """Health counters: refresh and flush failures, dropped telemetry, seconds since the last refresh, and
        shadow runs (started, compared, mismatched, dropped, timed out, failed, refused) and dual writes.
        `shadow_held` counts comparisons waiting for their stage's noise rate; `shadow_unjudged` those held
        past the bound on distinct sets of differing fields, never judged."""
        route_errors = sum(route.errors for route in self._routes.values())
        failures = sum(runner.failures for runner in self._runners.values())
        return {**self.counters, "internal_errors": self.counters["internal_errors"] + route_errors + failures,
                "seconds_since_refresh": time.monotonic() - self._last_ok,
                "stale": self._absent is _STALE, "pending_windows": len(self._pending),
                "shadow_pending": sum(runner.pending for runner in self._runners.values()),
                "shadow_held": sum(self.comparisons.held().values()), "shadow_unjudged": self.comparisons.unjudged}

    # -- operations ----------------------------------------------------------------------------

    def apply(self, spec: Spec | str | os.PathLike[str] | Mapping[str, Any], *, actor: str | None = None,
              dry_run: bool = False) -> Event | None:
        """Validate and store a spec (path, YAML text, dict or Spec); None when it is already applied."""
        model = spec if isinstance(spec, Spec) else load_spec(spec)
        backend = self.backend()
        state = backend.state(model.name) or State(model.name)
        change = apply_change(state, model, state.seq + 1)
        if change is None:
            return None
        return self._commit(state, model, change, actor, dry_run, store_spec=model.to_dict())

    def _commit(self, state: State, spec: Spec, changes: Change | Sequence[Change], actor: str | None,
                dry_run: bool, *, store_spec: Mapping[str, Any] | None = None) -> Event:
        """Seal changes as the next events and append them atomically; returns the last event."""
        after, events = seal(state, [changes] if isinstance(changes, Change) else changes,
                             actor=actor or _os_user(), now=self.time())
        if not dry_run:
            stored = self.backend().append(state.name, state.seq, events, state=after, spec=store_spec)
            if stored:
                # A control plane seals the events itself (the actor is its token's name): keep its version.
                events = list(stored)
                after = state
                for event in events:
                    after = after.apply(event)
            self._install(after, spec)
        return events[-1]

    def migration(
        self,
        name: str,
        *,
        compare: Callable[[Any, Any], bool | float] | None = None,
        ignore: Sequence[str] = (),
        clean: Callable[[Any], Any] | None = None,
        compare_errors: Callable[[BaseException, BaseException], bool] | None = None,
        redact: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        writes: bool = False,
        cost: Callable[[Any], float] | None = None,
        metrics: Callable[[Any], Mapping[str, float]] | None = None,
    ) -> Migration:
        """The handle of a migration (created on first use; unknown names route everything to legacy).

        The keyword options say how shadow answers are compared (`compare` may return a score in [0, 1]), what a
        call costs and which custom metrics its answer records (see `Options`); the
        same name with the same options gives the same handle, other options another handle on it.
        """
        options = Options(compare, tuple(ignore), clean, compare_errors, redact, writes, cost, metrics)
        handle = self._handles.get((name, options))
        if handle is None:
            handle = self._handles[(name, options)] = Migration(self, name, options)
        return handle

    def batch(self, name: str, items: Any, transform: Callable[..., Any], *,
              spec: Spec | str | os.PathLike[str] | Mapping[str, Any] | None = None, **options: Any) -> Any:
        """Migrate a set of keyed items with `transform(key, data) -> new data`, stage by stage; returns a
        `crossfade.batch.BatchReport`.

        `items` is an item store, a dict of key -> bytes (updated in place), a database URL or a directory.
        `spec`, when given, is applied first. Other keywords go to `crossfade.batch.BatchRun` (`validate`,
        `target`, `concurrency`, `retry`, `breaker`, `dry_run`, `progress`, ...). Needs a SQL backend.
        """
        from crossfade.batch import BatchRun, as_store

        if spec is not None:
            self.apply(spec, actor=options.get("actor"))
        return BatchRun(self, name, as_store(items), transform, **options).run()

    def migrations(self) -> list[State]:
        """Every migration's current state, from the backend."""
        return self.backend().states()

    def _executor_for_candidates(self) -> concurrent.futures.ThreadPoolExecutor:
        executor = self._executor
        if executor is None:
            executor = self._executor = concurrent.futures.ThreadPoolExecutor(
                self._candidate_threads, thread_name_prefix="crossfade-candidate"
            )
        return executor


_live_clients: weakref.WeakSet[Client] = weakref.WeakSet()


def _close_all() -> None:
    for client in list(_live_clients):
        client.close()


def _after_fork_in_child() -> None:
    for client in list(_live_clients):
        client._after_fork()


atexit.register(_close_all)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


