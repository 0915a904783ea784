"""The generative quality part of report.html: findings in plain words, overall and per-slice figures,
fairness, version over version, and a few per-example answers where the student differs most.

``loadtest.quality.report.quality_section_html`` calls ``generative_section_html`` for a run whose
summary says ``task: text-generation``; the analyzer embeds the result beside the serving figures.
"""

from __future__ import annotations

from html import escape

import pandas as pd

from loadtest.quality.genfindings import derive_generative_findings
from loadtest.quality.genscoring import GENERATIVE_METRICS
from loadtest.quality.plots import slice_bars_svg, slice_drop_svg
from loadtest.quality.report_parts import _STYLE, _cell, _findings_html, _row, baseline_html, fairness_html, format_figure
from loadtest.quality.slices import OVERALL

OVERALL_ORDER = [
    "perplexity", "tf_agreement", "tf_kl", "exact_match", "chrf", "rouge_l", "format_adherence", "exact_match_vs_teacher",
    "chrf_vs_teacher", "rouge_l_vs_teacher", "chrf_drop", "rouge_l_drop", "exact_match_drop", "format_adherence_drop",
    "length_ratio", "output_tokens", "empty_outputs", "judged_equivalence", "nonfinite_outputs",
]
SLICE_COLUMNS = [("teacher", "chrf"), ("student", "chrf"), ("student", "chrf_drop"), ("student", "chrf_vs_teacher"),
                 ("teacher", "format_adherence"), ("student", "format_adherence"), ("student", "tf_kl"), ("teacher", "perplexity"),
                 ("student", "perplexity")]
SAMPLES = 5


def _description(metric: str, judge: dict | None) -> str:
    text = GENERATIVE_METRICS.get(metric, (None, "examples with NaN/Inf log-probabilities (count)"))[1]
    if metric == "judged_equivalence" and (not judge or not judge.get("validated")):
        text += " — UNVALIDATED: no --judge-labels"
    return text


def _overall(table: pd.DataFrame, judge: dict | None) -> str:
    lines = ["<table><tr><th>figure</th><th>teacher</th><th>student</th><th>n</th><th>p (paired)</th><th>definition</th></tr>"]
    for metric in OVERALL_ORDER:
        teacher, student = _row(table, "teacher", metric), _row(table, "student", metric)
        if teacher is None and student is None:
            continue
        row = student if student is not None else teacher
        p = row.get("p_value") if hasattr(row, "get") else None
        p_text = f"{float(p):.2g}" if p is not None and pd.notna(p) else ""
        label = metric + (" (unvalidated)" if metric == "judged_equivalence" and (not judge or not judge.get("validated")) else "")
        lines.append(
            f"<tr><td>{escape(label)}</td>{_cell(teacher, metric)}{_cell(student, metric)}<td>{int(row['n'])}</td><td>{p_text}</td>"
            f'<td class="l">{escape(_description(metric, judge))}</td></tr>'
        )
    lines.append("</table>")
    return "\n".join(lines)


def _slices(table: pd.DataFrame, summary: dict, gate: dict | None = None) -> str:
    """Every slice's figures; the student's chrF drop beside the overall drop, and the gate's word on the slice."""
    head = "".join(f"<th>{escape(m)} {escape(metric)}</th>" for m, metric in SLICE_COLUMNS)
    lines = [f"<table><tr><th>slice</th><th>n</th>{head}<th>chrF drop − overall drop</th>"
             f"{'<th>gate</th>' if gate else ''}<th></th></tr>"]
    keys = [(OVERALL, "all")] + [(s["name"], v) for s in summary.get("slices", []) for v in s.get("values", [])]
    overall_drop = _row(table, "student", "chrf_drop")
    statuses = {c["slice"]: c["status"] for c in (gate or {}).get("checks", [])
                if c["metric"] == "chrf_drop" and str(c["limit"]).lstrip("≤≥ ").startswith("overall")}
    for name, value in keys:
        anchor = _row(table, "student", "chrf", name, value)
        if anchor is None:
            continue
        unstable = bool(anchor["unstable"])
        label = "overall" if name == OVERALL else f"{name}={value}"
        cells = "".join(_cell(_row(table, m, metric, name, value), metric) for m, metric in SLICE_COLUMNS)
        drop = _row(table, "student", "chrf_drop", name, value)
        excess = ""
        if name != OVERALL and drop is not None and overall_drop is not None and pd.notna(drop["value"]) and pd.notna(overall_drop["value"]):
            excess = f"{float(drop['value']) - float(overall_drop['value']):+.2f}"
        status = statuses.get(label, "")
        gate_cell = (f'<td class="l {escape(status)}">{escape(status.upper())}</td>' if gate else "")
        lines.append(
            f'<tr class="{"unstable" if unstable else ""}"><td>{escape(label)}</td><td>{int(anchor["n"])}</td>{cells}<td>{excess}</td>'
            f'{gate_cell}<td class="l">{"unstable (n below the minimum)" if unstable else ""}</td></tr>'
        )
    lines.append("</table>")
    return "\n".join(lines)


