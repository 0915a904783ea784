"""The quality results in the terminal: the overall table and the findings (``loadtest eval``, the demo)."""

from __future__ import annotations

from rich.markup import escape
from rich.table import Table

from loadtest.quality.report_parts import format_figure as _num


def render_quality(result, console) -> None:
    """Overall figures (teacher vs student, with intervals) and the findings, for the terminal."""
    table = Table(title="Quality through the served models (overall, 95 % intervals)", title_justify="left")
    table.add_column("figure")
    table.add_column("teacher", justify="right")
    table.add_column("student", justify="right")
    metrics = result.metrics
    overall = metrics[metrics["slice"] == "overall"]

    def cell(model: str, metric: str) -> str:
        rows = overall[(overall["model"] == model) & (overall["metric"] == metric)]
        if rows.empty:
            return ""
        r = rows.iloc[0]
        text = _num(r["value"], metric)
        if r["ci_low"] == r["ci_low"]:  # not NaN
            text += f" [dim][{_num(r['ci_low'], metric)}, {_num(r['ci_high'], metric)}][/]"
        return text

    if result.summary.get("task") == "text-generation":
        names = ("perplexity", "tf_agreement", "tf_kl", "exact_match", "chrf", "rouge_l", "format_adherence", "chrf_vs_teacher",
                 "chrf_drop", "length_ratio", "empty_outputs", "judged_equivalence", "nonfinite_outputs")
    else:
        names = ("accuracy", "macro_f1", "agreement", "kl", "js", "accuracy_drop", "ece", "temperature", "ece_after_temperature", "nonfinite_outputs")
    for metric in names:
        if overall[overall["metric"] == metric].empty:
            continue
        table.add_row(metric, cell("teacher", metric), cell("student", metric))
    console.print(table)
    colours = {"fail": "red", "warning": "yellow", "info": "cyan"}
    if result.findings:
        console.print("[bold]Findings[/]")
        for finding in result.findings:
            console.print(f"[{colours.get(finding.severity, 'white')}]●[/] [bold]{escape(finding.title)}[/]: {escape(finding.message)}", highlight=False)
    else:
        console.print("[green]No finding:[/] none of the warning signals shows in these numbers.")
