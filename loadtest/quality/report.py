"""The quality section of ``report.html``: tables, inline SVG plots and findings, self-contained.

The analyzer embeds ``quality_section_html(run_dir)`` as is. Findings are derived again here, so a
``tables/comparison.csv`` written after ``loadtest eval`` still feeds the "faster but not cheaper" reading.
"""

from __future__ import annotations

from html import escape
from pathlib import Path

import pandas as pd

from loadtest.quality import results as store
from loadtest.quality.findings import derive_findings
from loadtest.quality.plots import reliability_svg, slice_bars_svg
from loadtest.quality.report_parts import _STYLE, _cell, _findings_html, _row, baseline_html, fairness_html
from loadtest.quality.scoring import QUALITY_METRICS
from loadtest.quality.slices import OVERALL


_OVERALL_ORDER = [
    "accuracy",
    "macro_f1",
    "agreement",
    "kl",
    "js",
    "accuracy_drop",
    "macro_f1_drop",
    "ece",
    "temperature",
    "ece_after_temperature",
    "nonfinite_outputs",
]








def _overall_table(table: pd.DataFrame) -> str:
    lines = ["<table><tr><th>figure</th><th>teacher</th><th>student</th><th>n</th><th>definition</th></tr>"]
    for metric in _OVERALL_ORDER:
        teacher, student = _row(table, "teacher", metric), _row(table, "student", metric)
        if teacher is None and student is None:
            continue
        n = (student if student is not None else teacher)["n"]
        lines.append(
            f"<tr><td>{escape(metric)}</td>{_cell(teacher, metric)}{_cell(student, metric)}<td>{int(n)}</td>"
            f'<td class="l">{escape(QUALITY_METRICS[metric][1])}</td></tr>'
        )
    lines.append("</table>")
    return "\n".join(lines)


def _slice_table(table: pd.DataFrame, summary: dict) -> str:
    header = (
        "<table><tr><th>slice</th><th>n</th><th>teacher accuracy</th><th>student accuracy</th><th>accuracy drop</th>"
        "<th>agreement</th><th>KL(T‖S)</th><th>student ECE</th><th></th></tr>"
    )
    lines = [header]
    keys = [(OVERALL, "all")]
    for spec in summary.get("slices", []):
        keys += [(spec["name"], v) for v in spec.get("values", [])]
    for name, value in keys:
        student_acc = _row(table, "student", "accuracy", name, value)
        n = int(student_acc["n"]) if student_acc is not None else 0
        unstable = bool(student_acc["unstable"]) if student_acc is not None else True
        label = "overall" if name == OVERALL else f"{name}={value}"
        lines.append(
            f'<tr class="{"unstable" if unstable else ""}"><td>{escape(label)}</td><td>{n}</td>'
            + _cell(_row(table, "teacher", "accuracy", name, value), "accuracy")
            + _cell(student_acc, "accuracy")
            + _cell(_row(table, "student", "accuracy_drop", name, value), "accuracy_drop")
            + _cell(_row(table, "student", "agreement", name, value), "agreement")
            + _cell(_row(table, "student", "kl", name, value), "kl")
            + _cell(_row(table, "student", "ece", name, value), "ece")
            + f'<td class="l">{"unstable (n below the minimum)" if unstable else ""}</td></tr>'
        )
    lines.append("</table>")
    return "\n".join(lines)








def quality_section_html(run_dir: Path | str) -> str | None:
    """The quality part of report.html for a run, or None when the run has no quality results."""
    run_dir = Path(run_dir)
    table = store.read_metrics(run_dir)
    summary = store.read_summary(run_dir)
    if table is None or summary is None:
        return None
    comparison = store.read_comparison(run_dir)
    if summary.get("task") == "text-generation":
        from loadtest.quality.genreport import generative_section_html

        from loadtest.quality.releasegate import read_release_gate

        return generative_section_html(table, summary, comparison, store.read_per_example(run_dir), read_release_gate(run_dir))
    findings = derive_findings(table, comparison, fairness=summary.get("fairness"))
    models = summary.get("models", {})
    dataset = summary.get("dataset", {})
    settings = summary.get("settings", {})
    min_n = settings.get("min_slice_n", "?")
    parts = [_STYLE, '<div class="lt-quality" id="quality-results">', "<h2>Quality through the served models</h2>"]
    parts.append(
        "<p>"
        f"Teacher <b>{escape(str(models.get('teacher', 'teacher')))}</b> and student <b>{escape(str(models.get('student', 'student')))}</b>"
        f" on Triton at {escape(str(summary.get('host', '?')))}; evaluation set {escape(str(dataset.get('path', '?')))}"
        f" ({summary.get('n_examples', '?')} examples, {summary.get('n_scored', '?')} scored"
        f", {summary.get('truncated', 0)} truncated to {summary.get('max_sequence_length', '?')} tokens"
        f", NaN/Inf outputs: teacher {summary.get('nonfinite', {}).get('teacher', '?')}, student {summary.get('nonfinite', {}).get('student', '?')})."
        "</p>"
    )
    parts.append("<h3>Findings</h3>")
    parts.append(_findings_html(findings))
    parts.append("<h3>Overall</h3>")
    parts.append(_overall_table(table))
    slice_names = [s["name"] for s in summary.get("slices", [])]
    bars = slice_bars_svg(table, "accuracy", slice_names)
    if bars:
        parts.append(f'<h3>Accuracy per slice</h3><div class="plot">{bars}</div>')
    reliability = reliability_svg(summary.get("reliability", {}), summary.get("temperatures"))
    if reliability:
        parts.append(f'<h3>Calibration</h3><div class="plot">{reliability}</div>')
    parts.append("<h3>Per slice</h3>")
    parts.append(_slice_table(table, summary))
    parts.append(fairness_html(table, summary.get("fairness")))
    parts.append(baseline_html(summary.get("baseline")))
    definitions = "".join(
        f"<li><b>{escape(s['name'])}</b> ({escape(s['source'])}): {escape(s['description'])}</li>" for s in summary.get("slices", [])
    )
    ignored = summary.get("ignored_columns") or {}
    ignored_text = (
        "<li>Dataset columns not used as slices: " + "; ".join(f"{escape(k)}: {escape(v)}" for k, v in ignored.items()) + "</li>"
        if ignored
        else ""
    )
    parts.append(
        '<div class="note"><p>Slices:</p><ul>' + definitions + ignored_text + "</ul>"
        f"<p>Intervals are 95 %: Wilson for rates (accuracy, agreement), seeded percentile bootstrap "
        f"({settings.get('bootstrap_resamples', '?')} resamples) for the others. Slices with fewer than {min_n} examples are flagged"
        " unstable. KL and JS in nats, probabilities clipped at 1e-12. ECE: 15 equal-width bins on the max probability, L1"
        " (torchmetrics' definition). The temperature minimises the NLL on this evaluation set, so the ECE after it is optimistic."
        " Examples with a NaN/Inf output are excluded from every figure but their count.</p></div>"
    )
    parts.append("</div>")
    return "\n".join(parts)
