"""The quality formulas of docs/method.md, as plain numpy functions over per-example arrays.

Every figure the quality report, the findings and the gate use comes from here, so there is one
definition of each. Functions that bootstrap take *index* arrays (``rows``) of shape ``(..., n)`` so a
whole batch of resamples is computed at once; called with ``np.arange(n)`` they give the point value.
Class indices are the repository's label order (``loadtest.json``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
from scipy import optimize, special, stats

PROBABILITY_FLOOR = 1e-12  # docs/method.md: probabilities clipped here before any logarithm
ECE_BINS = 15  # docs/method.md / torchmetrics default
CONFIDENCE_LEVEL = 0.95
TEMPERATURE_BOUNDS = (0.05, 20.0)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Probabilities from logits, in float64 (the served model returns FP32 logits)."""
    return special.softmax(np.asarray(logits, dtype=np.float64), axis=-1)


def nonfinite_rows(values: np.ndarray) -> np.ndarray:
    """True for each example whose output holds a NaN or an infinity."""
    values = np.asarray(values, dtype=np.float64)
    return ~np.isfinite(values).all(axis=-1)


def _clip(p: np.ndarray) -> np.ndarray:
    return np.clip(np.asarray(p, dtype=np.float64), PROBABILITY_FLOOR, 1.0)


def kl_divergence(p_teacher: np.ndarray, p_student: np.ndarray) -> np.ndarray:
    """Per-example KL(T‖S) = Σ p_T log(p_T / p_S), natural log, both clipped at 1e-12."""
    pt, ps = _clip(p_teacher), _clip(p_student)
    return np.sum(pt * (np.log(pt) - np.log(ps)), axis=-1)


def js_divergence(p_teacher: np.ndarray, p_student: np.ndarray) -> np.ndarray:
    """Per-example Jensen-Shannon divergence ½KL(T‖M) + ½KL(S‖M), M = ½(p_T + p_S), natural log."""
    pt, ps = _clip(p_teacher), _clip(p_student)
    m = 0.5 * (pt + ps)
    return 0.5 * np.sum(pt * (np.log(pt) - np.log(m)), axis=-1) + 0.5 * np.sum(ps * (np.log(ps) - np.log(m)), axis=-1)


