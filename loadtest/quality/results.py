"""The run directory's ``quality/`` folder: writing it once, reading it back for the report and the gate.

``per_example.parquet`` keeps everything a reviewer needs to recompute any figure independently: per
example its id, input, lengths, label, both models' logits and probabilities (list columns, repository
label order), predictions, and slice columns. ``metrics.csv`` is scoring's long table; ``summary.json``
the settings, slice definitions, temperatures, reliability bins and findings.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from loadtest.errors import LoadtestError
from loadtest.rundir import QUALITY_DIR, TABLES_DIR, RunDir, client_host, create_run_dir, versions

PER_EXAMPLE_FILE = "per_example.parquet"
METRICS_FILE = "metrics.csv"
SUMMARY_FILE = "summary.json"
COMPARISON_FILE = Path(TABLES_DIR) / "comparison.csv"


def quality_dir(run_dir: Path) -> Path:
    return Path(run_dir) / QUALITY_DIR


def new_run_dir(results_root: Path, kind: str = "eval") -> Path:
    """A fresh ``results/YYYYmmdd-HHMMSS-<kind>`` (the run directory's id rules: never reused)."""
    return create_run_dir(results_root, kind)


def write_manifest(run_dir: Path, manifest: dict) -> Path:
    """manifest.json of a run this module created (``loadtest eval`` without ``--run-dir``)."""
    run = RunDir(Path(run_dir))
    return run.write_manifest({"run_id": run.run_id, **manifest, "client": client_host(), "versions": versions()})


def check_writable(run_dir: Path, overwrite: bool) -> None:
    """Refuse to replace existing quality results unless asked to."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise LoadtestError(f"run directory {run_dir} does not exist (omit --run-dir to create a new run under --results)")
    existing = quality_dir(run_dir) / METRICS_FILE
    if existing.exists() and not overwrite:
        raise LoadtestError(f"{run_dir} already has quality results ({existing}); pass --overwrite to replace them")


def write_quality(run_dir: Path, per_example: pd.DataFrame, metrics: pd.DataFrame, summary: dict) -> Path:
    """Write the three quality files; returns the folder."""
    folder = quality_dir(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    per_example.to_parquet(folder / PER_EXAMPLE_FILE, index=False)
    metrics.to_csv(folder / METRICS_FILE, index=False)
    (folder / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, default=_json_default, allow_nan=True) + "\n")
    return folder


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.bool_,)):
        return bool(value)
    return str(value)


def read_metrics(run_dir: Path) -> pd.DataFrame | None:
    path = quality_dir(run_dir) / METRICS_FILE
    if not path.is_file():
        return None
    table = pd.read_csv(path, dtype={"slice_value": str, "slice": str, "model": str, "metric": str}, keep_default_na=False, na_values=[""])
    table["unstable"] = table["unstable"].astype(str).str.lower().eq("true")
    return table


def read_summary(run_dir: Path) -> dict | None:
    path = quality_dir(run_dir) / SUMMARY_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise LoadtestError(f"{path} is not UTF-8 JSON (a binary file?): rerun `loadtest eval`") from None
    except json.JSONDecodeError as exc:
        raise LoadtestError(f"{path} is not valid JSON: {exc}") from None


def read_per_example(run_dir: Path) -> pd.DataFrame | None:
    path = quality_dir(run_dir) / PER_EXAMPLE_FILE
    return pd.read_parquet(path) if path.is_file() else None


def read_comparison(run_dir: Path) -> pd.DataFrame | None:
    """The analyzer's ``tables/comparison.csv`` (teacher vs student serving figures), or None."""
    path = Path(run_dir) / COMPARISON_FILE
    if not path.is_file():
        return None
    table = pd.read_csv(path)
    for column in ("teacher", "student", "student_over_teacher", "saving_pct"):
        if column in table.columns:
            table[column] = pd.to_numeric(table[column], errors="coerce")
    return table


def stacked(per_example: pd.DataFrame, column: str) -> np.ndarray:
    """A list column (``teacher_probs`` …) as an (n, K) float array."""
    return np.stack([np.asarray(v, dtype=np.float64) for v in per_example[column]]) if len(per_example) else np.empty((0, 0))
