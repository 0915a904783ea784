"""The report's figures as inline SVG (matplotlib, text as paths): the HTML needs no font, CDN or script.

Teacher and student keep one colour each in every figure. Curves show every step, counted ones filled and
uncounted ones hollow, so a reader sees which measurements the capacity figure rests on.
"""

from __future__ import annotations

import io
import math
from typing import TYPE_CHECKING

import numpy as np

from loadtest.analysis import stats

if TYPE_CHECKING:  # pragma: no cover
    from loadtest.analysis.result import Analysis

COLORS = {"teacher": "#3b5b92", "student": "#e8743b", "other": "#6b8e23"}
BUDGET_COLOR = "#c0392b"
GRID = "#e6e6e6"
# The report lays wide figures over ~1240 px and half-width ones over ~610 px; sizing the figures in the
# same proportion keeps every figure's text the same size on the page.
WIDE_IN, HALF_IN = 12.6, 6.2


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams.update({
        "svg.fonttype": "path", "font.size": 10, "axes.spines.top": False, "axes.spines.right": False,
        "axes.grid": True, "grid.color": GRID, "axes.edgecolor": "#999999", "axes.titleweight": "bold",
        "axes.titlesize": 11, "legend.frameon": False,
    })
    return plt


def _svg(fig) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    _plt().close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]  # drop the XML prolog and doctype: inline SVG in HTML


def _color(a: "Analysis", model: str) -> str:
    return COLORS[a.role(model)]


def latency_vs_throughput(a: "Analysis") -> str | None:
    """P(percentile) against achieved QPS for every step, the budget line and the QPS-at-budget marker."""
    if not a.steps:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(WIDE_IN, 4.6))
    lat_all: list[float] = []
    for model in a.models:
        steps = sorted((s for s in a.steps if s.model == model and math.isfinite(s.latency_ms)), key=lambda s: s.load)
        if not steps:
            continue
        color = _color(a, model)
        y = np.array([s.latency_ms for s in steps])
        lat_all += list(y)
        # the curve joins counted steps in load order; uncounted ones are drawn as hollow points only
        counted = [s for s in steps if s.counted]
        ax.plot([s.achieved_qps for s in counted], [s.latency_ms for s in counted], "-", color=color, lw=1.6,
                alpha=0.8, label=f"{model} ({a.role(model)})" if a.role(model) != model else model)
        for s in steps:
            lo, hi = s.ci_low_ms, s.ci_high_ms
            if math.isfinite(lo) and math.isfinite(hi):
                ax.plot([s.achieved_qps] * 2, [lo, hi], color=color, lw=1, alpha=0.6)
            ax.plot(s.achieved_qps, s.latency_ms, "o", ms=6, color=color,
                    mfc=color if s.counted else "white", mew=1.4)
        cap = a.capacity.get(model)
        if cap is not None and cap.known:
            ax.plot(cap.qps_at_budget, cap.latency_at_budget_ms, marker="*", ms=17, color=color, mec="black", mew=0.7, zorder=5)
            ax.axvline(cap.qps_at_budget, color=color, ls=":", lw=1.2)
            ax.annotate(f"{cap.qps_at_budget:,.0f} req/s", (cap.qps_at_budget, a.budget_ms), textcoords="offset points",
                        xytext=(4, 6), color=color, fontweight="bold")
    ax.axhline(a.budget_ms, color=BUDGET_COLOR, ls="--", lw=1.4, label=f"budget {a.budget_ms:g} ms")
    finite = [v for v in lat_all if math.isfinite(v) and v > 0]
    if finite and max(finite + [a.budget_ms]) / min(finite + [a.budget_ms]) > 30:
        ax.set_yscale("log")
    ax.set_xlabel("achieved throughput (successful req/s)")
    ax.set_ylabel(f"P{a.percentile:g} latency (ms)")
    ax.set_title(f"Latency vs throughput — filled: step counted, hollow: not counted, ★ QPS at budget")
    ax.set_xlim(left=0)
    ax.legend(loc="upper left")
    return _svg(fig)


