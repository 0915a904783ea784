"""Generative run output: tables/*.csv, summary.md, report.html (plots inline) and the terminal view.

Plots: TTFT and ITL CDFs; latency vs throughput (P95 TTFT and P95 ITL per stage against output
tokens/s, with the SLO lines); per-user vs per-server tokens/s (what one user sees against what the
server delivers, per stage). Teacher and student keep the report's colours. Never imports Locust.
"""

from __future__ import annotations

import datetime as _dt
import html
import math

import numpy as np
import pandas as pd

from loadtest.analysis import fmt
from loadtest.analysis.generative import ALL, GenerativeAnalysis, comparison_frame, percentile_frame, summary_frame
from loadtest.analysis.plots import BUDGET_COLOR, COLORS, HALF_IN, WIDE_IN, _plt, _svg
from loadtest.analysis.report import CSS

HEADLINE = [
    ("ttft_p95_ms", "P95 TTFT", "ms", False), ("itl_p95_ms", "P95 ITL", "ms", False),
    ("e2e_p95_ms", "P95 E2E", "ms", False), ("output_tokens_per_s", "output tokens/s", "tok/s", True),
    ("user_tokens_per_s_p50", "per-user tokens/s (P50)", "tok/s", True), ("goodput_rps", "goodput", "req/s", True),
    ("cost_per_1m_output_tokens_usd", "$ / 1M output tokens", "USD", False),
    ("energy_per_output_token_j", "energy / output token", "J", False),
]  # fmt: skip


def _color(a: GenerativeAnalysis, model: str) -> str:
    return COLORS[a.role(model)]


def _label(a: GenerativeAnalysis, model: str) -> str:
    role = a.role(model)
    return f"{model} ({role})" if role != "other" else model


def cdf_plot(a: GenerativeAnalysis, column: str, title: str, slo_ms: float | None) -> str | None:
    ok = a.records[a.records["success"].astype(bool)]
    if ok[column].dropna().empty:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(HALF_IN, 4.0))
    qs = np.linspace(0, 100, 401)
    for model in a.models:
        values = ok.loc[ok["model"] == model, column].dropna().to_numpy(float) * 1000
        values = values[values > 0]
        if values.size:
            ax.plot(np.percentile(values, qs), qs / 100, color=_color(a, model), lw=1.8,
                    label=f"{_label(a, model)} n={values.size:,}")  # fmt: skip
    if slo_ms is not None:
        ax.axvline(slo_ms, color=BUDGET_COLOR, ls="--", lw=1.2, label=f"SLO {slo_ms:g} ms")
    for p in (0.5, 0.95):
        ax.axhline(p, color="#bbbbbb", lw=0.8, ls=":")
    ax.set_xscale("log")
    ax.set_ylim(0, 1.005)
    ax.set_xlabel(f"{title} (ms, log scale)")
    ax.set_ylabel("fraction of requests")
    ax.set_title(f"{title} CDF")
    ax.legend(loc="lower right", fontsize=8)
    return _svg(fig)


def latency_vs_throughput(a: GenerativeAnalysis) -> str | None:
    """P95 TTFT and P95 ITL of each stage against its output tokens/s, with the SLO lines."""
    points = {m: [w for w in a.stages[m] if w.output_tokens_per_s > 0] or [a.overall[m]] for m in a.models}
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(WIDE_IN, 4.2))
    for ax, metric, bound, name in ((axes[0], "ttft", a.slo.ttft_ms if a.slo else None, "P95 TTFT"),
                                    (axes[1], "itl", a.slo.itl_ms if a.slo else None, "P95 ITL")):  # fmt: skip
        for model in a.models:
            ws = sorted(points[model], key=lambda w: w.output_tokens_per_s)
            xs = [w.output_tokens_per_s for w in ws]
            ys = [w.p(metric, 95.0) * 1000 for w in ws]
            ax.plot(xs, ys, "o-", color=_color(a, model), lw=1.5, ms=5, label=_label(a, model))
            for w, x in zip(ws, xs):
                est = w.percentiles[metric][95.0]
                if est.ci_ok:
                    ax.plot([x, x], [est.ci_low * 1000, est.ci_high * 1000], color=_color(a, model), lw=1, alpha=0.6)
        if bound is not None:
            ax.axhline(bound, color=BUDGET_COLOR, ls="--", lw=1.3, label=f"SLO {bound:g} ms")
        ax.set_xlabel("output tokens/s (system)")
        ax.set_ylabel(f"{name} (ms)")
        ax.set_title(f"{name} vs throughput")
        ax.set_xlim(0, 1.15 * max(w.output_tokens_per_s for m in a.models for w in points[m]))
        ax.set_ylim(bottom=0)
        ax.legend(loc="upper left", fontsize=8)
    return _svg(fig)