def _samples(per: pd.DataFrame | None) -> str:
    """The answers where the student strays furthest from the teacher: what the figures are made of."""
    if per is None or per.empty or "chrf_vs_teacher" not in per.columns:
        return ""
    worst = per.sort_values("chrf_vs_teacher", kind="stable").head(SAMPLES)
    lines = ["<table><tr><th>id</th><th>prompt</th><th>reference</th><th>teacher</th><th>student</th><th>chrF S vs T</th></tr>"]
    for _, r in worst.iterrows():
        cells = "".join(f'<td class="l">{escape(str(r[c])[:300])}</td>' for c in ("prompt", "reference", "teacher_output", "student_output"))
        lines.append(f'<tr><td class="l">{escape(str(r["id"]))}</td>{cells}<td>{r["chrf_vs_teacher"]:.1f}</td></tr>')
    lines.append("</table>")
    return "\n".join(lines)


def _relative_margin(gate: dict | None) -> float | None:
    """The gate's allowance for a slice's chrF drop beyond the overall drop (``≤ overall + M``), if it has one."""
    for check in (gate or {}).get("checks", []):
        limit = str(check.get("limit", ""))
        if check.get("metric") == "chrf_drop" and limit.startswith("≤ overall + "):
            try:
                return float(limit.removeprefix("≤ overall + ").split()[0])
            except ValueError:
                return None
    return None


def _gate(gate: dict | None) -> str:
    """The release gate's verdict and every check that did not pass (the passing ones are counted)."""
    if not gate:
        return ""
    checks = gate.get("checks", [])
    shown = [c for c in checks if c.get("status") not in ("pass", "skipped")]
    css = "fail" if not gate.get("passed") else "info"
    parts = [f"<h3>Release gate ({escape(str(gate.get('policy_name') or gate.get('policy')))})</h3>",
             f'<div class="finding {css}">{escape(str(gate.get("verdict", "")))}</div>']
    if shown:
        parts.append("<table><tr><th>status</th><th>metric</th><th>model</th><th>slice</th><th>n</th><th>value</th><th>limit</th><th>detail</th></tr>")
        for c in shown:
            value = c.get("value")
            value_text = "—" if value is None else f"{float(value):.4g}"
            parts.append(
                f'<tr><td class="l">{escape(str(c["status"]).upper())}</td><td class="l">{escape(str(c["metric"]))}</td><td class="l">{escape(str(c["model"]))}</td>'
                f'<td class="l">{escape(str(c["slice"]))}</td><td>{"" if c.get("n") is None else int(c["n"])}</td><td>{value_text}</td>'
                f'<td class="l">{escape(str(c["limit"]))}</td><td class="l">{escape(str(c.get("detail") or ""))}</td></tr>'
            )
        parts.append("</table>")
    passed = sum(c.get("status") == "pass" for c in checks)
    parts.append(f'<p class="note">{passed} of {len(checks)} checks passed; every check: quality/gate.json and tables/gate_checks.csv. '
                 f"The same verdict as an exit status (1 on a failure): <code>loadtest gate {escape(str(gate.get('run', 'RUN')))} "
                 f"--policy {escape(str(gate.get('policy', 'POLICY')))}</code>.</p>")
    return "\n".join(parts)


