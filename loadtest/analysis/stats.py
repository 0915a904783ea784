"""Percentiles, their distribution-free confidence intervals, and the bootstrap test of a P95 difference.

Every latency figure in the analyzer goes through this module so that one definition holds everywhere
(docs/method.md): numpy's ``linear`` percentile on the raw latencies, and the 95 % CI of a quantile from
order statistics exactly as ``scipy.stats.quantile_test(...).confidence_interval`` forms it. Both are read
from the sorted sample directly (no partition, no re-sort per figure), equal bit for bit to numpy's and scipy's.
A CI that cannot be formed (too few samples for that quantile) is reported as such: the caller gets
``ci_ok = False`` and must not present the percentile as a defensible number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import stats

PERCENTILE_METHOD = "linear"  # numpy's default; documented in the report
CONFIDENCE = 0.95
REPORTED_PERCENTILES = (50.0, 90.0, 95.0, 99.0, 99.9)


def percentile_key(p: float) -> str:
    """Column stem for a percentile: 95 -> 'p95', 99.9 -> 'p999'."""
    return "p" + (f"{p:g}".replace(".", ""))


@dataclass(frozen=True)
class PercentileEstimate:
    """One sample percentile with its 95 % order-statistic confidence interval (seconds)."""

    p: float
    n: int
    value: float  # numpy linear percentile; nan when n == 0
    ci_low: float  # nan when the CI cannot be formed
    ci_high: float

    @property
    def ci_ok(self) -> bool:
        return self.n > 0 and math.isfinite(self.ci_low) and math.isfinite(self.ci_high)

    @property
    def note(self) -> str:
        """Why the figure is not reported, in words; empty when it is."""
        if self.ci_ok:
            return ""
        return f"n={self.n}: too few for a P{self.p:g} CI (needs >= {min_samples_for_ci(self.p)})"


def percentile(values: np.ndarray, p: float) -> float:
    """The p-th percentile (0-100) by numpy's documented method; nan for an empty sample."""
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        return math.nan
    return float(np.percentile(values, p, method=PERCENTILE_METHOD))


def sorted_percentiles(x: np.ndarray, ps) -> np.ndarray:
    """``np.percentile(x, ps, method="linear")`` of an already sorted ``x``, bit for bit, without its O(n) partition.

    The same arithmetic as numpy's linear method (virtual index (n - 1) q, the two neighbouring order
    statistics, numpy's two-sided lerp), reading the order statistics directly from the sorted array.
    """
    n = x.size
    shape = np.shape(ps)
    q = np.true_divide(np.atleast_1d(np.asarray(ps, dtype=float)), 100)
    virtual = (n - 1) * q
    prev = np.floor(virtual).astype(np.intp)
    nxt = prev + 1
    above = virtual >= n - 1
    prev[above] = -1
    nxt[above] = -1
    below = virtual < 0
    prev[below] = 0
    nxt[below] = 0
    gamma = np.asanyarray(virtual - np.floor(virtual))
    a, b = x[prev], x[nxt]
    diff = np.subtract(b, a)
    out = np.asanyarray(np.add(a, diff * gamma))
    np.subtract(b, diff * (1 - gamma), out=out, where=gamma >= 0.5, casting="unsafe", dtype=out.dtype)
    return out.reshape(shape)


def estimate(values: np.ndarray, p: float, *, sorted_values: np.ndarray | None = None) -> PercentileEstimate:
    """Point estimate and distribution-free 95 % CI of the p-th percentile of ``values``.

    The CI is scipy's ``quantile_test`` interval: order statistics x_(l), x_(u) with
    l = F^-1(0.025; n, p), u = F^-1(0.975; n, p) + 1 under Binomial(n, p).
    """
    x = np.sort(np.asarray(values, dtype=float)) if sorted_values is None else sorted_values
    return estimates(x, (p,), presorted=True)[p]


def _ci_indices(n: int, q: float) -> tuple[int, int]:
    """0-based order-statistic indices of the two-sided CI, exactly as ``QuantileTestResult.confidence_interval``."""
    alpha = (1.0 - CONFIDENCE) / 2.0
    return int(stats.binom.ppf(alpha, n, q)) - 1, int(stats.binom.isf(alpha, n, q))


def estimates(
    values: np.ndarray, ps: tuple[float, ...] = REPORTED_PERCENTILES, *, presorted: bool = False
) -> dict[float, PercentileEstimate]:
    """Several percentiles of one sample and their CIs: one sort, one percentile call, O(1) per CI."""
    x = np.asarray(values, dtype=float) if presorted else np.sort(np.asarray(values, dtype=float))
    n = int(x.size)
    if n == 0:
        return {p: PercentileEstimate(p, 0, math.nan, math.nan, math.nan) for p in ps}
    points = sorted_percentiles(x, list(ps))
    out = {}
    for p, value in zip(ps, points):
        if n < 2:
            out[p] = PercentileEstimate(p, n, float(value), math.nan, math.nan)
            continue
        lo, hi = _ci_indices(n, p / 100.0)
        out[p] = PercentileEstimate(p, n, float(value), float(x[lo]) if lo >= 0 else math.nan,
                                    float(x[hi]) if hi < n else math.nan)
    return out


