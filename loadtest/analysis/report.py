"""report.html: one self-contained page (inline CSS and SVG, no script, no network) a reviewer opens offline.

Order follows the reader's questions: the verdict, the headline figures, the curves that justify them,
then every table, then how each number was computed.
"""

from __future__ import annotations

import datetime as _dt
import html
import logging
import math
from typing import TYPE_CHECKING

from loadtest.analysis import fmt, plots, stats, views

if TYPE_CHECKING:  # pragma: no cover
    from loadtest.analysis.result import Analysis

LOG = logging.getLogger(__name__)

CSS = """
:root { --teacher: #3b5b92; --student: #e8743b; --good: #1e8449; --bad: #b03a2e; --muted: #7f8c8d;
        --bg: #f6f7f9; --card: #ffffff; --line: #e3e6ea; --text: #1f2933; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--text);
       font: 14px/1.45 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1320px; margin: 0 auto; padding: 28px 32px 60px; }
header h1 { font-size: 26px; margin: 0 0 4px; }
header .sub { color: var(--muted); }
.pill { display: inline-block; padding: 1px 9px; border-radius: 10px; font-size: 12px; color: #fff; margin-right: 6px; }
.pill.teacher { background: var(--teacher); } .pill.student { background: var(--student); }
.verdict { background: var(--card); border-left: 6px solid var(--student); padding: 16px 20px; margin: 20px 0;
           font-size: 16px; border-radius: 6px; box-shadow: 0 1px 2px rgba(0,0,0,.06); }
.tiles { display: grid; grid-template-columns: repeat(auto-fit, minmax(230px, 1fr)); gap: 14px; margin: 18px 0 8px; }
.tile { background: var(--card); border-radius: 8px; padding: 14px 16px; box-shadow: 0 1px 2px rgba(0,0,0,.06); }
.tile .label { color: var(--muted); font-size: 12px; text-transform: uppercase; letter-spacing: .04em; }
.tile .pair { display: flex; gap: 18px; margin-top: 6px; align-items: baseline; }
.tile .v { font-size: 22px; font-weight: 650; } .tile .who { font-size: 11px; color: var(--muted); display: block; }
.tile .t .v { color: var(--teacher); } .tile .s .v { color: var(--student); }
.tile .delta { margin-top: 6px; font-weight: 600; } .good { color: var(--good); } .bad { color: var(--bad); }
.muted { color: var(--muted); }
section { background: var(--card); border-radius: 8px; padding: 18px 22px; margin: 18px 0;
          box-shadow: 0 1px 2px rgba(0,0,0,.06); }
section h2 { font-size: 18px; margin: 0 0 12px; }
.plots { display: grid; grid-template-columns: 1fr 1fr; gap: 18px; }
.plots figure { margin: 0; } .plots figure.wide { grid-column: 1 / -1; }
.plots svg { width: 100%; height: auto; }
figcaption, .caption { color: var(--muted); font-size: 12px; margin-top: 6px; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { padding: 6px 9px; border-bottom: 1px solid var(--line); text-align: right; white-space: nowrap; }
th { background: #fafbfc; font-weight: 600; color: #52606d; }
td:first-child, th:first-child, td.text, th.text { text-align: left; }
td.wrap { white-space: normal; text-align: left; min-width: 220px; }
.scroll { overflow-x: auto; }
ul.notes { margin: 6px 0 0 18px; padding: 0; color: #52606d; }
footer { color: var(--muted); font-size: 12px; margin-top: 30px; }
"""


def _e(text: object) -> str:
    return html.escape(str(text))


