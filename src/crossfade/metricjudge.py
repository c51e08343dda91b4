"""The judge of custom metrics: each declared gate's verdict with its numbers, and triggers on custom metrics.

The same guarantees as the built-in gates (see `crossfade.judge`): rates take the proportion confidence
sequences (the error-rate gate's), means and per-call counts the mean-difference sequences (the cost gate's),
quantiles the sketch intervals with alpha spent per look (the latency gate's). Every gate has one harmful
side: a ceiling (max_increase, max_decrease, max_ratio, max) fails when its lower bound is past the limit, a
floor (min_ratio, min) when its upper bound is below it. A floor gate's estimate below its limit is
`past_limit`, so the stage holds rather than promote. A count (lost messages) is exact: its `max` fails as
soon as the candidate's total exceeds it.

Where a custom metric's gates are judged: in stages where the candidate serves calls, or where it recorded the
metric (`metrics=` runs on shadow runs too); `similarity`, recorded by graded comparisons of shadow runs, in
stages that shadow or where scores were recorded.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from crossfade.judge import (
    FAIL,
    INCONCLUSIVE,
    NODATA,
    PASS,
    GateVerdict,
    _bounds,
    _verdict,
    beyond,
    format_rate,
    within,
)
from crossfade.spec.metrics import RELATIVE_GATES, SIMILARITY, CustomMetric, format_amount
from crossfade.routing import CANDIDATE, LEGACY
from crossfade.spec import Spec, Trigger, format_duration
from crossfade.stats import (
    binomial_upper_tail,
    cost_moments,
    look_alpha,
    mean_diff_cs,
    proportion_diff_cs,
    quantile_interval,
    quantile_ratio_interval,
)
from crossfade.telemetry import Cell, Tally

_FLOORS = ("min_ratio", "min")


def gate_names(spec: Spec) -> list[str]:
    """The names of the custom metrics' gates (`delivery.min`), in the spec's order."""
    return [f"{m.name}.{key}" for m in spec.metrics for key, _ in m.gates]


def custom_gates(spec: Spec, candidate: Cell, legacy: Cell, *, alpha: float, look: int, traffic: float,
                 shadowing: bool) -> list[GateVerdict]:
    """Every custom gate's verdict on one stage's per-arm cells (see the module's docstring for where)."""
    verdicts = []
    for metric in spec.metrics:
        if not metric.gates:
            continue
        recorded = any(name in candidate.metrics for name in metric.recorded)
        if metric.name == SIMILARITY:
            if not (shadowing or recorded):
                continue
        elif traffic <= 0.0 and not recorded:
            continue
        for key, limit in metric.gates:
            verdicts.append(_gate(metric, key, limit, candidate, legacy, alpha, look))
    return verdicts


def _gate(metric: CustomMetric, key: str, limit: float, c: Cell, l: Cell, alpha: float,  # noqa: E741
          look: int) -> GateVerdict:
    name = f"{metric.name}.{key}"
    floor = key in _FLOORS
    relative = key in RELATIVE_GATES
    if metric.kind == "quantile":
        result = _quantile(metric, key, limit, c, l, alpha, look)
    elif metric.kind == "rate":
        result = _rate(metric, key, limit, c, l, alpha)
    elif metric.kind == "count" and not relative:
        result = _count(metric, key, limit, c)
    else:
        result = _mean(metric, key, limit, c, l, alpha)
    if isinstance(result, str):
        return GateVerdict(name, NODATA, None, None, None, limit, 0, 0, 1 - alpha, f"{metric.label}: {result}",
                           floor)
    estimate, lower, upper, n_c, n_l = result
    if metric.kind == "count" and not relative:
        verdict = (PASS if not within(estimate, limit) else INCONCLUSIVE) if floor else \
            (FAIL if beyond(estimate, limit) else PASS)
    elif floor:
        verdict = FAIL if within(upper, limit) else PASS if beyond(lower, limit) else INCONCLUSIVE
    else:
        verdict = _verdict(lower, upper, limit)
    return GateVerdict(name, verdict, estimate, lower, upper, limit, n_c, n_l, 1 - alpha,
                       _message(metric, key, limit, verdict, estimate, lower, upper, n_c, n_l, alpha, floor), floor)


def _message(metric: CustomMetric, key: str, limit: float, verdict: str, estimate: float, lower: float,
             upper: float, n_c: int, n_l: int, alpha: float, floor: bool) -> str:
    ratio = key in ("max_ratio", "min_ratio")

    def show(x: float) -> str:
        if math.isinf(x) or math.isnan(x):
            return "inf" if x > 0 else "-inf" if x < 0 else "nan"
        if ratio:
            return f"x{x:.3g}"
        return format_rate(x) if metric.kind == "rate" else format_amount(metric, x)

    what = {"max_increase": "increase over legacy", "max_decrease": "decrease from legacy",
            "max_ratio": "of legacy", "min_ratio": "of legacy"}.get(key, "")
    if verdict == FAIL:
        where = "is below" if floor else "is above"
    elif verdict == PASS:
        where = "is within"
    elif floor:
        where = "is below, but not yet surely below," if within(estimate, limit) else "may fall below"
    else:
        where = "is past, but not yet surely above," if beyond(estimate, limit) else "may exceed"
    allowed = "the least allowed" if floor else "the allowed"
    samples = f"{n_c} candidate and {n_l} legacy" if key in RELATIVE_GATES else f"{n_c} candidate"
    if metric.kind == "count" and key in ("min", "max"):
        return (f"candidate {metric.label} {format_amount(metric, estimate)} {where} {allowed} "
                f"{format_amount(metric, limit)} ({samples} calls)")
    return (f"candidate {metric.label} {show(estimate)} {what} ({_bounds(alpha, show(lower), show(upper))}) "
            f"{where} {allowed} {show(limit)} ({samples} values)").replace("  ", " ")


Result = tuple[float, float, float, int, int] | str


def _tally(cell: Cell, name: str) -> Tally:
    return cell.metrics.get(name) or Tally()


def _count(metric: CustomMetric, key: str, limit: float, c: Cell) -> Result:
    if not c.calls and metric.name not in c.metrics:
        return "no candidate calls yet"
    total = _tally(c, metric.name).total
    return total, total, total, c.calls, 0


def _moments(metric: CustomMetric, cell: Cell) -> tuple[float, float, int]:
    """(mean, variance, n) of the values judged: each recorded value, or for a count each call's total."""
    tally = _tally(cell, metric.name)
    if metric.kind == "count":
        mean, var = cost_moments(tally.total, tally.squares, cell.calls)
        return mean, var, cell.calls
    mean, var = cost_moments(tally.total, tally.squares, tally.count)
    return mean, var, tally.count


def _mean(metric: CustomMetric, key: str, limit: float, c: Cell, l: Cell, alpha: float) -> Result:  # noqa: E741
    m_c, v_c, n_c = _moments(metric, c)
    relative = key in RELATIVE_GATES
    m_l, v_l, n_l = _moments(metric, l) if relative else (0.0, 0.0, 0)
    if n_c < 2 or (relative and n_l < 2):
        unit = "calls" if metric.kind == "count" else "values"
        return f"fewer than 2 {unit} recorded on " + " and ".join(
            arm for arm, n in ((CANDIDATE, n_c), (LEGACY, n_l if relative else 2)) if n < 2)
    if key in ("max", "min"):
        # One sample against a fixed limit: the limit plays the second arm, with no variance of its own.
        low = mean_diff_cs(m_c, v_c, n_c, limit, 0.0, 1, alpha=alpha, sided="lower")
        high = mean_diff_cs(m_c, v_c, n_c, limit, 0.0, 1, alpha=alpha, sided="upper")
        return m_c, limit + low.lower, limit + high.upper, n_c, 0
    if key in ("max_increase", "max_decrease"):
        sign = 1.0 if key == "max_increase" else -1.0
        low = mean_diff_cs(sign * m_c, v_c, n_c, sign * m_l + limit, v_l, n_l, alpha=alpha, sided="lower")
        high = mean_diff_cs(sign * m_c, v_c, n_c, sign * m_l + limit, v_l, n_l, alpha=alpha, sided="upper")
        return sign * (m_c - m_l), limit + low.lower, limit + high.upper, n_c, n_l
    if m_l <= 0:
        return "legacy's mean is not above zero, so a ratio to it means nothing; use max_increase or max_decrease"
    # Judged as mean_c - ratio * mean_l against 0 (the cost gate's way); bounds divided back by legacy's mean.
    scaled = limit * limit * v_l
    low = mean_diff_cs(m_c, v_c, n_c, limit * m_l, scaled, n_l, alpha=alpha, sided="lower")
    high = mean_diff_cs(m_c, v_c, n_c, limit * m_l, scaled, n_l, alpha=alpha, sided="upper")
    return m_c / m_l, max(limit + low.lower / m_l, 0.0), limit + high.upper / m_l, n_c, n_l


def _fraction(metric: CustomMetric, cell: Cell) -> tuple[int, int]:
    """(numerator, denominator) of a rate as whole counts, the numerator clipped to the denominator."""
    n = cell.calls if metric.denominator == "calls" else round(_tally(cell, metric.denominator).total)
    x = round(_tally(cell, metric.numerator).total)
    n = max(n, 0)
    return min(max(x, 0), n), n


def _rate(metric: CustomMetric, key: str, limit: float, c: Cell, l: Cell, alpha: float) -> Result:  # noqa: E741
    x_c, n_c = _fraction(metric, c)
    relative = key in RELATIVE_GATES
    x_l, n_l = _fraction(metric, l) if relative else (0, 0)
    if not n_c or (relative and not n_l):
        missing = " and ".join(arm for arm, n in ((CANDIDATE, n_c), (LEGACY, n_l if relative else 1)) if not n)
        return f"no {metric.denominator} recorded yet on {missing}"
    p_c = x_c / n_c
    if key in ("max_increase", "max_decrease"):
        if key == "max_decrease":  # a decrease of the rate is an increase of its complement
            x_c, x_l = n_c - x_c, n_l - x_l
        low = proportion_diff_cs(x_c, n_c, x_l, n_l, alpha=alpha, sided="lower")
        high = proportion_diff_cs(x_c, n_c, x_l, n_l, alpha=alpha, sided="upper", null_difference=limit)
        return low.estimate, low.lower, high.upper, n_c, n_l
    if key in ("max", "min"):
        # The mismatch gate's one-sample bounds on the harmful side's share: the rate, or its complement.
        share, bound = (p_c, limit) if key == "max" else (1.0 - p_c, 1.0 - limit)
        x = x_c if key == "max" else n_c - x_c
        shrunk = (x + 1) / (n_c + 2)
        variance = shrunk * (1 - shrunk)
        low = mean_diff_cs(share, variance, n_c, bound, 0.0, 1, alpha=alpha, sided="lower")
        high = mean_diff_cs(share, max(variance, bound * (1 - bound)), n_c, bound, 0.0, 1, alpha=alpha,
                            sided="upper")
        lower, upper = max(bound + low.lower, 0.0), min(bound + high.upper, 1.0)
        if key == "min":
            lower, upper = 1.0 - upper, 1.0 - lower
        return p_c, lower, upper, n_c, 0
    p_l = x_l / n_l
    if p_l <= 0:
        return "legacy's rate is zero, so a ratio to it means nothing; use max_increase or max_decrease"
    # Bernoulli moments, each arm shrunk by one success and one failure (as the error-rate gate's).
    var_c = ((x_c + 1) / (n_c + 2)) * (1 - (x_c + 1) / (n_c + 2))
    var_l = ((x_l + 1) / (n_l + 2)) * (1 - (x_l + 1) / (n_l + 2))
    scaled = limit * limit * var_l
    low = mean_diff_cs(p_c, var_c, n_c, limit * p_l, scaled, n_l, alpha=alpha, sided="lower")
    high = mean_diff_cs(p_c, var_c, n_c, limit * p_l, scaled, n_l, alpha=alpha, sided="upper")
    return p_c / p_l, max(limit + low.lower / p_l, 0.0), limit + high.upper / p_l, n_c, n_l


def _quantile(metric: CustomMetric, key: str, limit: float, c: Cell, l: Cell, alpha: float,  # noqa: E741
              look: int) -> Result:
    q = metric.quantile or 0.5
    sketch_c = _tally(c, metric.name).sketch
    relative = key in RELATIVE_GATES
    sketch_l = _tally(l, metric.name).sketch if relative else None
    n_c = sketch_c.count if sketch_c is not None else 0
    n_l = sketch_l.count if sketch_l is not None else 0
    if not n_c or (relative and not n_l):
        missing = " and ".join(arm for arm, n in ((CANDIDATE, n_c), (LEGACY, n_l if relative else 1)) if not n)
        return f"no values recorded yet on {missing}"
    # Look k spends alpha * 6 / (pi^2 k^2), as the latency gate: two-sided at twice that.
    spent = min(2 * look_alpha(alpha, look), 0.999)
    if key in ("max", "min"):
        i = quantile_interval(sketch_c, q, alpha=spent)  # type: ignore[arg-type]
        return i.estimate, i.lower, i.upper, n_c, 0
    if key in ("max_ratio", "min_ratio"):
        i = quantile_ratio_interval(sketch_c, sketch_l, q, alpha=spent)  # type: ignore[arg-type]
        return i.estimate, i.lower, i.upper, n_c, n_l
    ci_c = quantile_interval(sketch_c, q, alpha=spent / 2)  # type: ignore[arg-type]
    ci_l = quantile_interval(sketch_l, q, alpha=spent / 2)  # type: ignore[arg-type]
    if key == "max_increase":
        return ci_c.estimate - ci_l.estimate, ci_c.lower - ci_l.upper, ci_c.upper - ci_l.lower, n_c, n_l
    return ci_l.estimate - ci_c.estimate, ci_l.lower - ci_c.upper, ci_l.upper - ci_c.lower, n_c, n_l


# -- triggers ----------------------------------------------------------------------------------


def custom_trigger(trigger: Trigger, metric: CustomMetric, cells: Mapping[str, Cell], alpha: float
                   ) -> tuple[float | None, int, bool]:
    """A trigger on a custom metric over some cells: (the candidate's value, the samples behind it, whether it is
    past the threshold with confidence 1 - alpha). A count is exact; a rate takes the exact binomial test, a
    mean its confidence sequence, a quantile the sketch interval."""
    c = cells.get(CANDIDATE) or Cell()
    above, below = trigger.above, trigger.below
    if metric.kind == "count":
        if not c.calls and metric.name not in c.metrics:
            return None, 0, False
        total = _tally(c, metric.name).total
        samples = max(c.calls, _tally(c, metric.name).count)
        return total, samples, beyond(total, above) if above is not None else within(total, below)  # type: ignore[arg-type]
    if metric.kind == "rate":
        x, n = _fraction(metric, c)
        if not n:
            return None, 0, False
        if above is not None:
            return x / n, n, x / n > above and above < 1.0 and binomial_upper_tail(x, n, above) < alpha
        return x / n, n, x / n < below and below > 0.0 and binomial_upper_tail(n - x, n, 1.0 - below) < alpha  # type: ignore[operator]
    if metric.kind == "quantile":
        sketch = _tally(c, metric.name).sketch
        if sketch is None or not sketch.count:
            return None, 0, False
        i = quantile_interval(sketch, metric.quantile or 0.5, alpha=min(2 * alpha, 0.999))
        sure = beyond(i.lower, above) if above is not None else within(i.upper, below)  # type: ignore[arg-type]
        return i.estimate, sketch.count, sure
    mean, var, n = _moments(metric, c)
    if n < 2:
        return None, n, False
    limit = above if above is not None else below
    sided = "lower" if above is not None else "upper"
    bound = mean_diff_cs(mean, var, n, limit, 0.0, 1, alpha=alpha, sided=sided)  # type: ignore[arg-type]
    return mean, n, bound.lower > 0 if above is not None else bound.upper < 0


def firing_message(trigger: Trigger, metric: CustomMetric, value: float, samples: int, level: str) -> str:
    """What a fired trigger on a custom metric says."""
    side, limit = ("above", trigger.above) if trigger.above is not None else ("below", trigger.below)
    shown = format_rate(value) if metric.kind == "rate" else format_amount(metric, value)
    threshold = format_amount(metric, limit)  # type: ignore[arg-type]
    held = f", held for {format_duration(trigger.for_)}" if trigger.for_ else ""
    what = metric.label
    return (f"trigger {metric.name} {'>' if side == 'above' else '<'} {threshold} over "
            f"{format_duration(trigger.window)} fired: candidate {what} {shown} over {samples} "
            f"samples, {side} {threshold}" + ("" if metric.kind == "count" else f" at {level} confidence") + held)


def declared_figures(spec: Spec, cells: Mapping[str, Cell]) -> dict[str, dict[str, Any]]:
    """Each declared custom metric's value per arm, with its kind, label and which side is bad, as status, the
    dashboard, the API and /metrics show them."""
    return {m.name: {"kind": m.kind, "label": m.label, "bad": m.bad, **figures(m, cells)} for m in spec.metrics}


def figures(metric: CustomMetric, cells: Mapping[str, Cell]) -> dict[str, Any]:
    """The metric's value per arm (None without data)."""
    out: dict[str, Any] = {}
    for arm in (CANDIDATE, LEGACY):
        cell = cells.get(arm) or Cell()
        if metric.kind == "rate":
            x, n = _fraction(metric, cell)
            out[arm] = x / n if n else None
        elif metric.kind == "count":
            out[arm] = _tally(cell, metric.name).total if metric.name in cell.metrics or cell.calls else None
        elif metric.kind == "quantile":
            sketch = _tally(cell, metric.name).sketch
            out[arm] = sketch.quantile(metric.quantile or 0.5) if sketch is not None and sketch.count else None
        else:
            tally = _tally(cell, metric.name)
            out[arm] = tally.mean if tally.count else None
    return out
