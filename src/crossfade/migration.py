"""The Migration handle: decide, run, arun, stream, astream, route, observe and write calls by sticky key."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import dataclasses
import functools
import inspect
import logging
import math
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from crossfade.backends.base import (
    ConflictError,
    UnknownMigration,
)
from crossfade.events import (
    WEIGHS_PROGRESS,
    Event,
    StageProgress,
    State,
    operation,
    position,
)
from crossfade.routing import (
    CANDIDATE,
    LEGACY,
    Decision,
    Route,
)
from crossfade.shadow import (
    ROOT,
    WRITE_PATH,
    Comparator,
    Difference,
    Example,
    Options,
    Outcome,
    ShadowRunner,
    call,
    shown,
)
from crossfade.spec import Fallback, ShadowSettings, Spec
from crossfade.spec.metrics import SIMILARITY
from crossfade.streams import STREAM_TYPES, StreamMisuse, astream, misuse, stream
from crossfade.telemetry import Cell, Window, cell_key, valid_metric_name

if TYPE_CHECKING:
    from crossfade.client import Client

log = logging.getLogger("crossfade")

T = TypeVar("T")

_random = random.random
_isfinite = math.isfinite
_copy_context = contextvars.copy_context
_NO_SHADOW_SETTINGS = ShadowSettings()
_NO_ANSWER = object()  # a call that gave no answer to price


class CandidateTimeout(Exception):
    """The candidate did not answer within `fallback.timeout` (recorded, never raised to the caller)."""


class Migration:
    """A handle on one migration: decides, runs and observes calls, and moves the migration along."""

    def __init__(self, client: Client, name: str, options: Options | None = None) -> None:
        self.client = client
        self.name = name
        self.options = options or Options()
        self._comparator = Comparator(self.options)
        self._recorder = client.recorder
        self._costs = self.options.cost
        self._metered = self.options.metrics
        # How `run` and `arun` count an answered call, `(key, start, end, answer)` (times read from `seconds`):
        # straight into the recorder when the call site has no cost or metrics function to ask the answer (the
        # common call, which then handles no metrics at all), else through those functions.
        self._count_call = (self._recorder.add_call if self._costs is None and self._metered is None
                            else self._count_with_metrics)
        self._marked_writes = self.options.writes
        self._refusal_logged = False
        client._views.add(self)
        self._now = client.recorder.monotonic
        self._seconds = client.recorder.seconds  # `run` and `arun` time calls in float seconds (`add_call`)
        self._bind(client._routes.get(name))

    def __repr__(self) -> str:
        return f"Migration({self.name!r})"

    def with_options(
        self,
        *,
        compare: Callable[[Any, Any], bool | float] | None = None,
        ignore: Sequence[str] | None = None,
        clean: Callable[[Any], Any] | None = None,
        compare_errors: Callable[[BaseException, BaseException], bool] | None = None,
        redact: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        writes: bool | None = None,
        cost: Callable[[Any], float] | None = None,
        metrics: Callable[[Any], Mapping[str, float]] | None = None,
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
            metrics if metrics is not None else o.metrics,
        )
        return Migration(self.client, self.name, options)

    def _bind(self, route: Route | None) -> None:
        # Called whenever the routing table changes. `decide` becomes the route's own method, so a decision
        # costs one Python call; `run` reads the route with the cell keys of its stage in one tuple, so a
        # swap between the two reads can never file a call under another stage.
        self._sketched = sketched_metrics(route.spec if route is not None else None)
        if route is None or not route.stage:
            # Unknown, or a draft (every call legacy's, and no stage to file it under: the backend refuses
            # windows of no stage): `run` calls legacy and records nothing.
            self.decide = self._decide_absent if route is None else route.decide  # type: ignore[method-assign]
            self._bound: tuple[Route | None, str, str] = (None, "", "")
        else:
            self.decide = route.decide  # type: ignore[method-assign]
            self._bound = (
                route, cell_key(self.name, route.stage, LEGACY), cell_key(self.name, route.stage, CANDIDATE)
            )
            if self.options.writes and (route.shadow or route.shadow_legacy):
                self._log_refusal(route.stage)
        # The runner this route's shadow runs go to, once the first one has found it (never for a call site
        # marked writes=True, which is not shadowed).
        self._handoff: ShadowRunner | None = None

    def _decide_absent(self, key: object) -> Decision:
        return self.client._absent

    # -- the hot path --------------------------------------------------------------------------

    def decide(self, key: object) -> Decision:  # replaced per instance by `_bind`; kept for the docs
        """Which arm serves `key` now. Never raises; never does I/O."""
        route = self._bound[0]
        return self.client._absent if route is None else route.decide(key)

    def _record(self, decision: Decision, elapsed_ns: int, *, error: bool = False, timeout: bool = False,
                fallback: bool = False, cost: float | None = None,
                metrics: Sequence[tuple[str, float]] | None = None, ended_ns: int | None = None) -> None:
        self._file(decision.stage, decision.arm, elapsed_ns, error=error, timeout=timeout, fallback=fallback,
                   cost=cost, metrics=metrics, ended_ns=ended_ns)

    def _file(self, stage: str, arm: str, elapsed_ns: int | None, *, error: bool = False, timeout: bool = False,
              fallback: bool = False, cost: float | None = None, answer: Any = _NO_ANSWER,
              metrics: Sequence[tuple[str, float]] | None = None, first_chunk_ns: int | None = None,
              ended_ns: int | None = None) -> None:
        """Count one call of `arm` in `stage`; its cost is `cost`, or the handle's `cost(answer)`, and its
        custom metrics `metrics` and the handle's `metrics(answer)`. A stream gives its time to the first chunk
        (`first_chunk_ns`), and `elapsed_ns` None when it was not read to its end. `ended_ns` is the monotonic
        time the call ended when the caller has just read it (the clock is read again otherwise)."""
        if not stage:  # a draft's calls: no stage to file them under
            return
        if answer is not _NO_ANSWER:
            if cost is None and self.options.cost is not None:
                cost = self._cost(answer)
            if self.options.metrics is not None:
                metrics = [*(metrics or ()), *self._metrics_of(answer)]
        recorder = self._recorder
        try:
            cell = recorder.cell(self._now() if ended_ns is None else ended_ns, cell_key(self.name, stage, arm))
            try:
                cell.calls += 1
                if error:
                    cell.errors += 1
                if timeout:
                    cell.timeouts += 1
                if fallback:
                    cell.fallbacks += 1
                if first_chunk_ns is not None:
                    cell.time_first_chunk(first_chunk_ns * 1e-9)
                if elapsed_ns is not None:
                    cell.latency.add(elapsed_ns * 1e-9)
                if cost is not None:
                    cell.add_cost(cost)
                if metrics:
                    self._add_metrics(cell, metrics)
            finally:
                recorder.done()
        except Exception:  # recording never fails the caller: counted instead
            self.client.counters["recording_errors"] += 1

    def _add_metrics(self, cell: Cell, metrics: Sequence[tuple[str, float]]) -> None:
        """Add custom metric values to a held cell; a bad name or value is dropped and counted, not raised."""
        sketched = self._sketched
        for name, value in metrics:
            try:
                cell.metric(name, value, name in sketched)
            except ValueError:  # more names than a cell holds
                self.client.counters["recording_errors"] += 1

    def _metrics_of(self, answer: Any) -> list[tuple[str, float]]:
        """The handle's `metrics(answer)`, checked; empty (and counted) when the function fails."""
        try:
            return checked_metrics(self.options.metrics(answer).items())  # type: ignore[misc]
        except Exception:  # the application's function failing is counted, never felt by the caller
            self.client.counters["recording_errors"] += 1
            return []

    def record(self, decision: Decision, name: str, value: float = 1.0) -> None:
        """Record a custom metric for the arm and stage `decision` routed a call to, when the outcome is known
        later: `mig.record(d, "acked", 1)` when the message is acknowledged seconds after it was sent.

        Counted in the current window, not as a call. Never raises: a bad name or value is counted in
        `stats()["recording_errors"]`; a decision made with no route (unknown migration) records nothing.
        """
        if not decision.stage:
            return
        try:
            values = checked_metrics(((name, value),))
            recorder = self._recorder
            cell = recorder.cell(self._now(), cell_key(self.name, decision.stage, decision.arm))
            try:
                self._add_metrics(cell, values)
            finally:
                recorder.done()
            if not values:
                self.client.counters["recording_errors"] += 1
        except Exception:  # recording never fails the caller: counted instead
            self.client.counters["recording_errors"] += 1

    def _cost(self, answer: Any) -> float | None:
        """The handle's cost of an answer; None (and counted) when the cost function fails."""
        try:
            return float(self.options.cost(answer))  # type: ignore[misc]
        except Exception:  # a cost function that fails is counted, never felt by the caller
            self.client.counters["recording_errors"] += 1
            return None

    def _count_with_metrics(self, key: str, start: float, end: float, answer: Any) -> None:
        """Count an answered call with its cost and custom metrics, asked of the handle's functions."""
        # The cost and metrics functions are the application's code: they run before the cell is taken, not
        # while it is held.
        self._recorder.add_call_with_metrics(key, start, end, None if self._costs is None else self._cost(answer),
                                             () if self._metered is None else self._metrics_of(answer),
                                             self._sketched)

    def run(self, key: object, legacy: Callable[..., T], candidate: Callable[..., T], /, *args: Any,
            **kwargs: Any) -> T:
        """Route `key`, call the chosen arm with the arguments, time and record it, and return its answer.

        When the candidate raises or exceeds `fallback.timeout` (and `fallback.on_error` is on), legacy is
        called and its answer returned; the caller never sees the candidate's failure. When legacy raises,
        its exception reaches the caller unchanged and is recorded as an error.
        """
        route, legacy_key, candidate_key = self._bound
        if route is None:  # unknown migration, a draft or a stale table: legacy, and nothing to file it under
            return legacy(*args, **kwargs)
        decision = route.decide(key)
        now = self._seconds
        start = now()
        if decision.arm is LEGACY:
            try:
                # Without keywords, no dict is built to pass none (the common call, on the hot path).
                result = legacy(*args, **kwargs) if kwargs else legacy(*args)
            except Exception as exc:
                self._record(decision, round((now() - start) * 1e9), error=True)
                if decision.shadow:
                    self._shadow(route, decision, candidate, legacy, args, kwargs, None, exc)
                raise
            if result.__class__ in STREAM_TYPES:
                raise misuse("run", result)
            end = now()
            try:
                self._count_call(legacy_key, start, end, result)
            except Exception:  # recording never fails the caller: counted instead
                self.client.counters["recording_errors"] += 1
            if decision.shadow:
                runner = self._handoff
                if runner is not None and runner.qsize() < runner.room:
                    # `_shadow`, inline once the runner is known: one tuple put on its queue, nothing else.
                    try:
                        runner.put((_shadow_sync, _copy_context(), self, route, decision, candidate, legacy, args,
                                    kwargs, result, None))
                        if runner.hiring:
                            runner.hire()
                    except Exception:
                        self.client.count("internal_errors")
                else:
                    self._shadow(route, decision, candidate, legacy, args, kwargs, result, None)
            return result
        fallback = route.spec.fallback if route.spec is not None else None
        try:
            if fallback is None or fallback.timeout is None:
                result = candidate(*args, **kwargs) if kwargs else candidate(*args)
            else:
                result = self._call_with_timeout(candidate, fallback.timeout, args, kwargs)
        except Exception as exc:
            self._candidate_failed(decision, round((now() - start) * 1e9), exc, fallback)
            return legacy(*args, **kwargs)
        if result.__class__ in STREAM_TYPES:
            raise misuse("run", result)
        end = now()
        try:
            self._count_call(candidate_key, start, end, result)
        except Exception:
            self.client.counters["recording_errors"] += 1
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
        """Hand the other arm's run to the shadow runner; only the hand-off is paid on the request path: the
        worker draws the noise sample and reads the settings (see `_shadow_sync`)."""
        try:
            if self._marked_writes:
                self._refuse_shadow(decision.stage)
                return
            runner = self._handoff or self._shadow_runner(route)
            # ShadowRunner.submit, inline: the request path pays one Python call for the hand-off, not two.
            if runner.qsize() < runner.room:
                runner.put((_shadow_sync, _copy_context(), self, route, decision, other, legacy, args, kwargs, value,
                            error))
                if runner.hiring:
                    runner.hire()
            else:
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
            runner = self._handoff or self._shadow_runner(route)
            if not runner.submit_async(_shadow_async, (self, route, decision, other, legacy, args, kwargs, value,
                                                       error)):
                self._dropped(decision.stage)
        except Exception:
            self.client.count("internal_errors")

    def _shadow_runner(self, route: Route) -> ShadowRunner:
        # Looked up once per routing table (`_bind` forgets it), not per call.
        settings = shadow_settings(route)
        runner = self._handoff = self.client._runner(self.name, settings)
        if self.options.compare is None and (settings.compare is not None or self._comparator.options.compare):
            self._comparator = self._spec_comparator(settings.compare)
        return runner

    def _spec_comparator(self, named: Any) -> Comparator:
        """The comparison the spec's `shadow.compare` names, for a call site that passes no `compare=`."""
        if named is None:
            return Comparator(self.options)
        try:
            from crossfade.compare import from_spec

            compare = from_spec(named)
        except Exception as exc:  # validated with the spec; a host without the extra compares by equality
            self.client.counters["internal_errors"] += 1
            log.error("crossfade: %s: shadow.compare %r cannot be used here (%s); comparing by equality",
                      self.name, named, exc)
            return Comparator(self.options)
        return Comparator(dataclasses.replace(self.options, compare=compare))

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
                 settings: ShadowSettings, args: tuple[Any, ...], kwargs: dict[str, Any],
                 sampling_noise: bool = False) -> None:
        """Compare a shadow run's answer with the served one, off the request path, and record it.

        When the stage samples noise, the comparison is judged only once the stage's noise rate is known
        (`shadow.noise_samples`): until then it is held, and counted for the gate when it is judged."""
        client = self.client
        legacy, candidate = (served, other) if served_arm is LEGACY else (other, served)
        if other.error is not None:
            client.count("shadow_errors", 1)
        differences, score = self._comparator.scored(legacy, candidate, settings.mismatch_below)
        noise = None if again is None else self._comparator.scored(legacy, again, settings.mismatch_below)[0]
        judged, mismatches = client.comparisons.record(
            self.name, stage, differences, noise, relative=settings.noise_relative,
            absolute=settings.noise_absolute, noise_samples=settings.noise_samples if sampling_noise else None,
        )
        if score is not None:  # a graded comparison: the similarity gates read the scores
            recorder = self._recorder
            cell = recorder.cell(self._now(), cell_key(self.name, stage, CANDIDATE))
            try:
                cell.metric(SIMILARITY, score, True)
            finally:
                recorder.done()
        client.count("shadow_compared", 1)
        client._count_judged(self.name, stage, judged, mismatches)
        if differences:
            self._keep_example(stage, differences, args, kwargs, legacy, candidate, settings, score)
        elif score is not None and client.comparisons.among_lowest(self.name, stage, score, settings.examples):
            # Above mismatch_below, yet among the stage's lowest: what a similarity gate on p10 is about.
            self._keep_example(stage, (), args, kwargs, legacy, candidate, settings, score)

    def _keep_example(self, stage: str, differences: Sequence[Difference], args: tuple[Any, ...],
                      kwargs: dict[str, Any], legacy: Outcome, candidate: Outcome, settings: ShadowSettings,
                      score: float | None = None) -> None:
        """Keep an example of the comparison under each differing field's path (under the answer's root when
        a graded comparison kept it for its low score)."""
        detail: dict[str, Any] = {
            **({} if score is None else {"score": score}),
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
        for path in dict.fromkeys(d.path for d in differences) or (ROOT,):
            self.client.comparisons.keep(Example(self.name, stage, path, now, detail), settings.examples)

    def _candidate_failed(self, decision: Decision, elapsed_ns: int, exc: Exception,
                          fallback: Fallback | None) -> None:
        """Record a failed candidate call that took `elapsed_ns`; re-raise its exception when the spec allows no
        fallback."""
        timed_out = isinstance(exc, (CandidateTimeout, TimeoutError))
        if fallback is None or not fallback.on_error:
            self._record(decision, elapsed_ns, error=True, timeout=timed_out)
            raise exc
        self._record(decision, elapsed_ns, error=True, timeout=timed_out, fallback=True)

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
        now = self._seconds
        start = now()
        if decision.arm is LEGACY:
            try:
                called = legacy(*args, **kwargs)
                if called.__class__ in STREAM_TYPES:
                    raise misuse("arun", called)
                result = await called
            except StreamMisuse:
                raise
            except Exception as exc:
                self._record(decision, round((now() - start) * 1e9), error=True)
                if decision.shadow:
                    self._ashadow(route, decision, candidate, legacy, args, kwargs, None, exc)
                raise
            end = now()
            try:
                self._count_call(legacy_key, start, end, result)
            except Exception:
                self.client.counters["recording_errors"] += 1
            if decision.shadow:
                self._ashadow(route, decision, candidate, legacy, args, kwargs, result, None)
            return result
        fallback = route.spec.fallback if route.spec is not None else None
        try:
            if fallback is None or fallback.timeout is None:  # no deadline to keep: no timeout scope to enter
                called = candidate(*args, **kwargs)
                if called.__class__ in STREAM_TYPES:
                    raise misuse("arun", called)
                result = await called
            else:
                async with asyncio.timeout(fallback.timeout):
                    called = candidate(*args, **kwargs)
                    if called.__class__ in STREAM_TYPES:
                        raise misuse("arun", called)
                    result = await called
        except StreamMisuse:
            raise
        except Exception as exc:
            self._candidate_failed(decision, round((now() - start) * 1e9), exc, fallback)
            return await legacy(*args, **kwargs)
        end = now()
        try:
            self._count_call(candidate_key, start, end, result)
        except Exception:
            self.client.counters["recording_errors"] += 1
        if decision.shadow:
            self._ashadow(route, decision, legacy, legacy, args, kwargs, result, None)
        return result

    # -- streams ---------------------------------------------------------------------------------

    def stream(self, key: object, legacy: Callable[..., Iterator[T]], candidate: Callable[..., Iterator[T]], /,
               *args: Any, **kwargs: Any) -> Iterator[T]:
        """`run` for generator functions: route `key`, and yield the chosen arm's chunks as they come.

        Latency to the first chunk and to the end are both recorded (gates `latency_first_chunk` and
        `latency`). A candidate failing before its first chunk falls back to legacy (when `fallback.on_error`);
        one failing mid-stream is recorded as an error of the candidate and its exception reaches the caller.
        A shadowed stream's other arm is consumed off the request path and the assembled outputs compared.
        """
        return stream(self, key, legacy, candidate, args, kwargs)

    def astream(self, key: object, legacy: Callable[..., AsyncIterator[T]],
                candidate: Callable[..., AsyncIterator[T]], /, *args: Any, **kwargs: Any) -> AsyncIterator[T]:
        """`stream` for async generator functions: `async for chunk in mig.astream(key, old, new, x): ...`.

        `fallback.timeout` bounds the candidate's wait for its first chunk (past it, legacy streams instead).
        """
        return astream(self, key, legacy, candidate, args, kwargs)

    # -- writes ----------------------------------------------------------------------------------

    def write(self, key: object, legacy_write: Callable[..., T], candidate_write: Callable[..., T], /,
              *args: Any, idempotency_key: str | bool | None = None, **kwargs: Any) -> T:
        """Route a write by `key`; in a `dual_write` stage write both sides.

        `idempotency_key` (a string, or True for a fresh random one) is passed to each write function as the
        keyword `idempotency_key`, the same on every retry of the second side: a store that keeps the keys it
        took (a unique index) can then drop a write it already has, where a retry after a lost answer would
        otherwise store it twice.

        The authoritative side (legacy, until the stage's traffic gives the key to the candidate) is written
        first and its answer returned. Legacy's exception reaches the caller, and the other side is then not
        written. A failed candidate is answered for by legacy's write, as `run` falls back (with
        `fallback.on_error`, the default), and its own side is then the other side. The other side's failure
        is retried per `dual_write_retry`, then recorded as a divergence; it never fails or undoes the
        authoritative write. Outside dual-write stages this is `run` for a
        call site marked writes=True: never shadowed.
        """
        kwargs = _with_idempotency_key(kwargs, idempotency_key)
        route = self._bound[0]
        if route is None:
            return legacy_write(*args, **kwargs)
        if not route.dual_write:
            view = self if self.options.writes else self._writes_view()
            return view.run(key, legacy_write, candidate_write, *args, **kwargs)
        decision = route.decide(key)
        first, second = (legacy_write, candidate_write) if decision.arm is LEGACY else (candidate_write, legacy_write)
        served = decision.arm
        start = self._now()
        try:
            result = first(*args, **kwargs)
        except Exception:
            if not self._falls_back(route, decision, start):
                raise
            # The candidate was authoritative and failed: legacy's write answers, as `run` falls back, and the
            # candidate's side becomes the other one (retried, then a divergence).
            result = legacy_write(*args, **kwargs)
            first, second, served = legacy_write, candidate_write, LEGACY
        else:
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
        self._dual_written(route, decision, served, outcome, attempts, args, kwargs)
        return result

    async def awrite(self, key: object, legacy_write: Callable[..., Awaitable[T]],
                     candidate_write: Callable[..., Awaitable[T]], /, *args: Any,
                     idempotency_key: str | bool | None = None, **kwargs: Any) -> T:
        """`write` for coroutine functions (`idempotency_key` as there)."""
        kwargs = _with_idempotency_key(kwargs, idempotency_key)
        route = self._bound[0]
        if route is None:
            return await legacy_write(*args, **kwargs)
        if not route.dual_write:
            view = self if self.options.writes else self._writes_view()
            return await view.arun(key, legacy_write, candidate_write, *args, **kwargs)
        decision = route.decide(key)
        first, second = (legacy_write, candidate_write) if decision.arm is LEGACY else (candidate_write, legacy_write)
        served = decision.arm
        start = self._now()
        try:
            result = await first(*args, **kwargs)
        except Exception:
            if not self._falls_back(route, decision, start):
                raise
            result = await legacy_write(*args, **kwargs)  # as in `write`: legacy answers for a failed candidate
            first, second, served = legacy_write, candidate_write, LEGACY
        else:
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
        self._dual_written(route, decision, served, outcome, attempts, args, kwargs)
        return result

    def _writes_view(self) -> Migration:
        view = self.__dict__.get("_writes")
        if view is None:
            view = self._writes = self.with_options(writes=True)
        return view

    def _falls_back(self, route: Route, decision: Decision, start: int) -> bool:
        """Record a failed authoritative write; True when legacy is to answer for it (a candidate's failure,
        with `fallback.on_error`), False when the exception is the caller's (legacy's, or no fallback)."""
        fallback = route.spec.fallback if route.spec is not None else None
        falls_back = decision.arm is CANDIDATE and fallback is not None and fallback.on_error
        self._record(decision, self._now() - start, error=True, fallback=falls_back)
        return falls_back

    def _dual_written(self, route: Route, decision: Decision, served: str, outcome: Outcome, attempts: int,
                      args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        try:
            client = self.client
            client.count("dual_writes", 1)
            client.comparisons.count(self.name, decision.stage, "dual_writes")
            if outcome.error is None:
                return
            client.count("dual_write_divergences", 1)
            client.comparisons.count(self.name, decision.stage, "divergent")
            other = CANDIDATE if served is LEGACY else LEGACY
            log.warning("crossfade: %s: the %s side of a dual write failed %d times (%s); recorded as a divergence",
                        self.name, other, attempts, outcome.error)
            settings = shadow_settings(route)
            answered = Outcome(None)
            legacy, candidate = (answered, outcome) if served is LEGACY else (outcome, answered)
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
        are kept; coroutine functions get an async wrapper, generator functions a streaming one (`stream`,
        `astream`). `writes=True` marks a call site with side
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

            if inspect.isasyncgenfunction(legacy):

                @functools.wraps(legacy)
                async def async_stream_wrapper(*args: Any, **kwargs: Any) -> Any:
                    k = key_or_none(args, kwargs)
                    chunks = legacy(*args, **kwargs) if k is _NO_KEY else \
                        handle.astream(k, legacy, candidate, *args, **kwargs)
                    async for chunk in chunks:
                        yield chunk

                return async_stream_wrapper  # type: ignore[return-value]

            if inspect.isgeneratorfunction(legacy):

                @functools.wraps(legacy)
                def stream_wrapper(*args: Any, **kwargs: Any) -> Any:
                    k = key_or_none(args, kwargs)
                    if k is _NO_KEY:
                        return (yield from legacy(*args, **kwargs))
                    return (yield from handle.stream(k, legacy, candidate, *args, **kwargs))

                return stream_wrapper  # type: ignore[return-value]

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

    def _act(self, action: str, reason: str | None, actor: str | None, dry_run: bool, *, force: bool = False,
             to: float | None = None) -> Event:
        # Another writer may append between our read and our write. When it only recorded verdicts (the
        # controller does so at any look), the migration is where the command was decided for: decide again
        # and retry. When it moved the migration, the conflict stands, so two commands never both move it.
        for attempt in range(3):
            state, spec = self._current()
            try:
                changes = operation(action, state, spec, reason, force=force,
                                    progress=self._progress(action, state, spec), to=to)
                return self.client._commit(state, spec, changes, actor, dry_run)
            except ConflictError:
                fresh = self.client.backend().state(self.name)
                if attempt == 2 or fresh is None or position(fresh) != position(state):
                    raise
        raise AssertionError("unreachable")

    def _progress(self, action: str, state: State, spec: Spec) -> StageProgress:
        """The current stage's progress, read from the backend when the command checks it (promote) or takes
        legacy's cell from it (approve, for the last stage's bake). Read as the controller reads it (a first
        look: the store's totals and its newest rows, or a control plane's rolled-up stage), not row by row."""
        from crossfade.controller import stage_progress
        from crossfade.stagedata import StageTelemetry

        if action not in WEIGHS_PROGRESS or not state.stage:
            return StageProgress(0.0, 0, 0)
        now = self.client.time()
        return stage_progress(spec, state, StageTelemetry().windows(self.client.backend(), state, spec, now), now)

    def start(self, reason: str | None = None, *, actor: str | None = None, dry_run: bool = False) -> Event:
        """Start a draft migration at its first stage."""
        return self._act("start", reason, actor, dry_run)

    def promote(self, reason: str | None = None, *, actor: str | None = None, force: bool = False,
                dry_run: bool = False) -> Event:
        """Move to the next stage; entering the last stage completes the migration (or starts its bake). A
        gate whose last verdict is FAIL, or whose estimate is past its limit, refuses it unless `force`, which
        the event records."""
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

    def step_back(self, reason: str | None = None, *, to: float | None = None, actor: str | None = None,
                  dry_run: bool = False) -> Event:
        """A partial rollback: return to the stage before, or to the latest earlier stage whose traffic is at
        most `to` (a fraction, 0.1 for 10%)."""
        return self._act("step-back", reason, actor, dry_run, to=to)

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


def _with_idempotency_key(kwargs: dict[str, Any], key: str | bool | None) -> dict[str, Any]:
    """The write functions' keywords, with the idempotency key when one is asked for."""
    if key is None or key is False:
        return kwargs
    return {**kwargs, "idempotency_key": uuid.uuid4().hex if key is True else str(key)}


def shadow_settings(route: Route) -> ShadowSettings:
    """The shadow settings of a route's spec (the defaults without one)."""
    return route.spec.shadow if route.spec is not None else _NO_SHADOW_SETTINGS


def _shadow_run(handle: Migration, route: Route, decision: Decision, other: Callable[..., Any],
                legacy: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], value: Any,
                error: BaseException | None) -> tuple[Any, ...]:
    """What the request path handed off, with what it leaves to the worker: the settings, and whether to run
    legacy again for a noise sample (drawn per run, at the stage's noise rate)."""
    noise = route.noise
    again = legacy if noise and _random() < noise else None
    return (handle, decision.stage, decision.arm, other, again, args, kwargs, Outcome(value, error),
            shadow_settings(route), noise > 0)


def _shadow_sync(handle: Migration, route: Route, decision: Decision, other: Callable[..., Any],
                 legacy: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], value: Any,
                 error: BaseException | None, slot: list[Any]) -> None:
    """A shadow run on a worker thread: the other arm (and legacy again for a noise sample), then compare."""
    handle, stage, served_arm, other, again, args, kwargs, served, settings, sampling_noise = _shadow_run(
        handle, route, decision, other, legacy, args, kwargs, value, error)
    client = handle.client
    client.count("shadow_runs")
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
    handle._compare(stage, served_arm, served, answer, repeat, settings, args, kwargs, sampling_noise)


