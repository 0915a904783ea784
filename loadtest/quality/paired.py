"""Paired comparisons on the same frozen set: McNemar's exact test and the paired bootstrap.

Two models (student vs teacher, or a new student vs the previous one) answered the *same* examples, so
their differences are judged example by example, not as two independent samples:

- pass/fail figures (exact match, format adherence, accuracy): McNemar's exact test — under "no
  difference" the discordant pairs split as Binomial(b + c, ½); two-sided p from ``scipy.stats.binomtest``;
- continuous scores (chrF, ROUGE-L, KL, NLL): the seeded percentile bootstrap of the mean per-example
  difference, resampling examples (pairs stay together).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

from loadtest.quality.metrics import bootstrap_interval


@dataclass
class McNemar:
    """Discordant counts and the exact two-sided p-value."""

    only_a: int  # a passes, b fails
    only_b: int  # b passes, a fails
    p_value: float


def mcnemar_exact(a_pass, b_pass) -> McNemar:
    """McNemar's exact test on paired booleans; p = 1 when no pair is discordant."""
    a = np.asarray(a_pass, dtype=bool)
    b = np.asarray(b_pass, dtype=bool)
    only_a = int((a & ~b).sum())
    only_b = int((b & ~a).sum())
    discordant = only_a + only_b
    p = 1.0 if discordant == 0 else float(stats.binomtest(only_a, discordant, 0.5).pvalue)
    return McNemar(only_a, only_b, p)


def paired_bootstrap(a_scores, b_scores, n_resamples: int = 1000, seed: int = 0) -> tuple[float, tuple[float, float]]:
    """Mean of (a − b) over examples and its 95 % paired-bootstrap interval."""
    diff = np.asarray(a_scores, dtype=np.float64) - np.asarray(b_scores, dtype=np.float64)
    if len(diff) == 0:
        return float("nan"), (float("nan"), float("nan"))
    mean = lambda rows: np.atleast_2d(diff[rows]).mean(axis=-1)  # noqa: E731
    return float(diff.mean()), bootstrap_interval(mean, len(diff), n_resamples=n_resamples, seed=seed)
