"""Building blocks shared by the classifier and the generative quality sections of report.html.

Why a module of its own: ``quality.report`` (the classifier section, and the dispatcher) and
``quality.genreport`` (the generative section) both draw figures, findings, fairness and baseline tables
the same way; with the blocks here, neither imports the other back.
"""

from __future__ import annotations

import math
from html import escape

import pandas as pd

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
.lt-quality td.fail{color:#c0392b;font-weight:bold}
.lt-quality td.warn{color:#b9770e}
.lt-quality td.pass{color:#1e8449}
</style>
"""


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


def fairness_html(table: pd.DataFrame, fairness: dict | None) -> str:
    """Per-group scores of both models, each model's gap and the student's widening."""
    if not fairness:
        return ""
    score = fairness.get("score", "accuracy")
    lines = [
        f"<h3>Fairness across {escape(repr(str(fairness.get('column'))))} groups ({escape(score)})</h3>",
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

