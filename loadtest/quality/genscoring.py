"""Generative quality per slice: every figure for teacher and student with n, a 95 % interval and a paired p.

Input is the per-example log (``per_example.parquet`` of a generative evaluation); output is the long
table of ``metrics.csv`` (``METRIC_COLUMNS`` + ``p_value``), the classifier table's contract, so the
report, findings and gate read both the same way. ``add_text_scores`` fills the per-example score columns
from the outputs, so the log alone reproduces every figure.

Per-example log columns this module reads (``{r}`` is ``teacher`` or ``student``):

- ``reference``, ``{r}_output``, ``{r}_output_tokens``; ``required_keys`` (list, empty when the prompt asks
  for no format) — the inputs of the text scores;
- teacher-forced sums (when the models were scored): ``ref_tokens``, ``{r}_nll``, ``tf_agree``, ``tf_kl``,
  ``{r}_tf_nonfinite``;
- written by ``add_text_scores``: ``{r}_exact``, ``{r}_chrf``, ``{r}_rouge_l`` (against the reference),
  ``{r}_format_ok`` (None without a format), ``{r}_empty``, and the student's fidelity to the teacher
  ``exact_vs_teacher``, ``chrf_vs_teacher``, ``rouge_l_vs_teacher``.

Intervals: Wilson for rates; a seeded percentile bootstrap over *examples* for everything else, including
the token-weighted figures (tokens of one example are not independent, so a per-token interval would be
too narrow). Drops (teacher − student) are paired: bootstrap of the per-example difference, with McNemar's
exact p for pass/fail drops.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from loadtest.quality import metrics as m
from loadtest.quality import teacherforced as tf
from loadtest.quality import textmetrics as tm
from loadtest.quality.paired import mcnemar_exact
from loadtest.quality.scoring import METRIC_COLUMNS, metric_row, slice_interval
from loadtest.quality.slices import OVERALL, OVERALL_VALUE, SliceSpec, slice_value_strings

ROLES = ("teacher", "student")
GEN_METRIC_COLUMNS = [*METRIC_COLUMNS, "p_value"]

# name -> (higher is better?, description); the gate accepts every one, per slice.
GENERATIVE_METRICS: dict[str, tuple[bool | None, str]] = {
    "perplexity": (False, "exp(Σ NLL / Σ reference tokens), teacher-forced on the references"),
    "tf_agreement": (True, "teacher-forced top-1 agreement with the teacher, per reference token (rate)"),
    "tf_kl": (False, "teacher-forced KL(teacher ‖ student), nats per reference token"),
    "exact_match": (True, "output == reference after whitespace normalisation (rate)"),
    "chrf": (True, "sentence chrF2 against the reference, 0–100 (sacrebleu), mean over examples"),
    "rouge_l": (True, "ROUGE-L F against the reference, 0–1 (rouge-score), mean over examples"),
    "format_adherence": (True, "structured prompts whose output is JSON with the required keys (rate)"),
    "exact_match_vs_teacher": (True, "student output == teacher output after whitespace normalisation (rate)"),
    "chrf_vs_teacher": (True, "sentence chrF2 of the student's output against the teacher's, 0–100"),
    "rouge_l_vs_teacher": (True, "ROUGE-L F of the student's output against the teacher's, 0–1"),
    "length_ratio": (None, "Σ student output tokens / Σ teacher output tokens"),
    "output_tokens": (None, "mean output tokens per example"),
    "empty_outputs": (False, "outputs with no visible character (count)"),
    "chrf_drop": (False, "teacher chrF − student chrF against the reference, points (paired)"),
    "rouge_l_drop": (False, "teacher ROUGE-L − student ROUGE-L against the reference (paired)"),
    "exact_match_drop": (False, "teacher exact match − student exact match (paired; McNemar p)"),
    "format_adherence_drop": (False, "teacher format adherence − student format adherence (paired; McNemar p)"),
    "judged_equivalence": (True, "the judge says the student's answer means the same as the teacher's (rate)"),
}

# Figures over a subset of the examples: a slice with none of them has nothing to judge (the gate skips it).
SUBSET_METRICS = {"format_adherence": "structured prompts", "format_adherence_drop": "structured prompts", "judged_equivalence": "judged examples"}


def add_text_scores(per: pd.DataFrame) -> pd.DataFrame:
    """Per-example text scores from ``reference``, the outputs and ``required_keys`` (returns a copy)."""
    per = per.copy()
    references = per["reference"].tolist()
    keys = [tm.parse_required_keys(v) for v in per["required_keys"]] if "required_keys" in per else [[] for _ in references]
    per["required_keys"] = keys
    for role in ROLES:
        outputs = per[f"{role}_output"].tolist()
        per[f"{role}_empty"] = [tm.is_empty(o) for o in outputs]
        per[f"{role}_exact"] = [tm.exact_match(o, r) for o, r in zip(outputs, references)]
        per[f"{role}_chrf"] = [tm.chrf(o, r) for o, r in zip(outputs, references)]
        per[f"{role}_rouge_l"] = [tm.rouge_l(o, r) for o, r in zip(outputs, references)]
        per[f"{role}_format_ok"] = pd.array([tm.format_adherence(o, k) if k else None for o, k in zip(outputs, keys)], dtype="boolean")
    teacher, student = per["teacher_output"].tolist(), per["student_output"].tolist()
    per["exact_vs_teacher"] = [tm.exact_match(s, t) for s, t in zip(student, teacher)]
    per["chrf_vs_teacher"] = [tm.chrf(s, t) for s, t in zip(student, teacher)]
    per["rouge_l_vs_teacher"] = [tm.rouge_l(s, t) for s, t in zip(student, teacher)]
    return per


@dataclass
class GenScoreSettings:
    min_slice_n: int = 30
    n_resamples: int = 1000
    seed: int = 0


class _GenScorer:
    def __init__(self, per: pd.DataFrame, settings: GenScoreSettings):
        self.per = per
        self.settings = settings
        self.rows: list[dict] = []
        self.teacher_forced = "ref_tokens" in per.columns and "teacher_nll" in per.columns
        self.judged = "judge_equivalent" in per.columns

    def _ci(self, statistic, idx: np.ndarray) -> tuple[float, float]:
        return slice_interval(statistic, idx, self.settings)

    def _add(self, role, slice_name, value_name, metric, value, ci, n, p_value=float("nan")):
        row = metric_row(role, slice_name, value_name, metric, value, ci, n, self.settings.min_slice_n)
        self.rows.append({**row, "p_value": float(p_value)})

    def _rate(self, role, where, metric, passed: np.ndarray, idx: np.ndarray) -> None:
        n = len(idx)
        value = passed[idx].mean() if n else float("nan")
        self._add(role, *where, metric, value, m.wilson_interval(int(passed[idx].sum()), n), n)

    def _mean(self, role, where, metric, values: np.ndarray, idx: np.ndarray) -> None:
        mean = lambda rows: np.atleast_2d(values[rows]).mean(axis=-1)  # noqa: E731
        value = values[idx].mean() if len(idx) else float("nan")
        self._add(role, *where, metric, value, self._ci(mean, idx), len(idx))

    def _ratio_of_sums(self, role, where, metric, top: np.ndarray, bottom: np.ndarray, idx: np.ndarray, transform=None) -> None:
        transform = transform or (lambda x: x)

        def statistic(rows):
            with np.errstate(all="ignore"):
                return transform(np.atleast_2d(top[rows]).sum(axis=-1) / np.atleast_2d(bottom[rows]).sum(axis=-1))

        value = statistic(idx)[0] if len(idx) else float("nan")
        self._add(role, *where, metric, value, self._ci(statistic, idx), len(idx))

    def _paired_drop(self, where, metric, teacher: np.ndarray, student: np.ndarray, idx: np.ndarray, binary: bool) -> None:
        diff = teacher.astype(float) - student.astype(float)
        drop = lambda rows: np.atleast_2d(diff[rows]).mean(axis=-1)  # noqa: E731
        p = mcnemar_exact(teacher[idx], student[idx]).p_value if binary and len(idx) else float("nan")
        value = diff[idx].mean() if len(idx) else float("nan")
        self._add("student", *where, metric, value, self._ci(drop, idx), len(idx), p)

    def score_slice(self, members: np.ndarray, slice_name: str, value_name: str) -> None:
        per = self.per
        where = (slice_name, value_name)
        idx = np.flatnonzero(members)
        nan2 = (float("nan"), float("nan"))
        for role in ROLES:
            self._add(role, *where, "empty_outputs", per[f"{role}_empty"].to_numpy(bool)[idx].sum(), nan2, len(idx))
            self._rate(role, where, "exact_match", per[f"{role}_exact"].to_numpy(bool), idx)
            self._mean(role, where, "chrf", per[f"{role}_chrf"].to_numpy(float), idx)
            self._mean(role, where, "rouge_l", per[f"{role}_rouge_l"].to_numpy(float), idx)
            self._mean(role, where, "output_tokens", per[f"{role}_output_tokens"].to_numpy(float), idx)
        formatted = per["teacher_format_ok"].notna().to_numpy() & members
        fidx = np.flatnonzero(formatted)
        ok = {r: per[f"{r}_format_ok"].fillna(False).to_numpy(bool) for r in ROLES}
        for role in ROLES:
            self._rate(role, where, "format_adherence", ok[role], fidx)
        self._paired_drop(where, "format_adherence_drop", ok["teacher"], ok["student"], fidx, binary=True)
        self._rate("student", where, "exact_match_vs_teacher", per["exact_vs_teacher"].to_numpy(bool), idx)
        self._mean("student", where, "chrf_vs_teacher", per["chrf_vs_teacher"].to_numpy(float), idx)
        self._mean("student", where, "rouge_l_vs_teacher", per["rouge_l_vs_teacher"].to_numpy(float), idx)
        self._ratio_of_sums(
            "student", where, "length_ratio", per["student_output_tokens"].to_numpy(float), per["teacher_output_tokens"].to_numpy(float), idx
        )
        self._paired_drop(where, "exact_match_drop", per["teacher_exact"].to_numpy(bool), per["student_exact"].to_numpy(bool), idx, binary=True)
        self._paired_drop(where, "chrf_drop", per["teacher_chrf"].to_numpy(float), per["student_chrf"].to_numpy(float), idx, binary=False)
        self._paired_drop(where, "rouge_l_drop", per["teacher_rouge_l"].to_numpy(float), per["student_rouge_l"].to_numpy(float), idx, binary=False)
        if self.teacher_forced:
            finite = ~(per["teacher_tf_nonfinite"].to_numpy(bool) | per["student_tf_nonfinite"].to_numpy(bool))
            tidx = np.flatnonzero(members & finite)
            tokens = per["ref_tokens"].to_numpy(float)
            for role in ROLES:
                self._add(role, *where, "nonfinite_outputs", per[f"{role}_tf_nonfinite"].to_numpy(bool)[idx].sum(), nan2, len(idx))
                self._ratio_of_sums(role, where, "perplexity", per[f"{role}_nll"].to_numpy(float), tokens, tidx, transform=np.exp)
            if "tf_agree" in per.columns and per["tf_agree"].notna().any():
                self._ratio_of_sums("student", where, "tf_agreement", per["tf_agree"].to_numpy(float), tokens, tidx)
            if "tf_kl" in per.columns and per["tf_kl"].notna().any():
                self._ratio_of_sums("student", where, "tf_kl", per["tf_kl"].to_numpy(float), tokens, tidx)
        else:
            for role in ROLES:  # numerical health still has a figure: the text outputs are finite by construction
                self._add(role, *where, "nonfinite_outputs", 0, nan2, len(idx))
        if self.judged:
            verdicts = per["judge_equivalent"]
            jidx = np.flatnonzero(verdicts.notna().to_numpy() & members)
            self._rate("student", where, "judged_equivalence", verdicts.fillna(False).to_numpy(bool), jidx)


def generative_slices(per: pd.DataFrame, dataset_columns: list[str]) -> tuple[pd.DataFrame, list[SliceSpec]]:
    """Slices of a generative set: prompt-length quartile (when known), structured vs free text, dataset columns."""
    per = per.copy()
    specs: list[SliceSpec] = []
    taken = set(dataset_columns)
    if "prompt_tokens" in per.columns and "length_quartile" not in taken and per["prompt_tokens"].notna().all():
        codes, edges = pd.qcut(per["prompt_tokens"].astype(float), 4, labels=False, retbins=True, duplicates="drop")
        per["length_quartile"] = [f"Q{int(c) + 1}" for c in codes]
        spans = ", ".join(f"Q{i + 1}: {edges[i]:g}–{edges[i + 1]:g}" for i in range(len(edges) - 1))
        specs.append(SliceSpec("length_quartile", "length_quartile", "auto", f"prompt length in tokens, by quartile ({spans})"))
    if "structured" not in taken:
        per["structured"] = [bool(k) for k in per["required_keys"]]
        specs.append(SliceSpec("structured", "structured", "auto", "the prompt asks for JSON with required keys"))
    for column in dataset_columns:
        specs.append(SliceSpec(column, column, "dataset", f"dataset column '{column}'"))
    for spec in specs:
        values = slice_value_strings(per[spec.column])
        unique = [v for v in pd.unique(values)]
        spec.values = [v for v in ("False", "True") if v in unique] if set(unique) <= {"True", "False"} else sorted(unique)
    return per, specs


def score_generative(per: pd.DataFrame, specs: list[SliceSpec], settings: GenScoreSettings | None = None, progress=None) -> pd.DataFrame:
    """metrics.csv of a generative evaluation: overall, then every value of every slice."""
    settings = settings or GenScoreSettings()
    scorer = _GenScorer(per, settings)
    scorer.score_slice(np.ones(len(per), dtype=bool), OVERALL, OVERALL_VALUE)
    if progress:
        progress()
    for spec in specs:
        values = slice_value_strings(per[spec.column]).to_numpy()
        for value in spec.values:
            scorer.score_slice(values == value, spec.name, value)
            if progress:
                progress()
    return pd.DataFrame(scorer.rows, columns=GEN_METRIC_COLUMNS)


def add_teacher_forced(per: pd.DataFrame, results: list[tf.TeacherForced]) -> pd.DataFrame:
    """The teacher-forced sums as per-example columns (one result per row, dataset order)."""
    per = per.copy()
    per["ref_tokens"] = [r.tokens for r in results]
    per["teacher_nll"] = [r.teacher_nll for r in results]
    per["student_nll"] = [r.student_nll for r in results]
    per["tf_agree"] = [r.agree for r in results]
    per["tf_kl"] = [r.kl for r in results]
    per["teacher_tf_nonfinite"] = [r.nonfinite["teacher"] for r in results]
    per["student_tf_nonfinite"] = [r.nonfinite["student"] for r in results]
    return per
