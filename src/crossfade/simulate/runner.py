"""The run: one simulated migration through the real SDK and controller loop, and many over processes."""

from __future__ import annotations

import concurrent.futures
import math
import multiprocessing
import os
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any, Final

from crossfade.changes import HORIZON as CHANGE_HORIZON
from crossfade.client import Client
from crossfade.controller import Assessment, assess, is_active, stage_cells
from crossfade.events import (
    ABORTED_STATUS,
    AWAITING_APPROVAL,
    COMPLETED,
    PAUSED,
    PAUSED_STATUS,
    ROLLBACK_STARTED,
    ROLLED_BACK,
    ROLLED_BACK_STATUS,
    RUNNING,
    STEPPED_BACK,
    VERDICT,
    Event,
    State,
)
from crossfade.loop import ControllerLoop
from crossfade.metrics.telemetry import TelemetrySource
from crossfade.migration import CandidateTimeout, sketched_metrics
from crossfade.routing import (
    BUCKETS,
    CANDIDATE,
    LEGACY,
    SERVING_STATUSES,
    bucket,
    threshold,
)
from crossfade.simulate.backend import SimBackend
from crossfade.simulate.clock import EPOCH, VirtualClock
from crossfade.simulate.draws import (
    LOG_GAMMA,
    add_latency,
    binomial,
    draw_cost,
    draw_latencies,
    poisson,
)
from crossfade.simulate.results import SimResult, SimTick, TimelineEntry
from crossfade.simulate.workload import Arm, Workload, check_workload
from crossfade.spec import Spec, load_spec
from crossfade.stagedata import WINDOW_MARGIN
from crossfade.telemetry import Cell, Window, cell_key, merge_windows

# "auto" runs every call through `mig.run` up to this many expected calls, and draws in aggregate above.
PER_CALL_LIMIT: Final = 100_000
# After a stage's first 1 / LOOK_GROWTH intervals the simulation looks when the stage's age has grown by this
# share (see `_Run._span`).
LOOK_GROWTH: Final = 0.05
# At low traffic (an interval brings fewer than LOOK_CALLS expected calls) a look waits for about LOOK_CALLS calls,
# and then for the stage's age to grow by LOW_TRAFFIC_GROWTH: a look every interval at 0.06 calls/s judged two
# new calls at a time, and a run's cost grew with its simulated days (see `_Run._span`).
LOOK_CALLS: Final = 100
LOW_TRAFFIC_GROWTH: Final = 0.25


def default_until(spec: Spec) -> float:
    """How long a run may go (seconds): twice the stages' holds plus an hour, and at least six hours."""
    holds = sum(stage.hold or 0.0 for stage in spec.stages) + spec.bake
    return max(2.0 * holds + 3600.0, 6 * 3600.0)


def simulate(
    spec: Spec | str | os.PathLike[str] | Mapping[str, Any],
    workload: Workload | None = None,
    *,
    seed: int = 0,
    approve: float | None = 0.0,
    until: float | None = None,
    on_tick: Callable[[SimTick], None] | None = None,
    rollback_when: Callable[[SimTick], str | None] | None = None,
    database: str | None = None,
) -> SimResult:
    """Run one migration of `spec` under `workload` in virtual time; the same seed gives the same run.

    `approve`: seconds after an approval is requested that the simulation grants it (0: at once; None:
    never, and the run waits). `until`: simulated seconds before giving up (default `default_until`).
    `on_tick` is called after every controller look; `rollback_when`, an outside judge, may return a reason
    to roll the migration back through the SDK (actor "simulation"). `database`: the URL of an empty store
    to run on and leave behind for `crossfade status` and `history` (default: one in memory, discarded).
    """
    model = spec if isinstance(spec, Spec) else load_spec(spec)
    check_workload(model, workload or Workload())
    return _Run(model, workload or Workload(), seed, approve, until, on_tick, rollback_when, database).run()


def _one(args: tuple[dict[str, Any], Workload, int, float | None, float | None]) -> SimResult:
    spec, workload, seed, approve, until = args
    result = simulate(spec, workload, seed=seed, approve=approve, until=until)
    return replace(result, events=())  # events hold read-only mappings, which do not cross processes


