"""The judge: each gate's verdict on a stage's data with the numbers behind it, and the instant triggers.

How the spec's `analysis.confidence` is spent. Let alpha = 1 - confidence. `analysis.change_share` of it
goes to change detection (`crossfade.changes`); the rest is split evenly (Bonferroni) across every gate of
every period that is judged (all stages but the last, which has no legacy to compare with, and the `bake` of
the last stage, judged against the legacy measured before it): each gate in each period gets
alpha_g = alpha x (1 - change_share) / (judged periods x gates), one-sided, against FAIL. Within
a stage the judge looks every `analysis.interval` for as long as the stage lasts: error rate, mismatch rate
and cost use anytime-valid confidence sequences, which hold at alpha_g however often they are looked at;
latency quantiles use fixed-sample intervals, so look k spends alpha_g * 6 / (pi^2 k^2), which sums to at most
alpha_g. A candidate exactly at every gate's limit is therefore failed anywhere in the migration with
probability at most alpha. PASS is judged with the mirror-image bound at the same alpha_g.

A gate is judged only in the stages where it can have data: the mismatch gate where the stage shadows (answers
are compared on shadow runs). A gate whose estimate is past its limit while its bounds still straddle it
(`GateVerdict.past_limit`) holds the stage: the controller does not promote on it (see `controller.step`).
Bounds are compared with the limit after a relative tolerance of 1e-9, so a candidate exactly at the limit
is not failed by the rounding of floating-point arithmetic.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from crossfade.routing import CANDIDATE, LEGACY
from crossfade.spec import Spec, Trigger, format_duration, format_percent
from crossfade.stats import (
    MannWhitney,
    SampleRatio,
    cost_moments,
    look_alpha,
    mann_whitney,
    mean_diff_cs,
    binomial_upper_tail,
    proportion_diff_cs,
    quantile_interval,
    quantile_ratio_interval,
    sample_ratio,
)
from crossfade.telemetry import Cell, Window, merge_windows

PASS: Final = "PASS"
FAIL: Final = "FAIL"
INCONCLUSIVE: Final = "INCONCLUSIVE"
NODATA: Final = "NODATA"

# A sample-ratio p-value below this means the split of calls between arms is not the one routing asked
# for (a recording or routing bug): the judge's numbers cannot be trusted, so the stage holds.
SAMPLE_RATIO_P: Final = 0.001


@dataclass(frozen=True, slots=True)
class GateVerdict:
    """One gate's verdict with the numbers behind it and a sentence a person can act on. Immutable."""

    gate: str
    verdict: str
    estimate: float | None
    lower: float | None
    upper: float | None
    limit: float
    candidate_samples: int
    legacy_samples: int
    confidence: float
    message: str
    floor: bool = False
    """True for a gate whose limit is a floor (a custom metric's `min`, `min_ratio`): below it is the harm."""

    @property
    def past_limit(self) -> bool:
        """True when the estimate itself is beyond the limit, on the harmful side (below a floor), whatever
        the verdict: not evidence of harm yet, but not a candidate to promote either."""
        if self.estimate is None:
            return False
        return within(self.estimate, self.limit) if self.floor else beyond(self.estimate, self.limit)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able form (infinite bounds become None), as verdict events record it."""
        return {
            "gate": self.gate, "verdict": self.verdict, "estimate": _finite(self.estimate),
            "lower": _finite(self.lower), "upper": _finite(self.upper), "limit": self.limit,
            "samples": {CANDIDATE: self.candidate_samples, LEGACY: self.legacy_samples},
            "confidence": self.confidence, "message": self.message,
            **({"floor": True} if self.floor else {}),
        }


@dataclass(frozen=True, slots=True)
class Judgement:
    """Every gate's verdict on one stage at one look, with the reported (non-gating) extras. Immutable."""

    gates: tuple[GateVerdict, ...]
    look: int
    sample_ratio: SampleRatio | None
    latency_shift: MannWhitney | None

    @property
    def failed(self) -> tuple[GateVerdict, ...]:
        """The gates that FAIL."""
        return tuple(g for g in self.gates if g.verdict == FAIL)

    @property
    def nodata(self) -> tuple[GateVerdict, ...]:
        """The gates with no data to judge."""
        return tuple(g for g in self.gates if g.verdict == NODATA)

    @property
    def past_limit(self) -> tuple[GateVerdict, ...]:
        """The gates that do not FAIL yet whose estimate is beyond their limit."""
        return tuple(g for g in self.gates if g.verdict != FAIL and g.past_limit)

    @property
    def all_pass(self) -> bool:
        """True when every gate PASSes (vacuously true with no gates)."""
        return all(g.verdict == PASS for g in self.gates)

    @property
    def split_broken(self) -> bool:
        """True when calls per arm do not match the traffic split (p < 0.001)."""
        return self.sample_ratio is not None and self.sample_ratio.p_value < SAMPLE_RATIO_P

    def summary(self) -> tuple[tuple[str, str], ...]:
        """(gate, verdict) pairs, as the state keeps them."""
        return tuple((g.gate, g.verdict) for g in self.gates)