def latency_cdf(a: "Analysis") -> str | None:
    """Empirical CDF of each model's reference latencies (downsampled to 600 quantiles), log x."""
    if not a.references:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(HALF_IN, 4.2))
    qs = np.linspace(0, 100, 601)
    for model, ref in a.references.items():
        if ref.latencies_s.size == 0:
            continue
        xs = stats.sorted_percentiles(ref.latencies_s, qs) * 1000  # references are sorted
        ax.plot(xs, qs / 100, color=_color(a, model), lw=1.8, label=f"{model} (n={ref.latencies_s.size:,})")
    for p in (0.5, 0.95, 0.99):
        ax.axhline(p, color="#bbbbbb", lw=0.8, ls=":")
        ax.annotate(f"P{p * 100:g}", (0, p), xycoords=("axes fraction", "data"), xytext=(2, 2),
                    textcoords="offset points", color="#888888", fontsize=8)
    ax.axvline(a.budget_ms, color=BUDGET_COLOR, ls="--", lw=1.2, label=f"budget {a.budget_ms:g} ms")
    ax.set_xscale("log")
    from matplotlib.ticker import FuncFormatter, NullFormatter

    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_ylim(0, 1.005)
    ax.set_xlabel("client latency (ms, log scale)")
    ax.set_ylabel("fraction of requests")
    ax.set_title("Latency CDF (reference window)")
    ax.legend(loc="lower right")
    return _svg(fig)


def budget_bars(a: "Analysis") -> str | None:
    """QPS at budget and cost per 1M tokens, teacher next to student."""
    models = [m for m in (a.teacher, a.student) if m in a.models] or a.models
    if not models:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(HALF_IN, 4.2))
    panels = [
        ("QPS at budget", [a.capacity[m].qps_at_budget for m in models], "req/s", "{:,.0f}"),
        ("Cost per 1M tokens", [a.costs[m].cost_per_1m_tokens_usd for m in models], "USD", "${:,.4g}"),
    ]
    for ax, (title, values, unit, pattern) in zip(axes, panels):
        xs = np.arange(len(models))
        heights = [v if v is not None and math.isfinite(v) else 0 for v in values]
        bars = ax.bar(xs, heights, color=[_color(a, m) for m in models], width=0.6)
        for bar, v in zip(bars, values):
            text = pattern.format(v) if v is not None and math.isfinite(v) else "not measured"
            ax.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom",
                        xytext=(0, 3), textcoords="offset points", fontweight="bold")
        ax.set_xticks(xs, [f"{m}\n({a.role(m)})" for m in models])
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(axis="x", visible=False)
        top = max(heights) if any(heights) else 1
        ax.set_ylim(0, top * 1.22)
    inst = next(iter(a.costs.values())).instance if a.costs else ""
    fig.suptitle(f"At P{a.percentile:g} ≤ {a.budget_ms:g} ms, on {inst}", fontsize=10, y=1.02)
    fig.tight_layout()
    return _svg(fig)


def power_over_time(a: "Analysis") -> str | None:
    """Measured GPU power with each model's load windows shaded; None when nothing was measured."""
    if a.power is None or len(a.power.times_s) < 2:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(WIDE_IN, 3.4))
    t0 = a.power.times_s[0]
    ax.plot([(t - t0) for t in a.power.times_s], a.power.watts, color="#333333", lw=1.5, label=a.power.source)
    seen = set()
    for model, windows in a.windows.items():
        for _, start, end in windows:
            label = f"{model} under load" if model not in seen else None
            seen.add(model)
            ax.axvspan(start - t0, end - t0, color=_color(a, model), alpha=0.15, label=label)
    ax.set_xlabel("seconds since first sample")
    ax.set_ylabel("GPU power (W, all GPUs)")
    ax.set_title("Power over time")
    ax.set_ylim(bottom=0, top=max(a.power.watts) * 1.15)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _svg(fig)