def simulate_many(
    spec: Spec | str | os.PathLike[str] | Mapping[str, Any],
    workload: Workload | None = None,
    *,
    runs: int,
    seed: int = 0,
    approve: float | None = 0.0,
    until: float | None = None,
    jobs: int | None = None,
) -> list[SimResult]:
    """`runs` independent runs (seeds seed, seed + 1, ...) over `jobs` processes (default: one per core).

    The results come in seed order, without their events (their timelines are kept).
    """
    model = spec if isinstance(spec, Spec) else load_spec(spec)
    tasks = [(model.to_dict(), workload or Workload(), seed + i, approve, until) for i in range(runs)]
    jobs = min(jobs or os.cpu_count() or 1, runs)
    if jobs <= 1:
        return [_one(task) for task in tasks]
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else None)
    with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=context) as pool:
        return list(pool.map(_one, tasks, chunksize=max(1, runs // (4 * jobs))))


class _SimulatedError(Exception):
    """An error the workload makes an arm raise."""


class _Run:
    """One simulated migration: the clock, the backend, the SDK client, the controller loop and the traffic."""

    def __init__(self, spec: Spec, workload: Workload, seed: int, approve: float | None, until: float | None,
                 on_tick: Callable[[SimTick], None] | None,
                 rollback_when: Callable[[SimTick], str | None] | None, database: str | None = None) -> None:
        self.spec = spec
        self.workload = workload
        self.rng = random.Random(seed)
        self.approve = approve
        self.until = default_until(spec) if until is None else until
        self.on_tick = on_tick
        self.rollback_when = rollback_when
        self.interval = spec.analysis.interval
        self.sketched = sketched_metrics(spec)
        self.clock = VirtualClock(EPOCH)
        longest = max((t.window + (t.for_ or 0.0) for t in spec.triggers), default=0.0)
        # Change detection reads the candidate's windows of its horizon as written; legacy's only as a whole, so
        # they are rolled up past the triggers' reach, which halves the windows the controller merges at a look.
        self.backend = SimBackend(longest + 2 * self.interval, database,
                                  keep_arm={CANDIDATE: max(longest, CHANGE_HORIZON) + 2 * self.interval})
        # Shadow runs in "calls" mode run on the SDK's worker threads, which virtual time does not drive.
        shadows = any(stage.shadow or stage.shadow_legacy for stage in spec.stages)
        self.per_call = workload.mode == "calls" or (
            workload.mode == "auto" and workload.rps * self.until <= PER_CALL_LIMIT and not shadows)
        self.population: list[str] = []
        self.cum_weights: list[float] = []
        if workload.keys:
            self.population = [f"user-{i}" for i in range(workload.keys)]
            total = 0.0
            for rank in range(1, workload.keys + 1):
                total += rank ** -workload.zipf
                self.cum_weights.append(total)
        self._buckets: list[int] = []
        self._share_cache: tuple[tuple[bool, float] | None, float] = (None, 0.0)
        self.calls = {CANDIDATE: 0, LEGACY: 0}
        self.exposed = 0
        self.detected: float | None = None
        self.fault_at = workload.fault.at if workload.fault is not None else 0.0
        # With `for:` triggers a look re-checks the trigger's window at each interval of its `for`: the span's
        # last intervals that those windows cover are drawn one by one (see `_traffic`).
        held = [math.ceil((t.for_ + t.window) / self.interval) for t in spec.triggers if t.for_]
        self.tail = 0 if self.per_call or not held else max(held)

    # -- driving -------------------------------------------------------------------------------

    def run(self) -> SimResult:
        client = Client(self.backend, clock=self.clock.now, background=False, window=self.interval, refresh=3600)
        try:
            self.client = client
            self.mig = client.migration(self.spec.name)
            client.apply(self.spec, actor="simulation")
            self.mig.start("simulation started", actor="simulation")
            # The simulated traffic is the evidence, whichever metric source the spec names for real traffic.
            self.loop = ControllerLoop(self.backend, clock=self.clock, holder="simulation", names=[self.spec.name],
                                       source=TelemetrySource())
            self.loop.tick()  # the first look, with no data yet
            return self._steps()
        finally:
            client.close()

    def _steps(self) -> SimResult:
        steps = max(1, math.ceil(self.until / self.interval))
        state = self.mig.state()
        k = 0
        while k < steps:
            start = EPOCH + k * self.interval
            span = self._span(state, start, steps - k)
            judged = state.stage
            self._traffic(start, state, span)
            self.client.flush(everything=True)
            k += span
            now = EPOCH + k * self.interval
            self.clock.set(now)
            ticks = self.loop.tick()
            written = [e for t in ticks for e in t.events]
            if written:
                self.client.refresh()
            state = self.mig.state()
            written += self._approve(state, now)
            tick = None
            if self.on_tick is not None or self.rollback_when is not None:
                assessment = ticks[0].assessment if ticks else None
                tick = self._tick(now, judged, state, assessment, written, start)
                if self.rollback_when is not None and is_active(state):
                    reason = self.rollback_when(tick)
                    if reason:
                        written.append(self.mig.rollback(reason, actor="simulation"))
                        self.client.refresh()
                        state = self.mig.state()
                        tick = replace(tick, state=state, events=tuple(written))
            if written:
                state = self.mig.state()
                self._note_detection(written, now)
            if self.on_tick is not None and tick is not None:
                self.on_tick(tick)
            if not is_active(state):
                return self._result(state, now)
        return self._result(state, EPOCH + steps * self.interval)

    def _span(self, state: State, start: float, left: int) -> int:
        """How many analysis intervals to draw before the next look: 1 for a stage's first 1 / LOOK_GROWTH
        intervals, then LOOK_GROWTH of the stage's age; at low traffic, the intervals that bring LOOK_CALLS
        expected calls, then LOW_TRAFFIC_GROWTH of the stage's age, so a stage costs a number of looks that grows
        with the logarithm of its hold, not with the hold. Cut at the next moment something is due.

        A look that adds a few percent to a stage's evidence cannot change much, and looking every interval
        made a run's cost grow with the simulated span: holds of days at 0.06 calls/s took 20 minutes for
        `plan`. An interval at 100 calls/s brings LOOK_CALLS calls by itself: such runs look as before. Looks stay at every interval while anything but evidence is awaited (approval, a
        rollback's steps) and land on the end of a hold, on `max_stage_time` and on the fault's start and end.
        """
        if state.status != RUNNING or state.stage_entered_at is None:
            return 1
        age = start - state.stage_entered_at
        stage = self.spec.stages[state.stage_index]
        sized = math.floor(LOOK_CALLS / (self.workload.rps * self.interval)) if self.workload.rps > 0 else 1
        growth = LOW_TRAFFIC_GROWTH if sized > 1 else LOOK_GROWTH
        span = max(1, math.floor(growth * age / self.interval), sized)
        due = [state.stage_entered_at + (stage.hold or 0.0)]
        if state.stage_index == len(self.spec.stages) - 1:
            due.append(state.stage_entered_at + self.spec.bake)
        if self.spec.analysis.max_stage_time is not None:
            due.append(state.stage_entered_at + self.spec.analysis.max_stage_time)
        fault = self.workload.fault
        if fault is not None:
            due += [EPOCH + fault.at, EPOCH + fault.at + fault.over]
        for t in due:
            if t > start:
                span = min(span, max(1, math.ceil((t - start) / self.interval)))
        return min(span, left)

    def _approve(self, state: State, now: float) -> list[Event]:
        if state.status != AWAITING_APPROVAL or self.approve is None:
            return []
        if now - (state.updated_at or now) < self.approve:
            return []
        self.mig.approve("approved by the simulation's approve policy", actor="simulation")
        self.client.refresh()
        return self.mig.history()[state.seq:]

    def _note_detection(self, events: Sequence[Event], now: float) -> None:
        if self.detected is None and any(e.type in (ROLLBACK_STARTED, ROLLED_BACK, STEPPED_BACK, PAUSED)
                                         for e in events):
            self.detected = now - EPOCH

    def _tick(self, now: float, judged: str | None, state: State, assessment: Assessment | None,
              written: Sequence[Event], start: float) -> SimTick:
        windows: list[Window] = []
        cells: dict[str, Cell] = {}
        last: dict[str, Cell] = {}
        if judged is not None:
            entered = self._entered(judged, state)
            windows = self.backend.windows(self.spec.name, stage=judged, since=entered - WINDOW_MARGIN)
            cells = stage_cells(replace(state, stage=judged, stage_entered_at=entered), windows)
            last = merge_windows(w for w in windows if w.start >= start)
        return SimTick(now, now - EPOCH, judged, state, assessment, cells, last, tuple(windows), tuple(written))

    def _entered(self, stage: str, state: State) -> float:
        if state.stage == stage and state.stage_entered_at is not None:
            return state.stage_entered_at
        for event in reversed(self.mig.history()):
            if event.payload.get("stage") == stage and "traffic" in event.payload and "stage_index" in event.payload:
                return event.time
        return EPOCH

    def _result(self, state: State, now: float) -> SimResult:
        events = tuple(self.mig.history())
        elapsed = now - EPOCH
        if state.status == COMPLETED:
            outcome, reason = "completed", state.reason or "completed"
            # Completed on entering the last stage, or when its bake passed.
            elapsed = ((state.updated_at if self.spec.bake else state.stage_entered_at) or now) - EPOCH
        elif state.status in (ROLLED_BACK_STATUS, ABORTED_STATUS):
            outcome, reason = "rolled_back", _failure_reason(events) or state.reason or state.status
            elapsed = (state.updated_at or now) - EPOCH
        elif state.status == PAUSED_STATUS:
            outcome, reason = "paused", state.reason or "paused"
            elapsed = (state.updated_at or now) - EPOCH
        else:
            outcome = "running"
            reason = self._waiting(state, now)
        timeline = tuple(
            TimelineEntry(e.time - EPOCH, e.payload.get("stage") or e.payload.get("from_stage"), e.type, e.actor,
                          e.reason or "")
            for e in events if e.type != VERDICT
        )
        return SimResult(outcome, elapsed, state.stage, reason, self.detected, self.exposed, dict(self.calls),
                         events, timeline)

    def _waiting(self, state: State, now: float) -> str:
        if state.status == AWAITING_APPROVAL:
            return "awaiting approval (the simulation approves nothing with approve=None)"
        if state.stage_index + 1 >= len(self.spec.stages) and not self.spec.bake:
            return state.status
        entered = state.stage_entered_at or now
        windows = self.backend.windows(self.spec.name, stage=state.stage, since=entered - WINDOW_MARGIN)
        waiting = assess(self.spec, state, windows, now).waiting_for
        return f"{state.status}, waiting for {waiting}" if waiting else state.status

    # -- traffic -------------------------------------------------------------------------------

    def _share(self) -> float:
        """The candidate's share of calls under the current routing table."""
        route = self.client.table.get(self.spec.name)
        if route is None:
            return 0.0
        # The share depends only on the traffic while serving (allow and deny lists come from the spec):
        # not recomputed at every event that bumps the table's version.
        serving = route.status in SERVING_STATUSES
        if self._share_cache[0] == (serving, route.traffic):
            return self._share_cache[1]
        if not serving:
            share = 0.0
        elif not self.population:
            share = threshold(route.traffic) / BUCKETS
        else:
            weights = self.cum_weights
            total = weights[-1]
            share = 0.0
            previous = 0.0
            if self.spec.allow or self.spec.deny:
                served = [route.decide(key, 1.0).arm == CANDIDATE for key in self.population]
            else:
                # The keys' buckets are fixed for the run: hashed once, not once per traffic level.
                if not self._buckets:
                    self._buckets = [bucket(route.salt, key) for key in self.population]
                below = threshold(route.traffic)
                served = [b < below for b in self._buckets]
            for candidate, cumulative in zip(served, weights):
                if candidate:
                    share += cumulative - previous
                previous = cumulative
            share /= total
        self._share_cache = ((serving, route.traffic), share)
        return share

    def _traffic(self, start: float, state: State, span: int = 1) -> None:
        """Draw the calls of `span` intervals from `start`. A span drawn at once puts its calls in its last
        interval, so a trigger held `for:` a while, which looks back at windows ending in each of its `for`'s
        intervals, found those windows empty at low traffic and could never fire: with such triggers the
        intervals those windows cover (`tail`) are drawn one by one, after the rest of the span at once."""
        tail = min(span, self.tail)
        head = span - tail
        if head:
            self._draw(start, head)
        for i in range(tail):
            self._draw(start + (head + i) * self.interval, 1)

    def _draw(self, start: float, span: int) -> None:
        length = span * self.interval
        n = poisson(self.rng, self.workload.rps * length)
        candidate = self.workload.candidate_at(start + length / 2 - EPOCH)
        faulty = start - EPOCH >= self.fault_at
        before = self.calls[CANDIDATE]
        if self.per_call:
            self._calls(start, n, candidate, length)
        else:
            self._aggregate(start + length - self.interval, n, candidate)
        if faulty and self.detected is None:
            self.exposed += self.calls[CANDIDATE] - before

    def _aggregate(self, start: float, n: int, candidate: Arm) -> None:
        """Draw `n` calls into the interval that begins at `start` (a span's calls all land in its last one, where
        the triggers' sliding windows see them)."""
        share = self._share()
        n_candidate = binomial(self.rng, n, share)
        route = self.client.table.get(self.spec.name)
        if route is None:
            return
        fallback = self.spec.fallback
        recorder = self.client.recorder
        now_ns = round((start + self.interval / 2) * 1e9)
        for arm, model, count in ((CANDIDATE, candidate, n_candidate), (LEGACY, self.workload.legacy, n - n_candidate)):
            if count <= 0:
                continue
            self.calls[arm] += count
            cell = recorder.cell(now_ns, cell_key(self.spec.name, route.stage, arm))
            try:
                cutoff = fallback.timeout if arm == CANDIDATE else None
                cell.calls += count
                timeouts = draw_latencies(self.rng, model.latency, count, cell.latency, cutoff)
                if timeouts and cutoff is not None:
                    # A timed-out call is recorded when the caller stops waiting: at the timeout.
                    add_latency(cell.latency, math.ceil(math.log(cutoff) / LOG_GAMMA), timeouts)
                errors = binomial(self.rng, count - timeouts, model.errors) + timeouts
                cell.errors += errors
                cell.timeouts += timeouts
                if arm == CANDIDATE and fallback.on_error:
                    cell.fallbacks += errors
                draw_cost(self.rng, model, count, cell)
                for custom in model.metrics:
                    custom.add_to(self.rng, count, cell, custom.name in self.sketched)
            finally:
                recorder.done()
        # Shadow runs count as calls of the arm that ran them (errors, latency and the cost of the answered
        # ones; no fallback), as the SDK records them: the candidate beside legacy-served calls, legacy beside
        # candidate-served ones.
        shadows = ((CANDIDATE, candidate, binomial(self.rng, n - n_candidate, route.shadow)),
                   (LEGACY, self.workload.legacy,
                    binomial(self.rng, n_candidate, getattr(route, "shadow_legacy", 0.0))))
        compared = 0
        for arm, model, count in shadows:
            if count <= 0:
                continue
            cell = recorder.cell(now_ns, cell_key(self.spec.name, route.stage, arm))
            try:
                cell.calls += count
                draw_latencies(self.rng, model.latency, count, cell.latency, None)
                errors = binomial(self.rng, count, model.errors)
                cell.errors += errors
                draw_cost(self.rng, model, count - errors, cell)
            finally:
                recorder.done()
            compared += count
        if compared:
            # Every shadow run is compared with the served answer; the mismatch gate reads the candidate's cell.
            cell = recorder.cell(now_ns, cell_key(self.spec.name, route.stage, CANDIDATE))
            try:
                cell.compared += compared
                cell.mismatches += binomial(self.rng, compared, candidate.mismatch)
            finally:
                recorder.done()

    def _calls(self, start: float, n: int, candidate: Arm, length: float) -> None:
        rng, clock, mig, workload = self.rng, self.clock, self.mig, self.workload
        timeout = self.spec.fallback.timeout
        legacy_arm = workload.legacy
        served: list[str] = []

        def legacy() -> None:
            served.append(LEGACY)
            clock.advance(legacy_arm.latency.sample(rng))
            if rng.random() < legacy_arm.errors:
                raise _SimulatedError("legacy error")

        def candidate_fn() -> None:
            served.append(CANDIDATE)
            latency = candidate.latency.sample(rng)
            if timeout is not None and latency > timeout:
                clock.advance(timeout)
                raise CandidateTimeout(f"no answer within {timeout}s")
            clock.advance(latency)
            if rng.random() < candidate.errors:
                raise _SimulatedError("candidate error")

        keys = (rng.choices(self.population, cum_weights=self.cum_weights, k=n) if self.population
                else [f"r{start:.0f}-{i}" for i in range(n)])
        recorder = self.client.recorder
        spacing = length / max(n, 1)
        for i, key in enumerate(keys):
            clock.set(start + (i + 0.5) * spacing)
            served.clear()
            try:
                mig.run(key, legacy, candidate_fn)
            except _SimulatedError:
                pass  # legacy's own errors reach the caller, as they would the application
            if not served:
                continue
            arm = served[0]
            self.calls[arm] += 1
            route = self.client.table.get(self.spec.name)
            if route is not None:
                model = candidate if arm == CANDIDATE else legacy_arm
                # `run` times and counts the call; its cost is added to the same cell, as `observe` would.
                cost = model.sample_cost(rng)
                cell = recorder.cell(recorder.now(), cell_key(self.spec.name, route.stage, arm))
                cell.add_cost(cost)
                for custom in model.metrics:
                    custom.add_to(rng, 1, cell, custom.name in self.sketched)
                recorder.done()


def _failure_reason(events: Sequence[Event]) -> str | None:
    """The reason of the first corrective event of the last attempt (the gate or trigger that fired)."""
    for event in events:
        if event.type in (ROLLBACK_STARTED, ROLLED_BACK, STEPPED_BACK, PAUSED):
            return event.reason
    return None