def generative_section_html(table: pd.DataFrame, summary: dict, comparison: pd.DataFrame | None, per: pd.DataFrame | None,
                            gate: dict | None = None) -> str:
    findings = derive_generative_findings(table, comparison, summary)
    models = summary.get("models", {})
    generation = summary.get("generation", {})
    judge = summary.get("judge")
    parts = [_STYLE, '<div class="lt-quality" id="quality-results">', "<h2>Generative quality through the served models</h2>"]
    tf_text = "teacher-forced log-probs from the served scoring models" if summary.get("teacher_forced") else (
        f"teacher-forced figures not measured: {escape(str(summary.get('teacher_forced_reason') or 'no log-probs'))}"
    )
    parts.append(
        f"<p>Teacher <b>{escape(str(models.get('teacher')))}</b> and student <b>{escape(str(models.get('student')))}</b> at "
        f"{escape(str(summary.get('host', '?')))} ({escape(str(summary.get('server', '?')))}); {summary.get('n_examples', '?')} prompts "
        f"({summary.get('structured_prompts', 0)} structured), greedy answers (temperature 0, seed {generation.get('seed', '?')}, "
        f"max {generation.get('max_tokens', '?')} tokens); {tf_text}. Failed requests: teacher "
        f"{summary.get('failed_requests', {}).get('teacher', '?')}, student {summary.get('failed_requests', {}).get('student', '?')}; "
        f"empty answers: teacher {summary.get('empty_outputs', {}).get('teacher', '?')}, student {summary.get('empty_outputs', {}).get('student', '?')}.</p>"
    )
    if judge:
        status = (
            f"validated against {judge.get('labelled_with_verdict')} labels: agreement {format_figure(judge.get('agreement_with_labels'), 'accuracy')}"
            if judge.get("validated") else "UNVALIDATED (no --judge-labels): judged figures say what the judge thinks, not whether it is right"
        )
        parts.append(f"<p>Judge: {escape(str(judge.get('model')))}, {judge.get('verdicts')} verdicts, {judge.get('no_verdict')} without one; {escape(status)}.</p>")
    parts += ["<h3>Findings</h3>", _findings_html(findings), _gate(gate), "<h3>Overall</h3>", _overall(table, judge)]
    names = [s["name"] for s in summary.get("slices", [])]
    bars = slice_bars_svg(table, "chrf", names)
    if bars:
        parts.append(f'<h3>chrF against the references, per slice</h3><div class="plot">{bars}</div>')
    drops = slice_drop_svg(table, "chrf_drop", names, _relative_margin(gate))
    if drops:
        parts.append(f'<h3>What the student loses, per slice, against what it loses overall</h3><div class="plot">{drops}</div>')
    parts += ["<h3>Per slice</h3>", _slices(table, summary, gate)]
    parts.append(fairness_html(table, summary.get("fairness")))
    parts.append(baseline_html(summary.get("baseline")))
    samples = _samples(per)
    if samples:
        parts += ["<h3>Where the student strays furthest from the teacher</h3>", samples]
    parts.append(
        '<div class="note"><p>chrF is sacrebleu\'s chrF2 (sentence level, 0–100, mean over examples); ROUGE-L F is rouge-score\'s '
        "(0–1); exact match after whitespace normalisation; format adherence = the answer is a JSON object with the required keys. "
        "Perplexity, top-1 agreement and KL(T‖S) are token-weighted over reference tokens only. Intervals are 95 %: Wilson for rates, "
        f"seeded percentile bootstrap over examples ({summary.get('settings', {}).get('bootstrap_resamples', '?')} resamples) for the others; "
        "drops are paired (teacher − student on the same prompts), with McNemar's exact p for pass/fail figures. "
        f"Slices with fewer than {summary.get('settings', {}).get('min_slice_n', '?')} examples are flagged unstable.</p></div>"
    )
    parts.append("</div>")
    return "\n".join(parts)
