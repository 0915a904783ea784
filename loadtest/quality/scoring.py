"""Every quality figure, for teacher and student, overall and per slice, each with n and a 95 % interval.

The output is ``metrics.csv``'s long table: ``model, slice, slice_value, metric, value, ci_low, ci_high,
n, unstable``. ``model`` is the role (``teacher`` or ``student``); fidelity figures (agreement, KL, JS) and
the drops versus the teacher are the student's rows. Intervals: Wilson for rates (agreement, accuracy),
a seeded percentile bootstrap for everything else (KL, JS, macro-F1, ECE, the drops, paired over the same
examples). Examples where either model returned a NaN/Inf are counted in ``nonfinite_outputs`` and left out
of every other figure (an argmax of NaN means nothing). Temperature scaling is fitted once per model on the
whole (finite) evaluation set and applied unchanged to every slice.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from loadtest.quality import metrics as m
from loadtest.quality.slices import OVERALL, OVERALL_VALUE, SliceSpec, slice_value_strings

METRIC_COLUMNS = ["model", "slice", "slice_value", "metric", "value", "ci_low", "ci_high", "n", "unstable"]
ROLES = ("teacher", "student")

# name -> (higher is better?, description). None: neither (a fitted parameter).
QUALITY_METRICS: dict[str, tuple[bool | None, str]] = {
    "agreement": (True, "student prediction == teacher prediction (rate)"),
    "kl": (False, "mean KL(teacher ‖ student), nats"),
    "js": (False, "mean Jensen-Shannon divergence, nats"),
    "accuracy": (True, "prediction == label (rate)"),
    "macro_f1": (True, "macro-F1 against labels"),
    "accuracy_drop": (False, "teacher accuracy − student accuracy"),
    "macro_f1_drop": (False, "teacher macro-F1 − student macro-F1"),
    "ece": (False, "expected calibration error, 15 bins, L1"),
    "temperature": (None, "temperature minimising NLL on the evaluation set"),
    "ece_after_temperature": (False, "ECE after temperature scaling"),
    "nonfinite_outputs": (False, "examples with a NaN/Inf output (count)"),
}


@dataclass
class ModelOutputs:
    """One model's served outputs over the evaluation set."""

    logits: np.ndarray  # (n, K) float
    probs: np.ndarray  # (n, K) float64

    @property
    def pred(self) -> np.ndarray:
        return np.nan_to_num(self.probs, nan=-1.0).argmax(axis=1)


@dataclass
class ScoreSettings:
    min_slice_n: int = 30
    n_resamples: int = 1000
    seed: int = 0


@dataclass
class Scores:
    """metrics.csv plus the whole-set extras the report draws (temperatures, reliability bins)."""

    table: pd.DataFrame
    temperatures: dict[str, float]
    reliability: dict[str, list[dict]]
    finite_examples: int


def slice_interval(statistic, idx: np.ndarray, settings) -> tuple[float, float]:
    """95 % bootstrap interval of ``statistic`` over the examples ``idx`` of one slice.

    ``statistic`` takes an array of row sets (one per resample) and returns one value per set. The
    classifier and generative scorers share it so both resample the same way (``n_resamples``, ``seed``).
    """
    return m.bootstrap_interval(lambda rows: statistic(idx[rows]), len(idx), n_resamples=settings.n_resamples, seed=settings.seed)


def metric_row(role: str, slice_name: str, value_name: str, metric: str, value, ci, n, min_slice_n: int) -> dict:
    """One row of metrics.csv (``METRIC_COLUMNS``); the generative table builds its rows here too (adding
    ``p_value``) so report, findings and gate read both tables by one contract."""
    return {
        "model": role,
        "slice": slice_name,
        "slice_value": value_name,
        "metric": metric,
        "value": float(value),
        "ci_low": float(ci[0]),
        "ci_high": float(ci[1]),
        "n": int(n),
        "unstable": bool(n < min_slice_n),
    }


