"""Shadow runs off the request path, the comparison of their answers field by field, and noise cancellation."""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import heapq
import math
import numbers
import queue
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

ROOT: Final = "$"
ERROR_PATH: Final = "$error"
"""The field path of an answer that is an exception on one side, or different exceptions on both."""
WRITE_PATH: Final = "$write"
"""The field path of a dual write whose non-authoritative side failed."""
TOTALS: Final = ""
"""The path of the row that counts every comparison of a window, and the shadow runs' fates."""

MAX_DIFFERENCES: Final = 50  # per comparison: a huge answer that differs everywhere must not cost without bound
_SHOWN: Final = 500  # characters of a value kept in an example


# --- answers and differences ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one side answered: a value, or the exception it raised. Immutable."""

    value: Any = None
    error: BaseException | None = None


def call(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Outcome:
    """Call `fn` and keep what it answered or raised."""
    try:
        return Outcome(fn(*args, **kwargs))
    except Exception as exc:
        return Outcome(error=exc)


@dataclass(frozen=True, slots=True)
class Difference:
    """One field where the answers differ: its path with list positions as `[*]`, where exactly, both values."""

    path: str
    where: str
    legacy: Any
    candidate: Any

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able form, values shortened."""
        return {"path": self.path, "where": self.where, "legacy": shown(self.legacy), "candidate": shown(self.candidate)}


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


MISSING: Final = _Missing()
"""The value of a field one answer has and the other lacks."""


def shown(value: Any) -> Any:
    """A JSON-able, bounded rendering of a value for an example."""
    if value is None or isinstance(value, bool | int | str):
        return value if not isinstance(value, str) or len(value) <= _SHOWN else value[:_SHOWN] + "..."
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, BaseException):
        return f"{type(value).__name__}: {value}"[:_SHOWN]
    text = repr(value)
    return text if len(text) <= _SHOWN else text[:_SHOWN] + "..."


# --- paths -------------------------------------------------------------------------------------------

_TOKEN = re.compile(r"\.(\*|[A-Za-z_][\w-]*)|\[(\*|-?\d+)\]|\[['\"]([^'\"]*)['\"]\]")
_ANY: Final = object()


def compile_path(text: str) -> tuple[Any, ...]:
    """The steps of a path in the JSONPath subset `ignore=` takes: `$`, `.name`, `['name']`, `[3]`, `[*]`, `.*`.

    Raises ValueError naming the part it cannot read.
    """
    if not text.startswith(ROOT):
        raise ValueError(f"path {text!r} must start with $, e.g. $.items[*].etag")
    steps: list[Any] = []
    at = 1
    while at < len(text):
        match = _TOKEN.match(text, at)
        if match is None:
            raise ValueError(f"cannot read path {text!r} at {text[at:]!r}; write e.g. $.items[*].etag or $['a key']")
        name, index, quoted = match.groups()
        if name is not None:
            steps.append(_ANY if name == "*" else name)
        elif index is not None:
            steps.append(_ANY if index == "*" else int(index))
        else:
            steps.append(quoted)
        at = match.end()
    return tuple(steps)


def plain(value: Any, depth: int = 0) -> Any:
    """A tree of dicts, lists and leaves: pydantic models via `model_dump`, dataclasses field by field."""
    if depth > 64:  # a cycle or an absurdly deep answer: compare what is left as a leaf
        return value
    if isinstance(value, dict | Mapping):
        return {str(k): plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v, depth + 1) for v in value]
    dump = getattr(value, "model_dump", None)
    if callable(dump) and not isinstance(value, type):
        return plain(dump(), depth + 1)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name), depth + 1) for f in dataclasses.fields(value)}
    return value


def _drop(tree: Any, steps: Sequence[Any]) -> None:
    """Remove what `steps` names from a plain tree, in place; a list keeps its length (the item becomes MISSING
    on both sides alike), so positions after it still line up."""
    if not steps:
        return
    step, rest = steps[0], steps[1:]
    if isinstance(tree, dict):
        keys = list(tree) if step is _ANY else [step] if step in tree else []
        for key in keys:
            if rest:
                _drop(tree[key], rest)
            else:
                del tree[key]
    elif isinstance(tree, list):
        if step is _ANY:
            indexes: Iterable[int] = range(len(tree))
        elif isinstance(step, int) and -len(tree) <= step < len(tree):
            indexes = [step % len(tree)]
        else:
            indexes = []
        for i in indexes:
            if rest:
                _drop(tree[i], rest)
            else:
                tree[i] = MISSING


def _same(a: Any, b: Any) -> bool:
    if a is b:
        return True
    try:
        if a == b:
            return True
    except Exception:  # a leaf whose __eq__ raises: different unless it is the very same object
        return False
    return isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)


def diff(legacy: Any, candidate: Any) -> list[Difference]:
    """Where two plain trees differ, leaf by leaf, at most MAX_DIFFERENCES of them."""
    found: list[Difference] = []
    _walk(legacy, candidate, ROOT, ROOT, found)
    return found


def _walk(a: Any, b: Any, path: str, where: str, found: list[Difference]) -> None:
    if len(found) >= MAX_DIFFERENCES:
        return
    if isinstance(a, dict) and isinstance(b, dict):
        for key in [*a, *(k for k in b if k not in a)]:
            step = f".{key}" if re.fullmatch(r"[A-Za-z_][\w-]*", key) else f"[{key!r}]"
            _walk(a.get(key, MISSING), b.get(key, MISSING), path + step, where + step, found)
    elif isinstance(a, list) and isinstance(b, list):
        for i in range(max(len(a), len(b))):
            _walk(a[i] if i < len(a) else MISSING, b[i] if i < len(b) else MISSING, path + "[*]",
                  f"{where}[{i}]", found)
    elif not _same(a, b):
        found.append(Difference(path, where, a, b))


# --- comparators ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Options:
    """How a call site's answers are compared and shown, and whether it writes (then it is never shadowed).

    `compare(legacy, candidate) -> bool` replaces field-by-field equality; `ignore` lists paths left out;
    `clean(answer)` normalises each answer first; `compare_errors(legacy_exc, candidate_exc) -> bool`
    replaces "same type and message"; `redact(example) -> example` runs on an example before it is kept.
    `cost(answer) -> float` is the cost of a call from its answer (tokens, dollars), recorded for every
    answered call of either arm, served or shadowed, for the cost gate. `metrics(answer) -> {name: value}`
    records custom metrics from an answer the same way (`{"tokens": 812}`); `compare` may return a score in
    [0, 1] instead of a bool (a graded comparison, recorded as the candidate's `similarity`).
    """

    compare: Callable[[Any, Any], bool | float] | None = None
    ignore: tuple[str, ...] = ()
    clean: Callable[[Any], Any] | None = None
    compare_errors: Callable[[BaseException, BaseException], bool] | None = None
    redact: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    writes: bool = False
    cost: Callable[[Any], float] | None = None
    metrics: Callable[[Any], Mapping[str, float]] | None = None

    def __post_init__(self) -> None:
        for path in self.ignore:
            compile_path(path)  # a bad path is the caller's mistake: say so where the handle is made


def graded(judged: object) -> float | None:
    """The score a graded comparator returned (a number in [0, 1]), or None for a bool (or any other truth value).

    A number outside [0, 1] is the comparator's bug: ValueError, which the shadow runner counts.
    """
    if isinstance(judged, bool) or not isinstance(judged, numbers.Real):
        return None
    score = float(judged)
    if not 0.0 <= score <= 1.0:  # NaN fails this too
        raise ValueError(f"compare= returned {judged!r}; a graded comparator returns a score between 0 and 1 "
                         "(1 for the same answer), or True/False")
    return score


class Comparator:
    """Compares legacy's and the candidate's outcomes under one set of Options."""

    __slots__ = ("options", "_ignore")

    def __init__(self, options: Options) -> None:
        self.options = options
        self._ignore = [compile_path(p) for p in options.ignore]

    def differences(self, legacy: Outcome, candidate: Outcome) -> list[Difference]:
        """Where the two outcomes differ; empty when they are equal."""
        return self.scored(legacy, candidate)[0]

    def scored(self, legacy: Outcome, candidate: Outcome, mismatch_below: float = 0.5
               ) -> tuple[list[Difference], float | None]:
        """Where the two outcomes differ, and the score of a graded `compare` (None for a bool or no compare):
        a score below `mismatch_below` is a difference at the root."""
        a, b = legacy.error, candidate.error
        if a is not None or b is not None:
            if a is not None and b is not None and self._same_error(a, b):
                return [], None
            return [Difference(ERROR_PATH, ERROR_PATH, a if a is not None else legacy.value,
                               b if b is not None else candidate.value)], None
        left, right = legacy.value, candidate.value
        clean = self.options.clean
        if clean is not None:
            left, right = clean(left), clean(right)
        compare = self.options.compare
        if compare is not None:
            judged = compare(left, right)
            score = graded(judged)
            same = bool(judged) if score is None else score >= mismatch_below
            return ([] if same else [Difference(ROOT, ROOT, left, right)]), score
        if not self._ignore and _same(left, right):
            return [], None
        left, right = plain(left), plain(right)
        for steps in self._ignore:
            _drop(left, steps)
            _drop(right, steps)
        return diff(left, right), None

    def _same_error(self, a: BaseException, b: BaseException) -> bool:
        custom = self.options.compare_errors
        if custom is not None:
            return bool(custom(a, b))
        return type(a) is type(b) and str(a) == str(b)


# --- noise cancellation ----------------------------------------------------------------------------------

MISMATCH: Final = "mismatch"
NOISE: Final = "noise"


def verdict(compared: int, differing: int, noise_compared: int, noise_differing: int, *,
            relative: float = 0.2, absolute: float = 0.0003) -> str:
    """Whether a field's differences are a real mismatch or noise (Diffy's method).

    The raw rate (legacy vs candidate) is set against the noise rate (legacy vs legacy): a mismatch needs
    raw > noise, |raw - noise| / (raw + noise) > `relative` and |raw - noise| > `absolute`. Without any
    noise sample there is nothing to cancel, and every difference is a mismatch.
    """
    if not differing or not compared:
        return NOISE
    raw = differing / compared
    if not noise_compared:
        return MISMATCH
    noise = noise_differing / noise_compared
    gap = raw - noise
    if gap > 0 and gap / (raw + noise) > relative and gap > absolute:
        return MISMATCH
    return NOISE


# --- what the backend stores -------------------------------------------------------------------------------

COUNTERS: Final = (
    "compared", "differing", "noise_compared", "noise_differing",
    "dropped", "timeouts", "errors", "refused", "dual_writes", "divergent",
)  # fmt: skip
"""The counters of a FieldWindow. On a field's row only the first four are used; the TOTALS row has all."""


@dataclass(frozen=True, slots=True)
class FieldWindow:
    """Comparison counts of one field path of one stage over one aligned window; rows add up. Immutable.

    `compared` / `differing` are legacy-vs-candidate comparisons and those where this field differed;
    `noise_*` the same for legacy-vs-legacy. The TOTALS row (path "") also counts the shadow runs that were
    dropped (pool full), timed out, failed inside crossfade, refused (writes=True), and dual writes.
    """

    migration: str
    stage: str
    path: str
    start: float
    length: float
    counts: Mapping[str, int]

    def __getitem__(self, name: str) -> int:
        return self.counts.get(name, 0)


@dataclass(frozen=True, slots=True)
class Example:
    """One mismatch kept for people to look at: the arguments, both answers and the diff, after `redact`."""

    migration: str
    stage: str
    path: str
    time: float
    detail: Mapping[str, Any]


def add_counts(into: dict[str, int], more: Mapping[str, int]) -> None:
    """Add one set of counters into another."""
    for name, value in more.items():
        into[name] = into.get(name, 0) + value


MAX_HELD: Final = 1000
"""Distinct sets of differing fields held per stage while its noise rate is unknown; further sets are unjudged."""


class ComparisonLog:
    """One process's comparison counts by window, the stage totals they add to, and the newest examples.

    A stage's totals are the backend's (every process's flushed windows, as last read by `share`) plus this
    process's counts not yet written: rows add up, so the merge is exact. While a stage samples noise and
    has fewer than `noise_samples` legacy-vs-legacy samples, its comparisons are held (as counts per set of
    differing fields, so memory is bounded) and judged together once the noise rate is known.

    Written from shadow workers and event loops, so every method takes the lock; none runs on the request
    path. `collect` hands closed windows to the client's flusher, like the telemetry Recorder.
    """

    def __init__(self, window: float = 10.0, *, grace: float = 1.0, clock: Callable[[], float] = time.time) -> None:
        self.window = window
        self.grace = grace
        self._clock = clock
        self.reset()

    def count(self, migration: str, stage: str, name: str, amount: int = 1, path: str = TOTALS) -> None:
        """Add to one counter of the current window (and the stage's totals)."""
        with self._lock:
            self._add(migration, stage, {path: {name: amount}})

    def record(self, migration: str, stage: str, differences: Sequence[Difference],
               noise: Sequence[Difference] | None, *, relative: float, absolute: float,
               noise_samples: int | None = None) -> tuple[int, int]:
        """Count one comparison (and its noise sample, if taken); returns the comparisons judged now and how
        many of them are mismatches, for the mismatch gate.

        A comparison is a mismatch when a field it differs in is judged one on the stage's totals. Without
        noise sampling (`noise_samples` None) it is judged at once: (1, 0) or (1, 1). With it, it is held
        until the stage has `noise_samples` noise samples, then judged with every comparison held before.
        """
        changes: dict[str, dict[str, int]] = {TOTALS: {"compared": 1}}
        paths = frozenset(d.path for d in differences)
        if paths:
            changes[TOTALS]["differing"] = 1
        for path in paths:
            changes[path] = {"differing": 1}
        if noise is not None:
            changes[TOTALS]["noise_compared"] = 1
            noise_paths = {d.path for d in noise}
            if noise_paths:
                changes[TOTALS]["noise_differing"] = 1
            for path in noise_paths:
                changes.setdefault(path, {})["noise_differing"] = 1
        with self._lock:
            self._add(migration, stage, changes)
            if noise_samples is None:
                return 1, int(any(self._verdict(migration, stage, p, relative, absolute) == MISMATCH for p in paths))
            self._active.add((migration, stage))
            held = self._held.setdefault((migration, stage), {})
            if paths in held or len(held) < MAX_HELD:
                held[paths] = held.get(paths, 0) + 1
            else:
                self.unjudged += 1
            return self._judge_held(migration, stage, noise_samples, relative, absolute)

    def resolve(self, migration: str, stage: str, *, noise_samples: int, relative: float,
                absolute: float) -> tuple[int, int]:
        """Judge the stage's held comparisons if its noise rate is known now: (judged, mismatches)."""
        with self._lock:
            return self._judge_held(migration, stage, noise_samples, relative, absolute)

    def held(self) -> dict[tuple[str, str], int]:
        """How many comparisons wait for their stage's noise rate, per (migration, stage)."""
        with self._lock:
            return {key: sum(sets.values()) for key, sets in self._held.items() if sets}

    def to_share(self, *, waiting_only: bool = False) -> list[tuple[str, str]]:
        """The stages whose totals should be read from the backend now: those holding comparisons, and
        (unless `waiting_only`) those that recorded noise-sampled comparisons since the last read."""
        with self._lock:
            stages = {key for key, sets in self._held.items() if sets}
            if not waiting_only:
                stages |= self._active
                self._active = set()
            return sorted(stages)

    def share(self, migration: str, stage: str, rows: Iterable[FieldWindow]) -> None:
        """Take the backend's totals of a stage (every process's written rows, summed per field)."""
        totals: dict[str, dict[str, int]] = {}
        for row in rows:
            if row.stage == stage:
                add_counts(totals.setdefault(row.path, {}), row.counts)
        with self._lock:
            self._shared[(migration, stage)] = totals

    def written(self, rows: Sequence[FieldWindow]) -> None:
        """Rows the backend now holds (or that are given up): they leave this process's unwritten counts."""
        with self._lock:
            for row in rows:
                key = (row.migration, row.stage, row.path)
                left = self._unwritten.get(key)
                if left is None:
                    continue
                for name, value in row.counts.items():
                    left[name] = left.get(name, 0) - value
                if not any(left.values()):
                    del self._unwritten[key]

    def totals(self, migration: str, stage: str, path: str = TOTALS) -> dict[str, int]:
        """The counts of one field of a stage over every process, as far as this one knows them."""
        with self._lock:
            return self._total(migration, stage, path)

    def _total(self, migration: str, stage: str, path: str) -> dict[str, int]:
        counts = dict(self._shared.get((migration, stage), {}).get(path, {}))
        add_counts(counts, self._unwritten.get((migration, stage, path), {}))
        return counts

    def _verdict(self, migration: str, stage: str, path: str, relative: float, absolute: float) -> str:
        totals = self._total(migration, stage, TOTALS)
        field = self._total(migration, stage, path)
        return verdict(totals.get("compared", 0), field.get("differing", 0), totals.get("noise_compared", 0),
                       field.get("noise_differing", 0), relative=relative, absolute=absolute)

    def _judge_held(self, migration: str, stage: str, noise_samples: int, relative: float,
                    absolute: float) -> tuple[int, int]:
        held = self._held.get((migration, stage))
        if not held or self._total(migration, stage, TOTALS).get("noise_compared", 0) < noise_samples:
            return 0, 0
        del self._held[(migration, stage)]
        verdicts: dict[str, str] = {}
        judged = mismatches = 0
        for paths, n in held.items():
            judged += n
            for path in paths:
                if path not in verdicts:
                    verdicts[path] = self._verdict(migration, stage, path, relative, absolute)
                if verdicts[path] == MISMATCH:
                    mismatches += n
                    break
        return judged, mismatches

    def _add(self, migration: str, stage: str, changes: Mapping[str, Mapping[str, int]]) -> None:
        index = int(self._clock() // self.window)
        for path, counts in changes.items():
            add_counts(self._windows.setdefault((index, migration, stage, path), {}), counts)
            add_counts(self._unwritten.setdefault((migration, stage, path), {}), counts)

    def keep(self, example: Example, limit: int) -> None:
        """Keep an example; only the newest `limit` per migration and field wait for the flusher."""
        if limit <= 0:
            return
        with self._lock:
            kept = self._examples.get((example.migration, example.path))
            if kept is None or kept.maxlen != limit:
                kept = self._examples[(example.migration, example.path)] = deque(kept or (), maxlen=limit)
            kept.append(example)

    def among_lowest(self, migration: str, stage: str, score: float, limit: int) -> bool:
        """Whether a graded comparison's score is among the `limit` lowest this process has seen in the stage
        (and now counted as one of them): its example is worth keeping though it passed."""
        if limit <= 0:
            return False
        with self._lock:
            lowest = self._lowest.setdefault((migration, stage), [])  # a max-heap of the scores, negated
            if len(lowest) < limit:
                heapq.heappush(lowest, -score)
                return True
            if score < -lowest[0]:
                heapq.heapreplace(lowest, -score)
                return True
            return False

    def collect(self, *, everything: bool = False) -> tuple[list[FieldWindow], list[Example]]:
        """Take the closed windows (all with `everything`) and every waiting example."""
        cutoff = math.inf if everything else (self._clock() - self.grace) // self.window
        with self._lock:
            closed = [key for key in self._windows if key[0] + 1 <= cutoff]
            rows = [
                FieldWindow(m, s, p, i * self.window, self.window, self._windows.pop((i, m, s, p)))
                for i, m, s, p in sorted(closed)
            ]
            examples = [e for kept in self._examples.values() for e in kept]
            self._examples.clear()
        return rows, examples

    def give_back(self, rows: Sequence[FieldWindow], examples: Sequence[Example]) -> None:
        """Put rows and examples a failed flush could not write back, to be tried again."""
        with self._lock:
            for row in rows:
                key = (round(row.start / row.length), row.migration, row.stage, row.path)
                add_counts(self._windows.setdefault(key, {}), row.counts)
            for example in examples:
                kept = self._examples.setdefault((example.migration, example.path), deque(maxlen=None))
                kept.appendleft(example)

    def reset(self) -> None:
        """Forget everything (in a forked child: the parent's counts are the parent's to send)."""
        self._lock = threading.Lock()
        self._windows: dict[tuple[int, str, str, str], dict[str, int]] = {}
        self._unwritten: dict[tuple[str, str, str], dict[str, int]] = {}
        self._shared: dict[tuple[str, str], dict[str, dict[str, int]]] = {}
        self._held: dict[tuple[str, str], dict[frozenset[str], int]] = {}
        self._active: set[tuple[str, str]] = set()
        self._examples: dict[tuple[str, str], deque[Example]] = {}
        self._lowest: dict[tuple[str, str], list[float]] = {}
        self.unjudged = 0  # comparisons held past MAX_HELD distinct field sets: never judged, counted


# --- the runner ------------------------------------------------------------------------------------------


def _meet(barrier: threading.Barrier) -> None:
    """A worker's part in `ShadowRunner.wait`: meet the caller; a caller that gave up has broken the barrier."""
    try:
        barrier.wait()
    except threading.BrokenBarrierError:
        pass


class ShadowRunner:
    """Runs shadow work off the request path, bounded: threads for sync call sites, tasks for async ones.

    Sync work goes to `threads` workers through a queue of at most `max_pending` waiting runs; async work
    becomes a task on the caller's running loop, at most `max_pending` at a time. Beyond those bounds a run
    is refused (the caller counts it as dropped), never queued. Handing a run over costs a queue put.
    A synchronous function cannot be interrupted: a run past `timeout` is claimed as timed out by `sweep`
    (called from the client's background thread) or when it returns, whichever comes first, exactly once;
    `on_hang` is then called with the run's arguments (the payload `submit` was given).
    """

    def __init__(self, *, threads: int, max_pending: int, timeout: float, name: str = "shadow",
                 on_hang: Callable[..., None] | None = None) -> None:
        self.threads = threads
        self.max_pending = max_pending
        self.timeout = timeout
        self.name = name
        self.closed = False
        self.failures = 0  # work that raised inside crossfade itself; never the application's concern
        self._on_hang = on_hang
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        # The hand-off, as `submit` does it and the request path inlines it: `qsize() < room`, `put` of one
        # tuple `(work, context, *arguments)` (a worker calls `work(*arguments, slot)` in `context`), then
        # `hire()` while `hiring`. `room` drops to 0 when the runner closes, so nothing more is taken.
        self.room = max_pending
        self.qsize = self._queue.qsize
        self.put = self._queue.put
        self.hiring = True
        self._workers: list[threading.Thread] = []
        self._running: list[list[Any] | None] = [None] * threads
        self._tasks: set[asyncio.Task[Any]] = set()
        self._lock = threading.Lock()

    def submit(self, work: Callable[[Any, list[Any]], None], payload: Any) -> bool:
        """Hand `work(payload, slot)` to a worker; False (nothing queued) when closed or full."""
        if self.qsize() >= self.room:
            return False
        self.put((work, contextvars.copy_context(), payload))
        if self.hiring:
            self.hire()
        return True

    def hire(self) -> None:
        """Start a worker if one is missing: one at a time, as work waits for them, so the request path
        never starts many at once."""
        if len(self._workers) < self.threads and (not self._workers or self._queue.qsize() > 0):
            self._start()

    def submit_async(self, work: Callable[[Any], Coroutine[Any, Any, None]], payload: Any) -> bool:
        """Start `work(payload)` as a task on the running loop; False when closed or full."""
        tasks = self._tasks
        if self.closed or len(tasks) >= self.max_pending:
            return False
        task = asyncio.get_running_loop().create_task(work(payload))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        return True

    def _start(self) -> None:
        with self._lock:
            if len(self._workers) >= self.threads or self.closed:
                return
            index = len(self._workers)
            worker = threading.Thread(target=self._work, args=(index,), name=f"crossfade-{self.name}-{index}",
                                      daemon=True)
            worker.start()
            self._workers.append(worker)
            self.hiring = len(self._workers) < self.threads

    def wait(self, timeout: float) -> bool:
        """Wait until every sync run handed over before the call has finished; False if `timeout` passed
        first (a run still going, or one that hangs). Async runs are tasks: see `wait_tasks`.

        Every worker is hired, then each takes one marker from the queue, behind the runs put before it, and
        meets the caller at a barrier: when all have met, none of those runs is waiting or under way."""
        if self.closed:
            return self.pending == 0
        while len(self._workers) < self.threads and not self.closed:
            self._start()
        workers = len(self._workers)
        if not workers:
            return True
        barrier = threading.Barrier(workers + 1)
        for _ in range(workers):
            self.put((_meet, None, barrier))
        try:
            barrier.wait(max(timeout, 0.0))
        except threading.BrokenBarrierError:
            barrier.abort()  # the workers that met go back to work; markers still queued pass through
            return False
        return True

    async def wait_tasks(self, timeout: float) -> bool:
        """Wait until the async runs started on the running loop have finished; False if `timeout` passed."""
        loop = asyncio.get_running_loop()
        mine = [t for t in self._tasks if t.get_loop() is loop]
        if not mine:
            return True
        _, running = await asyncio.wait(mine, timeout=max(timeout, 0.0))
        return not running

    def _work(self, index: int) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if item[0] is _meet:
                _meet(item[2])
                continue
            slot = [time.monotonic(), False, item]
            self._running[index] = slot
            try:
                item[1].run(item[0], *item[2:], slot)
            except Exception:
                self.failures += 1
            finally:
                self._running[index] = None

    def claim_timeout(self, slot: list[Any]) -> bool:
        """Mark a run as timed out; True only for the first claim, so a run is counted once."""
        with self._lock:
            if slot[1]:
                return False
            slot[1] = True
            return True

    def sweep(self) -> int:
        """Claim the sync runs past their timeout (they are counted now, not when they return)."""
        now = time.monotonic()
        hung = 0
        for slot in list(self._running):
            if slot is not None and now - slot[0] > self.timeout and self.claim_timeout(slot):
                hung += 1
                if self._on_hang is not None:
                    self._on_hang(*slot[2][2:])
        return hung

    @property
    def pending(self) -> int:
        """Runs waiting or under way."""
        return self._queue.qsize() + sum(s is not None for s in self._running) + len(self._tasks)

    def close(self, drain: float | None = None) -> int:
        """Stop taking runs, cancel waiting ones, cancel tasks, and wait up to `drain` seconds (default:
        the timeout) for runs under way. Returns how many waiting runs were cancelled."""
        self.closed = True
        self.room = 0
        cancelled = 0
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            cancelled += item is not None
        for task in list(self._tasks):
            loop = task.get_loop()
            if loop.is_closed():
                continue
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is loop:
                task.cancel()
            else:
                loop.call_soon_threadsafe(task.cancel)
        for _ in self._workers:
            self._queue.put(None)
        deadline = time.monotonic() + (self.timeout if drain is None else drain)
        for worker in self._workers:
            if worker is not threading.current_thread():
                worker.join(max(0.0, deadline - time.monotonic()))
        return cancelled

    async def aclose(self) -> None:
        """`close`, then wait until the tasks of the running loop have finished their cancellation."""
        loop = asyncio.get_running_loop()
        mine = [t for t in self._tasks if t.get_loop() is loop]
        self.close(drain=0.0)
        if mine:
            await asyncio.gather(*mine, return_exceptions=True)