def gate_alpha(spec: Spec) -> float:
    """The one-sided alpha each gate gets in each judged period (see the module's docstring): the spec's alpha
    less change detection's share, split over the judged stages (and the bake) and the gates."""
    judged_stages = max(len(spec.stages) - 1, 1) + (1 if spec.bake else 0)
    gates = max(len(enabled_gates(spec)), 1)
    return (1.0 - spec.analysis.confidence) * (1.0 - spec.analysis.change_share) / (judged_stages * gates)


def enabled_gates(spec: Spec) -> list[str]:
    """The names of the gates the spec turns on, in a fixed order."""
    from crossfade.metricjudge import gate_names

    g = spec.gates
    return [name for name, on in (("error_rate", g.error_rate), ("latency", g.latency), ("cost", g.cost),
                                  ("mismatch_rate", g.mismatch_rate),
                                  ("latency_first_chunk", g.latency_first_chunk)) if on is not None] + gate_names(spec)


def judge(spec: Spec, cells: Mapping[str, Cell], *, look: int, traffic: float, shadowing: bool = False
          ) -> Judgement:
    """Judge a stage on its per-arm cells at the `look`-th look (1-based); `traffic` is its candidate share.

    With `shadowing`, shadow runs add calls to an arm beyond what routing sends it, so the sample-ratio
    check (which compares calls per arm with the traffic split) is not made; without it, no answers are
    compared, so the mismatch gate is not judged.
    """
    alpha = gate_alpha(spec)
    candidate = cells.get(CANDIDATE) or Cell()
    legacy = cells.get(LEGACY) or Cell()
    verdicts: list[GateVerdict] = []
    g = spec.gates
    if g.error_rate is not None:
        verdicts.append(_error_rate(candidate, legacy, g.error_rate.max_increase, alpha))
    if g.latency is not None:
        verdicts.append(_latency(candidate, legacy, g.latency.quantile, g.latency.max_ratio, alpha, look))
    if g.cost is not None:
        verdicts.append(_cost(candidate, legacy, g.cost.max_ratio, alpha))
    # Answers are compared on shadow runs (or, in a batch, by the validator): where there are none the gate
    # would be NODATA for ever and hold the stage, so it is not judged there.
    if g.mismatch_rate is not None and (shadowing or candidate.compared):
        verdicts.append(_mismatch(candidate, g.mismatch_rate.max, alpha))
    if g.latency_first_chunk is not None:
        first = g.latency_first_chunk
        verdicts.append(_latency(_first_chunk(candidate), _first_chunk(legacy), first.quantile, first.max_ratio,
                                 alpha, look, gate="latency_first_chunk"))
    if spec.metrics:
        from crossfade.metricjudge import custom_gates

        verdicts += custom_gates(spec, candidate, legacy, alpha=alpha, look=look, traffic=traffic,
                                 shadowing=shadowing)
    ratio = None
    if 0.0 < traffic < 1.0 and candidate.calls and legacy.calls and not shadowing and not (spec.allow or spec.deny):
        ratio = sample_ratio(candidate.calls, legacy.calls, traffic)
    # Calls reported without timings (counts from another language) have no latency to compare.
    shift = mann_whitney(candidate.latency, legacy.latency) if candidate.latency.count and legacy.latency.count else None
    return Judgement(tuple(verdicts), look, ratio, shift)


def format_rate(fraction: float) -> str:
    """A measured rate for people: two decimals of a percent (`2.03%`), unlike a spec's exact `2.5%`."""
    return f"{fraction * 100:.2f}%"


def _level(alpha: float) -> str:
    confidence = 100.0 * (1.0 - alpha)
    text = f"{confidence:.4f}".rstrip("0").rstrip(".")
    return f"{text}%"