class _Scorer:
    def __init__(self, y: np.ndarray, outputs: dict[str, ModelOutputs], num_classes: int, settings: ScoreSettings):
        self.y = np.asarray(y, dtype=np.int64)
        self.k = num_classes
        self.settings = settings
        self.nonfinite = {r: m.nonfinite_rows(outputs[r].logits) | m.nonfinite_rows(outputs[r].probs) for r in ROLES}
        self.finite = ~(self.nonfinite["teacher"] | self.nonfinite["student"])
        finite = self.finite
        self.pred = {r: outputs[r].pred for r in ROLES}
        self.correct = {r: self.pred[r] == self.y for r in ROLES}
        self.agree = self.pred["student"] == self.pred["teacher"]
        self.kl = np.full(len(self.y), np.nan)
        self.js = np.full(len(self.y), np.nan)
        self.kl[finite] = m.kl_divergence(outputs["teacher"].probs[finite], outputs["student"].probs[finite])
        self.js[finite] = m.js_divergence(outputs["teacher"].probs[finite], outputs["student"].probs[finite])
        self.temperature: dict[str, float] = {}
        self.conf: dict[str, np.ndarray] = {}
        self.bins: dict[str, np.ndarray] = {}
        self.conf_t: dict[str, np.ndarray] = {}
        self.correct_t: dict[str, np.ndarray] = {}
        self.bins_t: dict[str, np.ndarray] = {}
        self.probs_t: dict[str, np.ndarray] = {}
        for r in ROLES:
            probs = np.where(finite[:, None], outputs[r].probs, 1.0 / max(num_classes, 1))
            self.conf[r] = probs.max(axis=1)
            self.bins[r] = m.calibration_bin_index(self.conf[r])
            temperature = m.fit_temperature(outputs[r].logits[finite], self.y[finite]) if finite.any() else float("nan")
            self.temperature[r] = temperature
            logits = np.where(finite[:, None], np.asarray(outputs[r].logits, dtype=np.float64), 0.0)
            scaled = m.softmax(logits / (temperature if np.isfinite(temperature) else 1.0))
            self.probs_t[r] = scaled
            self.conf_t[r] = scaled.max(axis=1)
            self.correct_t[r] = scaled.argmax(axis=1) == self.y
            self.bins_t[r] = m.calibration_bin_index(self.conf_t[r])
        self.rows: list[dict] = []

    def _ci(self, statistic, idx: np.ndarray) -> tuple[float, float]:
        return slice_interval(statistic, idx, self.settings)

    def _add(self, role, slice_name, value_name, metric, value, ci, n):
        self.rows.append(metric_row(role, slice_name, value_name, metric, value, ci, n, self.settings.min_slice_n))

    def score_slice(self, members: np.ndarray, slice_name: str, value_name: str, overall: bool, with_f1: bool) -> None:
        """All figures of one slice value; ``members`` is a boolean mask over the evaluation set."""
        nan2 = (float("nan"), float("nan"))
        idx = np.flatnonzero(members & self.finite)
        n = len(idx)
        for r in ROLES:
            self._add(r, slice_name, value_name, "nonfinite_outputs", self.nonfinite[r][members].sum(), nan2, int(members.sum()))
        if n == 0:  # listed with n = 0, never hidden
            names = {
                "teacher": ["accuracy", "ece", "ece_after_temperature"],
                "student": ["accuracy", "ece", "ece_after_temperature", "agreement", "kl", "js", "accuracy_drop"],
            }
            if with_f1:
                names["teacher"].append("macro_f1")
                names["student"] += ["macro_f1", "macro_f1_drop"]
            for r, metric_names in names.items():
                for name in metric_names:
                    self._add(r, slice_name, value_name, name, float("nan"), nan2, 0)
            return
        y, k = self.y, self.k
        f1 = {}
        for r in ROLES:
            correct = self.correct[r]
            self._add(r, slice_name, value_name, "accuracy", correct[idx].mean(), m.wilson_interval(correct[idx].sum(), n), n)
            if with_f1:
                pred = self.pred[r]
                f1[r] = lambda rows, pred=pred: m.macro_f1_rows(y, pred, k, rows)
                self._add(r, slice_name, value_name, "macro_f1", f1[r](idx)[0], self._ci(f1[r], idx), n)
            bins, conf = self.bins[r], self.conf[r]
            ece = lambda rows, bins=bins, conf=conf, correct=correct: m.ece_rows(bins, conf, correct, rows)
            self._add(r, slice_name, value_name, "ece", ece(idx)[0], self._ci(ece, idx), n)
            bins_t, conf_t, correct_t = self.bins_t[r], self.conf_t[r], self.correct_t[r]
            ece_t = lambda rows, b=bins_t, c=conf_t, ok=correct_t: m.ece_rows(b, c, ok, rows)
            self._add(r, slice_name, value_name, "ece_after_temperature", ece_t(idx)[0], self._ci(ece_t, idx), n)
            if overall:
                self._add(r, slice_name, value_name, "temperature", self.temperature[r], nan2, n)
        # fidelity and drops: the student's rows
        self._add("student", slice_name, value_name, "agreement", self.agree[idx].mean(), m.wilson_interval(self.agree[idx].sum(), n), n)
        for name, per_example in (("kl", self.kl), ("js", self.js)):
            mean = lambda rows, v=per_example: np.atleast_2d(v[rows]).mean(axis=-1)
            self._add("student", slice_name, value_name, name, mean(idx)[0], self._ci(mean, idx), n)
        diff = self.correct["teacher"].astype(float) - self.correct["student"].astype(float)
        drop = lambda rows: np.atleast_2d(diff[rows]).mean(axis=-1)
        self._add("student", slice_name, value_name, "accuracy_drop", drop(idx)[0], self._ci(drop, idx), n)
        if with_f1:
            f1_drop = lambda rows: f1["teacher"](rows) - f1["student"](rows)
            self._add("student", slice_name, value_name, "macro_f1_drop", f1_drop(idx)[0], self._ci(f1_drop, idx), n)