async def _shadow_async(payload: tuple[Any, ...]) -> None:
    """A shadow run as a task: cancelled at the timeout, counted, and compared like `_shadow_sync`."""
    handle, stage, served_arm, other, again, args, kwargs, served, settings, sampling_noise = _shadow_run(*payload)
    client = handle.client
    client.count("shadow_runs")
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
        handle._compare(stage, served_arm, served, answer, repeat, settings, args, kwargs, sampling_noise)
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


class Observation:
    """Records one call that the application runs itself; an exception leaving the block is an error."""

    __slots__ = ("_migration", "decision", "_cost", "_error", "_start", "_metrics")

    def __init__(self, migration: Migration, decision: Decision) -> None:
        self._migration = migration
        self.decision = decision
        self._cost: float | None = None
        self._error = False
        self._start = 0
        self._metrics: list[tuple[str, float]] | None = None

    def metric(self, name: str, value: float = 1.0) -> None:
        """Record a custom metric of this call: `obs.metric("delivered", 1)`, `obs.metric("tokens", 812)`.

        Names are lowercase letters, digits and _ (at most 63); values are finite numbers. A bad one is
        dropped and counted in `stats()["recording_errors"]`, never raised.
        """
        number = checked_metric(name, value)
        if number is None:
            self._migration.client.counters["recording_errors"] += 1
        elif self._metrics is None:
            self._metrics = [(name, number)]
        else:
            self._metrics.append((name, number))

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
        end = self._migration._now()
        self._migration._record(self.decision, end - self._start, error=failed, cost=self._cost, metrics=self._metrics,
                                ended_ns=end)
        return False


_VALID_NAMES: set[str] = set()  # metric names already checked: a call site records the same few names


def checked_metric(name: object, value: object) -> float | None:
    """The value of a custom metric as a float when `name` is a metric name and `value` a finite number (bools
    count as 1 and 0); None otherwise."""
    if name not in _VALID_NAMES:
        if not valid_metric_name(name):
            return None
        if len(_VALID_NAMES) < 10_000:
            _VALID_NAMES.add(name)  # type: ignore[arg-type]
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if _isfinite(number) else None


def checked_metrics(items: Iterable[tuple[object, object]]) -> list[tuple[str, float]]:
    """The (name, value) pairs that are custom metric values (see `checked_metric`); the others left out."""
    out = []
    for name, value in items:
        number = checked_metric(name, value)
        if number is not None:
            out.append((name, number))
    return out  # type: ignore[return-value]


def sketched_metrics(spec: Spec | None) -> frozenset[str]:
    """The metric names whose values a cell keeps in a sketch: those the spec judges by a quantile, and the
    similarity scores of graded comparisons."""
    names = {SIMILARITY}
    if spec is not None:
        names.update(m.name for m in spec.metrics if m.kind == "quantile")
    return frozenset(names)
