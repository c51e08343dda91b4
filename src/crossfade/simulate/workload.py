"""The synthetic traffic: each arm's behaviour, the arm language that describes it, faults, and the key population."""

from __future__ import annotations

import difflib
import math
import random
import re
from dataclasses import dataclass, replace
from typing import Final

from crossfade.routing import BUCKETS, bucket, threshold
from crossfade.simulate.draws import LOG_GAMMA, NORMAL, add_latency, binomial
from crossfade.simulate.results import median
from crossfade.sketch import MIN_VALUE, Sketch
from crossfade.spec import Spec, format_duration, parse_duration, parse_percent
from crossfade.spec.metrics import SIMILARITY
from crossfade.telemetry import MAX_METRIC_VALUE, Cell, Tally, valid_metric_name

# Cost per call varies (tokens differ call to call): lognormal with this shape around the mean given.
COST_SIGMA: Final = 0.5


class WorkloadError(ValueError):
    """A workload description that cannot be read; the message names the part that is wrong."""


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
        return self.median if self.sigma == 0 else self.median * math.exp(self.sigma * NORMAL.inv_cdf(q))

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
        events = binomial(rng, count, self.value) if self.per_call else count
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
                add_latency(sketch, math.ceil(math.log(min(value, MAX_METRIC_VALUE)) / LOG_GAMMA), events)
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
    `mode` is "calls", "aggregate" or "auto" (see `crossfade.simulate`'s docstring).
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


def check_workload(spec: Spec, workload: Workload) -> None:
    """WorkloadError when the workload does not fit the spec: a custom metric it records that no declared
    metric reads is a slip (a misspelt name)."""
    read = {name for metric in spec.metrics for name in metric.recorded} | {SIMILARITY}
    unread = sorted({m.name for arm in (workload.legacy, workload.candidate) for m in arm.metrics} - read)
    if unread:
        raise WorkloadError(f"the workload records {', '.join(unread)}, which no metric under the spec's metrics: "
                            f"reads (they read: {', '.join(sorted(read - {SIMILARITY})) or 'nothing'}); declare it, "
                            "e.g. metrics: {lost: {kind: count}}, or fix the name")
