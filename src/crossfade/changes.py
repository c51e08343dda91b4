"""Change detection: a fault that starts late in a stage, caught on the candidate's recent calls alone.

The gates ask "is the difference since the stage began beyond the limit". A fault that starts five minutes
before the stage ends is diluted by the hour of good data before it, and is promoted. The detector asks "has
the candidate, from some recent moment on, been beyond the limit": for each gate it turns the candidate's
calls into a count of bad ones against a rate that is at most `p0` while the candidate is within the limit,

- error rate: errors among calls, p0 = legacy's rate (its upper bound) + the allowed increase;
- latency: calls slower than the allowed ratio x legacy's q-quantile (its upper bound), p0 = 1 - q;
- mismatch rate: mismatches among compared answers, p0 = the allowed rate;

and, for every start s among the slots (analysis intervals, at least a minute) of the last `HORIZON`, the
likelihood ratio of the counts since s against p0, mixed over alternatives p0 x (1.1 .. 5): an e-value
(expectation at most 1 while the candidate is within the limit, at any number of calls, since the counts are
exact Bernoulli). Their sum R over the starts is the Shiryaev-Roberts e-detector (Shin, Ramdas and Rinaldo
2023). How it alarms depends on the reference:

- A fixed reference (a bake, judged against the legacy measured before it): p0 does not move, so R plus the
  starts still to come is a nonnegative supermartingale, and by Ville's inequality R ever reaches N / a within
  the period's first N slots with probability at most a. The period's planned slots P (the bake and its final
  look) get 3/4 of the alpha, the slots up to 2^i P (a bake held on) alpha / 2^(i+2): one threshold for the
  whole bake, not one per look.
- A growing reference (a stage, judged against its own legacy calls): p0 moves with every look, so each look
  is bounded on its own (Markov): R >= M / (alpha w_k) at the k-th interval, with M starts, is wrong with
  probability at most alpha w_k, and w_k = 1 / (2J) over the period's J planned intervals (its hold),
  J / (2 k (k - 1)) after, sum to 1.

A bake's final look: a step in its last interval has had no calls to show in yet, so the bake's end waits
(`final_look`) until the calls since then would catch, with probability `FINAL_LOOK_POWER`, a candidate twice
the gate's allowance past legacy (errors legacy + 2 x the allowed increase; latency legacy's x (2 r - 1) for an
allowed ratio r; mismatches 2 x the allowed rate), or until it has waited `FINAL_LOOK_SHARE` of the bake.

How alpha is shared: `analysis.change_share` of the spec's alpha goes to change detection, split evenly over
the judged periods (every stage but the last, plus the bake) and the detected gates, half of each part for
the reference bound (legacy's rate: an anytime-valid sequence, or for a fixed reference one exact bound;
legacy's quantile: a fixed-sample interval, spent look by look with the weights above unless the reference is
fixed), half for the detector. The arms' calls are independent, so given legacy's data the detector's bound
holds whenever the reference bound does. Cost is not watched by the detector (its gate still judges the whole
stage).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Final

from crossfade.routing import CANDIDATE, LEGACY
from crossfade.sketch import ALPHA as SKETCH_ACCURACY
from crossfade.sketch import Sketch
from crossfade.spec import Spec, format_duration, format_percent
from crossfade.stats import _cs_margin, binomial_upper_tail, quantile_interval
from crossfade.telemetry import Cell, Window

# Starts older than this are not tried: a change is looked for among the last 45 minutes of windows (which
# the controller keeps as written, see `stagedata.detail_horizon`).
HORIZON: Final = 45 * 60.0
# At most this many starts (windows are grouped into slots of HORIZON / STARTS when they are shorter).
STARTS: Final = 45
# The alternatives the likelihood ratio is mixed over, as multiples of p0 (equal weights).
_ALTERNATIVES: Final = (1.1, 1.2, 1.35, 1.5, 1.75, 2.0, 3.0, 5.0)
# A bake's final look waits for the calls that catch a step in its last interval with this probability...
FINAL_LOOK_POWER: Final = 0.95
# ... but at most this share of the bake past its planned end (at low traffic those calls take hours).
FINAL_LOOK_SHARE: Final = 1.0


@dataclass(frozen=True, slots=True)
class ChangeAlarm:
    """A gate whose candidate changed past its limit in its recent calls, with the numbers behind it."""

    gate: str
    since: float
    bad: int
    total: int
    null_rate: float
    statistic: float
    threshold: float
    message: str


def change_alpha(spec: Spec) -> float:
    """The alpha each detected gate gets in each judged period (stages but the last, plus the bake)."""
    periods = max(len(spec.stages) - 1, 1) + (1 if spec.bake else 0)
    gates = max(len(detected_gates(spec)), 1)
    return (1.0 - spec.analysis.confidence) * spec.analysis.change_share / (periods * gates)


def detected_gates(spec: Spec) -> list[str]:
    """The gates change detection watches (those with a rate to count)."""
    g = spec.gates
    return [name for name, on in (("error_rate", g.error_rate), ("latency", g.latency),
                                  ("mismatch_rate", g.mismatch_rate)) if on is not None]


def planned_bake(spec: Spec) -> float:
    """The seconds over which a bake's detector spends its alpha: the bake and the longest its final look waits."""
    return spec.bake * (1.0 + FINAL_LOOK_SHARE)


