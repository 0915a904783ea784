"""Fairness across groups: did distillation widen the gap between the best- and worst-served group?

With a group column (``loadtest eval --group-column segment``) each model's per-group score — accuracy for
classifiers, chrF against the reference for generators — comes from Fairlearn's ``MetricFrame``; the
**gap** is its ``difference(method="between_groups")``: best group minus worst group. The student's
**widening** is its gap minus the teacher's, on the same examples; its interval is a paired bootstrap
(each resample recomputes both gaps on the same rows). For two-class classifiers Fairlearn's
demographic-parity and equalized-odds differences are reported too (they are defined for binary
predictions only).

Rows added to metrics.csv (slice ``overall``): ``group_gap`` (teacher and student), ``group_gap_widening``
(student); with two classes ``demographic_parity_difference`` and ``equalized_odds_difference`` (both).
Per-group figures themselves are the group column's slice rows. A gap whose smallest group is below the
minimum slice n is flagged unstable.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from loadtest.errors import LoadtestError
from loadtest.quality import metrics as m
from loadtest.quality.slices import OVERALL, OVERALL_VALUE, slice_value_strings

ROLES = ("teacher", "student")

FAIRNESS_METRICS: dict[str, tuple[bool | None, str]] = {
    "group_gap": (False, "best group's score minus worst group's (accuracy, or chrF points for generators)"),
    "group_gap_widening": (False, "student's group gap minus the teacher's, on the same examples"),
    "demographic_parity_difference": (False, "Fairlearn: largest difference in positive-prediction rate between groups (two classes)"),
    "equalized_odds_difference": (False, "Fairlearn: largest of the TPR and FPR differences between groups (two classes)"),
}


@dataclass
class FairnessSettings:
    min_group_n: int = 30
    n_resamples: int = 1000
    seed: int = 0


def group_values(per: pd.DataFrame, column: str) -> np.ndarray:
    """The group of every example as a string (the slice rows' spelling), or a one-line error."""
    if column not in per.columns:
        raise LoadtestError(f"--group-column '{column}' is not a column of the evaluation set")
    return slice_value_strings(per[column]).to_numpy()


def _gap_rows(codes: np.ndarray, scores: np.ndarray, n_groups: int, rows: np.ndarray) -> np.ndarray:
    """Best minus worst group mean for each row of example indices (vectorised bootstrap)."""
    rows = np.atleast_2d(rows)
    batch = rows.shape[0]
    keys = (codes[rows] + (np.arange(batch) * n_groups)[:, None]).ravel()
    size = batch * n_groups
    count = np.bincount(keys, minlength=size).reshape(batch, n_groups)
    total = np.bincount(keys, weights=scores[rows].ravel(), minlength=size).reshape(batch, n_groups)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(count > 0, total / np.maximum(count, 1), np.nan)
        return np.nanmax(means, axis=1) - np.nanmin(means, axis=1)


def group_fairness(
    groups: np.ndarray,
    scores: dict[str, np.ndarray],
    score_name: str,
    settings: FairnessSettings | None = None,
    valid: np.ndarray | None = None,
    binary: dict | None = None,
) -> tuple[list[dict], dict]:
    """metrics.csv rows and a summary of per-group scores, gaps and the student's widening.

    ``scores[role]`` is one value per example (1/0 for correct, or chrF); ``valid`` excludes examples
    (non-finite outputs). ``binary``, for two-class classifiers: ``{"y": y, "teacher": pred, "student": pred}``
    with 0/1 values.
    """
    from loadtest.quality.textmetrics import require_extra

    fairlearn_metrics = require_extra("fairlearn.metrics")
    MetricFrame = fairlearn_metrics.MetricFrame
    demographic_parity_difference = fairlearn_metrics.demographic_parity_difference
    equalized_odds_difference = fairlearn_metrics.equalized_odds_difference

    settings = settings or FairnessSettings()
    valid = np.ones(len(groups), dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    idx = np.flatnonzero(valid)
    names, codes = np.unique(groups, return_inverse=True)
    counts = np.bincount(codes[idx], minlength=len(names))
    present = counts[counts > 0]
    unstable = bool(present.size == 0 or present.min() < settings.min_group_n)  # the smallest group decides
    n = len(idx)
    rows: list[dict] = []
    nan2 = (float("nan"), float("nan"))

    def add(role, metric, value, ci):
        rows.append(
            {"model": role, "slice": OVERALL, "slice_value": OVERALL_VALUE, "metric": metric, "value": float(value),
             "ci_low": float(ci[0]), "ci_high": float(ci[1]), "n": n, "unstable": unstable}
        )

    summary: dict = {"score": score_name, "groups": {}, "unstable": unstable}
    frames = {}
    for role in ROLES:
        values = np.asarray(scores[role], dtype=np.float64)
        frames[role] = MetricFrame(
            metrics=lambda y_true, y_pred: float(np.mean(y_true)),
            y_true=values[idx],
            y_pred=np.zeros(n),
            sensitive_features=pd.Series(groups[idx], name="group"),
        )
        gap = float(frames[role].difference(method="between_groups")) if n else float("nan")
        stat = lambda r, v=values: _gap_rows(codes, v, len(names), idx[r])  # noqa: E731
        add(role, "group_gap", gap, m.bootstrap_interval(stat, n, settings.n_resamples, settings.seed) if counts.astype(bool).sum() > 1 else nan2)
        summary[f"{role}_gap"] = gap
    for name in names:
        if not counts[list(names).index(name)]:
            continue
        summary["groups"][str(name)] = {
            "n": int(counts[list(names).index(name)]),
            **{role: float(frames[role].by_group.loc[name]) for role in ROLES},
        }
    teacher_scores = np.asarray(scores["teacher"], dtype=np.float64)
    student_scores = np.asarray(scores["student"], dtype=np.float64)

    def widening(r):
        rr = idx[r]
        return _gap_rows(codes, student_scores, len(names), rr) - _gap_rows(codes, teacher_scores, len(names), rr)

    widen = summary["student_gap"] - summary["teacher_gap"]
    add("student", "group_gap_widening", widen, m.bootstrap_interval(widening, n, settings.n_resamples, settings.seed) if n > 1 else nan2)
    summary["widening"] = widen
    if binary is not None:
        y = np.asarray(binary["y"])[idx]
        sensitive = groups[idx]
        for role in ROLES:
            pred = np.asarray(binary[role])[idx]
            dp = demographic_parity_difference(y, pred, sensitive_features=sensitive)
            eo = equalized_odds_difference(y, pred, sensitive_features=sensitive)
            add(role, "demographic_parity_difference", dp, nan2)
            add(role, "equalized_odds_difference", eo, nan2)
            summary[f"{role}_demographic_parity_difference"] = float(dp)
            summary[f"{role}_equalized_odds_difference"] = float(eo)
    return rows, summary
