"""The batch runner: moves items through a migration's stages with bounded concurrency, snapshots, retries,
a circuit breaker, resume after a crash, and a restore of every touched item on rollback.

Per item: read it, transform it (retrying per error class), validate it; per group of items, in this order:
record each one's previous and new content in the ledger (one transaction), write the new contents to the
store, mark them written, file a telemetry window and let the judge look. A crash at any point leaves each
item untouched, or snapshotted; the next run skips written items, re-writes snapshotted ones from their
recorded new content without transforming them again, and takes up the rest.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import os
import random
import socket
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from crossfade.backends.batch import (
    FAILED,
    INVALID,
    RESTORED,
    TRANSFORMED,
    WRITTEN,
    BatchLedger,
    ItemRecord,
    Outcome,
)
from crossfade.batch.plan import (
    BATCH_RESTORED,
    after_stage,
    check_spec,
    during_stage,
    stage_limit,
    stage_of,
    working,
)
from crossfade.batch.policy import DEFAULT_RETRIES, CircuitBreaker, Retry, retry_for
from crossfade.batch.stores import ItemStore
from crossfade.controller import stage_cells
from crossfade.events import (
    ABORTED_STATUS,
    AWAITING_APPROVAL,
    COMPLETED,
    DRAFT,
    PAUSED,
    ROLLED_BACK_STATUS,
    Change,
    State,
    start_change,
)
from crossfade.judge import check_triggers, judge
from crossfade.routing import CANDIDATE
from crossfade.spec import Spec
from crossfade.telemetry import Cell, Window

T = TypeVar("T")

Transform = Callable[[str, bytes], "bytes | str | Awaitable[bytes | str]"]
"""A transform takes an item's key and content and returns its new content (bytes or text; may be async)."""

Validator = Callable[[str, bytes, bytes], "str | bool | None | Awaitable[str | bool | None]"]
"""A validator takes the key, the old and the new content; None or True is fine, False or a text is a problem."""

Progress = Callable[[str, int, int, int], None]
"""Called as items finish: (stage, items done in the stage, items in the stage, items failed)."""

WINDOW_SECONDS = 1.0
_ENDED = (ROLLED_BACK_STATUS, ABORTED_STATUS)
_READ_CHUNK = 500
# A run holds the lease `batch:<name>` while it writes, renewed at every recorded group and through holds;
# a run that stalls for longer than this lets another take the batch over (and then stops at its next group).
LEASE_TTL = 60.0


@dataclass(frozen=True, slots=True)
class FailedItem:
    """An item the run could not migrate: transform failed after its retries, or the validator refused it."""

    key: str
    status: str
    error: str
    tries: int


