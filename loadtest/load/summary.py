"""A run's headline figures per model, straight from the raw records.

Why: what a load-test command prints must be reproducible by anyone with numpy and the Parquet files.
Percentiles are numpy's ``linear`` method on every raw latency (METHOD.md); nothing is bucketed or
rounded here (rounding happens only when a table is printed). Never imports Locust or gevent.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from loadtest.rundir import read_records

PERCENTILE_METHOD = "linear"
PERCENTILES = (50.0, 95.0, 99.0)


def latency_percentiles(latencies_s, percentiles=PERCENTILES) -> dict[float, float]:
    """``{p: value}`` in seconds by numpy's linear method; nan for an empty sample."""
    values = np.asarray(latencies_s, dtype=np.float64)
    if values.size == 0:
        return {p: float("nan") for p in percentiles}
    computed = np.percentile(values, list(percentiles), method=PERCENTILE_METHOD)
    return {p: float(v) for p, v in zip(percentiles, computed)}


@dataclass(frozen=True)
class ModelSummary:
    """One model's figures over a whole run (or the rows given)."""

    model: str
    requests: int
    failures: int
    late: int
    tokens: int
    duration_s: float  # first intended start to last end
    achieved_rps: float  # successful requests / duration
    tokens_per_s: float  # tokens of successful requests / duration
    p50_s: float
    p95_s: float
    p99_s: float
    max_s: float


def summarize_table(table: pa.Table) -> list[ModelSummary]:
    """Per-model summaries of a records table, models sorted by name."""
    summaries = []
    if table.num_rows == 0:
        return summaries
    for model in sorted(pc.unique(table["model"]).to_pylist()):
        rows = table.filter(pc.equal(table["model"], model))
        latency = rows["latency_s"].to_numpy()
        success = rows["success"].to_numpy(zero_copy_only=False)
        tokens = rows["tokens"].to_numpy()
        duration = float(pc.max(rows["end"]).as_py() - pc.min(rows["intended_start"]).as_py())
        ok = int(success.sum())
        ok_tokens = int(tokens[success].sum())
        p = latency_percentiles(latency)
        summaries.append(
            ModelSummary(
                model=model,
                requests=rows.num_rows,
                failures=rows.num_rows - ok,
                late=int(rows["late"].to_numpy(zero_copy_only=False).sum()),
                tokens=ok_tokens,
                duration_s=duration,
                achieved_rps=ok / duration if duration > 0 else float("nan"),
                tokens_per_s=ok_tokens / duration if duration > 0 else float("nan"),
                p50_s=p[50.0],
                p95_s=p[95.0],
                p99_s=p[99.0],
                max_s=float(latency.max()),
            )
        )
    return summaries


def summarize_run(run_dir: Path | str) -> list[ModelSummary]:
    """Per-model summaries of every record in a run directory (all workers)."""
    return summarize_table(read_records(run_dir))
