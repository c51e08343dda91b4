"""The SDK: connect to a backend, apply specs, and route, run, protect and measure calls by sticky key."""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextvars
import functools
import getpass
import inspect
import logging
import os
import random
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

from crossfade.backends.base import Backend, BackendError, ConflictError, open_backend
from crossfade.events import (
    Change,
    Event,
    State,
    apply_change,
    operation,
    seal,
)
from crossfade.routing import CANDIDATE, LEGACY, Decision, Route, RoutingTable, legacy_decision
from crossfade.shadow import (
    WRITE_PATH,
    ComparisonLog,
    Comparator,
    Difference,
    Example,
    Options,
    Outcome,
    ShadowRunner,
    call,
    shown,
)
from crossfade.spec import Fallback, ShadowSettings, Spec, load_spec
from crossfade.telemetry import Recorder, Window, cell_key

log = logging.getLogger("crossfade")

DEFAULT_URL = "sqlite:///./crossfade.db"

T = TypeVar("T")

_random = random.random
_NO_SHADOW_SETTINGS = ShadowSettings()

# Shared decisions for calls crossfade sends to legacy for reasons of its own.
_UNKNOWN = legacy_decision("unknown migration")
_STALE = legacy_decision("routing table stale")
_FAILSAFE = legacy_decision("crossfade internal error")
_NO_ANSWER = object()  # a call that gave no answer to price


class UnknownMigration(LookupError):
    """No spec was ever applied under this name."""


