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
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from crossfade.backends.base import Backend, BackendError, BackendUnavailable, open_backend
from crossfade.events import (
    Change,
    Event,
    State,
    abort_change,
    apply_change,
    approve_changes,
    pause_change,
    promote_change,
    restart_change,
    resume_change,
    rollback_change,
    seal,
    start_change,
)
from crossfade.routing import CANDIDATE, LEGACY, Decision, Route, RoutingTable, legacy_decision
from crossfade.spec import Fallback, Spec, load_spec
from crossfade.telemetry import Recorder, Window, cell_key

log = logging.getLogger("crossfade")

DEFAULT_URL = "sqlite:///./crossfade.db"

T = TypeVar("T")


# Shared decisions for calls crossfade sends to legacy for reasons of its own.
_UNKNOWN = legacy_decision("unknown migration")
_STALE = legacy_decision("routing table stale")
_FAILSAFE = legacy_decision("crossfade internal error")


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
) -> Client:
    """A client of the backend at `url` (default: `CROSSFADE_URL`, else `sqlite:///./crossfade.db`).

    It never raises because the backend is away: calls then route to legacy until it answers.
    """
    return Client(
        url or os.environ.get("CROSSFADE_URL") or DEFAULT_URL,
        refresh=refresh,
        window=window,
        stale_after=stale_after,
        candidate_threads=candidate_threads,
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
    ) -> None:
        if refresh <= 0 or stale_after <= 0:
            raise ValueError("refresh and stale_after must be positive numbers of seconds")
        self.url = url if isinstance(url, str) else url.url
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
        }
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
        self._handles: dict[str, Migration] = {}
        self._stop = threading.Event()
        self._closed = False
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
                self._backend = open_backend(self.url)
            return self._backend

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
        for handle in list(self._handles.values()):
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
        self.flush()

    def flush(self, *, everything: bool = False) -> int:
        """Write closed telemetry windows (all of them with `everything`); returns how many were written.

        A failed write is retried on the next ticks, then dropped and counted, never raised.
        """
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

    def _start_thread(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="crossfade-refresh", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.refresh_interval):
            self._tick()

    def _after_fork(self) -> None:
        # The child has none of the parent's threads; its copied buffers are the parent's to flush.
        self.recorder.reset()
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
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
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

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stats(self) -> dict[str, Any]:
        """Health counters: refresh and flush failures, dropped telemetry, seconds since the last refresh."""
        route_errors = sum(route.errors for route in self._routes.values())
        return {**self.counters, "internal_errors": self.counters["internal_errors"] + route_errors,
                "seconds_since_refresh": time.monotonic() - self._last_ok,
                "stale": self._absent is _STALE, "pending_windows": len(self._pending)}

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
            self.backend().append(state.name, state.seq, events, state=after, spec=store_spec)
            self._install(after, spec)
        return events[-1]

    def migration(self, name: str) -> Migration:
        """The handle of a migration (created on first use; unknown names route everything to legacy)."""
        handle = self._handles.get(name)
        if handle is None:
            handle = self._handles[name] = Migration(self, name)
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

    def __init__(self, client: Client, name: str) -> None:
        self.client = client
        self.name = name
        self._recorder = client.recorder
        self._now = client.recorder.monotonic
        self._bind(client._routes.get(name))

    def __repr__(self) -> str:
        return f"Migration({self.name!r})"

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

    def _decide_absent(self, key: object) -> Decision:
        return self.client._absent

    # -- the hot path --------------------------------------------------------------------------

    def decide(self, key: object) -> Decision:  # replaced per instance by `_bind`; kept for the docs
        """Which arm serves `key` now. Never raises; never does I/O."""
        route = self._bound[0]
        return self.client._absent if route is None else route.decide(key)

    def _record(self, decision: Decision, elapsed_ns: int, *, error: bool = False, timeout: bool = False,
                fallback: bool = False, cost: float | None = None) -> None:
        try:
            cell = self._recorder.cell(self._now(), cell_key(self.name, decision.stage, decision.arm))
            cell.calls += 1
            if error:
                cell.errors += 1
            if timeout:
                cell.timeouts += 1
            if fallback:
                cell.fallbacks += 1
            if cost is not None:
                cell.add_cost(cost)
            cell.latency.add(elapsed_ns * 1e-9)
        except Exception:
            self.client.counters["recording_errors"] += 1

    def _record_ok(self, key: str, start: int, end: int) -> None:
        try:
            cell = self._recorder.cell(end, key)
            cell.calls += 1
            cell.latency.add((end - start) * 1e-9)
        except Exception:
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
            except Exception:
                self._record(decision, self._now() - start, error=True)
                raise
            self._record_ok(legacy_key, start, self._now())
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
        self._record_ok(candidate_key, start, self._now())
        return result

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
            except Exception:
                self._record(decision, self._now() - start, error=True)
                raise
            self._record_ok(legacy_key, start, self._now())
            return result
        fallback = route.spec.fallback if route.spec is not None else None
        try:
            async with asyncio.timeout(fallback.timeout if fallback is not None else None):
                result = await candidate(*args, **kwargs)
        except Exception as exc:
            self._candidate_failed(decision, start, exc, fallback)
            return await legacy(*args, **kwargs)
        self._record_ok(candidate_key, start, self._now())
        return result

    def route(self, candidate: Callable[..., Any], key: Callable[..., object] | str | None = None
              ) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorate the legacy function: each call is routed by `key` and served by legacy or `candidate`.

        `key` is a callable taking the function's arguments, or the name of a parameter (dotted for an
        attribute: `"user.id"`), or None for the first argument after `self`. The candidate takes the same
        arguments as the legacy function (for methods, both receive `self`). Name, signature and docstring
        are kept; coroutine functions get an async wrapper.
        """

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
                    return await self.arun(k, legacy, candidate, *args, **kwargs)

                return async_wrapper  # type: ignore[return-value]

            @functools.wraps(legacy)
            def wrapper(*args: Any, **kwargs: Any) -> T:
                k = key_or_none(args, kwargs)
                if k is _NO_KEY:
                    return legacy(*args, **kwargs)
                return self.run(k, legacy, candidate, *args, **kwargs)

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

    def _act(self, make: Callable[[State, Spec], Change | list[Change]], actor: str | None, dry_run: bool) -> Event:
        state, spec = self._current()
        return self.client._commit(state, spec, make(state, spec), actor, dry_run)

    def start(self, reason: str | None = None, *, actor: str | None = None, dry_run: bool = False) -> Event:
        """Start a draft migration at its first stage."""
        return self._act(lambda st, sp: start_change(st, sp, reason), actor, dry_run)

    def promote(self, reason: str | None = None, *, actor: str | None = None, force: bool = False,
                dry_run: bool = False) -> Event:
        """Move to the next stage; entering the last stage completes the migration."""
        return self._act(lambda st, sp: promote_change(st, sp, reason, force=force), actor, dry_run)

    def pause(self, reason: str | None = None, *, actor: str | None = None, dry_run: bool = False) -> Event:
        """Route every key to legacy and hold the stage until `resume`."""
        return self._act(lambda st, sp: pause_change(st, reason), actor, dry_run)

    def resume(self, reason: str | None = None, *, actor: str | None = None, dry_run: bool = False) -> Event:
        """Return a paused migration to its stage's traffic."""
        return self._act(lambda st, sp: resume_change(st, reason), actor, dry_run)

    def rollback(self, reason: str, *, actor: str | None = None, dry_run: bool = False) -> Event:
        """Route every key to legacy at once, recording why."""
        return self._act(lambda st, sp: rollback_change(st, reason), actor, dry_run)

    def approve(self, reason: str | None = None, *, actor: str | None = None, dry_run: bool = False) -> Event:
        """Approve the stage awaiting approval: it is entered at once."""
        return self._act(lambda st, sp: approve_changes(st, sp, reason), actor, dry_run)

    def abort(self, reason: str, *, actor: str | None = None, dry_run: bool = False) -> Event:
        """Give the attempt up: every key to legacy until `restart`."""
        return self._act(lambda st, sp: abort_change(st, reason), actor, dry_run)

    def restart(self, reason: str | None = None, *, actor: str | None = None, dry_run: bool = False) -> Event:
        """Begin a new attempt at the first stage after a rollback or an abort (same salt, same buckets)."""
        return self._act(lambda st, sp: restart_change(st, sp, reason), actor, dry_run)

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