@lru_cache(maxsize=64)
def min_samples_for_ci(p: float) -> int:
    """Smallest n for which the two-sided 95 % order-statistic CI of the p-th percentile exists.

    Mirrors scipy's own index rule (low index = ppf(alpha) - 1 >= 0, high index = isf(alpha) < n).
    """
    q = p / 100.0
    alpha = (1.0 - CONFIDENCE) / 2.0
    # both tails need P(all n on one side) < alpha: n > log(alpha) / log(q) and log(alpha) / log(1 - q);
    # scan around that estimate with scipy's exact rule
    guess = int(math.ceil(max(math.log(alpha) / math.log(q), math.log(alpha) / math.log(1 - q))))
    n = np.arange(max(2, guess // 2), 2 * guess + 10)
    ok = (stats.binom.ppf(alpha, n, q).astype(int) - 1 >= 0) & (stats.binom.isf(alpha, n, q).astype(int) < n)
    return int(n[np.argmax(ok)]) if ok.any() else int(n[-1])


@dataclass(frozen=True)
class DifferenceTest:
    """Bootstrap test of P(student) - P(teacher), the criterion.rs-style 'changed' decision."""

    p: float
    difference_s: float  # point estimate: percentile(student) - percentile(teacher)
    ci_low_s: float
    ci_high_s: float
    noise_threshold_s: float  # fraction of the teacher's percentile
    resamples: int
    significant: bool
    verdict: str  # "faster", "slower", "no significant difference", or why it could not be tested
    n_student: int = 0  # requests resampled (all of them: the order-statistic bootstrap needs no subsample)
    n_teacher: int = 0
    seed: int = 0


def _sorted(values: np.ndarray) -> np.ndarray:
    x = np.asarray(values, dtype=float)
    return x if x.size < 2 or bool(np.all(x[1:] >= x[:-1])) else np.sort(x)


def bootstrap_percentiles(sorted_values: np.ndarray, p: float, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """The p-th percentile of ``resamples`` bootstrap resamples of a sorted sample, in O(resamples).

    A resample of size n drawn with replacement takes index floor(U * n) for n uniforms U; that map is
    monotone, so its k-th smallest value is x[floor(U_(k) * n)] with U_(k) the k-th order statistic of n
    uniforms, U_(k) ~ Beta(k, n - k + 1), and U_(k+1) = U_(k) + (1 - U_(k)) * Beta(1, n - k). numpy's linear
    percentile interpolates between the order statistics k and k + 1 of the resample, so drawing those two
    gives exactly the distribution ``scipy.stats.bootstrap`` samples by materialising every resample --
    without touching the n values (10M requests cost what 1,000 do).
    """
    x = sorted_values
    n = x.size
    h = (n - 1) * p / 100.0
    j = int(math.floor(h))
    frac = h - j
    k = j + 1  # 1-indexed rank of the lower order statistic
    u_low = rng.beta(k, n - k + 1, size=resamples)
    low = x[np.minimum((u_low * n).astype(np.int64), n - 1)]
    if k >= n or frac == 0.0:
        return low
    u_high = u_low + (1.0 - u_low) * rng.beta(1, n - k, size=resamples)
    high = x[np.minimum((u_high * n).astype(np.int64), n - 1)]
    return low + frac * (high - low)


def percentile_difference(
    student: np.ndarray,
    teacher: np.ndarray,
    *,
    p: float = 95.0,
    noise_fraction: float = 0.01,
    resamples: int = 10_000,
    seed: int = 0,
) -> DifferenceTest:
    """95 % bootstrap CI of percentile(student) - percentile(teacher), resampling within each model.

    Significant when the CI excludes 0 *and* lies wholly beyond ``noise_fraction`` of the teacher's
    percentile. Percentile-method interval, as ``scipy.stats.bootstrap(method='percentile')``, over every
    request of both models (``bootstrap_percentiles`` draws each resample's percentile exactly, so no
    subsample is needed at any size); seeded, so a rerun gives the same interval.
    """
    s = _sorted(student)
    t = _sorted(teacher)
    if s.size < 2 or t.size < 2:
        return DifferenceTest(p, math.nan, math.nan, math.nan, math.nan, 0, False, "too few samples to test",
                              int(s.size), int(t.size), seed)
    p_s, p_t = float(sorted_percentiles(s, p)), float(sorted_percentiles(t, p))
    diff = p_s - p_t
    threshold = noise_fraction * p_t
    rng = np.random.default_rng(seed)
    dist = bootstrap_percentiles(s, p, resamples, rng) - bootstrap_percentiles(t, p, resamples, rng)
    alpha = (1.0 - CONFIDENCE) / 2.0
    low, high = (float(v) for v in np.percentile(dist, [alpha * 100, (1 - alpha) * 100]))
    if high < -threshold:
        significant, verdict = True, "faster"
    elif low > threshold:
        significant, verdict = True, "slower"
    else:
        significant, verdict = False, "no significant difference"
    return DifferenceTest(p, diff, low, high, threshold, resamples, significant, verdict, int(s.size), int(t.size), seed)
