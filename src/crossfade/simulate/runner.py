"""Simulation: a virtual clock and synthetic traffic driven through the real SDK and controller, hours in seconds.

`simulate(spec, workload, seed=...)` applies the spec to a temporary backend, starts it, and steps virtual time
one analysis interval at a time: synthetic calls for the interval are recorded through the SDK's recorder,
flushed, and `ControllerLoop.tick()` (the loop production runs) judges and acts; routing is refreshed after
every change, approvals are granted by the `approve` policy (actor "simulation"), and an optional outside
judge (`rollback_when`) may roll the migration back through the SDK. The result is the outcome, the event log
and a timeline.

Two ways to make traffic, chosen by `Workload.mode` ("auto" picks by the expected number of calls, and always
aggregate for a spec with shadow stages):

- "calls": every call is a real `mig.run(key, legacy, candidate)`: bucketing, fallback, timing and recording
  are the SDK's own; the arm functions advance the virtual clock by their latency and raise their errors.
  About 5 us per call, so 200 rps for ten simulated hours (7.2M calls) would take most of a minute.
- "aggregate": per interval and arm, the calls are drawn in aggregate into the recorder's real cells
  (`client.recorder.cell(...)`): the number of calls (Poisson), the candidate's share as the real routing
  table gives it (its threshold, or for a keyed population the popularity of the keys `decide` sends to the
  candidate), errors and timeouts (binomial), latency counts per sketch bucket (multinomial over each bucket's
  probability mass) and the cost sum and sum of squares (bivariate normal, exact moments). Cost per interval
  is independent of the call rate: a run takes 0.1-0.5 s, so `--runs 200` takes about a minute on 2 cores
  (`simulate_many` spreads runs over processes). Binomials are exact below a mean of 30 and normal above.

The temporary backend is SQLite in memory for events, states, specs and leases, with the telemetry windows
kept in memory and the windows older than the longest trigger window rolled up into one per arm: the
controller re-reads a stage's windows at every look, which in SQL costs 150 us a row and made a 4-hour stage
quadratic (tens of seconds a run). The controller sees the same merged numbers either way.

Shadow runs are drawn in aggregate as the SDK records them (calls, errors, latency and, for the answered
ones, cost of the arm that ran, as a handle with `cost=` records it), and each is compared with the served
answer: the candidate's `mismatch=` share of them differ (the mismatch gate's data). In "calls" mode the SDK's
shadow workers run on their own threads, which virtual time does not drive, so a spec with shadow stages is
simulated in aggregate. Not modelled: per-key differences in behaviour, and calls overlapping in time.

Time does not cost what it simulates: after a stage's first 20 intervals the controller looks when the stage's
age has grown by 5% (and at every hold's end, `max_stage_time` and fault edge), the calls of the skipped
intervals drawn at once, so a week-long hold at 0.06 calls/s takes about as many looks as an hour-long one.
"""

from __future__ import annotations

import concurrent.futures
import json
import difflib
import math
import multiprocessing
import os
import random
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from statistics import NormalDist
from typing import Any, Final

from crossfade.backends.base import ConflictError
from crossfade.backends.sql import SQLBackend
from crossfade.canonical import canonical_json
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
    RUNNING,
    ROLLED_BACK,
    ROLLED_BACK_STATUS,
    STEPPED_BACK,
    VERDICT,
    Event,
    State,
)
from crossfade.loop import ControllerLoop
from crossfade.spec.metrics import SIMILARITY
from crossfade.migration import CandidateTimeout, sketched_metrics
from crossfade.routing import BUCKETS, CANDIDATE, LEGACY, SERVING_STATUSES, bucket, threshold
from crossfade.sketch import MIN_VALUE, Sketch
from crossfade.spec import (
    Spec,
    format_duration,
    load_spec,
    parse_duration,
    parse_percent,
)
from crossfade.metrics.telemetry import TelemetrySource
from crossfade.stagedata import WINDOW_MARGIN
from crossfade.telemetry import MAX_METRIC_VALUE, Cell, Tally, Window, cell_key, merge_windows, valid_metric_name

__all__ = [
    "OUTCOMES",
    "Arm",
    "Fault",
    "Latency",
    "SimResult",
    "StageShare",
    "SimTick",
    "TimelineEntry",
    "VirtualClock",
    "Workload",
    "WorkloadError",
    "default_until",
    "key_shares",
    "median",
    "outcome_counts",
    "parse_arm",
    "parse_fault",
    "simulate",
    "simulate_many",
    "wilson",
]