class CandidateTimeout(Exception):
    """The candidate did not answer within `fallback.timeout` (recorded, never raised to the caller)."""


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
        clock: Callable[[], float] | None = None,
        background: bool = True,
        token: str | None = None,
    ) -> None:
        if refresh <= 0 or stale_after <= 0:
            raise ValueError("refresh and stale_after must be positive numbers of seconds")
        self.url = url if isinstance(url, str) else url.url
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
            "comparison_flush_failures": 0, "dropped_comparison_rows": 0,
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
        self._pending: list[tuple[Window, int]] = []
        self._flush_attempts = flush_attempts
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
                self._backend = open_backend(self.url, token=self._token)
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
        self.flush()

    def flush(self, *, everything: bool = False) -> int:
        """Write closed telemetry windows (all of them with `everything`); returns how many were written.

        A failed write is retried on the next ticks, then dropped and counted, never raised.
        """
        self._flush_comparisons(everything=everything)
        batch = self._pending + [(w, 0) for w in self.recorder.collect(everything=everything)]
        self._pending = []
        if not batch:
            return 0
        try:
            self.backend().write_windows([w for w, _ in batch])
            return len(batch)
        except Exception as exc:
            self.counters["flush_failures"] += 1
            keep = [(w, tries + 1) for w, tries in batch if tries + 1 < self._flush_attempts]
            for w, tries in batch:
                if tries + 1 >= self._flush_attempts:
                    self.counters["dropped_windows"] += 1
                    self.counters["dropped_calls"] += w.cell.calls
            self._pending = keep
            log.warning("crossfade: telemetry flush failed (%s); %d windows kept for retry", exc, len(keep))
            return 0

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
                for name, kept in by_migration.items():
                    backend.write_comparisons([], kept, keep=self._shadow_settings(name).examples)
            except Exception as exc:
                self.counters["comparison_flush_failures"] += 1
                if tries + 1 < self._flush_attempts:
                    self._comparisons_pending.append(((rows, examples), tries + 1))
                else:
                    self.counters["dropped_comparison_rows"] += len(rows)
                log.warning("crossfade: shadow comparison flush failed (%s)", exc)

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

    def _shadow_hung(self, payload: Any) -> None:
        handle, stage, served_arm, settings = payload[0], payload[1], payload[2], payload[9]
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
        # The child has none of the parent's threads; its copied buffers are the parent's to flush.
        self.recorder.reset()
        self.comparisons.reset()
        self._comparisons_pending = []
        # The parent's shadow workers do not exist here; the child starts its own on first use.
        self._runners = {}
        self._runners_lock = threading.Lock()
        self._pending = []
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
        shadow runs (started, compared, mismatched, dropped, timed out, failed, refused) and dual writes."""
        route_errors = sum(route.errors for route in self._routes.values())
        failures = sum(runner.failures for runner in self._runners.values())
        return {**self.counters, "internal_errors": self.counters["internal_errors"] + route_errors + failures,
                "seconds_since_refresh": time.monotonic() - self._last_ok,
                "stale": self._absent is _STALE, "pending_windows": len(self._pending),
                "shadow_pending": sum(runner.pending for runner in self._runners.values())}

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
        compare: Callable[[Any, Any], bool] | None = None,
        ignore: Sequence[str] = (),
        clean: Callable[[Any], Any] | None = None,
        compare_errors: Callable[[BaseException, BaseException], bool] | None = None,
        redact: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        writes: bool = False,
        cost: Callable[[Any], float] | None = None,
    ) -> Migration:
        """The handle of a migration (created on first use; unknown names route everything to legacy).

        The keyword options say how shadow answers are compared and what a call costs (see `Options`); the
        same name with the same options gives the same handle, other options another handle on it.
        """
        options = Options(compare, tuple(ignore), clean, compare_errors, redact, writes, cost)
        handle = self._handles.get((name, options))
        if handle is None:
            handle = self._handles[(name, options)] = Migration(self, name, options)
        return handle

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


class Migration:
    """A handle on one migration: decides, runs and observes calls, and moves the migration along."""

    def __init__(self, client: Client, name: str, options: Options | None = None) -> None:
        self.client = client
        self.name = name
        self.options = options or Options()
        self._comparator = Comparator(self.options)
        self._recorder = client.recorder
        self._refusal_logged = False
        client._views.add(self)
        self._now = client.recorder.monotonic
        self._bind(client._routes.get(name))

    def __repr__(self) -> str:
        return f"Migration({self.name!r})"

    def with_options(
        self,
        *,
        compare: Callable[[Any, Any], bool] | None = None,
        ignore: Sequence[str] | None = None,
        clean: Callable[[Any], Any] | None = None,
        compare_errors: Callable[[BaseException, BaseException], bool] | None = None,
        redact: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        writes: bool | None = None,
        cost: Callable[[Any], float] | None = None,
    ) -> Migration:
        """A view of this migration whose calls use these options over the handle's (for one call site).

        `run`'s keyword arguments go to the application's functions, so per-call options live here:
        `mig.with_options(ignore=["$.id"]).run(key, old, new, x)`. Keep the view to make it once.
        """
        o = self.options
        options = Options(
            compare if compare is not None else o.compare,
            tuple(ignore) if ignore is not None else o.ignore,
            clean if clean is not None else o.clean,
            compare_errors if compare_errors is not None else o.compare_errors,
            redact if redact is not None else o.redact,
            writes if writes is not None else o.writes,
            cost if cost is not None else o.cost,
        )
        return Migration(self.client, self.name, options)

    def _bind(self, route: Route | None) -> None:
        # Called whenever the routing table changes. `decide` becomes the route's own method, so a decision
        # costs one Python call; `run` reads the route with the cell keys of its stage in one tuple, so a
        # swap between the two reads can never file a call under another stage.
        if route is None:
            self.decide = self._decide_absent  # type: ignore[method-assign]
            self._bound: tuple[Route | None, str, str] = (None, "", "")
        else:
            self.decide = route.decide  # type: ignore[method-assign]
            self._bound = (
                route, cell_key(self.name, route.stage, LEGACY), cell_key(self.name, route.stage, CANDIDATE)
            )
            if self.options.writes and (route.shadow or route.shadow_legacy):
                self._log_refusal(route.stage)
        self._shadow_to: tuple[ShadowRunner, ShadowSettings] | None = None

    def _decide_absent(self, key: object) -> Decision:
        return self.client._absent

    # -- the hot path --------------------------------------------------------------------------

    def decide(self, key: object) -> Decision:  # replaced per instance by `_bind`; kept for the docs
        """Which arm serves `key` now. Never raises; never does I/O."""
        route = self._bound[0]
        return self.client._absent if route is None else route.decide(key)

    def _record(self, decision: Decision, elapsed_ns: int, *, error: bool = False, timeout: bool = False,
                fallback: bool = False, cost: float | None = None) -> None:
        self._file(decision.stage, decision.arm, elapsed_ns, error=error, timeout=timeout, fallback=fallback,
                   cost=cost)

    def _file(self, stage: str, arm: str, elapsed_ns: int, *, error: bool = False, timeout: bool = False,
              fallback: bool = False, cost: float | None = None, answer: Any = _NO_ANSWER) -> None:
        """Count one call of `arm` in `stage`; its cost is `cost`, or the handle's `cost(answer)`."""
        try:
            cell = self._recorder.cell(self._now(), cell_key(self.name, stage, arm))
            cell.calls += 1
            if error:
                cell.errors += 1
            if timeout:
                cell.timeouts += 1
            if fallback:
                cell.fallbacks += 1
            cell.latency.add(elapsed_ns * 1e-9)
            if cost is None and answer is not _NO_ANSWER and self.options.cost is not None:
                cost = float(self.options.cost(answer))
            if cost is not None:
                cell.add_cost(cost)
        except Exception:  # a cost function that fails is counted, never felt by the caller
            self.client.counters["recording_errors"] += 1

    def _record_ok(self, key: str, start: int, end: int, answer: Any) -> None:
        try:
            cell = self._recorder.cell(end, key)
            cell.calls += 1
            cell.latency.add((end - start) * 1e-9)
            cost = self.options.cost
            if cost is not None:
                cell.add_cost(float(cost(answer)))
        except Exception:  # a cost function that fails is counted, never felt by the caller
            self.client.counters["recording_errors"] += 1

    def run(self, key: object, legacy: Callable[..., T], candidate: Callable[..., T], /, *args: Any,
            **kwargs: Any) -> T:
        """Route `key`, call the chosen arm with the arguments, time and record it, and return its answer.

        When the candidate raises or exceeds `fallback.timeout` (and `fallback.on_error` is on), legacy is
        called and its answer returned; the caller never sees the candidate's failure. When legacy raises,
        its exception reaches the caller unchanged and is recorded as an error.
        """
        route, legacy_key, candidate_key = self._bound
        if route is None:  # unknown migration, or a stale table: legacy, and nothing to file it under
            return legacy(*args, **kwargs)
        decision = route.decide(key)
        start = self._now()
        if decision.arm is LEGACY:
            try:
                result = legacy(*args, **kwargs)
            except Exception as exc:
                self._record(decision, self._now() - start, error=True)
                if decision.shadow:
                    self._shadow(route, decision, candidate, legacy, args, kwargs, None, exc)
                raise
            self._record_ok(legacy_key, start, self._now(), result)
            if decision.shadow:
                self._shadow(route, decision, candidate, legacy, args, kwargs, result, None)
            return result
        fallback = route.spec.fallback if route.spec is not None else None
        try:
            if fallback is None or fallback.timeout is None:
                result = candidate(*args, **kwargs)
            else:
                result = self._call_with_timeout(candidate, fallback.timeout, args, kwargs)
        except Exception as exc:
            self._candidate_failed(decision, start, exc, fallback)
            return legacy(*args, **kwargs)
        self._record_ok(candidate_key, start, self._now(), result)
        if decision.shadow:  # a ramp-down stage: legacy runs in the candidate's shadow
            self._shadow(route, decision, legacy, legacy, args, kwargs, result, None)
        return result

    # -- shadow runs -----------------------------------------------------------------------------

    def _refuse_shadow(self, stage: str) -> None:
        """A writes=True call site is never shadowed: running a write twice would write twice."""
        client = self.client
        client.count("shadow_refused_writes", 1)
        client.comparisons.count(self.name, stage, "refused")
        self._log_refusal(stage)

    def _log_refusal(self, stage: str) -> None:
        # Once per call site (handle or view): an error in the log, never an exception in the application.
        if not self._refusal_logged:
            self._refusal_logged = True
            log.error(
                "crossfade: %s stage %s asks for shadow runs, but this call site is marked writes=True: it is "
                "not shadowed (a shadow run would write twice). Migrate writes with mig.write(...) in a "
                "dual_write stage, or drop shadow from the stage.", self.name, stage,
            )

    def _shadow(self, route: Route, decision: Decision, other: Callable[..., Any], legacy: Callable[..., Any],
                args: tuple[Any, ...], kwargs: dict[str, Any], value: Any, error: BaseException | None) -> None:
        """Hand the other arm's run to the shadow runner; only the hand-off is paid on the request path."""
        try:
            if self.options.writes:
                self._refuse_shadow(decision.stage)
                return
            runner, settings = self._shadow_to or self._shadow_runner(route)
            again = legacy if route.noise and _random() < route.noise else None
            if not runner.submit(_shadow_sync, (self, decision.stage, decision.arm, other, again, args, kwargs,
                                                value, error, settings)):
                self._dropped(decision.stage)
        except Exception:
            self.client.count("internal_errors")

    def _ashadow(self, route: Route, decision: Decision, other: Callable[..., Awaitable[Any]],
                 legacy: Callable[..., Awaitable[Any]], args: tuple[Any, ...], kwargs: dict[str, Any],
                 value: Any, error: BaseException | None) -> None:
        """`_shadow` for coroutine functions: the run is a task on the caller's loop."""
        try:
            if self.options.writes:
                self._refuse_shadow(decision.stage)
                return
            runner, settings = self._shadow_to or self._shadow_runner(route)
            again = legacy if route.noise and _random() < route.noise else None
            if not runner.submit_async(_shadow_async, (self, decision.stage, decision.arm, other, again, args,
                                                       kwargs, value, error, settings)):
                self._dropped(decision.stage)
        except Exception:
            self.client.count("internal_errors")

    def _shadow_runner(self, route: Route) -> tuple[ShadowRunner, ShadowSettings]:
        # Looked up once per routing table (in `_bind`), not per call.
        settings = route.spec.shadow if route.spec is not None else _NO_SHADOW_SETTINGS
        self._shadow_to = (self.client._runner(self.name, settings), settings)
        return self._shadow_to

    def _dropped(self, stage: str) -> None:
        self.client.count("shadow_dropped")
        self.client.comparisons.count(self.name, stage, "dropped")

    def _record_shadow_run(self, stage: str, served_arm: str, elapsed_ns: int, *, failed: bool,
                           timed_out: bool = False, answer: Any = _NO_ANSWER) -> None:
        """Count a shadow run as a call of the arm that ran it: its errors and its own execution time are
        that arm's behaviour whether or not its answer was served, and a shadow stage is judged on them."""
        self._file(stage, CANDIDATE if served_arm is LEGACY else LEGACY, elapsed_ns, error=failed, timeout=timed_out,
                   answer=_NO_ANSWER if failed else answer)

    def _compare(self, stage: str, served_arm: str, served: Outcome, other: Outcome, again: Outcome | None,
                 settings: ShadowSettings, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Compare a shadow run's answer with the served one, off the request path, and record it."""
        client = self.client
        legacy, candidate = (served, other) if served_arm is LEGACY else (other, served)
        if other.error is not None:
            client.count("shadow_errors", 1)
        differences = self._comparator.differences(legacy, candidate)
        noise = None if again is None else self._comparator.differences(legacy, again)
        mismatch = client.comparisons.record(self.name, stage, differences, noise,
                                             relative=settings.noise_relative, absolute=settings.noise_absolute)
        # The mismatch_rate gate reads these from the candidate's cell of the stage.
        cell = self._recorder.cell(self._now(), cell_key(self.name, stage, CANDIDATE))
        cell.compared += 1
        client.count("shadow_compared", 1)
        if mismatch:
            cell.mismatches += 1
            client.count("shadow_mismatches", 1)
        if differences:
            self._keep_example(stage, differences, args, kwargs, legacy, candidate, settings)

    def _keep_example(self, stage: str, differences: Sequence[Difference], args: tuple[Any, ...],
                      kwargs: dict[str, Any], legacy: Outcome, candidate: Outcome, settings: ShadowSettings) -> None:
        detail: dict[str, Any] = {
            "args": [shown(a) for a in args],
            "kwargs": {k: shown(v) for k, v in kwargs.items()},
            "legacy": shown(legacy.error if legacy.error is not None else legacy.value),
            "candidate": shown(candidate.error if candidate.error is not None else candidate.value),
            "diff": [d.to_dict() for d in differences],
        }
        redact = self.options.redact
        if redact is not None:
            try:
                detail = redact(detail)
            except Exception:
                # An example that could not be redacted is not kept: it may hold what redact was to remove.
                self.client.counters["internal_errors"] += 1
                return
        now = time.time()
        for path in dict.fromkeys(d.path for d in differences):
            self.client.comparisons.keep(Example(self.name, stage, path, now, detail), settings.examples)

    def _candidate_failed(self, decision: Decision, start: int, exc: Exception, fallback: Fallback | None) -> None:
        """Record a failed candidate call; re-raise its exception when the spec allows no fallback."""
        elapsed = self._now() - start
        timed_out = isinstance(exc, (CandidateTimeout, TimeoutError))
        if fallback is None or not fallback.on_error:
            self._record(decision, elapsed, error=True, timeout=timed_out)
            raise exc
        self._record(decision, elapsed, error=True, timeout=timed_out, fallback=True)

    def _call_with_timeout(self, candidate: Callable[..., T], timeout: float, args: tuple[Any, ...],
                           kwargs: dict[str, Any]) -> T:
        # A synchronous function cannot be interrupted: it runs on a bounded pool so the caller can stop
        # waiting. Once every worker is busy (hung candidates), calls fall back at once instead of queueing.
        client = self.client
        if not client._slots.acquire(blocking=False):
            raise CandidateTimeout("every candidate worker is busy")
        try:
            future = client._executor_for_candidates().submit(
                contextvars.copy_context().run, candidate, *args, **kwargs
            )
        except BaseException:
            client._slots.release()
            raise
        future.add_done_callback(lambda _: client._slots.release())
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            if future.done():  # the answer arrived as the wait ended: use it rather than waste it
                return future.result()
            future.cancel()
            raise CandidateTimeout(f"no answer within {timeout}s") from None

    async def arun(self, key: object, legacy: Callable[..., Awaitable[T]], candidate: Callable[..., Awaitable[T]],
                   /, *args: Any, **kwargs: Any) -> T:
        """`run` for coroutine functions: the candidate's timeout cancels it."""
        route, legacy_key, candidate_key = self._bound
        if route is None:
            return await legacy(*args, **kwargs)
        decision = route.decide(key)
        start = self._now()
        if decision.arm is LEGACY:
            try:
                result = await legacy(*args, **kwargs)
            except Exception as exc:
                self._record(decision, self._now() - start, error=True)
                if decision.shadow:
                    self._ashadow(route, decision, candidate, legacy, args, kwargs, None, exc)
                raise
            self._record_ok(legacy_key, start, self._now(), result)
            if decision.shadow:
                self._ashadow(route, decision, candidate, legacy, args, kwargs, result, None)
            return result
        fallback = route.spec.fallback if route.spec is not None else None
        try:
            async with asyncio.timeout(fallback.timeout if fallback is not None else None):
                result = await candidate(*args, **kwargs)
        except Exception as exc:
            self._candidate_failed(decision, start, exc, fallback)
            return await legacy(*args, **kwargs)
        self._record_ok(candidate_key, start, self._now(), result)
        if decision.shadow:
            self._ashadow(route, decision, legacy, legacy, args, kwargs, result, None)
        return result

    # -- writes ----------------------------------------------------------------------------------

    def write(self, key: object, legacy_write: Callable[..., T], candidate_write: Callable[..., T], /,
              *args: Any, **kwargs: Any) -> T:
        """Route a write by `key`; in a `dual_write` stage write both sides.

        The authoritative side (legacy, until the stage's traffic gives the key to the candidate) is written
        first and its answer returned; its exception reaches the caller, and the other side is then not
        written. The other side's failure is retried per `dual_write_retry`, then recorded as a divergence;
        it never fails or undoes the authoritative write. Outside dual-write stages this is `run` for a
        call site marked writes=True: never shadowed.
        """
        route = self._bound[0]
        if route is None:
            return legacy_write(*args, **kwargs)
        if not route.dual_write:
            view = self if self.options.writes else self._writes_view()
            return view.run(key, legacy_write, candidate_write, *args, **kwargs)
        decision = route.decide(key)
        first, second = (legacy_write, candidate_write) if decision.arm is LEGACY else (candidate_write, legacy_write)
        start = self._now()
        try:
            result = first(*args, **kwargs)
        except Exception:
            self._record(decision, self._now() - start, error=True)
            raise
        self._record(decision, self._now() - start)
        retry = route.spec.dual_write_retry if route.spec is not None else None
        attempts, backoff = (retry.attempts, retry.backoff) if retry is not None else (2, 0.0)
        outcome = Outcome(error=RuntimeError("not tried"))
        for attempt in range(attempts):
            if attempt and backoff:
                time.sleep(backoff)
            outcome = call(second, args, kwargs)
            if outcome.error is None:
                break
        self._dual_written(route, decision, outcome, attempts, args, kwargs)
        return result

    async def awrite(self, key: object, legacy_write: Callable[..., Awaitable[T]],
                     candidate_write: Callable[..., Awaitable[T]], /, *args: Any, **kwargs: Any) -> T:
        """`write` for coroutine functions."""
        route = self._bound[0]
        if route is None:
            return await legacy_write(*args, **kwargs)
        if not route.dual_write:
            view = self if self.options.writes else self._writes_view()
            return await view.arun(key, legacy_write, candidate_write, *args, **kwargs)
        decision = route.decide(key)
        first, second = (legacy_write, candidate_write) if decision.arm is LEGACY else (candidate_write, legacy_write)
        start = self._now()
        try:
            result = await first(*args, **kwargs)
        except Exception:
            self._record(decision, self._now() - start, error=True)
            raise
        self._record(decision, self._now() - start)
        retry = route.spec.dual_write_retry if route.spec is not None else None
        attempts, backoff = (retry.attempts, retry.backoff) if retry is not None else (2, 0.0)
        outcome = Outcome(error=RuntimeError("not tried"))
        for attempt in range(attempts):
            if attempt and backoff:
                await asyncio.sleep(backoff)
            try:
                outcome = Outcome(await second(*args, **kwargs))
                break
            except Exception as exc:
                outcome = Outcome(error=exc)
        self._dual_written(route, decision, outcome, attempts, args, kwargs)
        return result

    def _writes_view(self) -> Migration:
        view = self.__dict__.get("_writes")
        if view is None:
            view = self._writes = self.with_options(writes=True)
        return view

    def _dual_written(self, route: Route, decision: Decision, outcome: Outcome, attempts: int,
                      args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        try:
            client = self.client
            client.count("dual_writes", 1)
            client.comparisons.count(self.name, decision.stage, "dual_writes")
            if outcome.error is None:
                return
            client.count("dual_write_divergences", 1)
            client.comparisons.count(self.name, decision.stage, "divergent")
            other = CANDIDATE if decision.arm is LEGACY else LEGACY
            log.warning("crossfade: %s: the %s side of a dual write failed %d times (%s); recorded as a divergence",
                        self.name, other, attempts, outcome.error)
            settings = route.spec.shadow if route.spec is not None else _NO_SHADOW_SETTINGS
            served = Outcome(None)
            legacy, candidate = (served, outcome) if decision.arm is LEGACY else (outcome, served)
            self._keep_example(decision.stage, [Difference(WRITE_PATH, WRITE_PATH, legacy.error, candidate.error)],
                               args, kwargs, legacy, candidate, settings)
        except Exception:
            self.client.counters["internal_errors"] += 1

    def route(self, candidate: Callable[..., Any], key: Callable[..., object] | str | None = None, *,
              writes: bool = False) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorate the legacy function: each call is routed by `key` and served by legacy or `candidate`.

        `key` is a callable taking the function's arguments, or the name of a parameter (dotted for an
        attribute: `"user.id"`), or None for the first argument after `self`. The candidate takes the same
        arguments as the legacy function (for methods, both receive `self`). Name, signature and docstring
        are kept; coroutine functions get an async wrapper. `writes=True` marks a call site with side
        effects: it is never shadowed (a stage that asks for shadow runs gets an error in the log, once, and
        `shadow_refused_writes` in `stats()`).
        """
        handle = self.with_options(writes=True) if writes and not self.options.writes else self

        def decorate(legacy: Callable[..., T]) -> Callable[..., T]:
            key_of = _key_getter(legacy, key)

            def key_or_none(args: tuple[Any, ...], kwargs: dict[str, Any]) -> object:
                try:
                    return key_of(args, kwargs)
                except Exception:
                    self.client.counters["key_errors"] += 1
                    return _NO_KEY

            if inspect.iscoroutinefunction(legacy):

                @functools.wraps(legacy)
                async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                    k = key_or_none(args, kwargs)
                    if k is _NO_KEY:
                        return await legacy(*args, **kwargs)
                    return await handle.arun(k, legacy, candidate, *args, **kwargs)

                return async_wrapper  # type: ignore[return-value]

            @functools.wraps(legacy)
            def wrapper(*args: Any, **kwargs: Any) -> T:
                k = key_or_none(args, kwargs)
                if k is _NO_KEY:
                    return legacy(*args, **kwargs)
                return handle.run(k, legacy, candidate, *args, **kwargs)

            return wrapper

        return decorate

    def observe(self, decision: Decision) -> Observation:
        """Record a call site crossfade does not run itself: `with mig.observe(d) as obs: ...`."""
        return Observation(self, decision)

    # -- operations ----------------------------------------------------------------------------

    def _current(self) -> tuple[State, Spec]:
        state = self.client.backend().state(self.name)
        if state is None:
            raise UnknownMigration(
                f"no migration named {self.name!r}; apply a spec first (crossfade apply FILE)"
            )
        return state, self.client._spec(self.name, state.spec_version)

    def _act(self, action: str, reason: str | None, actor: str | None, dry_run: bool, *, force: bool = False
             ) -> Event:
        # Another writer may append between our read and our write. When it only recorded verdicts (the
        # controller does so at any look), the migration is where the command was decided for: decide again
        # and retry. When it moved the migration, the conflict stands, so two commands never both move it.
        for attempt in range(3):
            state, spec = self._current()
            try:
                return self.client._commit(state, spec, operation(action, state, spec, reason, force=force), actor,
                                           dry_run)
            except ConflictError:
                fresh = self.client.backend().state(self.name)
                if attempt == 2 or fresh is None or _position(fresh) != _position(state):
                    raise
        raise AssertionError("unreachable")

    def start(self, reason: str | None = None, *, actor: str | None = None, dry_run: bool = False) -> Event:
        """Start a draft migration at its first stage."""
        return self._act("start", reason, actor, dry_run)

    def promote(self, reason: str | None = None, *, actor: str | None = None, force: bool = False,
                dry_run: bool = False) -> Event:
        """Move to the next stage; entering the last stage completes the migration. A gate whose last
        verdict is FAIL refuses it unless `force`, which the event records."""
        return self._act("promote", reason, actor, dry_run, force=force)

    def pause(self, reason: str | None = None, *, actor: str | None = None, dry_run: bool = False) -> Event:
        """Route every key to legacy and hold the stage until `resume`."""
        return self._act("pause", reason, actor, dry_run)

    def resume(self, reason: str | None = None, *, actor: str | None = None, dry_run: bool = False) -> Event:
        """Return a paused migration to its stage's traffic."""
        return self._act("resume", reason, actor, dry_run)

    def rollback(self, reason: str, *, actor: str | None = None, dry_run: bool = False) -> Event:
        """Route every key to legacy at once, recording why."""
        return self._act("rollback", reason, actor, dry_run)

    def approve(self, reason: str | None = None, *, actor: str | None = None, dry_run: bool = False) -> Event:
        """Approve the stage awaiting approval: it is entered at once."""
        return self._act("approve", reason, actor, dry_run)

    def abort(self, reason: str, *, actor: str | None = None, dry_run: bool = False) -> Event:
        """Give the attempt up: every key to legacy until `restart`."""
        return self._act("abort", reason, actor, dry_run)

    def restart(self, reason: str | None = None, *, actor: str | None = None, dry_run: bool = False) -> Event:
        """Begin a new attempt at the first stage after a rollback or an abort (same salt, same buckets)."""
        return self._act("restart", reason, actor, dry_run)

    def state(self) -> State:
        """The migration's current state, from the backend."""
        return self._current()[0]

    def spec(self) -> Spec:
        """The spec the migration runs under now."""
        return self._current()[1]

    def history(self) -> list[Event]:
        """Every event of the migration, oldest first."""
        return self.client.backend().events(self.name)

    def windows(self, *, stage: str | None = None) -> list[Window]:
        """The telemetry windows stored for the migration (one stage when given)."""
        return self.client.backend().windows(self.name, stage=stage)


_NO_KEY = object()


def _shadow_sync(payload: tuple[Any, ...], slot: list[Any]) -> None:
    """A shadow run on a worker thread: the other arm (and legacy again for a noise sample), then compare."""
    handle, stage, served_arm, other, again, args, kwargs, value, error, settings = payload
    client = handle.client
    client.count("shadow_runs")
    served = Outcome(value, error)
    started = time.monotonic()
    start_ns = handle._now()
    answer = call(other, args, kwargs)
    elapsed_ns = handle._now() - start_ns
    repeat = None if again is None else call(again, args, kwargs)
    if time.monotonic() - started > settings.timeout:
        runner = client._runners.get(handle.name)
        # The sweep may have counted it already, while it hung; a run is one timeout, not two.
        if runner is None or runner.claim_timeout(slot):
            client.count("shadow_timeouts", 1)
            client.comparisons.count(handle.name, stage, "timeouts")
            handle._record_shadow_run(stage, served_arm, elapsed_ns, failed=True, timed_out=True)
        return
    handle._record_shadow_run(stage, served_arm, elapsed_ns, failed=answer.error is not None, answer=answer.value)
    handle._compare(stage, served_arm, served, answer, repeat, settings, args, kwargs)


async def _shadow_async(payload: tuple[Any, ...]) -> None:
    """A shadow run as a task: cancelled at the timeout, counted, and compared like `_shadow_sync`."""
    handle, stage, served_arm, other, again, args, kwargs, value, error, settings = payload
    client = handle.client
    client.count("shadow_runs")
    served = Outcome(value, error)
    deadline = asyncio.timeout(settings.timeout)
    start_ns = handle._now()
    try:
        try:
            async with deadline:
                answer = await _acall(other, args, kwargs)
                elapsed_ns = handle._now() - start_ns
                repeat = None if again is None else await _acall(again, args, kwargs)
        except TimeoutError:
            if not deadline.expired():
                raise
            client.count("shadow_timeouts", 1)
            client.comparisons.count(handle.name, stage, "timeouts")
            handle._record_shadow_run(stage, served_arm, handle._now() - start_ns, failed=True, timed_out=True)
            return
        handle._record_shadow_run(stage, served_arm, elapsed_ns, failed=answer.error is not None,
                                  answer=answer.value)
        handle._compare(stage, served_arm, served, answer, repeat, settings, args, kwargs)
    except Exception:  # crossfade's own failure: counted, never left as an unretrieved task exception
        client.counters["internal_errors"] += 1


async def _acall(fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Outcome:
    try:
        return Outcome(await fn(*args, **kwargs))
    except Exception as exc:
        return Outcome(error=exc)


def _key_getter(fn: Callable[..., Any], key: Callable[..., object] | str | None
                ) -> Callable[[tuple[Any, ...], dict[str, Any]], object]:
    if callable(key):
        return lambda args, kwargs: key(*args, **kwargs)
    params = list(inspect.signature(fn).parameters.values())
    if key is None:
        positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        if positional and positional[0].name in ("self", "cls"):
            positional = positional[1:]
        if not positional:
            raise TypeError(f"{fn.__qualname__} has no argument to route by; pass key=")
        key = positional[0].name
    name, _, path = key.partition(".")
    names = [p.name for p in params]
    if name not in names:
        raise TypeError(f"key={key!r}: {fn.__qualname__} has no parameter {name!r} (it has: {', '.join(names)})")
    index = names.index(name)
    default = params[index].default
    attrs = path.split(".") if path else []

    def get(args: tuple[Any, ...], kwargs: dict[str, Any]) -> object:
        if name in kwargs:
            value = kwargs[name]
        elif index < len(args):
            value = args[index]
        elif default is not inspect.Parameter.empty:
            value = default
        else:
            raise TypeError(f"missing argument {name!r}")
        for attr in attrs:
            value = value[attr] if isinstance(value, Mapping) else getattr(value, attr)
        return value

    return get


def _position(state: State) -> tuple[Any, ...]:
    """Where a migration stands, as far as an operator's command is concerned (verdicts aside)."""
    return state.status, state.stage_index, state.attempt, state.spec_version


class Observation:
    """Records one call that the application runs itself; an exception leaving the block is an error."""

    __slots__ = ("_migration", "decision", "_cost", "_error", "_start")

    def __init__(self, migration: Migration, decision: Decision) -> None:
        self._migration = migration
        self.decision = decision
        self._cost: float | None = None
        self._error = False
        self._start = 0

    def cost(self, amount: float) -> None:
        """The cost of this call (tokens, dollars: any unit, the same for both arms)."""
        self._cost = float(amount)

    def error(self) -> None:
        """Count this call as failed although no exception left the block."""
        self._error = True

    def __enter__(self) -> Observation:
        self._start = self._migration._now()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> bool:
        failed = self._error or (exc_type is not None and issubclass(exc_type, Exception))
        elapsed = self._migration._now() - self._start
        self._migration._record(self.decision, elapsed, error=failed, cost=self._cost)
        return False