def score(
    frame: pd.DataFrame,
    outputs: dict[str, ModelOutputs],
    specs: list[SliceSpec],
    num_classes: int,
    settings: ScoreSettings | None = None,
    progress=None,
) -> Scores:
    """Compute metrics.csv for the per-example frame (needs ``label_id`` and each spec's column).

    ``progress``, when given, is called once per slice value scored (for a progress bar).
    """
    settings = settings or ScoreSettings()
    scorer = _Scorer(frame["label_id"].to_numpy(), outputs, num_classes, settings)
    everyone = np.ones(len(frame), dtype=bool)
    scorer.score_slice(everyone, OVERALL, OVERALL_VALUE, overall=True, with_f1=True)
    if progress:
        progress()
    for spec in specs:
        values = slice_value_strings(frame[spec.column]).to_numpy()
        for value in spec.values:
            scorer.score_slice(values == value, spec.name, value, overall=False, with_f1=spec.name != "class")
            if progress:
                progress()
    finite = scorer.finite
    reliability = {}
    for r in ROLES:
        reliability[r] = m.reliability_bins(outputs[r].probs[finite], scorer.y[finite]) if finite.any() else []
        reliability[f"{r}_after_temperature"] = (
            m.reliability_bins(scorer.probs_t[r][finite], scorer.y[finite]) if finite.any() else []
        )
    table = pd.DataFrame(scorer.rows, columns=METRIC_COLUMNS)
    return Scores(table=table, temperatures=dict(scorer.temperature), reliability=reliability, finite_examples=int(finite.sum()))


def slice_count(specs: list[SliceSpec]) -> int:
    """How many slice values ``score`` will visit (overall included), for progress totals."""
    return 1 + sum(len(s.values) for s in specs)


def lookup(table: pd.DataFrame, metric: str, model: str = "student", slice_name: str = OVERALL, slice_value: str = OVERALL_VALUE) -> pd.Series | None:
    """The row of one figure, or None when it was not computed."""
    rows = table[
        (table["metric"] == metric)
        & (table["model"] == model)
        & (table["slice"] == slice_name)
        & (table["slice_value"].astype(str) == str(slice_value))
    ]
    return None if rows.empty else rows.iloc[0]