# Outcomes, as `--json` counts them.
OUTCOMES: Final = ("completed", "rolled_back", "paused", "running")

# A fixed, day-aligned epoch (2026-01-01 UTC): windows and looks line up, and runs are reproducible.
EPOCH: Final = 1_767_225_600.0
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
# Cost per call varies (tokens differ call to call): lognormal with this shape around the mean given.
COST_SIGMA: Final = 0.5
_NORMAL: Final = NormalDist()
_LOG_GAMMA: Final = math.log(Sketch.value_of(1) / Sketch.value_of(0))  # the sketch's bucket growth


class WorkloadError(ValueError):
    """A workload description that cannot be read; the message names the part that is wrong."""


# -- workload model ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Latency:
    """A call-latency distribution: lognormal with this median (seconds) and shape; sigma 0 is a constant."""

    median: float
    sigma: float = 0.0

    def scaled(self, factor: float) -> Latency:
        """The same shape with every quantile multiplied by `factor`."""
        return Latency(self.median * factor, self.sigma)

    def quantile(self, q: float) -> float:
        """The q-quantile in seconds."""
        return self.median if self.sigma == 0 else self.median * math.exp(self.sigma * _NORMAL.inv_cdf(q))

    def sample(self, rng: random.Random) -> float:
        """One call's latency."""
        return self.median if self.sigma == 0 else self.median * math.exp(self.sigma * rng.gauss(0.0, 1.0))

    def describe(self) -> str:
        """As the arm language writes it."""
        if self.sigma == 0:
            return f"const({format_duration(self.median)})"
        return f"lognormal({format_duration(self.median)},{self.sigma:g})"


@dataclass(frozen=True, slots=True)
class CustomValue:
    """A custom metric an arm records: with `per_call` (written as a percentage, `lost=0.8%`) the metric is
    recorded as 1 on that share of calls; otherwise (a number, `tokens=800`) every call records `value`."""

    name: str
    value: float
    per_call: bool

    def describe(self) -> str:
        """As the arm language writes it."""
        return f"{self.name}={self.value * 100:g}%" if self.per_call else f"{self.name}={self.value:g}"

    def add_to(self, rng: random.Random, count: int, cell: Cell, sketched: bool) -> None:
        """Record `count` calls' values into a cell, drawn as the SDK would have recorded them."""
        events = _binomial(rng, count, self.value) if self.per_call else count
        if events <= 0:
            return
        value = 1.0 if self.per_call else self.value
        tally = cell.metrics.get(self.name)
        if tally is None:
            tally = cell.metrics[self.name] = Tally()
        tally.count += events
        tally.total += events * value
        tally.squares += events * value * value
        if sketched:
            sketch = tally.sketch = tally.sketch or Sketch()
            if value > MIN_VALUE:
                _add_latency(sketch, math.ceil(math.log(min(value, MAX_METRIC_VALUE)) / _LOG_GAMMA), events)
            else:
                sketch.zeros += events
                sketch.count += events


@dataclass(frozen=True, slots=True)
class Arm:
    """How one side answers: its error rate, its latency distribution, its mean cost per call, and (the
    candidate's) the share of its answers that differ from legacy's when a shadow run compares them."""

    errors: float
    latency: Latency
    cost: float
    cost_sigma: float = COST_SIGMA
    mismatch: float = 0.0
    metrics: tuple[CustomValue, ...] = ()

    def describe(self) -> str:
        """As the arm language writes it."""
        cost = f"const({self.cost:g})" if self.cost_sigma == 0 else f"{self.cost:g}"
        mismatch = f" mismatch={self.mismatch * 100:g}%" if self.mismatch else ""
        custom = "".join(f" {m.describe()}" for m in self.metrics)
        return f"errors={self.errors * 100:g}% latency={self.latency.describe()} cost={cost}{mismatch}{custom}"

    def sample_cost(self, rng: random.Random) -> float:
        """One call's cost: lognormal around the mean `cost`, or exactly `cost` with `cost_sigma` 0."""
        if self.cost <= 0 or self.cost_sigma == 0:
            return self.cost
        return math.exp(rng.gauss(math.log(self.cost) - self.cost_sigma**2 / 2.0, self.cost_sigma))

    def toward(self, other: Arm, fraction: float) -> Arm:
        """The arm `fraction` of the way from this one to `other` (0: this one, 1: the other)."""
        if fraction <= 0:
            return self
        if fraction >= 1:
            return other

        def lerp(a: float, b: float) -> float:
            return a + (b - a) * fraction

        mine = {m.name: m for m in self.metrics}
        theirs = {m.name: m for m in other.metrics}
        metrics = tuple(
            CustomValue(name, lerp(mine[name].value if name in mine else 0.0,
                                   theirs[name].value if name in theirs else 0.0),
                        (theirs.get(name) or mine[name]).per_call)
            for name in dict.fromkeys([*mine, *theirs]))
        return Arm(lerp(self.errors, other.errors),
                   Latency(lerp(self.latency.median, other.latency.median), lerp(self.latency.sigma, other.latency.sigma)),
                   lerp(self.cost, other.cost), lerp(self.cost_sigma, other.cost_sigma),
                   lerp(self.mismatch, other.mismatch), metrics)