def _table(view: views.View) -> str:
    wrap_cols = {i for i, h in enumerate(view.headers) if h in views.PROSE_HEADERS}
    text_cols = {i for i, h in enumerate(view.headers) if h in ("Model", "Stage", "Step", "Figure", "Unit", "Role", "Instance")}
    head = "".join(
        f'<th class="{"text" if i in text_cols | wrap_cols else ""}">{_e(h)}</th>' for i, h in enumerate(view.headers)
    )
    body = []
    for r, row in enumerate(view.rows):
        cells = []
        for i, cell in enumerate(row):
            cls = []
            if view.styles and r < len(view.styles) and view.styles[r][i]:
                cls.append(view.styles[r][i])
            if i in wrap_cols:
                cls.append("wrap")
            elif i in text_cols:
                cls.append("text")
            cells.append(f'<td class="{" ".join(cls)}">{_e(cell)}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    caption = f'<p class="caption">{_e(view.caption)}</p>' if view.caption else ""
    return (f'<section id="{view.key}"><h2>{_e(view.title)}</h2><div class="scroll"><table><thead><tr>{head}</tr>'
            f'</thead><tbody>{"".join(body)}</tbody></table></div>{caption}</section>')


def _tile(a: "Analysis", metric: str, label: str, formatter, higher_better: bool, note: str = "") -> str:
    row = a.comparison.set_index("metric").loc[metric]
    t, s = row["teacher"], row["student"]
    delta = ""
    if fmt.ok(t) and fmt.ok(s) and t != 0:
        ratio = s / t
        better = (ratio > 1) == higher_better if ratio != 1 else None
        cls = "good" if better else "bad" if better is False else "muted"
        if higher_better:
            delta = f'<div class="delta {cls}">student {ratio:.2f}× the teacher</div>'
        else:
            delta = f'<div class="delta {cls}">student {abs(1 - ratio) * 100:.0f} % {"lower" if ratio < 1 else "higher"}</div>'
    extra = f'<div class="caption">{_e(note)}</div>' if note else ""
    return (f'<div class="tile"><div class="label">{_e(label)}</div><div class="pair">'
            f'<div class="t"><span class="v">{_e(formatter(t))}</span><span class="who">teacher</span></div>'
            f'<div class="s"><span class="v">{_e(formatter(s))}</span><span class="who">student</span></div></div>'
            f"{delta}{extra}</div>")


def _tiles(a: "Analysis") -> str:
    est = any(c.energy_is_estimate for c in a.costs.values())
    d = a.difference
    sig = ""
    if d is not None and math.isfinite(d.difference_s):
        sig = "difference significant (bootstrap)" if d.significant else "difference not significant (bootstrap)"
    inst = next(iter(a.costs.values())).instance if a.costs else ""
    tiles = [
        _tile(a, "qps_at_budget", f"QPS at P{a.percentile:g} ≤ {a.budget_ms:g} ms", fmt.num, True),
        _tile(a, "cost_per_1m_tokens_usd", "Cost per 1M tokens", fmt.usd, False, f"on {inst}"),
        _tile(a, "p95_ms", "P95 latency (ms)", fmt.ms, False, sig),
        _tile(a, "energy_per_1m_tokens_j", "Energy per 1M tokens (J)" + (" — estimate" if est else ""), fmt.num, False),
    ]
    return '<div class="tiles">' + "".join(tiles) + "</div>"


def _figure(svg: str | None, caption: str, wide: bool = False, missing: str = "") -> str:
    if svg is None:
        if not missing:
            return ""
        return f'<figure class="{"wide" if wide else ""}"><p class="muted">{_e(missing)}</p></figure>'
    return f'<figure class="{"wide" if wide else ""}">{svg}<figcaption>{_e(caption)}</figcaption></figure>'


def _quality(a: "Analysis") -> str:
    """The quality section from loadtest.quality, when that module exists and the run has quality results."""
    try:
        from loadtest.quality.report import quality_section_html
    except ImportError:
        return ""
    part = quality_section_html(a.run_dir)
    return f'<section id="quality">{part}</section>' if part else ""


def render_html(a: "Analysis") -> str:
    from loadtest import __version__

    energy_est = any(c.energy_is_estimate for c in a.costs.values())
    power_missing = (
        "No power was measured in this run (no GPU power metrics). Energy figures"
        + (" come from the instance's declared wattage and are estimates." if energy_est else " are not available.")
    )
    plot_html = "".join([
        _figure(plots.latency_vs_throughput(a),
                f"P{a.percentile:g} latency of each step against its achieved throughput; bars: 95 % CI; dashed: the "
                f"budget; ★ the QPS at budget.", wide=True),
        _figure(plots.latency_cdf(a), "Every successful request of each model's reference window."),
        _figure(plots.budget_bars(a), "The capacity-planning figures side by side."),
        _figure(plots.power_over_time(a), "GPU power as sampled during the run; shaded: when each model was under load.",
                wide=True, missing=power_missing),
    ])
    views_html = "".join(_table(v) for v in views.all_views(a) if v.rows)
    notes = "".join(f"<li>{_e(n)}</li>" for n in a.notes)
    method = [
        f"Percentiles: numpy '{stats.PERCENTILE_METHOD}' on raw per-request latencies (open loop: measured from the "
        "intended send time, correcting coordinated omission).",
        "95 % CI of a percentile: order statistics (distribution-free), as scipy.stats.quantile_test; shown as n/a "
        "where the sample is too small for one.",
        views.significance_line(a),
        f"Prices: {a.cost_book.basis} — inputs from the cost file, not measurements. CO2e at {a.grid_g_per_kwh:g} g/kWh.",
    ]
    method_html = "".join(f"<li>{_e(m)}</li>" for m in method)
    manifest = a.manifest
    started = manifest.get("start")
    when = _dt.datetime.fromtimestamp(started, _dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC") if isinstance(
        started, (int, float)) else ""
    scenario = manifest.get("scenario")
    if isinstance(scenario, dict):
        files = [str(f).rsplit("/", 1)[-1] for f in scenario.get("locustfiles") or []]
        scenario = scenario.get("shape") or ", ".join(files)
    sub = " · ".join(x for x in (
        when, f"scenario {scenario}" if scenario else "", f"kind {a.kind}",
        f"budget P{a.percentile:g} ≤ {a.budget_ms:g} ms",
    ) if x)
    generated = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>loadtest {_e(a.run_id)}: teacher vs student</title><style>{CSS}</style></head>
<body><main>
<header><h1>Teacher vs student — run {_e(a.run_id)}</h1>
<div class="sub"><span class="pill teacher">teacher: {_e(a.teacher or "—")}</span><span class="pill student">student: {_e(a.student or "—")}</span> {_e(sub)}</div></header>
<div class="verdict">{_e(a.verdict)}</div>
{_tiles(a)}
<section id="plots"><h2>Curves</h2><div class="plots">{plot_html}</div></section>
{views_html}
{_quality(a)}
<section id="method"><h2>How these numbers were computed</h2><ul class="notes">{method_html}</ul>
{"<h2 style='margin-top:14px'>Notes</h2><ul class='notes'>" + notes + "</ul>" if notes else ""}</section>
<footer>Generated by loadtest {_e(__version__)} on {generated} from {_e(a.run_dir)}.</footer>
</main></body></html>
"""
