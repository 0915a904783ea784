"""`loadtest plan`: how many serving replicas each model needs for a peak load, and what they cost a month.

replicas = ceil(peak QPS x headroom / QPS at budget per replica), where a replica is one instance of the
cost file's instance type serving as the measured server did, and QPS at budget is the measured
(conservative, lower) end of the sweep's interval. Monthly cost = replicas x $/hour x hours per month.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import pandas as pd

from loadtest.errors import LoadtestError

if TYPE_CHECKING:  # pragma: no cover
    from loadtest.analysis.result import Analysis


@dataclass(frozen=True)
class PlanRow:
    model: str
    role: str
    peak_qps: float
    headroom: float
    qps_at_budget_per_replica: float | None
    replicas: int | None
    instance: str
    usd_per_hour: float
    hours_per_month: float
    monthly_usd: float | None
    note: str


def replicas_needed(peak_qps: float, headroom: float, qps_per_replica: float) -> int:
    """ceil(peak x headroom / per-replica capacity), at least 1."""
    return max(1, math.ceil(peak_qps * headroom / qps_per_replica - 1e-9))


def plan(analysis: "Analysis", peak_qps: float, headroom: float = 1.3) -> list[PlanRow]:
    if not peak_qps > 0:
        raise LoadtestError(f"--peak-qps must be > 0 (got {peak_qps:g})")
    if headroom < 1:
        raise LoadtestError(f"--headroom is a factor >= 1 (1.3 = 30 % spare capacity), got {headroom:g}")
    book = analysis.cost_book
    rows = []
    for model in analysis.models:
        cap = analysis.capacity[model]
        cost = analysis.costs[model]
        if cap.qps_at_budget:
            n = replicas_needed(peak_qps, headroom, cap.qps_at_budget)
            monthly = n * cost.usd_per_hour * book.hours_per_month
            note = cap.note if cap.load_high is None else ""
        else:
            n, monthly, note = None, None, f"no QPS at budget: {cap.note}"
        rows.append(PlanRow(model, analysis.role(model), peak_qps, headroom, cap.qps_at_budget, n, cost.instance,
                            cost.usd_per_hour, book.hours_per_month, monthly, note))
    return rows


def plan_frame(rows: list[PlanRow]) -> pd.DataFrame:
    return pd.DataFrame([asdict(r) for r in rows])


def saving_line(rows: list[PlanRow]) -> str:
    by_role = {r.role: r for r in rows}
    t, s = by_role.get("teacher"), by_role.get("student")
    if not (t and s and t.monthly_usd and s.monthly_usd):
        return ""
    saving = t.monthly_usd - s.monthly_usd
    return (f"Student: {s.replicas} replica(s) vs teacher's {t.replicas}; saves ${saving:,.0f} a month "
            f"({saving / t.monthly_usd * 100:.0f} %).")