LEGACY_DEFAULT: Final = Arm(0.01, Latency(0.05, 0.4), 0.001)


@dataclass(frozen=True, slots=True)
class Fault:
    """When the candidate turns from behaving like legacy into its own behaviour: a step at `at` seconds into
    the run, or with `over` > 0 a linear drift that starts at `at` and is complete at `at + over`."""

    at: float
    over: float = 0.0

    def progress(self, elapsed: float) -> float:
        """How far the fault has gone at `elapsed` seconds: 0 before it, 1 once complete."""
        if elapsed < self.at:
            return 0.0
        if self.over <= 0 or elapsed >= self.at + self.over:
            return 1.0
        return (elapsed - self.at) / self.over

    def describe(self) -> str:
        """As the command line writes it."""
        if self.over:
            return f"drift from {format_duration(self.at)} over {format_duration(self.over)}"
        return f"step at {format_duration(self.at)}"


@dataclass(frozen=True, slots=True)
class Workload:
    """The synthetic traffic: its rate, its keys, each arm's behaviour and an optional fault of the candidate.

    `keys` is the size of a key population whose popularity follows Zipf's law with exponent `zipf` (the
    routing key of every call is drawn from it); 0 gives every call a key of its own (routing by request).
    `mode` is "calls", "aggregate" or "auto" (see the module's docstring).
    """

    rps: float = 200.0
    legacy: Arm = LEGACY_DEFAULT
    candidate: Arm = LEGACY_DEFAULT
    fault: Fault | None = None
    keys: int = 10_000
    zipf: float = 1.1
    mode: str = "auto"

    def __post_init__(self) -> None:
        if not self.rps >= 0 or math.isinf(self.rps):
            raise WorkloadError(f"rps: {self.rps} is not a rate; give calls per second, e.g. 200")
        if self.keys < 0:
            raise WorkloadError(f"keys: {self.keys} is negative; give a population size, or 0 for a key per call")
        if self.mode not in ("auto", "calls", "aggregate"):
            raise WorkloadError(f"mode: {self.mode!r} is not one of auto, calls, aggregate")

    def candidate_at(self, elapsed: float) -> Arm:
        """The candidate's behaviour `elapsed` seconds into the run."""
        if self.fault is None:
            return self.candidate
        return self.legacy.toward(self.candidate, self.fault.progress(elapsed))


_PART_RE: Final = re.compile(r"\s*([A-Za-z_]+)\s*=\s*((?:[^\s=(,]+)?(?:\([^)]*\))?)\s*,?")
_CALL_RE: Final = re.compile(r"([a-z]+)\((.*)\)")
_ARM_HINT: Final = ('e.g. "errors=1% latency=lognormal(50ms,0.4) cost=0.001 lost=0.8%" (the candidate also '
                    'mismatch=2%)')


