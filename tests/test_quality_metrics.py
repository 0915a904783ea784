"""The quality formulas against independent computations (scikit-learn, scipy, hand-worked cases)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon
from scipy.stats import entropy
from sklearn.metrics import accuracy_score, f1_score

from loadtest.quality import metrics as m


def _random_probs(rng, n, k, scale=2.0):
    return m.softmax(rng.normal(0, scale, (n, k)))


def test_kl_matches_scipy_entropy():
    rng = np.random.default_rng(1)
    pt, ps = _random_probs(rng, 200, 6), _random_probs(rng, 200, 6)
    expected = np.array([entropy(a, b) for a, b in zip(pt, ps)])
    np.testing.assert_allclose(m.kl_divergence(pt, ps), expected, rtol=1e-9, atol=1e-12)


def test_kl_clips_zero_probabilities_at_1e12():
    pt = np.array([[1.0, 0.0]])
    ps = np.array([[0.0, 1.0]])
    # p_T = (1, 1e-12), p_S = (1e-12, 1): KL = 1·log(1/1e-12) + 1e-12·log(1e-12/1)
    expected = math.log(1e12) + 1e-12 * math.log(1e-12)
    assert m.kl_divergence(pt, ps)[0] == pytest.approx(expected, rel=1e-12)
    assert np.isfinite(m.js_divergence(pt, ps)[0])


def test_js_matches_scipy_jensenshannon_squared():
    rng = np.random.default_rng(2)
    pt, ps = _random_probs(rng, 100, 4), _random_probs(rng, 100, 4)
    expected = np.array([jensenshannon(a, b) ** 2 for a, b in zip(pt, ps)])
    np.testing.assert_allclose(m.js_divergence(pt, ps), expected, rtol=1e-7, atol=1e-12)
    # symmetric, bounded by log 2, zero for identical distributions
    np.testing.assert_allclose(m.js_divergence(ps, pt), m.js_divergence(pt, ps), rtol=1e-12)
    assert (m.js_divergence(pt, ps) <= math.log(2) + 1e-12).all()
    assert m.js_divergence(pt, pt) == pytest.approx(np.zeros(100), abs=1e-12)


@pytest.mark.parametrize("n,k,seed", [(500, 5, 0), (7, 5, 1), (40, 3, 2), (1, 4, 3)])
def test_macro_f1_matches_sklearn(n, k, seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    pred = np.where(rng.random(n) < 0.6, y, rng.integers(0, k, n))
    assert m.macro_f1(y, pred, k) == pytest.approx(f1_score(y, pred, average="macro"), abs=1e-12)


def test_macro_f1_rows_batch_matches_sklearn_per_resample():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 4, 60)
    pred = rng.integers(0, 4, 60)
    rows = rng.integers(0, 60, (5, 60))
    batch = m.macro_f1_rows(y, pred, 4, rows)
    for i in range(5):
        assert batch[i] == pytest.approx(f1_score(y[rows[i]], pred[rows[i]], average="macro"), abs=1e-12)


def _ece_loop(probs, y, n_bins=15):
    """torchmetrics' definition written out: bins [b_k, b_k+1), a confidence of exactly 1.0 in its own bin."""
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y).astype(float)
    edges = np.linspace(0, 1, n_bins + 1)
    total = 0.0
    for lo, hi in list(zip(edges[:-1], edges[1:])) + [(1.0, np.inf)]:
        members = (conf >= lo) & (conf < hi)
        if members.any():
            total += members.mean() * abs(correct[members].mean() - conf[members].mean())
    return total


def test_ece_hand_computed_case():
    # Four examples, two bins used: conf 0.9 & 0.95 in bin [0.8667, 0.9333) / [0.9333, 1.0)
    probs = np.array([[0.9, 0.1], [0.95, 0.05], [0.6, 0.4], [0.55, 0.45]])
    y = np.array([0, 1, 0, 1])
    # bins: 0.9 -> [0.8667,0.9333): acc 1, conf 0.9 -> |0.1| * 1/4
    #       0.95 -> [0.9333,1): acc 0, conf 0.95 -> 0.95 * 1/4
    #       0.6 -> alone in its bin: acc 1, conf 0.6 -> 0.4 * 1/4
    #       0.55 -> [0.5333,0.6): acc 0, conf 0.55 -> 0.55 * 1/4
    expected = (0.1 + 0.95 + 0.4 + 0.55) / 4
    assert m.expected_calibration_error(probs, y) == pytest.approx(expected, abs=1e-12)
    assert _ece_loop(probs, y) == pytest.approx(expected, abs=1e-12)