def _bounds(alpha: float, low: str, high: str) -> str:
    """How a gate's two bounds read: each one-sided at 1 - alpha, valid together over every look."""
    return f"bounds {low}..{high}, each one-sided at {_level(alpha)} over all looks"


# Bounds within this relative distance of a limit count as at it: arithmetic on exactly-at-limit values
# (0.0015 - 1.5 * 0.001) leaves a residue of 1e-19 that must not decide a verdict.
_TOLERANCE: Final = 1e-9


def beyond(value: float, limit: float) -> bool:
    """True when `value` is above `limit` by more than floating-point rounding."""
    return value > limit + _TOLERANCE * max(abs(limit), 1e-12)


def within(value: float, limit: float) -> bool:
    """True when `value` is below `limit` by more than floating-point rounding."""
    return value < limit - _TOLERANCE * max(abs(limit), 1e-12)


def _pp(x: float) -> str:
    return f"{x * 100:+.2f} pp"


def _verdict(lower: float, upper: float, limit: float) -> str:
    if beyond(lower, limit):
        return FAIL
    if within(upper, limit):
        return PASS
    return INCONCLUSIVE


def _error_rate(candidate: Cell, legacy: Cell, limit: float, alpha: float) -> GateVerdict:
    n_c, n_l = candidate.calls, legacy.calls
    if not n_c or not n_l:
        return _nodata("error_rate", limit, n_c, n_l, alpha, "error rate: no calls yet on " + _missing(n_c, n_l))
    low = proportion_diff_cs(candidate.errors, n_c, legacy.errors, n_l, alpha=alpha, sided="lower")
    # PASS rejects "the increase is at least the limit": the variance is taken there (score-test style).
    high = proportion_diff_cs(candidate.errors, n_c, legacy.errors, n_l, alpha=alpha, sided="upper",
                              null_difference=limit)
    verdict = _verdict(low.lower, high.upper, limit)
    message = (f"candidate error rate {_pp(low.estimate)} ({_bounds(alpha, _pp(low.lower), _pp(high.upper))}) "
               f"{_where(verdict, low.estimate, limit)} the allowed {_pp(limit)} (candidate "
               f"{format_rate(candidate.errors / n_c)} of {n_c}, legacy {format_rate(legacy.errors / n_l)} of {n_l})")
    return GateVerdict("error_rate", verdict, low.estimate, low.lower, high.upper, limit, n_c, n_l, 1 - alpha,
                       message)


def _where(verdict: str, estimate: float, limit: float) -> str:
    if verdict == FAIL:
        return "is above"
    if verdict == PASS:
        return "is within"
    return "is past, but not yet surely above," if beyond(estimate, limit) else "may exceed"


def _first_chunk(cell: Cell) -> Cell:
    """A cell whose latency is the streams' latency to their first chunk (none timed: an empty one)."""
    view = Cell()
    if cell.first_chunk is not None:
        view.latency = cell.first_chunk
    return view


def _latency(candidate: Cell, legacy: Cell, q: float, limit: float, alpha: float, look: int,
             gate: str = "latency") -> GateVerdict:
    n_c, n_l = candidate.latency.count, legacy.latency.count
    name = f"p{q * 100:g}" + (" first-chunk" if gate == "latency_first_chunk" else "")
    if not n_c or not n_l:
        return _nodata(gate, limit, n_c, n_l, alpha, f"{name} latency: no calls yet on " + _missing(n_c, n_l))
    # Look k spends alpha * 6 / (pi^2 k^2) of the gate's alpha; two-sided at twice that, each one-sided bound
    # holds at it, and over all looks at alpha.
    interval = quantile_ratio_interval(candidate.latency, legacy.latency, q,
                                       alpha=min(2 * look_alpha(alpha, look), 0.999))
    verdict = _verdict(interval.lower, interval.upper, limit)
    bounds = _bounds(alpha, _ratio(interval.lower), _ratio(interval.upper))
    message = (f"candidate {name} latency x{_ratio(interval.estimate)} of legacy ({bounds}) "
               f"{_where(verdict, interval.estimate, limit)} the allowed x{limit:g} ({n_c} and {n_l} calls)")
    return GateVerdict(gate, verdict, interval.estimate, interval.lower, interval.upper, limit, n_c, n_l,
                       1 - alpha, message)


def _ratio(x: float) -> str:
    return "inf" if math.isinf(x) else "nan" if math.isnan(x) else f"{x:.2f}"


