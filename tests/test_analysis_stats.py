"""Percentiles, their order-statistic CIs, and the bootstrap significance rule (docs/method.md)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sst

from loadtest.analysis import stats


def test_percentile_is_numpy_linear():
    x = np.random.default_rng(1).lognormal(0, 1, 997)
    for p in (50, 90, 95, 99, 99.9):
        assert stats.percentile(x, p) == np.percentile(x, p, method="linear")
        assert stats.estimate(x, p).value == np.percentile(x, p, method="linear")


def test_ci_is_scipys_quantile_test_and_the_documented_order_statistics():
    x = np.sort(np.random.default_rng(2).exponential(1.0, 1000))
    est = stats.estimate(x, 99.0)
    ci = sst.quantile_test(x, q=0, p=0.99).confidence_interval(0.95)
    assert (est.ci_low, est.ci_high) == (ci.low, ci.high)
    # docs/method.md: n = 1000, P99 -> [x(983), x(997)] (1-indexed)
    assert (est.ci_low, est.ci_high) == (x[982], x[996])


def test_ci_that_cannot_be_formed_is_flagged_not_reported():
    x = np.random.default_rng(3).random(stats.min_samples_for_ci(99.0) - 1)
    est = stats.estimate(x, 99.0)
    assert not est.ci_ok and "too few" in est.note
    assert stats.estimate(np.append(x, 0.5), 99.0).ci_ok
    assert stats.min_samples_for_ci(99.0) == 368 and stats.min_samples_for_ci(95.0) == 72


@pytest.mark.parametrize("p", [50.0, 95.0, 99.0])
def test_ci_covers_the_true_percentile_in_at_least_93_percent_of_resamples(p):
    rng = np.random.default_rng(int(p * 10))
    truth = float(np.exp(sst.norm.ppf(p / 100)))  # lognormal(0, 1) quantile
    trials, n = 600, 800
    covered = 0
    for _ in range(trials):
        est = stats.estimate(rng.lognormal(0, 1, n), p)
        assert est.ci_ok
        covered += est.ci_low <= truth <= est.ci_high
    assert covered / trials >= 0.93, covered / trials


def test_bootstrap_flags_a_real_difference():
    rng = np.random.default_rng(4)
    teacher = rng.lognormal(np.log(0.020), 0.3, 3000)
    student = rng.lognormal(np.log(0.012), 0.3, 3000)
    d = stats.percentile_difference(student, teacher, resamples=1000)
    assert d.significant and d.verdict == "faster"
    assert d.ci_low_s < d.difference_s < d.ci_high_s < 0
    assert d.difference_s == pytest.approx(np.percentile(student, 95) - np.percentile(teacher, 95))


def test_bootstrap_no_difference_between_samples_of_one_distribution():
    rng = np.random.default_rng(5)
    a, b = rng.lognormal(0, 0.3, 2000), rng.lognormal(0, 0.3, 2000)
    d = stats.percentile_difference(a, b, resamples=1000)
    assert not d.significant and d.verdict == "no significant difference"
    assert d.ci_low_s < 0 < d.ci_high_s


def test_a_difference_inside_the_noise_threshold_is_not_significant():
    """CI excludes 0 but stays within 1 % of the teacher's P95: not a change (criterion.rs' rule)."""
    rng = np.random.default_rng(6)
    teacher = rng.normal(0.100, 0.0005, 20000)  # 100 ms, very steady
    student = rng.normal(0.0995, 0.0005, 20000)  # 0.5 % faster, measured very precisely
    d = stats.percentile_difference(student, teacher, resamples=1000)
    assert d.ci_high_s < 0  # excludes zero ...
    assert not d.significant  # ... but lies inside the noise threshold
    assert d.noise_threshold_s == pytest.approx(0.01 * np.percentile(teacher, 95))


def test_too_few_samples_is_said_not_guessed():
    d = stats.percentile_difference(np.array([0.1]), np.array([0.2, 0.3]))
    assert not d.significant and math.isnan(d.difference_s) and "too few" in d.verdict


# ---- scale: the same figures without per-request work (issue 14, analyzer scale) -------------------------


def test_sorted_percentiles_equal_numpy_bit_for_bit():
    rng = np.random.default_rng(7)
    ps = [0, 0.1, 1, 25, 50, 90, 95, 99, 99.9, 99.99, 100, 100 / 3]
    for n in [*range(1, 30), 299, 1000, 12_345]:
        for x in (rng.lognormal(0, 1, n), rng.integers(0, 5, n).astype(float)):
            x.sort()
            assert np.array_equal(stats.sorted_percentiles(x, ps), np.percentile(x, ps))
            assert stats.sorted_percentiles(x, 95.0) == np.percentile(x, 95.0)


@pytest.mark.parametrize("n", [2, 71, 72, 367, 368, 1000, 5003])
def test_every_ci_equals_scipys_quantile_test(n):
    x = np.random.default_rng(n).lognormal(0, 1, n)
    for p, est in stats.estimates(x).items():
        ci = sst.quantile_test(x, q=est.value, p=p / 100).confidence_interval(0.95)
        assert (est.ci_low, est.ci_high) == pytest.approx((ci.low, ci.high), nan_ok=True, rel=0, abs=0)


@pytest.mark.parametrize("n, p", [(40, 95.0), (1000, 95.0), (1000, 50.0), (3001, 99.0)])
def test_order_statistic_bootstrap_draws_what_resampling_draws(n, p):
    """The percentile of a resample drawn from order statistics has the distribution of brute-force resampling."""
    rng = np.random.default_rng(11)
    x = np.sort(rng.lognormal(0, 0.5, n))
    fast = stats.bootstrap_percentiles(x, p, 20_000, np.random.default_rng(1))
    idx = np.random.default_rng(2).integers(0, n, size=(4_000, n))
    brute = np.percentile(x[idx], p, axis=1)
    spread = np.percentile(brute, 97.5) - np.percentile(brute, 2.5)
    for q in (2.5, 25, 50, 75, 97.5):
        assert abs(np.percentile(fast, q) - np.percentile(brute, q)) < 0.06 * spread, q
    assert sst.ks_2samp(fast, brute).pvalue > 1e-3


def test_difference_ci_agrees_with_scipy_bootstrap_on_small_data():
    rng = np.random.default_rng(12)
    student, teacher = rng.lognormal(np.log(0.010), 0.4, 1500), rng.lognormal(np.log(0.011), 0.4, 1400)
    d = stats.percentile_difference(student, teacher, resamples=20_000)
    ref = sst.bootstrap(
        (student, teacher), lambda a, b, axis=-1: np.percentile(a, 95, axis=axis) - np.percentile(b, 95, axis=axis),
        n_resamples=20_000, vectorized=True, method="percentile", rng=np.random.default_rng(0),
    ).confidence_interval
    width = ref.high - ref.low
    assert d.ci_low_s == pytest.approx(ref.low, abs=0.05 * width)
    assert d.ci_high_s == pytest.approx(ref.high, abs=0.05 * width)
    assert (d.n_student, d.n_teacher) == (1500, 1400)


def test_difference_is_seeded_and_order_free():
    rng = np.random.default_rng(13)
    a, b = rng.lognormal(0, 0.3, 5000), rng.lognormal(0.05, 0.3, 5000)
    first = stats.percentile_difference(a, b)
    assert stats.percentile_difference(rng.permutation(a), np.sort(b)) == first
    assert stats.percentile_difference(a, b, seed=1) != first
