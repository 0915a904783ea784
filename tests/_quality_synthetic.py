"""Synthetic evaluation results for the quality tests: known structure, no server.

A teacher right ~90 % of the time; a student that follows it closely on common classes but loses it on
the rare class (``e``, 6 % of the set) — the coverage gap the demo corpus is built to show.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from loadtest.quality.dataset import EncodedInputs, EvalDataset
from loadtest.quality.runner import assemble
from loadtest.quality.scoring import ScoreSettings

LABELS = ["a", "b", "c", "d", "e"]
RARE = "e"


def synthetic_inputs(n: int = 1200, seed: int = 0, rare_follow: float = 0.55, common_follow: float = 0.96, student_gain: float = 2.5):
    """(dataset, encoded, logits) with a weak student on the rare class."""
    rng = np.random.default_rng(seed)
    k = len(LABELS)
    p = np.array([0.235, 0.235, 0.235, 0.235, 0.06])
    y = rng.choice(k, size=n, p=p)
    teacher_pred = np.where(rng.random(n) < 0.9, y, rng.integers(0, k, n))
    rare = y == LABELS.index(RARE)
    follow = np.where(rare, rng.random(n) < rare_follow, rng.random(n) < common_follow)
    student_pred = np.where(follow, teacher_pred, rng.integers(0, k - 1, n))
    teacher_logits = rng.normal(0, 1, (n, k))
    teacher_logits[np.arange(n), teacher_pred] += 3.5
    student_logits = rng.normal(0, 1, (n, k))
    student_logits[np.arange(n), student_pred] += student_gain
    lengths = rng.integers(4, 80, n)
    frame = pd.DataFrame(
        {
            "id": [f"ex-{i}" for i in range(n)],
            "text": [" ".join(["w"] * int(L)) for L in lengths],
            "label": [LABELS[i] for i in y],
            "label_id": y.astype("int64"),
            "source": rng.choice(["web", "email"], n).astype(object),
            "critical": (rng.random(n) < 0.3).astype(object),
        }
    )
    dataset = EvalDataset(path=Path("synthetic.parquet"), frame=frame, slice_columns=["source", "critical"])
    encoded = EncodedInputs(
        input_ids=[[1] * int(L) for L in lengths],
        token_type_ids=None,
        input_tokens=lengths.astype(np.int64),
        sent_tokens=lengths.astype(np.int64),
        truncated=np.zeros(n, dtype=bool),
    )
    return dataset, encoded, {"teacher": teacher_logits, "student": student_logits}


def synthetic_results(n: int = 1200, seed: int = 0, resamples: int = 200, comparison=None, **kwargs):
    dataset, encoded, logits = synthetic_inputs(n, seed, **kwargs)
    return assemble(dataset, encoded, logits, LABELS, score_settings=ScoreSettings(min_slice_n=30, n_resamples=resamples), comparison=comparison)


def write_run(run_dir: Path, results) -> Path:
    """A run directory holding these quality results (as ``loadtest eval`` writes them)."""
    from loadtest.quality.results import write_quality

    run_dir.mkdir(parents=True, exist_ok=True)
    summary = dict(results.summary)
    summary.update({"models": {"teacher": "teacher", "student": "student"}, "host": "synthetic", "max_sequence_length": 128, "dataset": {"path": "synthetic.parquet"}})
    write_quality(run_dir, results.per_example, results.metrics, summary)
    return run_dir
