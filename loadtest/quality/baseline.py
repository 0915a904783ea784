"""Version over version: a new student against the previous one on the identical frozen set.

``loadtest eval --baseline RUN`` reads the previous run's per-example log, refuses it unless its frozen set
has the same content hash (ids, inputs, labels or references, in order: a changed set makes every delta
meaningless), and pairs the two students example by example. Per slice of *this* run, each delta is
this run − the baseline with a paired test: McNemar's exact test for pass/fail figures (accuracy,
agreement, exact match, format adherence) and a paired bootstrap for scores (KL, chrF, ROUGE-L).
The result goes into ``summary.json`` (``baseline``) and ``quality/baseline.csv``; the gate's regression
rules use the recorded baseline run when ``loadtest gate`` is not given one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from loadtest.errors import LoadtestError
from loadtest.quality import metrics as m
from loadtest.quality.paired import mcnemar_exact
from loadtest.quality.slices import OVERALL, OVERALL_VALUE, slice_value_strings

BASELINE_FILE = "baseline.csv"
DELTA_COLUMNS = ["slice", "slice_value", "metric", "n", "baseline", "value", "delta", "ci_low", "ci_high", "p_value", "test"]

# metric -> (per-example column of the student, kind, examples that count: None = all)
CLASSIFIER_FIGURES = {
    "accuracy": ("student_correct", "binary", None),
    "agreement": ("agree", "binary", None),
    "kl": ("kl", "score", None),
}
GENERATIVE_FIGURES = {
    "exact_match": ("student_exact", "binary", None),
    "chrf": ("student_chrf", "score", None),
    "rouge_l": ("student_rouge_l", "score", None),
    "chrf_vs_teacher": ("chrf_vs_teacher", "score", None),
    "format_adherence": ("student_format_ok", "binary", "structured"),
}


def load_baseline(baseline_dir: Path, frozen_set_sha256: str) -> tuple[pd.DataFrame, dict]:
    """The previous run's per-example log and summary, after checking it evaluated the identical set."""
    from loadtest.quality import results as store

    baseline_dir = Path(baseline_dir)
    summary = store.read_summary(baseline_dir)
    per = store.read_per_example(baseline_dir)
    if summary is None or per is None:
        raise LoadtestError(f"--baseline {baseline_dir} has no quality results (quality/summary.json and per_example.parquet from `loadtest eval`)")
    theirs = summary.get("frozen_set_sha256")
    if theirs is None:
        raise LoadtestError(f"--baseline {baseline_dir} was evaluated before frozen sets were hashed: rerun `loadtest eval` for it")
    if theirs != frozen_set_sha256:
        raise LoadtestError(
            f"--baseline {baseline_dir} was evaluated on a different set (content SHA-256 {theirs[:12]}… vs {frozen_set_sha256[:12]}… here): "
            "version-over-version figures need the identical frozen set"
        )
    return per, summary


def _per_example_columns(per: pd.DataFrame) -> pd.DataFrame:
    per = per.copy()
    if "student_pred" in per.columns and "label_id" in per.columns:
        finite = ~(per["teacher_nonfinite"].astype(bool) | per["student_nonfinite"].astype(bool))
        per["student_correct"] = (per["student_pred"] == per["label_id"]) & finite
    if "required_keys" in per.columns:
        per["structured"] = [len(k) > 0 for k in per["required_keys"]]
    return per


def compare(per: pd.DataFrame, baseline_per: pd.DataFrame, slices: list[dict], generative: bool, n_resamples: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Per-slice deltas (this run − baseline) of the student's figures, each with its paired test."""
    if per["id"].astype(str).tolist() != baseline_per["id"].astype(str).tolist():
        raise LoadtestError("--baseline: the two runs list their examples differently (ids or order); they cannot be paired")
    new, old = _per_example_columns(per), _per_example_columns(baseline_per)
    figures = GENERATIVE_FIGURES if generative else CLASSIFIER_FIGURES
    keys = [(OVERALL, OVERALL_VALUE, np.ones(len(new), dtype=bool))]
    for spec in slices:
        if spec["column"] not in new.columns:
            continue
        values = slice_value_strings(new[spec["column"]]).to_numpy()
        keys += [(spec["name"], value, values == value) for value in spec.get("values", [])]
    rows = []
    for metric, (column, kind, subset) in figures.items():
        if column not in new.columns or column not in old.columns:
            continue
        for slice_name, slice_value, members in keys:
            mask = members & (new[subset].to_numpy(bool) if subset else True)
            if metric == "kl":
                mask = mask & np.isfinite(new[column].to_numpy(float)) & np.isfinite(old[column].to_numpy(float))
            idx = np.flatnonzero(mask)
            a = new[column].fillna(False if kind == "binary" else np.nan).to_numpy(bool if kind == "binary" else float)
            b = old[column].fillna(False if kind == "binary" else np.nan).to_numpy(bool if kind == "binary" else float)
            n = len(idx)
            if n == 0:
                rows.append({"slice": slice_name, "slice_value": slice_value, "metric": metric, "n": 0, "baseline": np.nan, "value": np.nan,
                             "delta": np.nan, "ci_low": np.nan, "ci_high": np.nan, "p_value": np.nan, "test": ""})
                continue
            diff = a.astype(float) - b.astype(float)
            mean = lambda r, d=diff: np.atleast_2d(d[r]).mean(axis=-1)  # noqa: E731
            ci = m.bootstrap_interval(lambda r: mean(idx[r]), n, n_resamples=n_resamples, seed=seed)
            if kind == "binary":
                test, p = "mcnemar_exact", mcnemar_exact(a[idx], b[idx]).p_value
            else:
                test, p = "paired_bootstrap", float("nan")
            rows.append(
                {"slice": slice_name, "slice_value": slice_value, "metric": metric, "n": n, "baseline": float(b[idx].astype(float).mean()),
                 "value": float(a[idx].astype(float).mean()), "delta": float(diff[idx].mean()), "ci_low": ci[0], "ci_high": ci[1],
                 "p_value": p, "test": test}
            )
    return pd.DataFrame(rows, columns=DELTA_COLUMNS)


def baseline_summary(baseline_dir: Path, frozen_set_sha256: str, deltas: pd.DataFrame, baseline_summary_json: dict) -> dict:
    """What summary.json records about the comparison (the report's table and the gate's default baseline)."""
    return {
        "run": str(Path(baseline_dir)),
        "frozen_set_sha256": frozen_set_sha256,
        "baseline_models": baseline_summary_json.get("models"),
        "deltas": [{k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in row.items()} for row in deltas.to_dict("records")],
    }


def attach_baseline(per: pd.DataFrame, summary: dict, baseline_dir: Path, generative: bool, n_resamples: int, seed: int) -> pd.DataFrame:
    """Compare with the baseline run, record it in ``summary`` and return the deltas (for baseline.csv)."""
    baseline_per, baseline_json = load_baseline(baseline_dir, summary["frozen_set_sha256"])
    deltas = compare(per, baseline_per, summary.get("slices", []), generative, n_resamples, seed)
    summary["baseline"] = baseline_summary(baseline_dir, summary["frozen_set_sha256"], deltas, baseline_json)
    return deltas


def write_deltas(run_dir: Path, deltas: pd.DataFrame) -> Path:
    from loadtest.quality.results import quality_dir

    path = quality_dir(run_dir) / BASELINE_FILE
    deltas.to_csv(path, index=False)
    return path