def spending_weight(k: int, planned: int) -> float:
    """w_k: 1 / (2J) for the first J intervals, J / (2 k (k - 1)) after; the weights sum to 1."""
    planned = max(planned, 1)
    if k <= planned:
        return 1.0 / (2.0 * planned)
    return planned / (2.0 * k * (k - 1.0))


def ville_block(k: int, planned: int) -> tuple[int, float]:
    """For a fixed reference at its k-th slot: (the slots N its threshold covers, the share of alpha it spends).

    Block 0 is the first `planned` slots with 3/4 of alpha; block i >= 1 the first 2^i x planned with
    1 / 2^(i+2): the shares sum to 1, and each block's threshold holds over all of its slots (Ville).
    """
    planned = max(planned, 1)
    block = 0
    while k > planned << block:
        block += 1
    return planned << block, 0.75 if block == 0 else 0.5 ** (block + 2)


@dataclass(frozen=True, slots=True)
class _Watch:
    """One gate as the detector counts it: bad calls among all, at most rate p0 while within the limit."""

    gate: str
    p0: float
    # The rate of a candidate twice the gate's allowance past legacy: what a final look is sized for.
    design: float
    count: Callable[[Cell], tuple[int, int]]
    says: str


def _watches(spec: Spec, legacy: Cell, alpha_ref: float, *, fixed: bool, weight: float) -> list[_Watch]:
    """The detected gates that have a reference, with their null rates (see the module's docstring)."""
    watches = []
    g = spec.gates
    if g.error_rate is not None and legacy.calls:
        increase = g.error_rate.max_increase
        upper = (_rate_upper_exact(legacy.errors, legacy.calls, alpha_ref) if fixed
                 else _rate_upper(legacy.errors, legacy.calls, alpha_ref))
        watches.append(_Watch(
            "error_rate", upper + increase, legacy.errors / legacy.calls + 2.0 * increase,
            lambda cell: (cell.errors, cell.calls),
            f"error rate {{rate}} of {{total}} calls since {{since}} ago is above legacy's "
            f"{_percent(upper)} (upper bound) + the allowed {format_percent(increase)}"))
    if g.latency is not None and legacy.latency.count:
        q, limit = g.latency.quantile, g.latency.max_ratio
        # A fixed-sample bound: looked at again at every interval, spent with the detector's weights, unless the
        # reference does not change.
        upper = quantile_interval(legacy.latency, q, alpha=min(2 * alpha_ref * (1.0 if fixed else weight), 0.5)).upper
        if math.isfinite(upper) and upper > 0:
            slow = limit * upper
            # A candidate (2 limit - 1) times legacy is slower than `slow` where legacy is slower than this.
            design = _above(legacy, slow / (2.0 * limit - 1.0)) / legacy.latency.count
            watches.append(_Watch(
                "latency", 1.0 - q, design, lambda cell: (_above(cell, slow), cell.latency.count),
                f"{{rate}} of {{total}} calls since {{since}} ago took longer than x{limit:g} legacy's "
                f"p{q * 100:g} (upper bound {format_duration(upper)}), where at most {format_percent(1 - q)} may"))
    if g.mismatch_rate is not None:
        allowed = g.mismatch_rate.max
        watches.append(_Watch(
            "mismatch_rate", allowed, min(2.0 * allowed, (1.0 + allowed) / 2.0),
            lambda cell: (cell.mismatches, cell.compared),
            f"answers differ in {{rate}} of {{total}} compared since {{since}} ago, above the allowed "
            f"{format_percent(allowed)}"))
    return watches