def parse_arm(text: str, *, base: Arm | None = None, label: str = "arm") -> Arm:
    """An arm from text such as `errors=1% latency=lognormal(50ms,0.4) cost=0.001`.

    `errors=`: a percentage or fraction. `latency=`: `lognormal(MEDIAN,SIGMA)` or `const(DURATION)`.
    `cost=`: a mean cost per call (varying call to call, lognormal with sigma 0.5) or `const(COST)`.
    `mismatch=` (the candidate only): the share of its answers that differ from legacy's in a comparison. Any
    other lowercase name is a custom metric: `lost=0.8%` records lost=1 on that share of calls, `tokens=800`
    records 800 on every call (the candidate keeps legacy's unless it gives its own). With a
    `base` (the candidate's is legacy), `xN` scales the base's value and a part left out keeps it; without
    one, parts left out take legacy's defaults. WorkloadError names the part that is wrong.
    """
    arm = base or LEGACY_DEFAULT
    position = 0
    seen: set[str] = set()
    text = text.strip()
    while position < len(text):
        match = _PART_RE.match(text, position)
        if match is None or match.end() == position:
            rest = text[position:].split()[0] if text[position:].split() else text[position:]
            raise WorkloadError(f"{label}: cannot read {rest!r}; write name=value parts, {_ARM_HINT}")
        position = match.end()
        name, value = match.group(1).lower(), match.group(2)
        part = f"{label}: {name}={value}"
        if name in seen:
            raise WorkloadError(f"{part}: {name} is given twice")
        seen.add(name)
        if not value:
            raise WorkloadError(f"{part}: no value; {_ARM_HINT}")
        if name == "errors":
            arm = replace(arm, errors=_errors(value, arm, base, part))
        elif name == "latency":
            arm = replace(arm, latency=_latency(value, arm, base, part))
        elif name == "cost":
            cost, sigma = _cost(value, arm, base, part)
            arm = replace(arm, cost=cost, cost_sigma=sigma)
        elif name == "mismatch":
            if base is None:
                raise WorkloadError(f"{part}: mismatch= is how often the candidate's answers differ from legacy's; "
                                    "give it to the candidate")
            try:
                arm = replace(arm, mismatch=parse_percent(value))
            except ValueError as exc:
                raise WorkloadError(f"{part}: {exc}") from None
        elif valid_metric_name(name) and not difflib.get_close_matches(name, _SETTINGS, n=1, cutoff=0.85):
            arm = replace(arm, metrics=(*(m for m in arm.metrics if m.name != name),
                                        _custom_value(name, value, part)))
        else:
            close = difflib.get_close_matches(name, _SETTINGS, n=1, cutoff=0.85)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise WorkloadError(f"{part}: unknown setting {name!r}; {hint}the settings are errors=, latency=, cost=, "
                                "mismatch= and custom metrics (lost=0.8% on that share of calls, tokens=800 on "
                                "every call)")
    return arm


_SETTINGS: Final = ("errors", "latency", "cost", "mismatch")


def _custom_value(name: str, value: str, part: str) -> CustomValue:
    if value.strip().endswith("%"):
        try:
            return CustomValue(name, parse_percent(value), True)
        except ValueError as exc:
            raise WorkloadError(f"{part}: {exc}") from None
    try:
        number = float(value)
    except ValueError:
        raise WorkloadError(f"{part}: {value!r} is neither a share of calls (lost=0.8%) nor a value per call "
                            "(tokens=800)") from None
    if not math.isfinite(number) or abs(number) > MAX_METRIC_VALUE:
        raise WorkloadError(f"{part}: {value!r} is not a usable value")
    return CustomValue(name, number, False)


def _factor(value: str, base: Arm | None, part: str) -> float | None:
    if not value.startswith("x"):
        return None
    if base is None:
        raise WorkloadError(f"{part}: a factor (x...) is relative to legacy, so only the candidate takes one")
    try:
        factor = float(value[1:])
    except ValueError:
        raise WorkloadError(f"{part}: {value[1:]!r} is not a number; write e.g. x1.5") from None
    if not factor >= 0 or math.isinf(factor):
        raise WorkloadError(f"{part}: the factor must be 0 or more, e.g. x1.5")
    return factor


def _errors(value: str, arm: Arm, base: Arm | None, part: str) -> float:
    factor = _factor(value, base, part)
    if factor is not None:
        rate = arm.errors * factor
        if rate > 1:
            raise WorkloadError(f"{part}: makes an error rate of {rate:.0%}, above 100%")
        return rate
    try:
        return parse_percent(value)
    except ValueError as exc:
        raise WorkloadError(f"{part}: {exc}") from None


def _duration(value: str, part: str) -> float:
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise WorkloadError(f"{part}: {exc}") from None
    if seconds <= 0:
        raise WorkloadError(f"{part}: a latency must be above 0, e.g. 20ms")
    return seconds


def _latency(value: str, arm: Arm, base: Arm | None, part: str) -> Latency:
    factor = _factor(value, base, part)
    if factor is not None:
        if factor == 0:
            raise WorkloadError(f"{part}: a latency factor must be above 0, e.g. x1.5")
        return arm.latency.scaled(factor)
    call = _CALL_RE.fullmatch(value.replace(" ", ""))
    hint = "write lognormal(MEDIAN,SIGMA) such as lognormal(50ms,0.4), or const(20ms)"
    if call is None:
        raise WorkloadError(f"{part}: {hint}")
    kind, args = call.group(1), [a for a in call.group(2).split(",")]
    if kind == "const" and len(args) == 1:
        return Latency(_duration(args[0], part))
    if kind == "lognormal" and len(args) == 2:
        try:
            sigma = float(args[1])
        except ValueError:
            raise WorkloadError(f"{part}: sigma {args[1]!r} is not a number; {hint}") from None
        if not 0 <= sigma <= 3:
            raise WorkloadError(f"{part}: sigma {args[1]} is outside 0..3; {hint}")
        return Latency(_duration(args[0], part), sigma)
    raise WorkloadError(f"{part}: {hint}")


