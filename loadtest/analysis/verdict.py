"""The summary verdict: the few sentences a capacity planner reads first, built only from measured figures.

Computed from the figures before the ``Analysis`` is built (``analyze.compute`` passes them in), so the
result is complete when it is created and this module needs nothing of the orchestrator.
"""

from __future__ import annotations

import math

import pandas as pd

from loadtest.analysis import fmt, stats
from loadtest.analysis.capacity import Capacity
from loadtest.analysis.costs import CostFigures


def _fig(comparison: pd.DataFrame, metric: str) -> tuple[float, float]:
    row = comparison.set_index("metric").loc[metric]
    return float(row["teacher"]), float(row["student"])


def verdict(*, teacher: str | None, student: str | None, models: list[str], percentile: float, budget_ms: float,
            comparison: pd.DataFrame, capacity: dict[str, Capacity], costs: dict[str, CostFigures],
            difference: stats.DifferenceTest | None, references: dict) -> str:  # fmt: skip
    """Sentences comparing student with teacher; says plainly what could not be measured."""
    roles = {"teacher": teacher, "student": student}
    if teacher not in models or student not in models:
        present = ", ".join(models)
        return f"Only {present} was measured in this run: no teacher/student comparison is possible."
    p, b = percentile, budget_ms
    parts: list[str] = []
    t_q, s_q = _fig(comparison, "qps_at_budget")
    caps = [capacity.get(m) for m in (teacher, student)]
    open_ended = [c is not None and c.known and c.load_high is None for c in caps]
    if math.isfinite(t_q) and math.isfinite(s_q) and all(open_ended):
        # neither model was pushed past its budget: the ratio of two lower bounds means nothing
        parts.append(
            f"At P{p:g} ≤ {b:g} ms both models stayed within budget at the highest load tested "
            f"({fmt.num(t_q)} and {fmt.num(s_q)} req/s achieved): capacity is at least that for both, so this run "
            "cannot rank them on capacity or cost (run `loadtest sweep` or add higher --rate steps)."
        )
    elif math.isfinite(t_q) and math.isfinite(s_q):
        at_least = ["at least " if o else "" for o in open_ended]
        parts.append(
            f"At P{p:g} ≤ {b:g} ms the student sustains {at_least[1]}{fmt.num(s_q)} req/s against the teacher's "
            f"{at_least[0]}{fmt.num(t_q)} ({('at least ' if open_ended[1] else 'at most ' if open_ended[0] else '')}{s_q / t_q:.2f}×)."
        )
    else:
        missing = [r for r, v in (("teacher", t_q), ("student", s_q)) if not math.isfinite(v)]
        reasons = "; ".join(
            f"{r}: {capacity[roles[r]].note}" for r in missing if roles[r] in capacity
        )
        parts.append(f"QPS at P{p:g} ≤ {b:g} ms is not known for the {' and '.join(missing)} ({reasons}).")
    t_c, s_c = _fig(comparison, "cost_per_1m_tokens_usd")
    if math.isfinite(t_c) and math.isfinite(s_c) and not all(open_ended):
        inst = next(iter(costs.values())).instance
        change = abs(1 - s_c / t_c) * 100
        word = "the same" if change < 0.5 else f"{change:.0f} % {'less' if s_c < t_c else 'more'}"
        parts.append(f"Cost per 1M tokens: {fmt.usd(s_c)} vs {fmt.usd(t_c)} on {inst} ({word}).")
    d = difference
    t_p, s_p = _fig(comparison, "p95_ms")
    refs = [references.get(m) for m in (teacher, student)]
    where = ""
    if all(r is not None for r in refs):
        if refs[0].basis == "matched load":
            where = f"At the same load ({refs[0].description.split(' (')[0].removeprefix('matched load ')}) t"
        elif refs[0].basis == "at budget":
            where = "Each at its own at-budget load, t"
    if d is not None and math.isfinite(d.difference_s):
        if d.significant:
            direction = "lower" if d.difference_s < 0 else "higher"
            rel = f" ({abs(s_p / t_p - 1) * 100:.0f} % {direction})" if math.isfinite(t_p) and math.isfinite(s_p) else ""
            parts.append(
                f"{where or 'T'}he student's P95 is {abs(d.difference_s) * 1000:.3g} ms {direction}{rel}: significant "
                f"(bootstrap 95 % CI of the difference {d.ci_low_s * 1000:+.3g} … {d.ci_high_s * 1000:+.3g} ms)."
            )
        else:
            parts.append(
                f"{where + 'he P95' if where else 'P95'} shows no significant difference (bootstrap 95 % CI {d.ci_low_s * 1000:+.3g} … "
                f"{d.ci_high_s * 1000:+.3g} ms, noise threshold ±{d.noise_threshold_s * 1000:.2g} ms)."
            )
    t_e, s_e = _fig(comparison, "error_rate")
    if (math.isfinite(t_e) and t_e > 0) or (math.isfinite(s_e) and s_e > 0):
        parts.append(f"Errors: teacher {fmt.rate(t_e)}, student {fmt.rate(s_e)}.")
    return " ".join(parts)
