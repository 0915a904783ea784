"""The quality section of ``report.html``: tables, inline SVG plots and findings, self-contained.

The analyzer embeds ``quality_section_html(run_dir)`` as is. Findings are derived again here, so a
``tables/comparison.csv`` written after ``loadtest eval`` still feeds the "faster but not cheaper" reading.
"""

from __future__ import annotations

import math
from html import escape
from pathlib import Path

import pandas as pd

from loadtest.quality import results as store
from loadtest.quality.findings import derive_findings
from loadtest.quality.plots import reliability_svg, slice_bars_svg
from loadtest.quality.scoring import QUALITY_METRICS
from loadtest.quality.slices import OVERALL

_STYLE = """
<style>
.lt-quality table{border-collapse:collapse;font-size:13px;margin:8px 0 16px}
.lt-quality th,.lt-quality td{border:1px solid #ddd;padding:3px 8px;text-align:right}
.lt-quality th:first-child,.lt-quality td:first-child,.lt-quality td.l{text-align:left}
.lt-quality tr.unstable td{color:#888;font-style:italic}
.lt-quality .ci{color:#777;font-size:11px}
.lt-quality .finding{padding:6px 10px;margin:6px 0;border-left:4px solid #999;background:#f7f7f7}
.lt-quality .finding.fail{border-color:#c0392b;background:#fdecea}
.lt-quality .finding.warning{border-color:#e67e22;background:#fef5e7}
.lt-quality .finding.info{border-color:#2980b9;background:#eaf2f8}
.lt-quality .plot svg{max-width:100%;height:auto}
.lt-quality .note{color:#555;font-size:12px}
</style>
"""

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
_RATES = {"accuracy", "agreement", "accuracy_drop", "exact_match", "format_adherence", "tf_agreement", "exact_match_vs_teacher",
          "exact_match_drop", "format_adherence_drop", "judged_equivalence"}


def format_figure(value, metric: str) -> str:
    """A figure as the report shows it: rates in %, counts as integers, else 4 decimals."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return "—"
    if not math.isfinite(value):
        return "—"
    if metric in _RATES:
        return f"{100 * value:.1f} %"
    if metric == "nonfinite_outputs":
        return f"{int(value)}"
    return f"{value:.4f}" if abs(value) < 10 else f"{value:.2f}"


def _cell(row: pd.Series | None, metric: str) -> str:
    if row is None:
        return "<td>—</td>"
    text = format_figure(row["value"], metric)
    low, high = row["ci_low"], row["ci_high"]
    if pd.notna(low) and pd.notna(high) and math.isfinite(float(low)):
        text += f' <span class="ci">[{format_figure(low, metric)}, {format_figure(high, metric)}]</span>'
    return f"<td>{text}</td>"


def _row(table: pd.DataFrame, model: str, metric: str, slice_name: str = OVERALL, slice_value: str = "all") -> pd.Series | None:
    rows = table[(table["model"] == model) & (table["metric"] == metric) & (table["slice"] == slice_name) & (table["slice_value"].astype(str) == str(slice_value))]
    return None if rows.empty else rows.iloc[0]


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


def fairness_html(table: pd.DataFrame, fairness: dict | None) -> str:
    """Per-group scores of both models, each model's gap and the student's widening."""
    if not fairness:
        return ""
    score = fairness.get("score", "accuracy")
    lines = [
        f"<h3>Fairness across '{escape(str(fairness.get('column')))}' groups ({escape(score)})</h3>",
        f"<table><tr><th>group</th><th>n</th><th>teacher {escape(score)}</th><th>student {escape(score)}</th><th>student − teacher</th></tr>",
    ]
    for name, g in fairness.get("groups", {}).items():
        lines.append(
            f"<tr><td>{escape(name)}</td><td>{g['n']}</td>"
            + "".join(f"<td>{format_figure(v, score)}</td>" for v in (g["teacher"], g["student"], g["student"] - g["teacher"]))
            + "</tr>"
        )
    lines.append("</table><table><tr><th>figure</th><th>teacher</th><th>student</th></tr>")
    gap_metric = "accuracy" if score == "accuracy" else score  # format gaps like the score
    lines.append(
        "<tr><td>largest gap between groups</td>"
        + _cell(_row(table, "teacher", "group_gap"), gap_metric)
        + _cell(_row(table, "student", "group_gap"), gap_metric)
        + "</tr><tr><td>widening (student gap − teacher gap)</td><td>—</td>"
        + _cell(_row(table, "student", "group_gap_widening"), gap_metric)
        + "</tr>"
    )
    for metric in ("demographic_parity_difference", "equalized_odds_difference"):
        if _row(table, "teacher", metric) is not None:
            lines.append(f"<tr><td>{metric.replace('_', ' ')} (Fairlearn)</td>" + _cell(_row(table, "teacher", metric), metric) + _cell(_row(table, "student", metric), metric) + "</tr>")
    lines.append("</table>")
    return "\n".join(lines)


def baseline_html(baseline: dict | None) -> str:
    """Version over version: this student against the previous one on the identical frozen set."""
    if not baseline:
        return ""
    rows = baseline.get("deltas", [])
    lines = [
        f"<h3>Against the previous student (run {escape(str(baseline.get('run')))})</h3>",
        f'<p class="note">Same frozen set (content SHA-256 {escape(str(baseline.get("frozen_set_sha256", ""))[:12])}…); '
        "deltas are this run − the baseline, paired over the same examples: McNemar's exact test for pass/fail figures, "
        "paired bootstrap for scores.</p>",
        "<table><tr><th>slice</th><th>metric</th><th>n</th><th>baseline</th><th>this run</th><th>delta [95 % CI]</th><th>p</th></tr>",
    ]
    for r in rows:
        label = "overall" if r["slice"] == OVERALL else f"{r['slice']}={r['slice_value']}"
        ci = f' <span class="ci">[{format_figure(r["ci_low"], r["metric"])}, {format_figure(r["ci_high"], r["metric"])}]</span>' if r.get("ci_low") is not None and math.isfinite(r["ci_low"]) else ""
        p = f"{r['p_value']:.3g}" if r.get("p_value") is not None and math.isfinite(r["p_value"]) else "—"
        lines.append(
            f"<tr><td>{escape(label)}</td><td class=\"l\">{escape(r['metric'])}</td><td>{r['n']}</td><td>{format_figure(r['baseline'], r['metric'])}</td>"
            f"<td>{format_figure(r['value'], r['metric'])}</td><td>{format_figure(r['delta'], r['metric'])}{ci}</td><td>{p}</td></tr>"
        )
    lines.append("</table>")
    return "\n".join(lines)


def _findings_html(findings) -> str:
    if not findings:
        return '<p class="note">No finding: none of the warning signals (teacher ceiling, coverage gap, calibration, faster-but-not-cheaper, NaN/Inf) shows in these numbers.</p>'
    parts = []
    for f in findings:
        parts.append(f'<div class="finding {escape(f.severity)}"><b>{escape(f.title)}</b><br>{escape(f.message)}</div>')
    return "\n".join(parts)


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

        return generative_section_html(table, summary, comparison, store.read_per_example(run_dir))
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
