"""Writing an analysis to disk: machine tables (CSV + Parquet), the Markdown summary, report.html.

``tables/comparison.csv`` is a contract other modules read (docs/architecture.md): exactly the columns
``metric, unit, teacher, student, student_over_teacher, saving_pct``; missing figures are empty cells.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from loadtest.analysis import stats, views
from loadtest.rundir import REPORT_FILE, RunDir

if TYPE_CHECKING:  # pragma: no cover
    from loadtest.analysis.result import Analysis

TEXT_HEADERS = views.PROSE_HEADERS | {"Instance", "Student is", "Counts", "Within budget"}
COMPARISON_COLUMNS = ["metric", "unit", "teacher", "student", "student_over_teacher", "saving_pct"]


def _write(frame: pd.DataFrame, folder: Path, name: str) -> None:
    frame.to_csv(folder / f"{name}.csv", index=False)
    frame.to_parquet(folder / f"{name}.parquet", index=False)


def significance_frame(a: "Analysis") -> pd.DataFrame:
    d = a.difference
    if d is None:
        return pd.DataFrame(columns=["percentile", "difference_ms", "ci_low_ms", "ci_high_ms", "noise_threshold_ms",
                                     "resamples", "n_student", "n_teacher", "seed", "significant", "verdict"])
    return pd.DataFrame([{
        "percentile": d.p, "difference_ms": d.difference_s * 1000, "ci_low_ms": d.ci_low_s * 1000,
        "ci_high_ms": d.ci_high_s * 1000, "noise_threshold_ms": d.noise_threshold_s * 1000,
        "resamples": d.resamples, "n_student": d.n_student, "n_teacher": d.n_teacher, "seed": d.seed,
        "significant": d.significant, "verdict": d.verdict,
    }])


def markdown_table(view: views.View) -> str:
    def esc(cell: str) -> str:
        return str(cell).replace("|", "\\|").replace("\n", " ")

    lines = [f"### {view.title}", "", "| " + " | ".join(esc(h) for h in view.headers) + " |",
             "|" + "|".join("---" if i < 2 or h in TEXT_HEADERS else "---:" for i, h in enumerate(view.headers)) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in view.rows]
    if view.caption:
        lines += ["", f"_{view.caption}_"]
    return "\n".join(lines)


def summary_markdown(a: "Analysis") -> str:
    parts = [
        f"## Load test {a.run_id}: teacher `{a.teacher}` vs student `{a.student}`",
        "",
        f"**Verdict.** {a.verdict}",
        "",
        f"Budget P{a.percentile:g} ≤ {a.budget_ms:g} ms ({a.budget_source}); percentiles by numpy "
        f"'{stats.PERCENTILE_METHOD}'; {views.significance_line(a)}",
        "",
    ]
    for view in views.all_views(a):
        if view.key == "steps" and not view.rows:
            continue
        parts += [markdown_table(view), ""]
    if a.notes:
        parts += ["### Notes", ""] + [f"- {n}" for n in a.notes] + [""]
    return "\n".join(parts)


def write_outputs(a: "Analysis") -> None:
    """tables/*.csv|parquet, tables/summary.md and report.html in the run directory."""
    from loadtest.analysis.report import render_html

    run = RunDir(a.run_dir)
    folder = run.tables_dir
    folder.mkdir(parents=True, exist_ok=True)
    _write(a.latency, folder, "latency")
    _write(a.comparison[COMPARISON_COLUMNS], folder, "comparison")
    _write(a.capacity_frame, folder, "capacity")
    _write(a.cost_frame, folder, "cost")
    _write(significance_frame(a), folder, "significance")
    steps = a.steps_frame
    if len(steps):
        _write(steps, folder, "steps")
    if a.baseline is not None:
        _write(a.baseline.deltas, folder, "baseline")
    (folder / "summary.md").write_text(summary_markdown(a))
    a.tables_dir = folder
    a.report_path = run.path / REPORT_FILE
    a.report_path.write_text(render_html(a), encoding="utf-8")