def _cost(value: str, arm: Arm, base: Arm | None, part: str) -> tuple[float, float]:
    factor = _factor(value, base, part)
    if factor is not None:
        return arm.cost * factor, arm.cost_sigma
    call = _CALL_RE.fullmatch(value.replace(" ", ""))
    number, sigma = (call.group(2), 0.0) if call is not None and call.group(1) == "const" else (value, COST_SIGMA)
    try:
        cost = float(number)
    except ValueError:
        raise WorkloadError(f"{part}: write a mean cost per call such as 0.001, const(0.001), or x2") from None
    if not cost >= 0 or math.isinf(cost):
        raise WorkloadError(f"{part}: a cost is 0 or more")
    return cost, sigma


def parse_fault(kind: str | None, at: str | None, over: str | None = None) -> Fault | None:
    """The fault `--fault KIND --fault-at AT --fault-over OVER` describe (None: the candidate is as given
    from the start). KIND is "step" (default) or "drift", which needs OVER."""
    kind = (kind or "step").strip().lower()
    if kind not in ("step", "drift"):
        raise WorkloadError(f"--fault {kind}: a fault is step or drift")
    if at is None:
        if over is not None or kind == "drift":
            raise WorkloadError("--fault-at is missing: say when the fault begins, e.g. --fault-at 2h")
        return None
    try:
        start = parse_duration(at)
    except ValueError as exc:
        raise WorkloadError(f"--fault-at {at}: {exc}") from None
    if kind == "step":
        if over is not None:
            raise WorkloadError(f"--fault-over {over}: a step fault happens at once; use --fault drift to ramp")
        return Fault(start)
    if over is None:
        raise WorkloadError("--fault drift needs --fault-over, how long the drift takes, e.g. --fault-over 1h")
    try:
        length = parse_duration(over)
    except ValueError as exc:
        raise WorkloadError(f"--fault-over {over}: {exc}") from None
    if length <= 0:
        raise WorkloadError(f"--fault-over {over}: a drift takes some time, e.g. 1h")
    return Fault(start, length)


# -- random draws (standard library only) ---------------------------------------------------------


def _binomial(rng: random.Random, n: int, p: float) -> int:
    """Binomial(n, p): exact by geometric skips below a mean of 30, normal with continuity above."""
    if n <= 0 or p <= 0.0:
        return 0
    if p >= 1.0:
        return n
    if p > 0.5:
        return n - _binomial(rng, n, 1.0 - p)
    mean = n * p
    if mean < 30.0:
        log_q = math.log1p(-p)
        successes = position = 0
        while True:
            position += int(math.log(1.0 - rng.random()) / log_q) + 1
            if position > n:
                return successes
            successes += 1
    draw = round(rng.gauss(mean, math.sqrt(mean * (1.0 - p))))
    return min(max(draw, 0), n)


def _poisson(rng: random.Random, mean: float) -> int:
    if mean <= 0:
        return 0
    if mean < 30.0:
        limit, k, product = math.exp(-mean), 0, rng.random()
        while product > limit:
            k += 1
            product *= rng.random()
        return k
    return max(0, round(rng.gauss(mean, math.sqrt(mean))))


@lru_cache(maxsize=256)
def _bucket_masses(median: float, sigma: float, cutoff: float | None) -> tuple[tuple[int, ...], tuple[float, ...], float]:
    """(sketch bucket indexes, probability of each, probability above `cutoff`) for a lognormal latency."""
    mu = math.log(median)
    if sigma == 0:
        if cutoff is not None and median > cutoff:
            return (), (), 1.0
        return (math.ceil(mu / _LOG_GAMMA),), (1.0,), 0.0
    first = math.ceil((mu - 7.0 * sigma) / _LOG_GAMMA)
    last = math.ceil((mu + 7.0 * sigma) / _LOG_GAMMA)
    if cutoff is not None:
        last = min(last, math.ceil(math.log(cutoff) / _LOG_GAMMA))
    indexes, masses = [], []
    below = _NORMAL.cdf(((first - 1) * _LOG_GAMMA - mu) / sigma)
    for i in range(first, last + 1):
        upper = _NORMAL.cdf((i * _LOG_GAMMA - mu) / sigma)
        if upper > below:
            indexes.append(i)
            masses.append(upper - below)
        below = upper
    above = 0.0 if cutoff is None else 1.0 - _NORMAL.cdf((math.log(cutoff) - mu) / sigma)
    total = sum(masses)
    return tuple(indexes), tuple(m / total * (1.0 - above) for m in masses), above


