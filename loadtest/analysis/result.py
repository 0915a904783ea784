"""The result of analysing a run: one typed object every renderer reads.

Why its own module: the terminal view, the Markdown summary, report.html, the plots and the capacity
plan all read an ``Analysis``; when the type lived with the orchestrator that builds it, each of them
imported the orchestrator back. Here it depends on the figure modules only, and ``analyze`` builds it
complete (verdict included) in one go.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from loadtest.analysis import server_metrics as sm
from loadtest.analysis import stats
from loadtest.analysis.capacity import Capacity, StepResult, StepRules
from loadtest.analysis.costs import CostBook, CostFigures
from loadtest.analysis.footprint import Footprint


@dataclass(frozen=True)
class Reference:
    """Which records a model's headline figures (and the comparison) are computed on."""

    model: str
    stage: str  # ALL_STAGES, or the at-budget step of a sweep
    description: str
    latencies_s: np.ndarray = field(repr=False)  # successful requests' latencies, sorted ascending
    basis: str = "whole run"  # "whole run", "matched load" or "at budget" (loads differ between models)


@dataclass
class Analysis:
    """Everything `loadtest analyze` computed for one run."""

    run_dir: Path
    run_id: str
    kind: str
    teacher: str | None
    student: str | None
    models: list[str]
    budget_ms: float
    budget_source: str
    percentile: float
    rules: StepRules
    latency: pd.DataFrame  # per model x stage (+ the whole run), client and server side
    steps: list[StepResult]
    capacity: dict[str, Capacity]
    costs: dict[str, CostFigures]
    cost_book: CostBook
    comparison: pd.DataFrame  # the tables/comparison.csv contract
    difference: stats.DifferenceTest | None
    references: dict[str, Reference]
    power: sm.PowerSeries | None
    grid_g_per_kwh: float
    verdict: str
    notes: list[str]
    baseline: "BaselineComparison | None" = None
    footprints: dict[str, Footprint] = field(default_factory=dict)
    manifest: dict[str, Any] = field(default_factory=dict)
    windows: dict[str, list[tuple[str, float, float]]] = field(default_factory=dict)  # model -> (stage, start, end)
    tables_dir: Path | None = None
    report_path: Path | None = None

    @property
    def steps_frame(self) -> pd.DataFrame:
        rows = []
        for s in self.steps:
            row = asdict(s)
            row["window_latency_ms"] = ";".join(f"{v:.3f}" for v in s.window_latency_ms)
            row["window_qps"] = ";".join(f"{v:.3f}" for v in s.window_qps)
            row["reasons"] = "; ".join(r.text for r in s.reasons)
            row["within_budget"] = s.within(self.budget_ms)
            rows.append(row)
        return pd.DataFrame(rows)

    @property
    def capacity_frame(self) -> pd.DataFrame:
        return pd.DataFrame([dict(asdict(c), role=self.role(c.model)) for c in self.capacity.values()])

    @property
    def cost_frame(self) -> pd.DataFrame:
        return pd.DataFrame([dict(asdict(c), role=self.role(c.model)) for c in self.costs.values()])

    def role(self, model: str) -> str:
        return "teacher" if model == self.teacher else "student" if model == self.student else "other"


@dataclass
class BaselineComparison:
    """Version over version: the same figures for a previous run, and what changed."""

    baseline_dir: Path
    deltas: pd.DataFrame  # role, metric, unit, baseline, current, change_pct
    p95_changes: dict[str, stats.DifferenceTest]  # role -> current vs baseline