def test_ece_confidence_of_one_has_its_own_bin():
    # conf 1.0 (right) and 0.94 (wrong): separate bins -> (0 + 0.94) / 2. Merged they would give |0.5 - 0.97|.
    probs = np.array([[1.0, 0.0], [0.94, 0.06]])
    y = np.array([0, 1])
    assert m.expected_calibration_error(probs, y) == pytest.approx(0.47, abs=1e-12)
    assert m.calibration_bin_index(np.array([0.0, 1 / 15, 0.999, 1.0])).tolist() == [0, 1, 14, 15]


def test_ece_random_matches_loop_definition():
    rng = np.random.default_rng(5)
    probs = _random_probs(rng, 3000, 4, scale=3.0)
    y = rng.integers(0, 4, 3000)
    assert m.expected_calibration_error(probs, y) == pytest.approx(_ece_loop(probs, y), abs=1e-12)


def test_reliability_bins_count_everything():
    rng = np.random.default_rng(6)
    probs = _random_probs(rng, 500, 3)
    y = rng.integers(0, 3, 500)
    bins = m.reliability_bins(probs, y)
    assert len(bins) == 16 and sum(b["count"] for b in bins) == 500
    weighted = sum(b["count"] / 500 * abs(b["accuracy"] - b["confidence"]) for b in bins if b["count"])
    assert weighted == pytest.approx(m.expected_calibration_error(probs, y), abs=1e-12)


def test_temperature_recovers_the_scale_of_overconfident_logits():
    rng = np.random.default_rng(7)
    n, k = 20000, 4
    z = rng.normal(0, 1.5, (n, k))
    truth = m.softmax(z)
    y = np.array([rng.choice(k, p=p) for p in truth])
    t = m.fit_temperature(2.0 * z, y)  # logits twice too sharp: the best T is about 2
    assert t == pytest.approx(2.0, rel=0.06)
    nll = m.negative_log_likelihood(2.0 * z, y, t)
    assert nll <= m.negative_log_likelihood(2.0 * z, y, t * 1.05)
    assert nll <= m.negative_log_likelihood(2.0 * z, y, t / 1.05)
    # after scaling, calibration is better
    assert m.expected_calibration_error(m.softmax(2.0 * z / t), y) < m.expected_calibration_error(m.softmax(2.0 * z), y)


def test_wilson_interval_closed_form():
    k, n, z = 37, 50, 1.959963984540054
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    low, high = m.wilson_interval(k, n)
    assert low == pytest.approx(centre - half, abs=1e-9)
    assert high == pytest.approx(centre + half, abs=1e-9)
    assert all(math.isnan(v) for v in m.wilson_interval(0, 0))
    assert m.wilson_interval(10, 10)[1] == pytest.approx(1.0)


def test_bootstrap_interval_is_seeded_and_covers_the_point():
    rng = np.random.default_rng(8)
    values = rng.exponential(1.0, 400)

    def mean(rows):
        return values[rows].mean(axis=-1)

    a = m.bootstrap_interval(mean, 400, n_resamples=500, seed=3)
    b = m.bootstrap_interval(mean, 400, n_resamples=500, seed=3)
    c = m.bootstrap_interval(mean, 400, n_resamples=500, seed=4)
    assert a == b and a != c
    assert a[0] < values.mean() < a[1]
    # the percentile interval of a mean is close to the normal one for n = 400
    se = values.std(ddof=1) / math.sqrt(400)
    assert a[1] - a[0] == pytest.approx(2 * 1.96 * se, rel=0.2)
    assert all(math.isnan(v) for v in m.bootstrap_interval(mean, 1))


def test_accuracy_and_agreement_are_plain_rates():
    rng = np.random.default_rng(9)
    y = rng.integers(0, 3, 100)
    pred = rng.integers(0, 3, 100)
    assert (pred == y).mean() == pytest.approx(accuracy_score(y, pred))


def test_nonfinite_rows_and_margin():
    values = np.array([[0.1, 0.2], [np.nan, 0.0], [np.inf, 1.0], [0.7, 0.3]])
    assert m.nonfinite_rows(values).tolist() == [False, True, True, False]
    assert m.margin(np.array([[0.7, 0.2, 0.1]]))[0] == pytest.approx(0.5)