def _cost(candidate: Cell, legacy: Cell, limit: float, alpha: float) -> GateVerdict:
    n_c, n_l = candidate.costed, legacy.costed
    if n_c < 2 or n_l < 2:
        return _nodata("cost", limit, n_c, n_l, alpha, "cost: fewer than 2 calls report a cost on "
                       + _missing(n_c - 1 if n_c < 2 else n_c, n_l - 1 if n_l < 2 else n_l))
    mean_c, mean_l = candidate.cost_sum / n_c, legacy.cost_sum / n_l
    if mean_l <= 0:
        return _free_legacy(candidate, legacy, limit, alpha)
    estimate, lower, upper = cost_ratio_bounds(candidate, legacy, limit, alpha)
    verdict = _verdict(lower, upper, limit)
    message = (f"candidate cost per call x{estimate:.2f} of legacy ({_bounds(alpha, _ratio(lower), _ratio(upper))}) "
               f"{_where(verdict, estimate, limit)} the allowed x{limit:g} ({mean_c:.6g} vs {mean_l:.6g} per call)")
    return GateVerdict("cost", verdict, estimate, lower, upper, limit, n_c, n_l, 1 - alpha, message)


def cost_ratio_bounds(candidate: Cell, legacy: Cell, limit: float, alpha: float) -> tuple[float, float, float]:
    """(estimate, lower, upper) of the candidate's mean cost over legacy's, each bound one-sided at alpha.

    Judged as mean_c - limit * mean_l against 0 with the mean-difference sequence; the ratio's bounds follow by
    dividing by legacy's mean. The candidate's variance is taken at least at limit^2 times legacy's, the
    variance a candidate exactly at the limit would have if its costs were legacy's scaled: two or three
    calls that happen to cost about the same otherwise read as a near-certain mean (at 1-2 calls/s an
    identical candidate was failed 0.25-0.35% of the time and one at the limit 2.7-3.5%, against 0.11%).
    Nor is either arm's variance taken below the pooled variance of both arms' costs (legacy's scaled by the
    limit): when each arm's few calls cost the same within the arm (a healthy candidate's two whole answers
    at 31 tokens, legacy's two streamed ones at 14), both variances are zero and the difference would read
    as certain. A candidate exactly at the limit, with legacy's costs scaled, pools to legacy's own variance.
    Both arms need a mean cost above zero on legacy's side and 2 calls each.
    """
    n_c, n_l = candidate.costed, legacy.costed
    mean_c, var_c = cost_moments(candidate.cost_sum, candidate.cost_sq, n_c)
    mean_l, var_l = cost_moments(legacy.cost_sum, legacy.cost_sq, n_l)
    _, pooled = cost_moments(candidate.cost_sum + limit * legacy.cost_sum,
                             candidate.cost_sq + limit * limit * legacy.cost_sq, n_c + n_l)
    scaled_l = limit * limit * var_l
    floored_c = max(var_c, scaled_l, pooled) if math.isfinite(var_c) else var_c
    floored_l = max(scaled_l, pooled) if math.isfinite(scaled_l) else scaled_l
    low = mean_diff_cs(mean_c, floored_c, n_c, limit * mean_l, floored_l, n_l, alpha=alpha, sided="lower")
    high = mean_diff_cs(mean_c, floored_c, n_c, limit * mean_l, floored_l, n_l, alpha=alpha, sided="upper")
    # A mean cost is not negative, nor is a ratio of them.
    return mean_c / mean_l, max(limit + low.lower / mean_l, 0.0), limit + high.upper / mean_l


def _free_legacy(candidate: Cell, legacy: Cell, limit: float, alpha: float) -> GateVerdict:
    """The cost gate when legacy costs nothing: x`limit` of nothing is nothing, so any cost is above it."""
    n_c, n_l = candidate.costed, legacy.costed
    mean_c, var_c = cost_moments(candidate.cost_sum, candidate.cost_sq, n_c)
    if mean_c <= 0:
        message = (f"candidate cost per call is zero, as legacy's: within the allowed x{limit:g} "
                   f"({n_c} and {n_l} calls)")
        return GateVerdict("cost", PASS, 1.0, 0.0, 1.0, limit, n_c, n_l, 1 - alpha, message)
    low = mean_diff_cs(mean_c, var_c, n_c, 0.0, 0.0, n_l, alpha=alpha, sided="lower")
    verdict = FAIL if low.lower > 0 else INCONCLUSIVE
    where = "is above" if verdict == FAIL else "may exceed"
    message = (f"candidate cost per call {mean_c:.6g} against legacy's 0 (lower bound {low.lower:.6g}, one-sided "
               f"at {_level(alpha)} over all looks) {where} the allowed x{limit:g} of nothing; if legacy's "
               "cost is simply not recorded, record it (cost= on the handle) or drop gates.cost")
    return GateVerdict("cost", verdict, math.inf, math.inf if verdict == FAIL else 0.0, math.inf, limit, n_c, n_l,
                       1 - alpha, message)