@dataclass(frozen=True, slots=True)
class BatchReport:
    """What a batch run did and where the migration stands after it. Immutable."""

    name: str
    status: str
    stage: str | None
    dry_run: bool
    transformed: int
    written: int
    rewritten: int
    skipped: int
    failed: tuple[FailedItem, ...]
    restored: int
    seconds: float
    stopped: str | None = None
    retries: int = 0

    @property
    def items_per_second(self) -> float:
        """Items transformed per second of the run."""
        return self.transformed / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able form."""
        return {
            "name": self.name, "status": self.status, "stage": self.stage, "dry_run": self.dry_run,
            "transformed": self.transformed, "written": self.written, "rewritten": self.rewritten,
            "skipped": self.skipped, "restored": self.restored, "retries": self.retries,
            "seconds": round(self.seconds, 3), "items_per_second": round(self.items_per_second, 1),
            "stopped": self.stopped,
            "failed": [{"key": f.key, "status": f.status, "error": f.error, "tries": f.tries} for f in self.failed],
        }


class BatchBusy(ValueError):
    """Another process is running the same batch: two runs would transform and write its items twice."""


class _Stop(Exception):
    """The run stops taking items (breaker tripped, migration moved by a gate or an operator)."""


@dataclass(slots=True)
class _Counts:
    transformed: int = 0
    written: int = 0
    rewritten: int = 0
    skipped: int = 0
    restored: int = 0
    retries: int = 0
    stopped: str | None = None
    dry_failures: list[FailedItem] = field(default_factory=list)


class BatchRun:
    """One run of a batch migration over an item store; `run()` (or `await arun()`) returns its report.

    `target` receives the new contents (default: `source` itself, in place), under `rename(key)` when given
    (`a.json` -> `a.toml`; the same function on every run of the batch). `concurrency` bounds the items
    in flight (reading, transforming, waiting to retry); synchronous transforms run on `threads` threads,
    coroutine functions on the event loop. `retry` maps error classes to their `Retry` (the most specific
    class wins; classes not listed fail at once); `breaker` stops trying after consecutive failures.
    """

    def __init__(
        self,
        client: Any,
        name: str,
        source: ItemStore,
        transform: Transform,
        *,
        target: ItemStore | None = None,
        rename: Callable[[str], str] | None = None,
        validate: Validator | None = None,
        concurrency: int = 256,
        threads: int = 8,
        retry: Mapping[type[BaseException], Retry] | None = None,
        breaker: CircuitBreaker | None = None,
        commit_every: int = 200,
        dry_run: bool = False,
        progress: Progress | None = None,
        actor: str = "batch",
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if concurrency < 1 or threads < 1 or commit_every < 1:
            raise ValueError("concurrency, threads and commit_every must be at least 1")
        self.client = client
        self.name = name
        self.source = source
        self.target = target if target is not None else source
        self.rename: Callable[[str], str] = rename or (lambda key: key)
        self._in_place = (target is None or target is source) and rename is None
        self.transform = transform
        self.validate = validate
        self.concurrency = concurrency
        self.threads = threads
        self.retries = DEFAULT_RETRIES if retry is None else retry
        self.breaker = breaker or CircuitBreaker()
        self.commit_every = commit_every
        self.dry_run = dry_run
        self.progress = progress
        self.actor = actor
        self.rng = rng or random.Random()
        self.clock = clock
        self.backend = client.backend()
        self.ledger = BatchLedger(self.backend)
        self._io: ThreadPoolExecutor | None = None
        self._cpu: ThreadPoolExecutor | None = None
        self._lease = f"batch:{name}"
        # Host and pid in the holder's name let a run on the same host take over from a killed one at once.
        self._holder = f"batch-run:{socket.gethostname()}:{os.getpid()}:{random.SystemRandom().getrandbits(32):08x}"

    # -- entry points ----------------------------------------------------------------------------

    def run(self) -> BatchReport:
        """Run the batch in this thread (which must not be running an event loop; use `arun` there)."""
        return asyncio.run(self.arun())

    async def arun(self) -> BatchReport:
        """Run the batch on the running event loop."""
        self._io = ThreadPoolExecutor(1, thread_name_prefix="crossfade-batch-io")
        self._cpu = ThreadPoolExecutor(self.threads, thread_name_prefix="crossfade-batch")
        started = self.clock()
        counts = _Counts()
        leased = False
        try:
            state, spec = self._current()
            check_spec(spec)
            if self.dry_run:
                await self._dry_run(spec, state, counts)
            else:
                leased = await self._in_io(self._take)
                if not leased:
                    raise BatchBusy(f"the batch {self.name!r} is being run by another process; wait for it to "
                                    f"end (if it was killed on another host, up to {LEASE_TTL:.0f} s) and run "
                                    "it again")
                state = await self._migrate(spec, state, counts)
        finally:
            if leased:
                await self._in_io(self.backend.release_lease, self._lease, self._holder)
            self._io.shutdown(wait=True)
            self._cpu.shutdown(wait=True, cancel_futures=True)
        failed = tuple(counts.dry_failures) if self.dry_run else self._failures(state)
        return BatchReport(self.name, state.status, state.stage, self.dry_run, counts.transformed, counts.written,
                           counts.rewritten, counts.skipped, failed, counts.restored, self.clock() - started,
                           counts.stopped, counts.retries)

    # -- the stages ------------------------------------------------------------------------------

    def _current(self) -> tuple[State, Spec]:
        state = self.backend.state(self.name)
        if state is None:
            from crossfade.backends.base import UnknownMigration

            raise UnknownMigration(f"no migration named {self.name!r}; apply its spec first (crossfade apply FILE)")
        return state, self.client._spec(self.name, state.spec_version)

    def _renew(self) -> bool:
        """Take or renew this run's lease on the batch; False when another run holds it."""
        return bool(self.backend.acquire_lease(self._lease, self._holder, LEASE_TTL, self.clock()))

    def _take(self) -> bool:
        """Take the lease at the start of a run: from nobody, or from a run on this host that was killed."""
        if self._renew():
            return True
        for holder in self.backend.lease_holders(self._lease, self.clock()):
            if _dead_here(holder):
                self.backend.release_lease(self._lease, holder)  # deletes only that holder's lease of this name
        return self._renew()

    def _commit(self, state: State, spec: Spec, changes: Sequence[Change]) -> State:
        self.client._commit(state, spec, list(changes), self.actor, False)
        fresh = self.backend.state(self.name)
        assert fresh is not None
        return fresh

    def _read(self, keys: list[str]) -> tuple[dict[str, bytes], dict[str, bytes]]:
        """The items' contents, and what the target holds under their keys now (what a rollback restores)."""
        contents = self.source.read(keys)
        if self._in_place:
            return contents, contents
        targets = {self.rename(k): k for k in keys}
        return contents, {targets[t]: data for t, data in self.target.read(list(targets)).items()}

    async def _in_io(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._io, fn, *args)

    async def _migrate(self, spec: Spec, state: State, counts: _Counts) -> State:
        if state.status == DRAFT:
            state = self._commit(state, spec, [start_change(state, spec, "batch started")])
        if state.status not in _ENDED:
            records = await self._in_io(self.ledger.items, self.name)
            # Items still holding the new content of an attempt that was rolled back are put back first.
            stale = [r for r in records.values() if r.status in (TRANSFORMED, WRITTEN) and r.attempt < state.attempt]
            if stale:
                counts.restored += await self._restore(state, spec, stale)
                state = self.backend.state(self.name) or state
            counts.skipped = sum(1 for r in records.values()
                                 if r.attempt == state.attempt and r.status in (WRITTEN, FAILED, INVALID))
            unconfirmed = [r for r in records.values() if r.status == TRANSFORMED and r.attempt == state.attempt]
            if unconfirmed:
                counts.rewritten += await self._rewrite(unconfirmed)
        while working(state) and not counts.stopped:
            state = await self._stage(spec, state, counts)
            if not working(state) or counts.stopped:
                break
            state = await self._after_stage(spec, state)
            if state.status == COMPLETED and not await self._in_io(self._left, spec, state):
                break
        if state.status in _ENDED:
            left = await self._in_io(lambda: self.ledger.items(self.name, statuses=[TRANSFORMED, WRITTEN]))
            counts.restored += await self._restore(state, spec, list(left.values()))
            state = self.backend.state(self.name) or state
        elif not working(state) and not counts.stopped:
            counts.stopped = f"the migration is {state.status} ({state.reason or 'no reason given'}); " + (
                f"run `crossfade approve {self.name}`" if state.status == AWAITING_APPROVAL
                else f"run `crossfade resume {self.name}`") + " and run the batch again"
        return state

    def _left(self, spec: Spec, state: State) -> list[str]:
        """The keys of the current stage not yet done in this attempt."""
        limit = stage_limit(spec, state)
        salt = state.salt or spec.salt
        done = self.ledger.done(self.name, state.attempt)
        return [k for k in self.source.keys() if k not in done and stage_of(salt, k, limit)]

    async def _after_stage(self, spec: Spec, state: State) -> State:
        stage = spec.stages[state.stage_index]
        if stage.hold:
            end = (state.stage_entered_at or self.clock()) + stage.hold
            while (left := end - self.clock()) > 0:
                await asyncio.sleep(min(left, LEASE_TTL / 3))
                await self._in_io(self._renew)  # a takeover meanwhile is met at the next group
        windows = _attempt(state, await self._in_io(self.backend.windows, self.name))
        cells = stage_cells(state, windows)
        judgement = judge(spec, cells, look=1, traffic=state.traffic)
        firings = tuple(check_triggers(spec, windows, self.clock()))
        outcome = await self._in_io(lambda: self.ledger.counts(self.name, attempt=state.attempt, stage=state.stage))
        changes = after_stage(spec, state, judgement, firings, outcome)
        return self._commit(state, spec, changes) if changes else state

    async def _stage(self, spec: Spec, state: State, counts: _Counts) -> State:
        keys = await self._in_io(self._left, spec, state)
        stage = state.stage or ""
        total = len(keys)
        done = failed = 0
        results: list[tuple[Outcome, float]] = []
        errors: list[BaseException] = []
        slots = asyncio.Semaphore(self.concurrency)
        tasks: set[asyncio.Task[tuple[Outcome, float] | None]] = set()
        stop = asyncio.Event()
        moved = False
        current = state
        last_flush = self.clock()
        flushing: asyncio.Task[None] | None = None

        def finished(task: asyncio.Task[tuple[Outcome, float] | None]) -> None:
            tasks.discard(task)
            slots.release()
            if task.cancelled():
                return
            error = task.exception()
            if isinstance(error, _Stop):
                stop.set()
            elif error is not None:
                errors.append(error)
                stop.set()
            elif (result := task.result()) is not None:
                results.append(result)

        async def flush() -> None:
            nonlocal current, done, failed, last_flush, moved
            batch = results[:]
            results.clear()
            last_flush = self.clock()
            if not batch:
                return
            current, moved = await self._flush(spec, current, batch, counts)
            done += len(batch)
            failed += sum(1 for o, _ in batch if o.status in (FAILED, INVALID))
            if self.progress:
                self.progress(stage, done, total, failed)
            if moved:
                stop.set()

        for chunk in _chunked(keys):
            if stop.is_set():
                break
            contents, priors = await self._in_io(self._read, chunk)
            for key in chunk:
                await slots.acquire()
                if stop.is_set():
                    slots.release()
                    break
                task = asyncio.create_task(self._item(key, contents.get(key), priors.get(key), stage, stop))
                tasks.add(task)
                task.add_done_callback(finished)
                due = len(results) >= self.commit_every or (results and self.clock() - last_flush > 0.25)
                if due and flushing is not None and not flushing.done() and len(results) >= self.commit_every:
                    # Backpressure: a transformed item is at risk until its group is recorded (a crash loses
                    # the result, and the item is transformed again), so no more than two groups wait.
                    await flushing
                if due and (flushing is None or flushing.done()):
                    # In the background: items keep flowing while a group is recorded and written.
                    flushing = asyncio.create_task(flush())
        if flushing is not None:
            await flushing
        if stop.is_set():
            for task in list(tasks):
                task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if errors:
            raise errors[0]
        if moved:
            # A gate failed or an operator moved the migration: items finished since are not written.
            results.clear()
        else:
            await flush()
        if self.breaker.tripped:
            counts.stopped = (f"circuit breaker: {self.breaker.threshold} consecutive failed tries, then "
                              f"{self.breaker.probes} failed probes; fix the cause and run the batch again")
            fresh = self.backend.state(self.name) or current
            if working(fresh):
                fresh = self._commit(fresh, spec, [Change(PAUSED, counts.stopped, {"stage": fresh.stage})])
            return fresh
        return self.backend.state(self.name) or current

    async def _flush(self, spec: Spec, state: State, batch: list[tuple[Outcome, float]], counts: _Counts
                     ) -> tuple[State, bool]:
        if not await self._in_io(self._renew):
            counts.stopped = ("another run took the batch over while this one stalled; "
                              f"this run stopped without recording its last {len(batch)} items")
            return state, True
        outcomes = [o for o, _ in batch]
        await self._in_io(self.ledger.record, self.name, state.attempt, outcomes)
        good = {o.key: o.after for o in outcomes if o.status == TRANSFORMED}
        if good:
            renamed = {o.key: o.written_to for o in outcomes}
            await self._in_io(self.target.write, {renamed[k]: v for k, v in good.items()})
            await self._in_io(self.ledger.mark, self.name, list(good), WRITTEN)
        counts.transformed += len(outcomes)
        counts.written += len(good)
        counts.retries += sum(max(o.tries - 1, 0) for o in outcomes)
        cell = Cell()
        for outcome, seconds in batch:
            cell.calls += 1
            cell.errors += outcome.status == FAILED
            if self.validate is not None and outcome.status in (TRANSFORMED, INVALID):
                cell.compared += 1
                cell.mismatches += outcome.status == INVALID
            cell.latency.add(seconds)
        now = self.clock()
        # A window never starts before the stage was entered, so a restarted attempt (seconds after the last
        # one, in the same aligned window) is judged on its own items only.
        start = max(math.floor(now / WINDOW_SECONDS) * WINDOW_SECONDS, state.stage_entered_at or 0.0)
        window = Window(self.name, state.stage or "", CANDIDATE, start, WINDOW_SECONDS, cell)
        await self._in_io(self.backend.write_windows, [window])
        fresh = self.backend.state(self.name) or state
        if fresh.seq != state.seq and (not working(fresh) or fresh.stage != state.stage):
            return fresh, True  # an operator moved it
        windows = _attempt(fresh, await self._in_io(self.backend.windows, self.name))
        judgement = judge(spec, stage_cells(fresh, windows), look=1, traffic=fresh.traffic)
        changes = during_stage(spec, fresh, judgement, tuple(check_triggers(spec, windows, now)))
        if not changes:
            return fresh, False
        after = self._commit(fresh, spec, changes)
        return after, not working(after)

    async def _item(self, key: str, source: bytes | None, prior: bytes | None, stage: str, stop: asyncio.Event
                    ) -> tuple[Outcome, float] | None:
        """Transform and validate one item: `source` is its content, `prior` what the target holds under its
        key now (the same when the batch works in place): that is what a rollback puts back."""
        moved = None if self._in_place else self.rename(key)
        if source is None:
            return Outcome(key, stage, FAILED, prior, None, 0, "the item disappeared from the source", moved), 0.0
        tries = 0
        spent = 0.0
        while True:
            await self._breaker_allows(stop)
            tries += 1
            began = time.perf_counter()
            try:
                after = _as_bytes(await self._call(self.transform, key, source))
            except Exception as error:  # noqa: BLE001 - the user's transform may raise anything; we record it
                spent += time.perf_counter() - began
                self.breaker.failure(self.clock())
                policy = retry_for(error, self.retries)
                if tries < policy.attempts:
                    await asyncio.sleep(policy.delay(tries, self.rng))
                    continue
                return Outcome(key, stage, FAILED, prior, None, tries, _describe(error), moved), spent
            spent += time.perf_counter() - began
            self.breaker.success()
            break
        problem = await self._validated(key, source, after)
        status = INVALID if problem else TRANSFORMED
        return Outcome(key, stage, status, prior, after, tries, problem, moved), spent

    async def _breaker_allows(self, stop: asyncio.Event) -> None:
        while True:
            if self.breaker.tripped or stop.is_set():
                raise _Stop()
            now = self.clock()
            if self.breaker.allow(now):
                return
            await asyncio.sleep(min(max(self.breaker.wait(now), 0.01), 0.25))

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        if inspect.iscoroutinefunction(fn):
            return await fn(*args)
        result = await asyncio.get_running_loop().run_in_executor(self._cpu, fn, *args)
        if inspect.isawaitable(result):
            result = await result
        return result

    async def _validated(self, key: str, before: bytes, after: bytes) -> str | None:
        if self.validate is None:
            return None
        try:
            verdict = await self._call(self.validate, key, before, after)
        except Exception as error:  # noqa: BLE001 - a validator that raises refuses the item, with its reason
            return _describe(error)
        if verdict is None or verdict is True:
            return None
        if verdict is False:
            return "the validator refused the item"
        return str(verdict)

    # -- recovery and restore ----------------------------------------------------------------------

    async def _rewrite(self, records: Sequence[ItemRecord]) -> int:
        """Write the recorded new content of items snapshotted before a crash (no transform again)."""
        for chunk in _chunked(list(records)):
            contents = await self._in_io(self.ledger.contents, [r.after for r in chunk if r.after])
            await self._in_io(self.target.write, {r.written_to: contents[r.after] for r in chunk if r.after})
            await self._in_io(self.ledger.mark, self.name, [r.key for r in chunk], WRITTEN)
        return len(records)

    async def _restore(self, state: State, spec: Spec, records: Sequence[ItemRecord]) -> int:
        """Put every given item back as it was before the batch touched it (absent items are removed)."""
        if not records:
            return 0
        began = self.clock()
        for chunk in _chunked(list(records)):
            contents = await self._in_io(self.ledger.contents, [r.before for r in chunk if r.before])
            await self._in_io(self.target.write, {r.written_to: contents[r.before] if r.existed and r.before
                                                  else None
                                                  for r in chunk})
            await self._in_io(self.ledger.mark, self.name, [r.key for r in chunk], RESTORED)
        seconds = self.clock() - began
        fresh = self.backend.state(self.name) or state
        self._commit(fresh, spec, [Change(BATCH_RESTORED, f"restored {len(records)} items as they were before "
                                          "the batch", {"items": len(records), "seconds": round(seconds, 3)})])
        return len(records)

    def _failures(self, state: State) -> tuple[FailedItem, ...]:
        records = self.ledger.items(self.name, statuses=[FAILED, INVALID])
        return tuple(FailedItem(r.key, r.status, r.error or "", r.tries)
                     for r in sorted(records.values(), key=lambda r: r.key) if r.attempt == state.attempt)

    # -- dry run -----------------------------------------------------------------------------------

    async def _dry_run(self, spec: Spec, state: State, counts: _Counts) -> None:
        """Transform and validate every item; write nothing, record nothing."""
        keys = list(self.source.keys())
        slots = asyncio.Semaphore(self.concurrency)
        stop = asyncio.Event()
        stage = state.stage or spec.stages[0].name

        async def one(key: str, before: bytes | None) -> None:
            async with slots:
                result = await self._item(key, before, before, stage, stop)
            if result is None:
                return
            outcome, _ = result
            counts.transformed += 1
            counts.retries += max(outcome.tries - 1, 0)
            if outcome.status in (FAILED, INVALID):
                counts.dry_failures.append(FailedItem(key, outcome.status, outcome.error or "", outcome.tries))
            if self.progress:
                self.progress("dry-run", counts.transformed, len(keys), len(counts.dry_failures))

        for chunk in _chunked(keys):
            befores = await self._in_io(self.source.read, chunk)
            await asyncio.gather(*(one(k, befores.get(k)) for k in chunk), return_exceptions=False)
        counts.dry_failures.sort(key=lambda f: f.key)


def _dead_here(holder: str) -> bool:
    """Whether a lease holder is a batch run of this host whose process no longer exists."""
    kind, _, rest = holder.partition(":")
    host, _, rest = rest.partition(":")
    pid, _, _ = rest.partition(":")
    if kind != "batch-run" or host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False  # it exists, under another user
    return False


def _chunked(items: list[T], size: int = _READ_CHUNK) -> Iterable[list[T]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _as_bytes(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    raise TypeError(f"the transform returned {type(value).__name__}, not bytes or str (encode the new content, "
                    "or wrap a function of dicts with crossfade.batch.json_transform)")


def _describe(error: BaseException) -> str:
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _attempt(state: State, windows: list[Window]) -> list[Window]:
    """The windows of the stage as this attempt entered it (its windows start at the entry or later)."""
    entered = state.stage_entered_at or 0.0
    return [w for w in windows if w.start >= entered]