def user_vs_server(a: GenerativeAnalysis) -> str | None:
    """Per-user tokens/s (P50 of 1/ITL) against the server's output tokens/s, per stage."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(HALF_IN, 4.0))
    drawn = False
    for model in a.models:
        ws = sorted([w for w in a.stages[model] if math.isfinite(w.user_tokens_per_s_p50)] or
                    [a.overall[model]], key=lambda w: w.output_tokens_per_s)  # fmt: skip
        ws = [w for w in ws if math.isfinite(w.user_tokens_per_s_p50)]
        if ws:
            drawn = True
            ax.plot([w.output_tokens_per_s for w in ws], [w.user_tokens_per_s_p50 for w in ws], "o-",
                    color=_color(a, model), label=_label(a, model))  # fmt: skip
    if not drawn:
        _plt().close(fig)
        return None
    if a.slo is not None and a.slo.itl_ms:
        ax.axhline(1000.0 / a.slo.itl_ms, color=BUDGET_COLOR, ls="--", lw=1.2, label=f"1 / SLO ITL")
    ax.set_xlabel("output tokens/s (server)")
    ax.set_ylabel("tokens/s per user (P50 of 1/ITL)")
    ax.set_title("Per-user vs per-server tokens/s")
    ax.set_xlim(0, 1.15 * max(ax.get_xlim()[1], 1e-9))
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    return _svg(fig)


def _value(metric: str, unit: str, x: float) -> str:
    if x is None or not math.isfinite(x):
        return "—"
    if unit == "USD":
        return fmt.usd(x)
    if unit == "ratio":
        return f"{x:.1%}"
    if unit == "count":
        return f"{x:,.0f}"
    if unit == "J":
        return f"{x:.3g} J"
    return fmt.num(x)


def _e(x) -> str:
    return html.escape(str(x))


def _table(frame: pd.DataFrame, columns: list[str]) -> str:
    head = "".join(f"<th>{_e(c)}</th>" for c in columns)
    body = []
    for _, row in frame.iterrows():
        cells = []
        for c in columns:
            v = row[c]
            text = fmt.num(v) if isinstance(v, float) else ("—" if v is None else str(v))
            cells.append(f"<td>{_e(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<div class='scroll'><table><tr>{head}</tr>{''.join(body)}</table></div>"


def verdict(a: GenerativeAnalysis) -> str:
    if not (a.teacher and a.student):
        models = ", ".join(a.models)
        return f"Generative run of {models}: figures per model below (no teacher/student pair named)."
    comp = comparison_frame(a).set_index("metric")
    parts = []
    for metric, name in (("ttft_p95_ms", "P95 TTFT"), ("itl_p95_ms", "P95 ITL"), ("output_tokens_per_s", "output tokens/s")):
        r = comp.loc[metric, "student_over_teacher"] if metric in comp.index else math.nan
        if math.isfinite(r):
            parts.append(f"{name} {r:.2f}× the teacher's")
    sig = [s for s in a.significance if s["percentile"] == 95.0]
    tested = "; ".join(f"P95 {s['metric'].upper()}: {s['verdict']}" for s in sig)
    basis = (f" (each at its best passing step: {a.reference[a.teacher].stage} and {a.reference[a.student].stage})"
             if a.compares_references else "")
    return (f"Student {a.student} vs teacher {a.teacher}{basis}: " + ", ".join(parts)
            + (f". {tested}." if tested else "."))


def render_html(a: GenerativeAnalysis) -> str:
    comp = comparison_frame(a)
    tiles = []
    if a.teacher and a.student:
        comp_i = comp.set_index("metric")
        for metric, label, unit, higher in HEADLINE:
            if metric not in comp_i.index:
                continue
            t, s = comp_i.loc[metric, "teacher"], comp_i.loc[metric, "student"]
            r = comp_i.loc[metric, "student_over_teacher"]
            good = (r > 1) == higher if math.isfinite(r) else None
            delta = (f"<div class='delta {'good' if good else 'bad'}'>student {r:.2f}× teacher</div>"
                     if math.isfinite(r) else "")  # fmt: skip
            tiles.append(f"<div class='tile'><div class='label'>{_e(label)}</div><div class='pair'>"
                         f"<div class='t'><span class='v'>{_e(_value(metric, unit, t))}</span><span class='who'>teacher"
                         f"</span></div><div class='s'><span class='v'>{_e(_value(metric, unit, s))}</span>"
                         f"<span class='who'>student</span></div></div>{delta}</div>")  # fmt: skip
    figures = [
        (cdf_plot(a, "ttft_s", "TTFT", a.slo.ttft_ms if a.slo else None), "TTFT: first chunk carrying text − start "
         "(open loop: intended start)", False),
        (cdf_plot(a, "itl_s", "ITL", a.slo.itl_ms if a.slo else None), "ITL: (E2E − TTFT) / (output tokens − 1)", False),
        (latency_vs_throughput(a), "P95 per stage (bars: 95 % CI) against the stage's output tokens/s", True),
        (user_vs_server(a), "What one user sees (1/ITL) against what the server delivers", False),
    ]  # fmt: skip
    plots = "".join(f"<figure class='{'wide' if wide else ''}'>{svg}<figcaption>{_e(cap)}</figcaption></figure>"
                    for svg, cap, wide in figures if svg)  # fmt: skip
    summary = summary_frame(a)
    cols = ["model", "stage", "requests", "error_rate", "requests_per_s", "output_tokens_per_s", "ttft_p50_ms",
            "ttft_p95_ms", "itl_p50_ms", "itl_p95_ms", "e2e_p95_ms", "user_tokens_per_s_p50"]
    if a.slo is not None:
        cols += ["goodput_rps", "slo_attainment", "slo_p95_ok"]
    pct = percentile_frame(a)
    pct = pct[pct["stage"] == ALL].copy()
    for c in ("value", "ci_low", "ci_high"):
        pct[c] = np.where(pct["unit"] == "s", pct[c] * 1000, pct[c])
    pct["unit"] = pct["unit"].replace({"s": "ms"})
    costs = pd.DataFrame([{"model": m, "instance": c.instance, "usd_per_hour": c.usd_per_hour,
                           "cost_per_1m_output_tokens_usd": c.cost_per_1m_output_tokens_usd,
                           "cost_per_1m_total_tokens_usd": c.cost_per_1m_total_tokens_usd,
                           "energy_per_output_token_j": c.energy_per_output_token_j, "energy": c.energy_method,
                           "at": c.basis} for m, c in a.costs.items()])  # fmt: skip
    sig = pd.DataFrame(a.significance)
    sections = [
        f"<section><h2>Figures per model and stage</h2>{_table(summary, [c for c in cols if c in summary])}</section>",
        f"<section><h2>Percentiles with 95 % CIs (whole run after warm-up)</h2>"
        f"{_table(pct, ['model', 'metric', 'percentile', 'n', 'value', 'ci_low', 'ci_high', 'ci_ok', 'unit'])}</section>",
        f"<section><h2>Cost and energy</h2>{_table(costs, list(costs.columns))}</section>",
    ]
    if a.teacher and a.student:
        sections.insert(0, f"<section><h2>Teacher vs student</h2>{_table(comp, list(comp.columns))}</section>")
    from loadtest.quality.report import quality_section_html  # quality through the served models, with the gate

    quality = quality_section_html(a.run_dir)
    if quality:
        sections.insert(1, f'<section id="quality">{quality}</section>')
    if not sig.empty:
        sections.append(f"<section><h2>Significance (bootstrap, student − teacher)</h2>{_table(sig, list(sig.columns))}"
                        "</section>")  # fmt: skip
    notes = "".join(f"<li>{_e(n)}</li>" for n in a.notes)
    slo = f"SLO: {_e(a.slo.describe())}" if a.slo else "no SLO given (--slo ttft_ms=…,itl_ms=…)"
    method = ("<section><h2>How these numbers were computed</h2><ul class='notes'>"
              "<li>TTFT = first chunk carrying output text − start (open loop: the intended send time); E2E = end of "
              "stream − the same start; ITL = (E2E − TTFT) / (output tokens − 1), for ≥ 2 tokens; per-user tokens/s = "
              "1 / ITL.</li><li>Output tokens: the server's usage counts where it sends them, else the tokenizer on "
              "the returned text; never the number of chunks.</li><li>Throughput = Σ tokens (or requests) of successful "
              "requests / window (first intended send → last completion), warm-up requests excluded "
              f"({a.warmup_requests} of them).</li><li>Goodput = successful requests/s meeting every SLO bound at once; "
              "SLO attainment = goodput / achieved requests/s.</li><li>Percentile CIs: distribution-free order "
              "statistics; teacher vs student: bootstrap CI of the percentile difference.</li></ul>"
              f"<ul class='notes'>{notes}</ul></section>")  # fmt: skip
    run_id = a.manifest.get("run_id", a.run_dir.name)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{_e(run_id)} — generative load</title>"
            f"<style>{CSS}</style></head><body><main><header><h1>Generative serving: {_e(run_id)}</h1>"
            f"<div class='sub'>{_e(a.manifest.get('protocol') or '')} · {slo}</div></header>"
            f"<div class='verdict'>{_e(verdict(a))}</div><div class='tiles'>{''.join(tiles)}</div>"
            f"<section><h2>Curves</h2><div class='plots'>{plots}</div></section>{''.join(sections)}{method}"
            f"<footer>generated {_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M} UTC by loadtest analyze</footer>"
            "</main></body></html>")  # fmt: skip


def write_outputs(a: GenerativeAnalysis) -> tuple[str, str]:
    """Write tables/ and report.html; returns (tables dir, report path)."""
    tables = a.run_dir / "tables"
    tables.mkdir(parents=True, exist_ok=True)
    summary_frame(a).to_csv(tables / "generative_summary.csv", index=False)
    percentile_frame(a).to_csv(tables / "generative_percentiles.csv", index=False)
    comparison_frame(a).to_csv(tables / "comparison.csv", index=False)
    pd.DataFrame(a.significance).to_csv(tables / "significance.csv", index=False)
    (tables / "summary.md").write_text(summary_markdown(a))
    report = a.run_dir / "report.html"
    report.write_text(render_html(a))
    return str(tables), str(report)


def summary_markdown(a: GenerativeAnalysis) -> str:
    frame = summary_frame(a)
    frame = frame[frame["stage"] == ALL]
    cols = ["model", "requests", "requests_per_s", "output_tokens_per_s", "ttft_p95_ms", "itl_p95_ms", "e2e_p95_ms"]
    if a.slo:
        cols += ["goodput_rps", "slo_attainment"]
    lines = [f"# {a.manifest.get('run_id', a.run_dir.name)}", "", verdict(a), "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]  # fmt: skip
    for _, row in frame.iterrows():
        lines.append("| " + " | ".join(str(row[c]) if isinstance(row[c], str) else fmt.num(row[c]) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def render_terminal(a: GenerativeAnalysis, console, tables: str, report: str) -> None:
    from rich.panel import Panel

    console.print(Panel(verdict(a), title=f"[bold]{a.manifest.get('run_id', a.run_dir.name)}[/]: generative",
                        border_style="cyan"))  # fmt: skip
    print_figures(a, console)
    for model, c in a.costs.items():
        console.print(f"{model}: {_value('', 'USD', c.cost_per_1m_output_tokens_usd or math.nan)} per 1M output tokens, "
                      f"{_value('', 'USD', c.cost_per_1m_total_tokens_usd or math.nan)} per 1M total tokens on "
                      f"{c.instance} ({c.basis}); energy/output token: "
                      f"{_value('', 'J', c.energy_per_output_token_j or math.nan)} ({c.energy_method})", style="dim")  # fmt: skip
    for s in a.significance:
        if s["percentile"] == 95.0:
            console.print(f"P95 {s['metric'].upper()} student − teacher: {s['difference_ms']:+.2f} ms "
                          f"[{s['ci_low_ms']:+.2f}, {s['ci_high_ms']:+.2f}] → {s['verdict']}", style="dim")
    console.print(f"tables: {tables}   report: {report}")


def print_figures(a: GenerativeAnalysis, console) -> None:
    """The per-model table (whole run after warm-up): requests, tokens/s, TTFT/ITL/E2E percentiles, goodput."""
    from rich.table import Table

    slo = f" — SLO {a.slo.describe()}" if a.slo else ""
    table = Table(title=f"per model (whole run after warm-up; TTFT, ITL, E2E in ms){slo}",
                  title_justify="left", header_style="bold cyan")  # fmt: skip
    cols = [("model", "model"), ("requests", "requests"), ("req/s", "requests_per_s"),
            ("out tok/s", "output_tokens_per_s"), ("TTFT P50", "ttft_p50_ms"), ("TTFT P95", "ttft_p95_ms"),
            ("ITL P50", "itl_p50_ms"), ("ITL P95", "itl_p95_ms"), ("E2E P95", "e2e_p95_ms"),
            ("user tok/s", "user_tokens_per_s_p50")]  # fmt: skip
    if a.slo:
        cols += [("goodput", "goodput_rps"), ("attain", "slo_attainment")]
    for name, _ in cols:
        table.add_column(name, justify="left" if name == "model" else "right")
    frame = summary_frame(a)
    for _, row in frame[frame["stage"] == ALL].iterrows():
        table.add_row(*(str(row[c]) if c == "model" else f"{row[c]:.1%}" if c == "slo_attainment"
                        else f"{row[c]:,.0f}" if c == "requests" else fmt.num(row[c]) for _, c in cols))  # fmt: skip
    console.print(table)