def _draw_latencies(rng: random.Random, latency: Latency, n: int, sketch: Sketch, cutoff: float | None) -> int:
    """Add `n` latencies to a sketch (multinomial over its buckets); returns how many passed `cutoff` instead."""
    indexes, masses, above = _bucket_masses(latency.median, latency.sigma, cutoff)
    over = _binomial(rng, n, above) if above else 0
    left, mass_left = n - over, 1.0 - above
    for i, mass in zip(indexes, masses):
        if left <= 0:
            break
        k = left if mass >= mass_left else _binomial(rng, left, mass / mass_left)
        if k:
            _add_latency(sketch, i, k)
            left -= k
        mass_left -= mass
    return over


def _add_latency(sketch: Sketch, index: int, count: int) -> None:
    """Add `count` values to one bucket of a sketch, as `count` calls of `Sketch.add` would."""
    sketch.bins[index] = sketch.bins.get(index, 0) + count
    sketch.count += count
    sketch.total += count * Sketch.value_of(index)


def _draw_cost(rng: random.Random, arm: Arm, n: int, cell: Cell) -> None:
    """Add the cost of `n` calls: one by one when few, else the sum and sum of squares drawn jointly."""
    if n <= 0 or arm.cost <= 0:
        cell.costed += max(n, 0)
        return
    s = arm.cost_sigma
    if s == 0:
        cell.costed += n
        cell.cost_sum += n * arm.cost
        cell.cost_sq += n * arm.cost * arm.cost
        return
    mu = math.log(arm.cost) - s * s / 2.0
    if n < 50:
        for _ in range(n):
            cell.add_cost(arm.sample_cost(rng))
        return
    m1, m2, m3, m4 = (math.exp(k * mu + k * k * s * s / 2.0) for k in (1, 2, 3, 4))
    v11, v12, v22 = m2 - m1 * m1, m3 - m1 * m2, m4 - m2 * m2
    # Cholesky of the 2x2 covariance: the sum and the sum of squares move together, as they do.
    a = math.sqrt(v11)
    b = v12 / a
    c = math.sqrt(max(v22 - b * b, 0.0))
    z1, z2 = rng.gauss(0.0, 1.0), rng.gauss(0.0, 1.0)
    total = n * m1 + math.sqrt(n) * a * z1
    squares = n * m2 + math.sqrt(n) * (b * z1 + c * z2)
    cell.costed += n
    cell.cost_sum += max(total, 0.0)
    cell.cost_sq += max(squares, total * total / n if total > 0 else 0.0)


# -- virtual time and the temporary backend ----------------------------------------------------------


class VirtualClock:
    """Simulated time in epoch seconds, read by the SDK, its recorder and the controller alike.

    `set` moves to a call's arrival or a tick; `advance` lets an arm function spend its latency; `sleep`
    (the controller loop's Clock protocol) passes the time at once.
    """

    def __init__(self, start: float = EPOCH) -> None:
        self._base = start
        self._offset = 0.0

    def now(self) -> float:
        """The virtual time."""
        return self._base + self._offset

    def set(self, t: float) -> None:
        """Move to `t`."""
        self._base = t
        self._offset = 0.0

    def advance(self, seconds: float) -> None:
        """Let `seconds` pass."""
        self._offset += seconds

    def sleep(self, seconds: float, stop: threading.Event) -> None:
        """Wait `seconds` of virtual time, which passes at once."""
        self.advance(seconds)


class _SimBackend:
    """SQLite in memory for events, states, specs and leases; telemetry windows in memory, the old rolled up.

    Reads of one stage from a fixed `since` (as the controller makes them, every look) return the windows
    that ended more than `keep` seconds before the newest one merged into one window per arm, followed by the
    recent ones, so triggers still see their sliding windows and a look costs the same at any stage age.
    """

    def __init__(self, keep: float, url: str | None = None) -> None:
        # Without a database to leave behind, events, states and specs live in memory too: one process and
        # one loop need no SQL, and creating a schema and writing every verdict cost more than judging.
        self._sql = SQLBackend(url) if url is not None else None
        self.url = url or "sqlite://"
        # A kept database gets the telemetry too, so `crossfade status` can read it after the run.
        self._write_through = url is not None
        self.keep = keep
        self._windows: dict[tuple[str, str], dict[tuple[float, str], Window]] = {}
        self._rollups: dict[tuple[str, str, float], tuple[float, dict[str, Window]]] = {}
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
        rolled_until, rolled = self._rollups.get((migration, stage, since), (since, {}))
        horizon = newest - self.keep
        recent = []
        for (start, arm), w in sorted(stored.items()):
            if start < rolled_until:
                continue
            if start + w.length <= horizon:
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
        if horizon > rolled_until:
            self._rollups[(migration, stage, since)] = (horizon, rolled)
        return sorted(rolled.values(), key=lambda w: w.arm) + recent


