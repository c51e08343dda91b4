"""Change detection: a fault that starts late in a stage, caught on the candidate's recent calls alone.

The gates ask "is the difference since the stage began beyond the limit". A fault that starts five minutes
before the stage ends is diluted by the hour of good data before it, and is promoted. The detector asks "has
the candidate, from some recent moment on, been beyond the limit": for each gate it turns the candidate's
calls into a count of bad ones against a rate that is at most `p0` while the candidate is within the limit,

- error rate: errors among calls, p0 = legacy's rate (its upper bound) + the allowed increase;
- latency: calls slower than the allowed ratio x legacy's q-quantile (its upper bound), p0 = 1 - q;
- mismatch rate: mismatches among compared answers, p0 = the allowed rate;

and, for every start s among the windows of the last `HORIZON`, the likelihood ratio of the counts since s
against p0, mixed over alternatives p0 x (1.1 .. 5): an e-value (expectation at most 1 while the candidate is
within the limit, at any number of calls, since the counts are exact Bernoulli). Their sum R over the starts
(the Shiryaev-Roberts e-detector, Shin, Ramdas and Rinaldo 2023) has expectation at most the number of starts
M, so alarming when R >= M / (alpha_c w_k) at the k-th interval of the period is wrong with probability at
most alpha_c w_k (Markov), and over all intervals at most alpha_c when the weights w_k sum to 1: w_k = 1 / (2J)
over the period's J planned intervals (its hold, or the bake) and J / (2 k (k - 1)) after, for a stage held on.

How alpha is shared: `analysis.change_share` of the spec's alpha goes to change detection, split evenly over
the judged periods (every stage but the last, plus the bake) and the detected gates, half of each part for
the reference bound (legacy's rate, an anytime-valid sequence; legacy's quantile, a fixed-sample interval
spent look by look with the same weights), half for the detector. The arms' calls are independent, so given
legacy's data the detector's bound holds whenever the reference bound does. Cost is not watched by the
detector (its gate still judges the whole stage).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from crossfade.routing import CANDIDATE, LEGACY
from crossfade.sketch import ALPHA as SKETCH_ACCURACY
from crossfade.sketch import Sketch
from crossfade.spec import Spec, format_duration, format_percent
from crossfade.stats import _cs_margin, quantile_interval
from crossfade.telemetry import Cell, Window

# Starts older than this are not tried: a change is looked for among the last 45 minutes of windows (which
# the controller keeps as written, see `stagedata.detail_horizon`).
HORIZON: Final = 45 * 60.0
# At most this many starts (windows are grouped into slots of HORIZON / STARTS when they are shorter).
STARTS: Final = 45
# The alternatives the likelihood ratio is mixed over, as multiples of p0 (equal weights).
_ALTERNATIVES: Final = (1.1, 1.2, 1.35, 1.5, 1.75, 2.0, 3.0, 5.0)


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


def spending_weight(k: int, planned: int) -> float:
    """w_k: 1 / (2J) for the first J intervals, J / (2 k (k - 1)) after; the weights sum to 1."""
    planned = max(planned, 1)
    if k <= planned:
        return 1.0 / (2.0 * planned)
    return planned / (2.0 * k * (k - 1.0))


def detect(spec: Spec, windows: Sequence[Window], reference: Mapping[str, Cell] | Cell, *, entered: float,
           planned: float, now: float) -> list[ChangeAlarm]:
    """The gates whose candidate changed past their limit since some start in the last `HORIZON`.

    `windows` are the period's (the current stage's) windows; `reference` is legacy's cell to judge against
    (the stage's own legacy calls, or during a bake the legacy measured before it); `entered` is when the
    period began and `planned` its planned length (seconds) over which alpha is spent evenly.
    """
    share = change_alpha(spec)
    if share <= 0.0:
        return []
    legacy = reference if isinstance(reference, Cell) else (reference.get(LEGACY) or Cell())
    interval = spec.analysis.interval
    k = max(1, math.floor((now - entered) / interval) + 1)
    weight = spending_weight(k, math.ceil(max(planned, interval) / interval))
    alpha_ref, alpha_detect = share / 2.0, share / 2.0
    recent = [w for w in windows if w.arm == CANDIDATE and w.start + w.length > entered
              and w.start >= now - HORIZON and w.start + w.length <= now + interval]
    if not recent:
        return []
    alarms = []
    g = spec.gates
    if g.error_rate is not None and legacy.calls:
        p0 = _rate_upper(legacy.errors, legacy.calls, alpha_ref) + g.error_rate.max_increase
        counts = [(w.start, w.cell.errors, w.cell.calls) for w in recent]
        alarm = _alarm("error_rate", counts, p0, alpha_detect * weight, interval)
        if alarm is not None:
            alarms.append(_say(alarm, f"error rate {{rate}} of {{total}} calls since {{since}} ago is above "
                                      f"legacy's {format_percent(p0 - g.error_rate.max_increase)} (upper bound) "
                                      f"+ the allowed {format_percent(g.error_rate.max_increase)}", now))
    if g.latency is not None and legacy.latency.count:
        q, limit = g.latency.quantile, g.latency.max_ratio
        # A fixed-sample bound, looked at again at every interval: spent with the detector's weights.
        upper = quantile_interval(legacy.latency, q, alpha=min(2 * alpha_ref * weight, 0.5)).upper
        if math.isfinite(upper) and upper > 0:
            slow = limit * upper
            counts = [(w.start, _above(w.cell, slow), w.cell.latency.count) for w in recent]
            alarm = _alarm("latency", counts, 1.0 - q, alpha_detect * weight, interval)
            if alarm is not None:
                alarms.append(_say(alarm, f"{{rate}} of {{total}} calls since {{since}} ago took longer than "
                                          f"x{limit:g} legacy's p{q * 100:g} (upper bound {format_duration(upper)}), "
                                          f"where at most {format_percent(1 - q)} may", now))
    if g.mismatch_rate is not None:
        counts = [(w.start, w.cell.mismatches, w.cell.compared) for w in recent]
        alarm = _alarm("mismatch_rate", counts, g.mismatch_rate.max, alpha_detect * weight, interval)
        if alarm is not None:
            alarms.append(_say(alarm, f"answers differ in {{rate}} of {{total}} compared since {{since}} ago, above "
                                      f"the allowed {format_percent(g.mismatch_rate.max)}", now))
    return alarms


def _rate_upper(x: int, n: int, alpha: float) -> float:
    """An upper bound of a rate valid at every look (the one-sided normal-mixture sequence, Agresti-adjusted,
    tuned for 10,000 calls): legacy's rate, against which the candidate's recent calls are counted."""
    p = (x + 1.0) / (n + 2.0)
    return min(p + math.sqrt(p * (1.0 - p) / (n + 2.0)) * math.sqrt(n) * _cs_margin(n, alpha, "upper", 10_000.0),
               1.0)


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


def _alarm(gate: str, counts: Sequence[tuple[float, int, int]], p0: float, alpha: float, interval: float
           ) -> _Found | None:
    """The Shiryaev-Roberts sum over starts of the mixture likelihood ratios against rate p0; an alarm when it
    reaches (number of starts) / alpha (see the module's docstring)."""
    if not 0.0 < p0 < 1.0 or alpha <= 0.0:
        return None
    slot = max(interval, HORIZON / STARTS)
    slots: dict[float, list[int]] = {}
    for start, bad, total in counts:
        key = math.floor(start / slot) * slot
        entry = slots.setdefault(key, [0, 0])
        entry[0] += bad
        entry[1] += total
    alternatives = [(p1, math.log(p1 / p0), math.log1p(-p1) - math.log1p(-p0))
                    for p1 in (min(p0 * m, (1.0 + p0) / 2.0) for m in _ALTERNATIVES)]
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
    log_threshold = math.log(len(slots)) - math.log(alpha)
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
