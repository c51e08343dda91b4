"""The statistics behind the judge: always-valid intervals for rates and means, distribution-free quantile
intervals, Mann-Whitney on sketches and the sample-ratio check.

The judge looks at the data every interval, for hours, so every interval it acts on must hold however often it
is looked at: rates and means get asymptotic confidence sequences (Waudby-Smith et al., "Time-uniform central
limit theory and asymptotic confidence sequences", 2021, as GrowthBook's sequential testing uses them);
quantile intervals are fixed-sample intervals that the caller spends alpha on look by look (`look_alpha`).
Standard library only: `statistics.NormalDist` and exact formulas.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Final

from crossfade.sketch import Histogram, Sketch

_NORMAL: Final = NormalDist()
_SIDES: Final = ("two", "lower", "upper")
# Above this binomial variance n*q*(1-q) (a standard deviation of 50 ranks) the normal approximation with
# continuity correction and skewness term gives the exact ranks (checked against scipy down to alpha = 1e-9);
# below it the exact sum is cheap.
_EXACT_BINOMIAL_VARIANCE: Final = 2500.0


@dataclass(frozen=True, slots=True)
class Interval:
    """An estimate with its confidence interval; an open side is -inf or +inf."""

    estimate: float
    lower: float
    upper: float
    confidence: float

    def contains(self, value: float) -> bool:
        """Whether `value` lies within the interval (bounds included)."""
        return self.lower <= value <= self.upper


@dataclass(frozen=True, slots=True)
class MannWhitney:
    """Mann-Whitney U test of candidate against legacy: U of the candidate, z, two-sided p-value, effect size.

    `effect` is P(C > L) + 0.5 P(C = L): 0.5 when neither arm tends to be larger, above 0.5 when the candidate
    tends to be larger (slower, for latency).
    """

    u: float
    z: float
    p_value: float
    effect: float


@dataclass(frozen=True, slots=True)
class SampleRatio:
    """Chi-square test (1 dof) of the calls each arm received against the split the routing table asked for."""

    chi2: float
    p_value: float
    expected_fraction: float
    observed_fraction: float


def _check_alpha(alpha: float) -> None:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be within (0, 1), got {alpha}")


def _unbounded(estimate: float, alpha: float) -> Interval:
    return Interval(estimate, -math.inf, math.inf, 1.0 - alpha)


def _cs_margin(n: float, alpha: float, sided: str, n_star: float) -> float:
    """The confidence-sequence half-width of a mean of `n` unit-variance observations.

    rho^2 = (-2 ln(alpha) + ln(-2 ln(alpha) + 1)) / n_star makes the sequence tightest near n = n_star
    (Waudby-Smith et al., section 3; GrowthBook's tuning parameter). Two-sided, the normal-mixture boundary:
        sqrt(2 (n rho^2 + 1) / (n^2 rho^2) * ln(sqrt(n rho^2 + 1) / alpha)).
    One-sided, the one-sided normal mixture (half-normal mixing; Howard et al. 2021) bounded in closed form:
        sqrt(2 (n rho^2 + 1) / (n^2 rho^2) * ln(sqrt(n rho^2 + 1) / (2 alpha) + 1)).
    """
    log_alpha = -2.0 * math.log(alpha)
    rho2 = (log_alpha + math.log(log_alpha + 1.0)) / n_star
    grown = n * rho2 + 1.0
    if sided == "two":
        log_term = math.log(math.sqrt(grown) / alpha)
    else:
        log_term = math.log(math.sqrt(grown) / (2.0 * alpha) + 1.0)
    return math.sqrt(2.0 * grown / (n * n * rho2) * log_term)


def _diff_cs(estimate: float, var_diff: float, n: int, alpha: float, sided: str, n_star: float) -> Interval:
    """The asymptotic CS around `estimate`, whose variance is `var_diff`, after `n` observations in all.

    The difference of two means behaves like the mean of n observations of variance var_diff * n, so the
    half-width is sqrt(var_diff * n) times the unit-variance margin at n.
    """
    if not math.isfinite(var_diff):
        return _unbounded(estimate, alpha)
    half_width = math.sqrt(max(var_diff, 0.0) * n) * _cs_margin(n, alpha, sided, n_star)
    lower = -math.inf if sided == "upper" else estimate - half_width
    upper = math.inf if sided == "lower" else estimate + half_width
    return Interval(estimate, lower, upper, 1.0 - alpha)


def _check_cs_args(alpha: float, sided: str, n_star: float) -> None:
    _check_alpha(alpha)
    if sided not in _SIDES:
        raise ValueError(f"sided must be one of {', '.join(_SIDES)}, got {sided!r}")
    if not n_star > 0.0:
        raise ValueError(f"n_star must be positive, got {n_star}")


def mean_diff_cs(
    mean_c: float,
    var_c: float,
    n_c: int,
    mean_l: float,
    var_l: float,
    n_l: int,
    *,
    alpha: float,
    sided: str = "two",
    n_star: float = 1000.0,
) -> Interval:
    """Always-valid (anytime) asymptotic confidence sequence for mean_c - mean_l.

    The interval at every look holds simultaneously with probability >= 1 - alpha (asymptotically), so the
    judge may look as often as it likes (Waudby-Smith et al. 2021; the GrowthBook sequential method).
    `sided`: "two"; "lower" (only the lower bound is meaningful, upper = +inf); "upper" (lower = -inf).
    `n_star`: the total calls over both arms where the sequence is tightest. Either arm empty: estimate NaN
    and (-inf, inf); an undefined variance (NaN, e.g. one call): the estimate with (-inf, inf); zero variance
    in both arms: a zero-width interval, the difference being known exactly.
    """
    _check_cs_args(alpha, sided, n_star)
    if n_c <= 0 or n_l <= 0:
        return _unbounded(math.nan, alpha)
    var_diff = var_c / n_c + var_l / n_l
    return _diff_cs(mean_c - mean_l, var_diff, n_c + n_l, alpha, sided, n_star)


def proportion_diff_cs(
    x_c: int,
    n_c: int,
    x_l: int,
    n_l: int,
    *,
    alpha: float,
    sided: str = "two",
    n_star: float = 1000.0,
    null_difference: float | None = None,
) -> Interval:
    """Always-valid confidence sequence for the difference of two proportions (error rate, mismatch rate).

    As `mean_diff_cs`, with Bernoulli variances p(1 - p), centred and scaled Agresti-Caffo style: each arm
    counts one more success and one more failure, p = (x + 1) / (n + 2) with variance p (1 - p) / (n + 2).
    With the plug-in x / n, an arm with few calls and no errors (a candidate at 1-10% of traffic) reads as a
    near-zero-width interval, and the sequence excluded a true zero difference in 6-7% of simulated runs at
    alpha 0.05; adjusted, in 2%. The estimate is the observed x_c / n_c - x_l / n_l, always inside the
    bounds, which are clipped to [-1, 1] (an open side of a one-sided interval stays open).

    `null_difference`, when the bound is used to test "the difference is at least d" (a PASS against a limit
    d), takes the candidate's variance at the rate that hypothesis implies, legacy's rate + d, whenever that
    is the larger, as a score test does: the observed rate of a rare event is often zero, and its variance
    then says the rate is known to be tiny. With the observed variance, 300 calls with no error where 6 were
    expected passed a +1 pp limit in 0.6-0.7% of sequences against an alpha of 0.11%.
    """
    _check_cs_args(alpha, sided, n_star)
    if n_c <= 0 or n_l <= 0:
        return _unbounded(math.nan, alpha)
    if not (0 <= x_c <= n_c and 0 <= x_l <= n_l):
        raise ValueError(f"counts must be within [0, n], got {x_c}/{n_c} and {x_l}/{n_l}")
    p_c = (x_c + 1.0) / (n_c + 2.0)
    p_l = (x_l + 1.0) / (n_l + 2.0)
    var_c = p_c * (1.0 - p_c)
    if null_difference is not None:
        at_null = min(max(p_l + null_difference, 0.0), 1.0)
        var_c = max(var_c, at_null * (1.0 - at_null))
    var_diff = var_c / (n_c + 2.0) + p_l * (1.0 - p_l) / (n_l + 2.0)
    cs = _diff_cs(p_c - p_l, var_diff, n_c + n_l, alpha, sided, n_star)
    estimate = x_c / n_c - x_l / n_l
    lower = cs.lower if cs.lower == -math.inf else max(min(cs.lower, estimate), -1.0)
    upper = cs.upper if cs.upper == math.inf else min(max(cs.upper, estimate), 1.0)
    return Interval(estimate, lower, upper, cs.confidence)


def cost_moments(total: float, total_sq: float, n: int) -> tuple[float, float]:
    """(mean, unbiased variance) from the count, sum and sum of squares; NaN where undefined (n < 1, n < 2)."""
    if n <= 0:
        return math.nan, math.nan
    mean = total / n
    if n == 1:
        return mean, math.nan
    # Rounding can make the difference slightly negative when all values are equal.
    return mean, max(total_sq - total * mean, 0.0) / (n - 1)


def binomial_upper_tail(x: int, n: int, p: float) -> float:
    """P(X >= x) for X ~ Binomial(n, p), exactly (summed in log space from x upward while terms matter).

    The test behind a trigger on a rate: a tail below alpha means the rate is above p with confidence
    1 - alpha (the one-sided Clopper-Pearson bound is above p), however few the calls.
    """
    if not 0 <= x <= n:
        raise ValueError(f"x must be within [0, n], got {x} of {n}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be within [0, 1], got {p}")
    if x == 0 or p == 1.0:
        return 1.0
    if p == 0.0:
        return 0.0
    if x <= n * p:
        # At or below the mean the tail is at least about a half; the complement is summed instead.
        return 1.0 - _binomial_lower_sum(x - 1, n, p)
    log_q, log_p, log_n = math.log1p(-p), math.log(p), math.lgamma(n + 1.0)
    total = 0.0
    for k in range(x, n + 1):
        term = math.exp(log_n - math.lgamma(k + 1.0) - math.lgamma(n - k + 1.0) + k * log_p + (n - k) * log_q)
        total += term
        # Above the mean the terms fall at least geometrically: stop once they no longer change the sum.
        if term < total * 1e-17:
            break
    return min(total, 1.0)


def _binomial_lower_sum(x: int, n: int, p: float) -> float:
    """P(X <= x) for X ~ Binomial(n, p), summed downward from x (used at or below the mean)."""
    log_q, log_p, log_n = math.log1p(-p), math.log(p), math.lgamma(n + 1.0)
    total = 0.0
    for k in range(x, -1, -1):
        term = math.exp(log_n - math.lgamma(k + 1.0) - math.lgamma(n - k + 1.0) + k * log_p + (n - k) * log_q)
        total += term
        if term < total * 1e-17 and k < n * p - 1.0:
            break
    return min(total, 1.0)


def look_alpha(alpha: float, look: int) -> float:
    """Alpha spent at the k-th look (1-based) of a sequence of fixed-sample intervals: alpha * 6 / (pi^2 k^2).

    The series sums to alpha (sum of 1/k^2 is pi^2/6), so intervals built at these levels at every look all
    hold together with probability >= 1 - alpha.
    """
    _check_alpha(alpha)
    if look < 1:
        raise ValueError(f"look must be 1 or more, got {look}")
    return alpha * 6.0 / (math.pi**2 * look * look)


def _binomial_cdf(n: int, q: float, until: float = math.inf) -> tuple[int, list[float]]:
    """(k0, cdf) with cdf[i] = P(B <= k0 + i) for B ~ Binomial(n, q), over the ranks that carry the mass.

    Outside [k0, k0 + len(cdf)) the mass is below 1e-19 on either side, so the table starts at 0 and ends at 1.
    With `until`, the table ends at the first rank whose cdf reaches it (the ranks above are not needed).
    """
    sd = math.sqrt(n * q * (1.0 - q))
    lo = max(0, math.floor(n * q - 20.0 * sd - 30.0))
    hi = min(n, math.ceil(n * q + 20.0 * sd + 30.0))
    log_q, log_p = math.log(q), math.log1p(-q)
    log_n = math.lgamma(n + 1.0)
    cdf: list[float] = []
    total = 0.0
    # Each term from the one before (pmf(k + 1) = pmf(k) (n - k) / (k + 1) q / (1 - q)), re-anchored exactly
    # every 64 terms so rounding cannot build up: a look takes a tenth of the time of one lgamma per term.
    odds = q / (1.0 - q)
    term = 0.0
    for k in range(lo, hi + 1):
        if (k - lo) % 64 == 0:
            term = math.exp(log_n - math.lgamma(k + 1.0) - math.lgamma(n - k + 1.0) + k * log_q + (n - k) * log_p)
        else:
            term *= (n - k + 1) / k * odds
        total += term
        cdf.append(total)
        if total >= until:
            break
    return lo, cdf


def quantile_ranks(n: int, q: float, alpha: float) -> tuple[int | None, int | None]:
    """0-based ranks (lower, upper) of the order statistics that bound the q-quantile at level 1 - alpha.

    With B ~ Binomial(n, q) the number of values below the q-quantile, the lower bound is the l-th smallest
    value (1-based) for the largest l with P(B <= l - 1) <= alpha / 2, the upper the u-th for the smallest u
    with P(B >= u) <= alpha / 2. Exact binomial while n q (1 - q) < 2500; above, the normal approximation with
    continuity correction, its quantiles corrected for the binomial's skewness (Cornish-Fisher), because
    `look_alpha` drives alpha far into the tails where the plain normal is off by a few ranks.
    None where no rank qualifies (too few samples for that bound).
    """
    half = alpha / 2.0
    variance = n * q * (1.0 - q)
    if variance >= _EXACT_BINOMIAL_VARIANCE:
        sd = math.sqrt(variance)
        z = _NORMAL.inv_cdf(1.0 - half)
        skew = (1.0 - 2.0 * q) / sd * (z * z - 1.0) / 6.0
        # P(B <= k) ~ P(Y <= k + 1/2): the largest k at or below alpha/2, the smallest at or above 1 - alpha/2.
        below = math.floor(n * q + sd * (-z + skew) - 0.5)
        above = math.ceil(n * q + sd * (z + skew) - 0.5)
    else:
        k0, cdf = _binomial_cdf(n, q, until=1.0 - half)
        # The cdf never decreases (sums of terms >= 0): the last rank at or below alpha/2 and the first at or
        # above 1 - alpha/2 by bisection.
        below = k0 + bisect.bisect_right(cdf, half) - 1
        first = bisect.bisect_left(cdf, 1.0 - half)
        above = k0 + first if first < len(cdf) else n
    # The lower bound is the (below + 1)-th smallest (0-based rank `below`); the upper the (above + 1)-th.
    lower = below if below >= 0 else None
    upper = above if above <= n - 1 else None
    return lower, upper


def quantile_interval(sketch: Histogram, q: float, *, alpha: float) -> Interval:
    """Distribution-free confidence interval for the q-quantile from order statistics.

    Ranks from Binomial(n, q) (see `quantile_ranks`), values read from the histogram and widened to the edges
    of their buckets (`bounds_at_rank`: value / 1.01 below and value / 0.99 above for a sketch, the bucket's
    edges for fixed buckets): a bucket's representative may lie on the wrong side of the true quantile, and
    with many samples the interval is as wide as the histogram's resolution, no narrower. Two-sided at level 1 - alpha; a side with too few samples is -inf / +inf (p99 of
    50 calls has no finite upper bound). The estimate is the ceil(q n)-th smallest value, the inverse of the
    empirical distribution, which always lies within the bounds (`sketch.quantile` is within a rank of it).
    """
    _check_alpha(alpha)
    if not 0.0 < q < 1.0:
        raise ValueError(f"quantile must be within (0, 1), got {q}")
    n = sketch.count
    if n == 0:
        return _unbounded(math.nan, alpha)
    low_rank, high_rank = quantile_ranks(n, q, alpha)
    lower = sketch.bounds_at_rank(low_rank)[0] if low_rank is not None else -math.inf
    upper = sketch.bounds_at_rank(high_rank)[1] if high_rank is not None else math.inf
    estimate = sketch.value_at_rank(math.ceil(q * n) - 1)
    return Interval(estimate, lower, upper, 1.0 - alpha)


def _ratio(numerator: float, denominator: float, undefined: float) -> float:
    if denominator > 0.0 and math.isfinite(denominator) and math.isfinite(numerator):
        return max(numerator, 0.0) / denominator
    return undefined


def quantile_ratio_interval(candidate: Histogram, legacy: Histogram, q: float, *, alpha: float) -> Interval:
    """Candidate q-quantile over legacy q-quantile, with a conservative interval at level 1 - alpha.

    Each arm's interval at alpha / 2 (Bonferroni); lower = lo_c / hi_l, upper = hi_c / lo_l, 0 and inf where
    a bound is open or a denominator zero. The estimate is NaN when either arm is empty, 1 when both
    quantiles are zero and inf when only the legacy one is.
    """
    c = quantile_interval(candidate, q, alpha=alpha / 2.0)
    l = quantile_interval(legacy, q, alpha=alpha / 2.0)  # noqa: E741 - l for legacy, as c for candidate
    if math.isnan(c.estimate) or math.isnan(l.estimate):
        estimate = math.nan
    elif l.estimate == 0.0:
        estimate = 1.0 if c.estimate == 0.0 else math.inf
    else:
        estimate = c.estimate / l.estimate
    lower = _ratio(c.lower, l.upper, 0.0)
    upper = _ratio(c.upper, l.lower, math.inf)
    return Interval(estimate, lower, upper, 1.0 - alpha)


def _merged_counts(candidate: Histogram, legacy: Histogram) -> list[tuple[int, int]]:
    """(candidate count, legacy count) per distinct bucket value, in increasing order of value."""
    if type(candidate) is Sketch and type(legacy) is Sketch:
        # A sketch's bucket index orders and identifies its value: no value computed per bucket.
        c_bins, l_bins = candidate.bins, legacy.bins
        zeros = [(candidate.zeros, legacy.zeros)] if candidate.zeros or legacy.zeros else []
        return zeros + [(c_bins.get(i, 0), l_bins.get(i, 0)) for i in sorted(c_bins.keys() | l_bins.keys())]
    rows: dict[float, list[int]] = {}
    for value, count in candidate.buckets():
        rows.setdefault(value, [0, 0])[0] += count
    for value, count in legacy.buckets():
        rows.setdefault(value, [0, 0])[1] += count
    return [(rows[v][0], rows[v][1]) for v in sorted(rows)]


def mann_whitney(candidate: Histogram, legacy: Histogram) -> MannWhitney:
    """Mann-Whitney U of candidate against legacy from the sketches' buckets, in O(buckets).

    Values in the same bucket are ties and share their mid-rank. U is the candidate's rank sum minus
    n_c (n_c + 1) / 2; its variance carries the tie correction,
        n_c n_l / 12 * ((N + 1) - sum(t^3 - t) / (N (N - 1))),
    z = (U - n_c n_l / 2) / sd with no continuity correction, and the p-value is two-sided, 2 (1 - Phi(|z|)).
    An empty arm gives U = 0, z = 0, p = 1 and effect NaN; all values tied gives z = 0, p = 1, effect 0.5.
    """
    n_c, n_l = candidate.count, legacy.count
    if n_c == 0 or n_l == 0:
        return MannWhitney(u=0.0, z=0.0, p_value=1.0, effect=math.nan)
    rank_sum = 0.0
    ties = 0.0
    below = 0
    for in_c, in_l in _merged_counts(candidate, legacy):
        t = in_c + in_l
        rank_sum += in_c * (below + (t + 1) / 2.0)
        ties += float(t) ** 3 - t
        below += t
    n = n_c + n_l
    u = rank_sum - n_c * (n_c + 1) / 2.0
    mean_u = n_c * n_l / 2.0
    variance = n_c * n_l / 12.0 * ((n + 1) - ties / (n * (n - 1.0)))
    z = (u - mean_u) / math.sqrt(variance) if variance > 0.0 else 0.0
    # erfc(|z| / sqrt 2) is 2 (1 - Phi(|z|)) without the cancellation for large |z|.
    return MannWhitney(u=u, z=z, p_value=math.erfc(abs(z) / math.sqrt(2.0)), effect=u / (n_c * n_l))


def sample_ratio(n_c: int, n_l: int, expected_fraction_c: float) -> SampleRatio:
    """Chi-square goodness of fit (1 dof) of the calls per arm against the expected candidate fraction.

    p < 0.001 means the split is broken (a routing or recording bug) and the judge holds. The p-value is the
    1-dof chi-square survival, 2 (1 - Phi(sqrt(chi2))). No calls: chi2 0, p 1, observed fraction NaN.
    """
    if not 0.0 <= expected_fraction_c <= 1.0:
        raise ValueError(f"expected_fraction_c must be within [0, 1], got {expected_fraction_c}")
    n = n_c + n_l
    if n == 0:
        return SampleRatio(0.0, 1.0, expected_fraction_c, math.nan)
    chi2 = 0.0
    for observed, fraction in ((n_c, expected_fraction_c), (n_l, 1.0 - expected_fraction_c)):
        expected = n * fraction
        if expected > 0.0:
            chi2 += (observed - expected) ** 2 / expected
        elif observed > 0:
            chi2 = math.inf
    return SampleRatio(chi2, math.erfc(math.sqrt(chi2 / 2.0)), expected_fraction_c, n_c / n)


# -- what a stage can detect -------------------------------------------------------------------------

_POWER: Final = 0.9


def detectable_increase(p_l: float, n_c: float, n_l: float, limit: float, *, alpha: float, power: float = _POWER,
                        n_star: float = 1000.0) -> float:
    """The smallest error-rate increase over legacy's `p_l` that the one-sided sequence at `alpha` excludes from
    "within `limit`" with probability `power`, after `n_c` and `n_l` calls (normal approximation).

    The lower bound is the estimate minus the half-width, so the increase d must reach limit + half-width + z
    standard deviations; the variance depends on d, so d is found by iteration. Infinity with no calls.
    Somewhat conservative: a run whose rate comes out low also gets a narrower bound (simulated, the increase
    found for 90% was caught in 96% of runs).
    """
    if n_c <= 0 or n_l <= 0:
        return math.inf
    z = _NORMAL.inv_cdf(power)
    n = n_c + n_l
    margin = _cs_margin(n, alpha, "lower", n_star)
    d = limit
    for _ in range(50):
        p_c = min(p_l + d, 1.0)
        sd = math.sqrt(p_c * (1 - p_c) / n_c + p_l * (1 - p_l) / n_l)
        following = limit + math.sqrt(n) * sd * margin + z * sd
        if abs(following - d) < 1e-9:
            break
        d = following
    return d if p_l + d <= 1.0 else math.inf


def detectable_mean_ratio(cv: float, n_c: float, n_l: float, limit: float, *, alpha: float,
                          power: float = _POWER, n_star: float = 1000.0) -> float:
    """The smallest ratio of means (a cost) that the cost gate's lower bound puts above `limit` with probability
    `power`, for values of coefficient of variation `cv` in both arms, after `n_c` and `n_l` calls."""
    if n_c <= 0 or n_l <= 0:
        return math.inf
    z = _NORMAL.inv_cdf(power)
    n = n_c + n_l
    margin = _cs_margin(n, alpha, "lower", n_star)
    r = limit
    for _ in range(50):
        # The gate floors the candidate's variance at limit^2 times legacy's (in units of legacy's mean).
        var_c = max(r * r, limit * limit) * cv * cv / n_c
        var_l = limit * limit * cv * cv / n_l
        following = limit + math.sqrt((var_c + var_l) * n) * margin + z * math.sqrt(r * r * cv * cv / n_c + var_l)
        if abs(following - r) < 1e-12:
            break
        r = following
    return r


def detectable_quantile_ratio(sigma: float, q: float, n_c: float, n_l: float, limit: float, *, alpha: float,
                              power: float = _POWER) -> float:
    """The smallest ratio of q-quantiles that the latency gate's lower bound puts above `limit` with probability
    `power`, for lognormal latencies of shape `sigma` (a normal approximation of
    the order statistics: the log of a sample quantile has standard deviation sigma sqrt(q (1 - q) / n) /
    phi(z_q)); `alpha` is the look's own level, each arm's bound taken at alpha / 2 as the gate takes them."""
    if n_c <= 0 or n_l <= 0:
        return math.inf
    if sigma == 0:
        return limit
    density = math.exp(-_NORMAL.inv_cdf(q) ** 2 / 2) / math.sqrt(2 * math.pi)
    sd_c = sigma * math.sqrt(q * (1 - q) / n_c) / density
    sd_l = sigma * math.sqrt(q * (1 - q) / n_l) / density
    z_bound = _NORMAL.inv_cdf(1 - alpha / 2)
    z = _NORMAL.inv_cdf(power)
    return limit * math.exp(z_bound * (sd_c + sd_l) + z * math.hypot(sd_c, sd_l))
