"""Percentiles, their distribution-free confidence intervals, and the bootstrap test of a P95 difference.

Every latency figure in the analyzer goes through this module so that one definition holds everywhere
(docs: /work/shared/METHOD.md): numpy's ``linear`` percentile on the raw latencies, and the 95 % CI of a
quantile from order statistics exactly as ``scipy.stats.quantile_test(...).confidence_interval`` forms it.
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


def estimate(values: np.ndarray, p: float, *, sorted_values: np.ndarray | None = None) -> PercentileEstimate:
    """Point estimate and distribution-free 95 % CI of the p-th percentile of ``values``.

    The CI is scipy's ``quantile_test`` interval: order statistics x_(l), x_(u) with
    l = F^-1(0.025; n, p), u = F^-1(0.975; n, p) + 1 under Binomial(n, p).
    """
    x = np.sort(np.asarray(values, dtype=float)) if sorted_values is None else sorted_values
    n = int(x.size)
    if n == 0:
        return PercentileEstimate(p, 0, math.nan, math.nan, math.nan)
    value = float(np.percentile(x, p, method=PERCENTILE_METHOD))
    if n < 2:
        return PercentileEstimate(p, n, value, math.nan, math.nan)
    ci = stats.quantile_test(x, q=value, p=p / 100.0).confidence_interval(CONFIDENCE)
    return PercentileEstimate(p, n, value, float(ci.low), float(ci.high))


def estimates(values: np.ndarray, ps: tuple[float, ...] = REPORTED_PERCENTILES) -> dict[float, PercentileEstimate]:
    """Several percentiles of one sample, sorting it once."""
    x = np.sort(np.asarray(values, dtype=float))
    return {p: estimate(x, p, sorted_values=x) for p in ps}


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


def percentile_difference(
    student: np.ndarray,
    teacher: np.ndarray,
    *,
    p: float = 95.0,
    noise_fraction: float = 0.01,
    resamples: int = 2000,
    seed: int = 0,
) -> DifferenceTest:
    """95 % bootstrap CI of percentile(student) - percentile(teacher), resampling within each model.

    Significant when the CI excludes 0 *and* lies wholly beyond ``noise_fraction`` of the teacher's
    percentile. ``method='percentile'``: BCa's jackknife is O(n^2) per sample and adds nothing here.
    """
    s = np.asarray(student, dtype=float)
    t = np.asarray(teacher, dtype=float)
    if s.size < 2 or t.size < 2:
        return DifferenceTest(p, math.nan, math.nan, math.nan, math.nan, 0, False, "too few samples to test")
    diff = percentile(s, p) - percentile(t, p)
    threshold = noise_fraction * percentile(t, p)

    def statistic(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
        return np.percentile(a, p, axis=axis, method=PERCENTILE_METHOD) - np.percentile(
            b, p, axis=axis, method=PERCENTILE_METHOD
        )

    batch = max(1, int(2e7 // max(s.size, t.size)))  # bound memory to ~160 MB per resample batch
    res = stats.bootstrap(
        (s, t),
        statistic,
        n_resamples=resamples,
        vectorized=True,
        paired=False,
        confidence_level=CONFIDENCE,
        method="percentile",
        batch=batch,
        rng=np.random.default_rng(seed),
    )
    low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    if high < -threshold:
        significant, verdict = True, "faster"
    elif low > threshold:
        significant, verdict = True, "slower"
    else:
        significant, verdict = False, "no significant difference"
    return DifferenceTest(p, diff, low, high, threshold, resamples, significant, verdict)