def detect(spec: Spec, windows: Sequence[Window], reference: Mapping[str, Cell] | Cell, *, entered: float,
           planned: float, now: float, fixed: bool = False) -> list[ChangeAlarm]:
    """The gates whose candidate changed past their limit since some start in the last `HORIZON`.

    `windows` are the period's (the current stage's) windows; `reference` is legacy's cell to judge against
    (the stage's own legacy calls, or during a bake the legacy measured before it: then `fixed`); `entered` is
    when the period began and `planned` its planned length (seconds) over which alpha is spent.
    """
    share = change_alpha(spec)
    if share <= 0.0:
        return []
    legacy = reference if isinstance(reference, Cell) else (reference.get(LEGACY) or Cell())
    interval = spec.analysis.interval
    slot = _slot(interval)
    alpha_ref, alpha_detect = share / 2.0, share / 2.0
    if fixed:
        covered, spent = ville_block(math.floor((now - entered) / slot) + 1, math.ceil(max(planned, slot) / slot))
        # A window that began just before entry adds one slot; the slot being filled adds another.
        starts: int | None = covered + 2
        weight = 1.0
        alpha = alpha_detect * spent
    else:
        k = max(1, math.floor((now - entered) / interval) + 1)
        weight = spending_weight(k, math.ceil(max(planned, interval) / interval))
        starts, alpha = None, alpha_detect * weight
    recent = [w for w in windows if w.arm == CANDIDATE and w.start + w.length > entered
              and w.start >= now - HORIZON and w.start + w.length <= now + interval]
    if not recent:
        return []
    alarms = []
    for watch in _watches(spec, legacy, alpha_ref, fixed=fixed, weight=weight):
        counts = [(w.start, *watch.count(w.cell)) for w in recent]
        found = _alarm(watch.gate, counts, watch.p0, alpha, slot, starts)
        if found is not None:
            alarms.append(_say(found, watch.says, now))
    return alarms


def final_look(spec: Spec, windows: Sequence[Window], reference: Cell, *, entered: float, since: float,
               now: float) -> list[str]:
    """What a bake's end still waits for, per gate ("error_rate: 4,210 of 15,400 calls"); empty when nothing.

    `since` is the start of the bake's last planned interval: its calls, and those after, must be enough for
    the detector (with a fixed `reference`, as `detect` judges a bake) to catch a candidate twice the gate's
    allowance past legacy with probability `FINAL_LOOK_POWER`. A gate that cannot be caught that way (its
    reference too loose, or no calls counted for it in the bake) is not waited for, and nothing is once the
    bake has waited `FINAL_LOOK_SHARE` of itself past its planned end.
    """
    share = change_alpha(spec)
    if share <= 0.0 or now >= entered + planned_bake(spec):
        return []
    slot = _slot(spec.analysis.interval)
    planned = math.ceil(max(planned_bake(spec), slot) / slot)
    covered, spent = ville_block(math.floor((since - entered) / slot) + 1, planned)
    log_threshold = math.log(covered + 2) - math.log(share / 2.0 * spent)
    left = []
    mine = [w for w in windows if w.arm == CANDIDATE and w.start + w.length > entered]
    for watch in _watches(spec, reference, share / 2.0, fixed=True, weight=1.0):
        counted = sum(watch.count(w.cell)[1] for w in mine)
        needed = _calls_needed(watch.p0, watch.design, log_threshold)
        if not counted or not math.isfinite(needed):
            continue
        seen = sum(watch.count(w.cell)[1] for w in mine if w.start >= since)
        if seen < needed:
            left.append(f"{watch.gate}: {seen:,} of {math.ceil(needed):,} calls")
    return left


def _calls_needed(p0: float, p1: float, log_threshold: float) -> float:
    """How many calls at rate p1 bring the detector's log-likelihood ratio against p0 past `log_threshold` with
    probability FINAL_LOOK_POWER (normal approximation, the best of the mixture's alternatives; inf if none)."""
    if not 0.0 < p0 < p1 < 1.0:
        return math.inf
    z = NormalDist().inv_cdf(FINAL_LOOK_POWER)
    alternatives = _alternatives(p0)
    target = log_threshold + math.log(len(alternatives))
    best = math.inf
    for _, up, down in alternatives:
        drift = p1 * up + (1.0 - p1) * down
        if drift <= 0.0:
            continue
        spread = z * math.sqrt(p1 * (1.0 - p1)) * (up - down)
        root = (spread + math.sqrt(spread * spread + 4.0 * drift * target)) / (2.0 * drift)
        best = min(best, root * root)
    return best


def _slot(interval: float) -> float:
    """The length of the detector's slots: starts are tried once per slot."""
    return max(interval, HORIZON / STARTS)


def _percent(fraction: float) -> str:
    """A rate bound as text, to two decimals of a percent."""
    return f"{fraction * 100:.2f}%"