def _mismatch(candidate: Cell, limit: float, alpha: float) -> GateVerdict:
    n = candidate.compared
    if not n:
        return _nodata("mismatch_rate", limit, 0, 0, alpha, "mismatch rate: no answers compared yet (shadow runs "
                       "compare them)")
    rate = candidate.mismatches / n
    # The variance of the shrunk rate (x+1)/(n+2): with no mismatch seen yet, 30 comparisons must not
    # "prove" a rate below the limit, which a plain rate's zero variance would.
    shrunk = (candidate.mismatches + 1) / (n + 2)
    variance = shrunk * (1 - shrunk)
    # One sample against a fixed limit: the limit plays the second arm, with no variance of its own.
    low = mean_diff_cs(rate, variance, n, limit, 0.0, 1, alpha=alpha, sided="lower")
    # PASS rejects "the rate is at least the limit": the variance is taken there too (score-test style).
    high = mean_diff_cs(rate, max(variance, limit * (1 - limit)), n, limit, 0.0, 1, alpha=alpha, sided="upper")
    lower, upper = max(limit + low.lower, 0.0), min(limit + high.upper, 1.0)
    verdict = _verdict(lower, upper, limit)
    message = (f"candidate answers differ from legacy's in {format_rate(rate)} of {n} compared "
               f"({_bounds(alpha, format_rate(lower), format_rate(upper))}) {_where(verdict, rate, limit)} the "
               f"allowed {format_percent(limit)}")
    return GateVerdict("mismatch_rate", verdict, rate, lower, upper, limit, n, n, 1 - alpha, message)


def _missing(n_c: int, n_l: int) -> str:
    return " and ".join(arm for arm, n in ((CANDIDATE, n_c), (LEGACY, n_l)) if not n) or "either arm"


def _nodata(gate: str, limit: float, n_c: int, n_l: int, alpha: float, message: str) -> GateVerdict:
    return GateVerdict(gate, NODATA, None, None, None, limit, max(n_c, 0), max(n_l, 0), 1 - alpha, message)


def _finite(x: float | None) -> float | None:
    return None if x is None or math.isinf(x) or math.isnan(x) else x


# -- triggers ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Firing:
    """A trigger whose threshold was crossed (held for its `for`), with the value that crossed it."""

    trigger: Trigger
    value: float
    samples: int
    message: str


def trigger_value(trigger: Trigger, cells: Mapping[str, Cell]) -> tuple[float | None, int]:
    """The trigger's metric over some cells, and the candidate samples behind it (None: not computable)."""
    c = cells.get(CANDIDATE) or Cell()
    l = cells.get(LEGACY) or Cell()  # noqa: E741 - the legacy arm, beside c
    metric = trigger.metric
    if metric in ("error_rate", "timeout_rate", "fallback_rate"):
        count = {"error_rate": c.errors, "timeout_rate": c.timeouts, "fallback_rate": c.fallbacks}[metric]
        return (count / c.calls if c.calls else None), c.calls
    if metric == "mismatch_rate":
        return (c.mismatches / c.compared if c.compared else None), c.compared
    if metric.startswith("latency_p"):
        q = float(metric.removeprefix("latency_p").removesuffix("_ratio")) / 100
        if not c.latency.count:
            return None, 0
        value = c.latency.quantile(q)
        if metric.endswith("_ratio"):
            if not l.latency.count or l.latency.quantile(q) <= 0:
                return None, c.latency.count
            value /= l.latency.quantile(q)
        return value, c.latency.count
    if metric == "cost_ratio":
        if not c.costed or not l.costed or l.cost_sum <= 0:
            return None, c.costed
        return (c.cost_sum / c.costed) / (l.cost_sum / l.costed), c.costed
    raise ValueError(f"unknown trigger metric {metric!r}")


