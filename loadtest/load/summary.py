"""A run's headline figures per model, straight from the raw records, by the analyzer's definitions.

Why the analyzer's statistics: ``loadtest run`` prints a table the moment Locust stops, and ``loadtest
analyze`` prints another later; both must show the same P95 for the same run. So this module computes
over *successful* requests with ``loadtest.analysis.stats`` (numpy's ``linear`` percentile and the
order-statistic 95 % CI, docs/method.md); failures are counted, never mixed into latencies. Nothing is
bucketed or rounded here (rounding happens only when a table is printed). Never imports Locust or gevent.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from loadtest.analysis import stats
from loadtest.rundir import read_records

PERCENTILES = (50.0, 95.0, 99.0)


def latency_percentiles(latencies_s, percentiles=PERCENTILES) -> dict[float, float]:
    """``{p: value}`` in seconds by the analyzer's percentile method; nan for an empty sample."""
    return {p: e.value for p, e in stats.estimates(np.asarray(latencies_s, dtype=np.float64), tuple(percentiles)).items()}


@dataclass(frozen=True)
class ModelSummary:
    """One model's figures over a whole run (or the rows given); latencies over successful requests."""

    model: str
    requests: int
    failures: int
    late: int
    tokens: int  # of successful requests
    duration_s: float  # first intended start to last end
    achieved_rps: float  # successful requests / duration
    tokens_per_s: float  # tokens of successful requests / duration
    percentiles: dict[float, stats.PercentileEstimate]  # p -> value and 95 % CI, successful requests
    max_s: float

    @property
    def p50_s(self) -> float:
        return self.percentiles[50.0].value

    @property
    def p95_s(self) -> float:
        return self.percentiles[95.0].value

    @property
    def p99_s(self) -> float:
        return self.percentiles[99.0].value


def summarize_table(table: pa.Table) -> list[ModelSummary]:
    """Per-model summaries of a records table, models sorted by name."""
    summaries = []
    if table.num_rows == 0:
        return summaries
    for model in sorted(pc.unique(table["model"]).to_pylist()):
        rows = table.filter(pc.equal(table["model"], model))
        success = rows["success"].to_numpy(zero_copy_only=False)
        latency = rows["latency_s"].to_numpy()[success]
        tokens = rows["tokens"].to_numpy()
        duration = float(pc.max(rows["end"]).as_py() - pc.min(rows["intended_start"]).as_py())
        ok = int(success.sum())
        ok_tokens = int(tokens[success].sum())
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
                percentiles=stats.estimates(latency, PERCENTILES),
                max_s=float(latency.max()) if latency.size else float("nan"),
            )
        )
    return summaries


def summarize_run(run_dir: Path | str) -> list[ModelSummary]:
    """Per-model summaries of every record in a run directory (all workers)."""
    return summarize_table(read_records(run_dir))