# -- results -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TimelineEntry:
    """One line of a simulated migration's story: when (seconds into the run), where, who, what. Immutable."""

    elapsed: float
    stage: str | None
    kind: str
    actor: str
    text: str

    def __str__(self) -> str:
        return f"+{format_duration(round(self.elapsed))} {self.stage or '-'} {self.kind} ({self.actor}): {self.text}"


@dataclass(frozen=True, slots=True)
class SimTick:
    """What one controller look saw and did, handed to `on_tick` and `rollback_when`.

    `time` is the virtual epoch time and `elapsed` the seconds since the run began. `stage` is the stage the
    interval just ended ran in (the one judged); `cells` are its per-arm totals since it was entered, `last`
    its per-arm cells of that interval alone, and `windows` the stage's telemetry as the controller read it.
    `assessment` is the controller's view of that stage (None at the last stage, which is not judged).
    `state` is the migration after the look, and `events` what the look (and the simulation's approvals
    or rollbacks) appended.
    """

    time: float
    elapsed: float
    stage: str | None
    state: State
    assessment: Assessment | None
    cells: Mapping[str, Cell]
    last: Mapping[str, Cell]
    windows: tuple[Window, ...]
    events: tuple[Event, ...]


@dataclass(frozen=True, slots=True)
class SimResult:
    """How a simulated migration ended. Immutable.

    `outcome` is completed, rolled_back, paused or running (still going when the simulation's time ran out);
    `duration_s` the simulated seconds until it ended (or ran out); `stage` where it ended, `reason` why.
    `detected_s` is when the first corrective action (rollback, step back, pause) was taken, `exposed` the
    candidate calls served after the fault began (from the start without one) until then or the end, and
    `calls` the calls per arm in the whole run.
    """

    outcome: str
    duration_s: float
    stage: str | None
    reason: str
    detected_s: float | None = None
    exposed: int = 0
    calls: Mapping[str, int] = field(default_factory=dict)
    events: tuple[Event, ...] = ()
    timeline: tuple[TimelineEntry, ...] = ()

    def summary(self) -> str:
        """One sentence: "completed in 9h40m simulated", "rolled back at canary-10 after 14m: ..."."""
        took = format_duration(round(self.duration_s))
        if self.outcome == "completed":
            return f"completed in {took} simulated"
        where = f" at {self.stage}" if self.stage else ""
        if self.outcome == "rolled_back":
            return f"rolled back{where} after {took}: {self.reason}"
        if self.outcome == "paused":
            return f"paused{where} after {took}: {self.reason}"
        return f"still running{where} after {took}, when the simulation stopped: {self.reason}"

    def to_dict(self) -> dict[str, Any]:
        """The `detail` entry of `crossfade simulate --json`."""
        return {"outcome": self.outcome, "duration_s": self.duration_s, "stage": self.stage, "reason": self.reason}


@dataclass(frozen=True, slots=True)
class StageShare:
    """The candidate's share of calls in one stage with Zipf-popular sticky keys. Immutable.

    `traffic` is the share of keys the stage sends; `share` the share of calls those keys make under the
    spec's salt; `low`, `median` and `high` the smallest, middle and largest share over `salts` other salts:
    which keys a salt puts below the threshold decides the stage's power (a 10% stage carried 6.9%, 10.5% or
    18.5% of calls depending on the migration's name).
    """

    stage: str
    traffic: float
    share: float
    low: float
    median: float
    high: float
    salts: int