def trigger_sure(trigger: Trigger, cells: Mapping[str, Cell], alpha: float) -> bool:
    """Whether the trigger's metric is above its threshold with confidence 1 - alpha, not just measured above.

    A raw rate over a handful of calls crosses any threshold by chance (1 error in 5 calls is 20%: an
    `error_rate > 5% over 5m` trigger rolled back an identical candidate in 14 of 30 runs at 2 calls/s).
    Rates take the exact binomial test (the one-sided Clopper-Pearson bound above the threshold), latency
    quantiles and their ratios the lower bound of the sketch interval, the cost ratio the cost gate's bound.
    """
    c = cells.get(CANDIDATE) or Cell()
    l = cells.get(LEGACY) or Cell()  # noqa: E741 - the legacy arm, beside c
    metric, above = trigger.metric, trigger.above
    if metric in ("error_rate", "timeout_rate", "fallback_rate", "mismatch_rate"):
        count, n = {"error_rate": (c.errors, c.calls), "timeout_rate": (c.timeouts, c.calls),
                    "fallback_rate": (c.fallbacks, c.calls), "mismatch_rate": (c.mismatches, c.compared)}[metric]
        return 0 < n and above < 1.0 and binomial_upper_tail(count, n, above) < alpha
    if metric.startswith("latency_p"):
        q = float(metric.removeprefix("latency_p").removesuffix("_ratio")) / 100
        if not c.latency.count:
            return False
        if metric.endswith("_ratio"):
            if not l.latency.count:
                return False
            return quantile_ratio_interval(c.latency, l.latency, q, alpha=2 * alpha).lower > above
        return quantile_interval(c.latency, q, alpha=2 * alpha).lower > above
    if metric == "cost_ratio":
        if c.costed < 2 or l.costed < 2 or l.cost_sum <= 0:
            return False
        return beyond(cost_ratio_bounds(c, l, above, alpha)[1], above)
    raise ValueError(f"unknown trigger metric {metric!r}")


def _cells_between(windows: Iterable[Window], start: float, end: float) -> dict[str, Cell]:
    return merge_windows(w for w in windows if w.start + w.length > start and w.start < end)


def check_triggers(spec: Spec, windows: Sequence[Window], now: float) -> list[Firing]:
    """The triggers that fire now: the metric over the sliding `window` ending now above the threshold with
    the spec's confidence (`trigger_sure`) on at least `min_samples` candidate samples, and, with `for`, at
    every look of the last `for` as well."""
    interval = spec.analysis.interval
    alpha = 1.0 - spec.analysis.confidence
    fired = []
    for trigger in spec.triggers:
        custom = spec.metric(trigger.metric)
        looks = 1 + (math.ceil(trigger.for_ / interval) if trigger.for_ else 0)
        values = []
        for k in range(looks):
            end = now - k * interval
            cells = _cells_between(windows, end - trigger.window, end)
            if custom is not None:
                from crossfade.metricjudge import custom_trigger

                value, samples, sure = custom_trigger(trigger, custom, cells, alpha)
                if value is None or samples < max(trigger.min_samples, 1) or not sure:
                    break
            else:
                value, samples = trigger_value(trigger, cells)
                if value is None or samples < max(trigger.min_samples, 1) or value <= trigger.above \
                        or not trigger_sure(trigger, cells, alpha):
                    break
            values.append((value, samples))
        else:
            value, samples = values[0]
            if custom is not None:
                from crossfade.metricjudge import firing_message

                message = firing_message(trigger, custom, value, samples, _level(alpha))
            else:
                message = _firing_message(trigger, value, samples, alpha)
            fired.append(Firing(trigger, value, samples, message))
    return fired


def _firing_message(trigger: Trigger, value: float, samples: int, alpha: float) -> str:
    metric = trigger.metric
    if metric.endswith("_ratio"):
        shown, limit = f"x{value:.2f}", f"x{trigger.above:g}"
    elif metric.startswith("latency_p"):
        shown, limit = format_duration(value), format_duration(trigger.above)
    else:
        shown, limit = format_rate(value), format_percent(trigger.above)
    held = f", held for {format_duration(trigger.for_)}" if trigger.for_ else ""
    return (f"trigger {metric} > {limit} over {format_duration(trigger.window)} fired: candidate {metric} "
            f"{shown} over {samples} samples, above {limit} at {_level(alpha)} confidence{held}")