def _rate_upper(x: int, n: int, alpha: float) -> float:
    """An upper bound of a rate valid at every look (the one-sided normal-mixture sequence, Agresti-adjusted,
    tuned for 10,000 calls): legacy's rate, against which the candidate's recent calls are counted."""
    p = (x + 1.0) / (n + 2.0)
    return min(p + math.sqrt(p * (1.0 - p) / (n + 2.0)) * math.sqrt(n) * _cs_margin(n, alpha, "upper", 10_000.0),
               1.0)


@functools.lru_cache(maxsize=64)
def _rate_upper_exact(x: int, n: int, alpha: float) -> float:
    """The one-sided Clopper-Pearson upper bound of a rate (x of n) at level 1 - alpha: the rate p at which x or
    fewer would be seen with probability alpha. For a reference that does not change (a bake's), so one bound
    serves every look; cached since every look of a bake asks for the same one."""
    if x >= n:
        return 1.0
    low, high = x / n, 1.0
    for _ in range(60):
        middle = (low + high) / 2.0
        if 1.0 - binomial_upper_tail(x + 1, n, middle) > alpha:
            low = middle
        else:
            high = middle
    return high


def _above(cell: Cell, value: float) -> int:
    """Calls surely slower than `value`: those whose bucket lies wholly above it (a bucket that straddles it
    is not counted, so the count errs low, on the candidate's side)."""
    latency = cell.latency
    if isinstance(latency, Sketch):
        # A sketch's bucket holds values within 1% of its representative value.
        floor = value * (1.0 + SKETCH_ACCURACY)
        # value_of(i) = 2 gamma^i / (gamma + 1) is above `floor` from this index on (one more for rounding).
        gamma = (1.0 + SKETCH_ACCURACY) / (1.0 - SKETCH_ACCURACY)
        first = math.floor(math.log(floor * (gamma + 1.0) / 2.0) / math.log(gamma)) if floor > 0 else -(10**9)
        return sum(n for i, n in latency.bins.items() if i > first + 1 or (i >= first and Sketch.value_of(i) > floor))
    return sum(n for index, n in enumerate(latency.counts) if n and latency.edges(index)[0] >= value)


@dataclass(frozen=True, slots=True)
class _Found:
    gate: str
    since: float
    bad: int
    total: int
    p0: float
    statistic: float
    threshold: float


def _alternatives(p0: float) -> list[tuple[float, float, float]]:
    """The mixture's alternatives p1 with the log-likelihood ratio of a bad and of a good call against p0."""
    return [(p1, math.log(p1 / p0), math.log1p(-p1) - math.log1p(-p0))
            for p1 in (min(p0 * m, (1.0 + p0) / 2.0) for m in _ALTERNATIVES)]


def _alarm(gate: str, counts: Sequence[tuple[float, int, int]], p0: float, alpha: float, slot: float,
           starts: int | None) -> _Found | None:
    """The Shiryaev-Roberts sum over starts of the mixture likelihood ratios against rate p0; an alarm when it
    reaches `starts` / alpha (for a fixed reference), or the starts tried / alpha (see the module's docstring)."""
    if not 0.0 < p0 < 1.0 or alpha <= 0.0:
        return None
    slots: dict[float, list[int]] = {}
    for start, bad, total in counts:
        key = math.floor(start / slot) * slot
        entry = slots.setdefault(key, [0, 0])
        entry[0] += bad
        entry[1] += total
    alternatives = _alternatives(p0)
    log_weight = -math.log(len(alternatives))
    bad = total = 0
    terms = []
    best: tuple[float, float, int, int] | None = None
    for key in sorted(slots, reverse=True):
        bad += slots[key][0]
        total += slots[key][1]
        if not total:
            continue
        logs = [bad * up + (total - bad) * down for _, up, down in alternatives]
        top = max(logs)
        log_e = top + math.log(sum(math.exp(v - top) for v in logs)) + log_weight
        terms.append(log_e)
        if best is None or log_e > best[0]:
            best = (log_e, key, bad, total)
    if not terms or best is None:
        return None
    top = max(terms)
    log_r = top + math.log(sum(math.exp(v - top) for v in terms))
    log_threshold = math.log(starts if starts is not None else len(slots)) - math.log(alpha)
    if log_r < log_threshold:
        return None
    return _Found(gate, best[1], best[2], best[3], p0, log_r, log_threshold)


def _say(found: _Found, template: str, now: float) -> ChangeAlarm:
    text = template.format(rate=f"{found.bad / found.total * 100:.2f}%", total=found.total,
                           since=format_duration(max(now - found.since, 0.0)))
    message = (f"change in {found.gate}: {text} (e-detector log {found.statistic:.1f} past its threshold "
               f"{found.threshold:.1f})")
    return ChangeAlarm(found.gate, found.since, found.bad, found.total, found.p0, found.statistic,
                       found.threshold, message)