def margin(probs: np.ndarray) -> np.ndarray:
    """Top-1 minus top-2 probability: how sure a model is (a low teacher margin marks a hard case)."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.shape[-1] < 2:
        return np.ones(probs.shape[:-1])
    top2 = np.sort(probs, axis=-1)[..., -2:]
    return top2[..., 1] - top2[..., 0]


# ---- rates and F1 ----------------------------------------------------------------------------------


def wilson_interval(successes: int, n: int, confidence: float = CONFIDENCE_LEVEL) -> tuple[float, float]:
    """Wilson score interval for a rate (docs/method.md); NaNs when there is nothing to count."""
    if n <= 0:
        return (float("nan"), float("nan"))
    ci = stats.binomtest(int(successes), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return (float(ci.low), float(ci.high))


def macro_f1_rows(y: np.ndarray, pred: np.ndarray, num_classes: int, rows: np.ndarray) -> np.ndarray:
    """Macro-F1 of the examples indexed by each row of ``rows``.

    As scikit-learn's ``f1_score(average="macro")`` with its default labels: the mean over the classes
    present in either the labels or the predictions of that sample, F1 = 2TP / (2TP + FP + FN).
    """
    rows = np.atleast_2d(rows)
    batch, n = rows.shape
    offset = (np.arange(batch) * num_classes)[:, None]
    yt = np.asarray(y)[rows] + offset
    yp = np.asarray(pred)[rows] + offset
    size = batch * num_classes
    support = np.bincount(yt.ravel(), minlength=size).reshape(batch, num_classes)
    predicted = np.bincount(yp.ravel(), minlength=size).reshape(batch, num_classes)
    tp = np.bincount(yt.ravel(), weights=(yt == yp).ravel(), minlength=size).reshape(batch, num_classes)
    denominator = support + predicted  # = 2TP + FP + FN
    present = denominator > 0
    f1 = np.divide(2 * tp, denominator, out=np.zeros_like(tp, dtype=np.float64), where=present)
    with np.errstate(invalid="ignore"):
        return f1.sum(axis=1) / present.sum(axis=1)


def macro_f1(y: np.ndarray, pred: np.ndarray, num_classes: int) -> float:
    """Macro-F1 against the labels (see ``macro_f1_rows``); NaN for an empty set."""
    if len(y) == 0:
        return float("nan")
    return float(macro_f1_rows(y, pred, num_classes, np.arange(len(y)))[0])


# ---- calibration -----------------------------------------------------------------------------------


def calibration_bin_index(confidence: np.ndarray, n_bins: int = ECE_BINS) -> np.ndarray:
    """Bin of each confidence, as torchmetrics bins it.

    Boundaries ``linspace(0, 1, n_bins + 1)``; bins are left-closed ``[b_k, b_{k+1})`` and a confidence of
    exactly 1.0 falls in an extra bin of its own (torchmetrics: ``bucketize(conf, boundaries, right=True) - 1``
    over ``n_bins + 1`` slots). Returns indices in ``0..n_bins``.
    """
    boundaries = np.linspace(0.0, 1.0, n_bins + 1)
    return np.searchsorted(boundaries, np.asarray(confidence, dtype=np.float64), side="right") - 1


def ece_rows(bins: np.ndarray, confidence: np.ndarray, correct: np.ndarray, rows: np.ndarray, n_bins: int = ECE_BINS) -> np.ndarray:
    """Expected calibration error (L1) of the examples indexed by each row of ``rows``.

    ECE = Σ_b (|b|/n) · |acc(b) − conf(b)| over the ``n_bins + 1`` torchmetrics slots.
    """
    rows = np.atleast_2d(rows)
    batch, n = rows.shape
    slots = n_bins + 1
    keys = (np.asarray(bins)[rows] + (np.arange(batch) * slots)[:, None]).ravel()
    size = batch * slots
    count = np.bincount(keys, minlength=size).reshape(batch, slots)
    conf_sum = np.bincount(keys, weights=np.asarray(confidence, dtype=np.float64)[rows].ravel(), minlength=size)
    acc_sum = np.bincount(keys, weights=np.asarray(correct, dtype=np.float64)[rows].ravel(), minlength=size)
    gap = np.abs(acc_sum - conf_sum).reshape(batch, slots)  # |Σacc − Σconf| = |b|·|acc(b) − conf(b)|
    with np.errstate(invalid="ignore", divide="ignore"):
        return gap.sum(axis=1) / count.sum(axis=1)


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """ECE of class probabilities against labels, on the max probability (torchmetrics' multiclass ECE)."""
    probs = np.asarray(probs, dtype=np.float64)
    if len(probs) == 0:
        return float("nan")
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == np.asarray(y)
    return float(ece_rows(calibration_bin_index(confidence, n_bins), confidence, correct, np.arange(len(probs)), n_bins)[0])


def reliability_bins(probs: np.ndarray, y: np.ndarray, n_bins: int = ECE_BINS) -> list[dict]:
    """The reliability diagram's data: per bin its range, count, accuracy and mean confidence."""
    probs = np.asarray(probs, dtype=np.float64)
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == np.asarray(y)
    bins = calibration_bin_index(confidence, n_bins)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    out = []
    for b in range(n_bins + 1):
        members = bins == b
        count = int(members.sum())
        low = float(edges[b]) if b < n_bins else 1.0
        high = float(edges[b + 1]) if b < n_bins else 1.0
        out.append(
            {
                "low": low,
                "high": high,
                "count": count,
                "accuracy": float(correct[members].mean()) if count else None,
                "confidence": float(confidence[members].mean()) if count else None,
            }
        )
    return out


def negative_log_likelihood(logits: np.ndarray, y: np.ndarray, temperature: float = 1.0) -> float:
    """Mean NLL of softmax(logits / T) at the true labels."""
    log_probs = special.log_softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=1)
    return float(-log_probs[np.arange(len(y)), np.asarray(y)].mean())


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The T > 0 minimising the NLL of softmax(logits / T) on this set (temperature scaling, Guo et al. 2017).

    Searched on log T within [0.05, 20] (bounded Brent); NaN for an empty set.
    """
    logits = np.asarray(logits, dtype=np.float64)
    y = np.asarray(y)
    if len(y) == 0:
        return float("nan")
    lo, hi = np.log(TEMPERATURE_BOUNDS[0]), np.log(TEMPERATURE_BOUNDS[1])
    result = optimize.minimize_scalar(
        lambda log_t: negative_log_likelihood(logits, y, float(np.exp(log_t))),
        bounds=(lo, hi),
        method="bounded",
        options={"xatol": 1e-6},
    )
    return float(np.exp(result.x))


# ---- bootstrap -------------------------------------------------------------------------------------


def bootstrap_interval(
    statistic: Callable[[np.ndarray], np.ndarray],
    n: int,
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = CONFIDENCE_LEVEL,
) -> tuple[float, float]:
    """Seeded percentile-bootstrap interval of a statistic of example indices (``scipy.stats.bootstrap``).

    ``statistic(rows)`` takes index arrays of shape ``(batch, n)`` and returns one value per row.
    NaNs when fewer than two examples, or when resamples give undefined values.
    """
    if n < 2:
        return (float("nan"), float("nan"))

    def vectorised(rows: np.ndarray, axis: int = -1) -> np.ndarray:
        rows = np.asarray(rows)
        flat = rows.reshape(-1, rows.shape[-1])
        return np.asarray(statistic(flat), dtype=np.float64).reshape(rows.shape[:-1])

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = stats.bootstrap(
            (np.arange(n),),
            vectorised,
            n_resamples=n_resamples,
            vectorized=True,
            batch=max(1, min(n_resamples, 2_000_000 // n)),
            confidence_level=confidence,
            method="percentile",
            rng=np.random.default_rng(seed),
        )
    low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
    return (low, high)