def key_shares(spec: Spec, workload: Workload, *, salts: int = 20) -> list[StageShare]:
    """Per stage between 0% and 100%, the candidate's share of calls under the spec's salt and over `salts` others, for
    the workload's key population (empty for a key per call, where the share is the traffic itself)."""
    if not workload.keys:
        return []
    weights = [rank ** -workload.zipf for rank in range(1, workload.keys + 1)]
    total = sum(weights)

    def shares(salt: str) -> list[float]:
        # Popularity mass per bucket, then the mass below each stage's threshold.
        mass = [0.0] * BUCKETS
        for i, weight in enumerate(weights):
            mass[bucket(salt, f"user-{i}")] += weight
        below = 0.0
        cuts = sorted({threshold(s.traffic) for s in spec.stages})
        found: dict[int, float] = {}
        start = 0
        for cut in cuts:
            below += sum(mass[start:cut])
            start = cut
            found[cut] = below / total
        return [found[threshold(s.traffic)] for s in spec.stages]

    own = shares(spec.salt)
    others = [shares(f"{spec.salt}#{k}") for k in range(salts)]
    rows = []
    for index, stage in enumerate(spec.stages):
        if not 0.0 < stage.traffic < 1.0:
            continue
        spread = sorted(o[index] for o in others)
        rows.append(StageShare(stage.name, stage.traffic, own[index], spread[0], median(spread) or 0.0, spread[-1],
                               salts))
    return rows


# -- the run -----------------------------------------------------------------------------------


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


def check_workload(spec: Spec, workload: Workload) -> None:
    """WorkloadError when the workload does not fit the spec: a custom metric it records that no declared
    metric reads is a slip (a misspelt name)."""
    read = {name for metric in spec.metrics for name in metric.recorded} | {SIMILARITY}
    unread = sorted({m.name for arm in (workload.legacy, workload.candidate) for m in arm.metrics} - read)
    if unread:
        raise WorkloadError(f"the workload records {', '.join(unread)}, which no metric under the spec's metrics: "
                            f"reads (they read: {', '.join(sorted(read - {SIMILARITY})) or 'nothing'}); declare it, "
                            "e.g. metrics: {lost: {kind: count}}, or fix the name")


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
        # Change detection reads the windows of its horizon as written.
        self.backend = _SimBackend(max(longest, CHANGE_HORIZON) + 2 * self.interval, database)
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
        length = span * self.interval
        n = _poisson(self.rng, self.workload.rps * length)
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
        n_candidate = _binomial(self.rng, n, share)
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
                timeouts = _draw_latencies(self.rng, model.latency, count, cell.latency, cutoff)
                if timeouts and cutoff is not None:
                    # A timed-out call is recorded when the caller stops waiting: at the timeout.
                    _add_latency(cell.latency, math.ceil(math.log(cutoff) / _LOG_GAMMA), timeouts)
                errors = _binomial(self.rng, count - timeouts, model.errors) + timeouts
                cell.errors += errors
                cell.timeouts += timeouts
                if arm == CANDIDATE and fallback.on_error:
                    cell.fallbacks += errors
                _draw_cost(self.rng, model, count, cell)
                for custom in model.metrics:
                    custom.add_to(self.rng, count, cell, custom.name in self.sketched)
            finally:
                recorder.done()
        # Shadow runs count as calls of the arm that ran them (errors, latency and the cost of the answered
        # ones; no fallback), as the SDK records them: the candidate beside legacy-served calls, legacy beside
        # candidate-served ones.
        shadows = ((CANDIDATE, candidate, _binomial(self.rng, n - n_candidate, route.shadow)),
                   (LEGACY, self.workload.legacy,
                    _binomial(self.rng, n_candidate, getattr(route, "shadow_legacy", 0.0))))
        compared = 0
        for arm, model, count in shadows:
            if count <= 0:
                continue
            cell = recorder.cell(now_ns, cell_key(self.spec.name, route.stage, arm))
            try:
                cell.calls += count
                _draw_latencies(self.rng, model.latency, count, cell.latency, None)
                errors = _binomial(self.rng, count, model.errors)
                cell.errors += errors
                _draw_cost(self.rng, model, count - errors, cell)
            finally:
                recorder.done()
            compared += count
        if compared:
            # Every shadow run is compared with the served answer; the mismatch gate reads the candidate's cell.
            cell = recorder.cell(now_ns, cell_key(self.spec.name, route.stage, CANDIDATE))
            try:
                cell.compared += compared
                cell.mismatches += _binomial(self.rng, compared, candidate.mismatch)
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


def outcome_counts(results: Sequence[SimResult]) -> dict[str, int]:
    """How many results ended in each outcome, every outcome listed."""
    return {name: sum(1 for r in results if r.outcome == name) for name in OUTCOMES}


def median(values: Sequence[float]) -> float | None:
    """The median, or None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def wilson(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of a proportion."""
    if n == 0:
        return 0.0, 1.0
    z = _NORMAL.inv_cdf(0.5 + confidence / 2)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)

