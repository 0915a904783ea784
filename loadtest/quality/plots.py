"""Quality plots as inline SVG strings (matplotlib's object API: no pyplot state, no display backend).

The report must be one self-contained file, so plots are SVG text embedded in the HTML, with text kept as
text (``svg.fonttype: none``) and no timestamp, so the same results give the same report.
"""

from __future__ import annotations

import io
import math

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from loadtest.quality.slices import OVERALL

TEACHER_COLOR = "#4c72b0"
STUDENT_COLOR = "#dd8452"


def _svg(figure: Figure) -> str:
    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "loadtest"}):
        figure.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    text = buffer.getvalue()
    return text[text.index("<svg") :]


def slice_bars_svg(table: pd.DataFrame, metric: str = "accuracy", slice_names: list[str] | None = None) -> str | None:
    """Teacher vs student bars of one metric per slice value (overall first), with 95 % intervals.

    Slice values below the minimum n are drawn hatched and marked "unstable" — shown, not hidden.
    """
    rows = table[(table["metric"] == metric) & table["model"].isin(["teacher", "student"])]
    if rows.empty:
        return None
    order = [OVERALL] + [s for s in (slice_names or list(dict.fromkeys(rows["slice"]))) if s != OVERALL]
    keys = []
    for name in order:
        for value in dict.fromkeys(rows.loc[rows["slice"] == name, "slice_value"]):
            keys.append((name, value))
    if not keys:
        return None
    height = max(2.5, 0.42 * len(keys) + 1.0)
    figure = Figure(figsize=(7.5, height))
    ax = figure.subplots()
    y = np.arange(len(keys))
    bar = 0.38
    for offset, role, color in ((-bar / 2, "teacher", TEACHER_COLOR), (bar / 2, "student", STUDENT_COLOR)):
        sub = rows[rows["model"] == role].set_index(["slice", "slice_value"])
        values, lows, highs, unstable = [], [], [], []
        for key in keys:
            if key in sub.index:
                r = sub.loc[key]
                v = float(r["value"])
                values.append(v if math.isfinite(v) else 0.0)
                lows.append(v - float(r["ci_low"]) if math.isfinite(float(r["ci_low"])) else 0.0)
                highs.append(float(r["ci_high"]) - v if math.isfinite(float(r["ci_high"])) else 0.0)
                unstable.append(bool(r["unstable"]))
            else:
                values.append(0.0), lows.append(0.0), highs.append(0.0), unstable.append(True)
        bars = ax.barh(y + offset, values, height=bar, color=color, label=role, xerr=[lows, highs], error_kw={"elinewidth": 0.8, "capsize": 2})
        for patch, flag in zip(bars, unstable):
            if flag:
                patch.set_hatch("///")
                patch.set_alpha(0.45)
    student = rows[rows["model"] == "student"].set_index(["slice", "slice_value"])
    labels = []
    for key in keys:
        n = int(student.loc[key, "n"]) if key in student.index else 0
        flag = " ⚠ unstable" if key in student.index and bool(student.loc[key, "unstable"]) else ""
        labels.append(f"{'overall' if key[0] == OVERALL else f'{key[0]}={key[1]}'}  (n={n}){flag}")
    ax.set_yticks(y, labels, fontsize=8)
    ax.invert_yaxis()
    top = pd.to_numeric(rows["ci_high"], errors="coerce").clip(upper=1e9).max()
    ax.set_xlim(0, 1.05 if not (top > 1.0) else 105.0 if top <= 100.0 else 1.05 * top)  # rates 0–1; chrF 0–100
    ax.set_xlabel(f"{metric.replace('_', ' ')} (95 % interval; hatched: below the minimum n)")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(f"{metric.replace('_', ' ')} per slice: teacher vs student", fontsize=10)
    return _svg(figure)


def reliability_svg(reliability: dict, temperatures: dict | None = None) -> str | None:
    """Reliability diagram (15 bins): accuracy against mean confidence per bin, teacher and student.

    The student after temperature scaling is drawn dashed; the diagonal is perfect calibration.
    """
    series = [
        ("teacher", TEACHER_COLOR, "-", "o"),
        ("student", STUDENT_COLOR, "-", "s"),
        ("student_after_temperature", STUDENT_COLOR, "--", "^"),
    ]
    if not any(reliability.get(name) for name, *_ in series):
        return None
    figure = Figure(figsize=(5.2, 4.6))
    ax = figure.subplots()
    ax.plot([0, 1], [0, 1], color="0.6", linewidth=0.8, linestyle=":", label="perfect calibration")
    for name, color, style, marker in series:
        bins = [b for b in reliability.get(name) or [] if b.get("count")]
        if not bins:
            continue
        conf = [b["confidence"] for b in bins]
        acc = [b["accuracy"] for b in bins]
        sizes = [8 + 60 * math.sqrt(b["count"] / max(x["count"] for x in bins)) for b in bins]
        label = name.replace("_", " ")
        if name == "student_after_temperature" and temperatures and temperatures.get("student") is not None:
            label = f"student, T = {temperatures['student']:.2f}"
        ax.plot(conf, acc, color=color, linestyle=style, linewidth=1.2, label=label)
        ax.scatter(conf, acc, s=sizes, color=color, marker=marker, alpha=0.8, zorder=3)
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("mean confidence in bin (max probability)")
    ax.set_ylabel("accuracy in bin")
    ax.set_title("Reliability diagram (15 equal-width bins; marker area ~ count)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    return _svg(figure)


def slice_drop_svg(table: pd.DataFrame, metric: str = "chrf_drop", slice_names: list[str] | None = None,
                   margin: float | None = None) -> str | None:
    """The student's paired drop per slice value (teacher − student), with 95 % intervals, against the overall drop.

    A solid line marks the overall drop and, with ``margin`` (the gate's allowance), a dashed one the most a
    slice may lose: the slices that lose more than the whole set stand out instead of hiding in the mean.
    """
    rows = table[(table["metric"] == metric) & (table["model"] == "student")]
    overall = rows[rows["slice"] == OVERALL]
    rows = rows[rows["slice"] != OVERALL]
    if rows.empty or overall.empty or not math.isfinite(float(overall.iloc[0]["value"])):
        return None
    base = float(overall.iloc[0]["value"])
    order = [s for s in (slice_names or list(dict.fromkeys(rows["slice"]))) if s != OVERALL]
    keyed = rows.set_index(["slice", "slice_value"])
    keys = [(name, value) for name in order for value in dict.fromkeys(rows.loc[rows["slice"] == name, "slice_value"])]
    figure = Figure(figsize=(7.5, max(2.5, 0.3 * len(keys) + 1.2)))
    ax = figure.subplots()
    y = np.arange(len(keys))
    values, lows, highs, colors, labels = [], [], [], [], []
    for key in keys:
        r = keyed.loc[key]
        v = float(r["value"]) if math.isfinite(float(r["value"])) else 0.0
        low, high = float(r["ci_low"]), float(r["ci_high"])
        values.append(v)
        lows.append(v - low if math.isfinite(low) else 0.0)
        highs.append(high - v if math.isfinite(high) else 0.0)
        beyond = margin is not None and v > base + margin
        colors.append("#c0392b" if beyond else STUDENT_COLOR)
        labels.append(f"{key[0]}={key[1]}  (n={int(r['n'])})" + (" ⚠ unstable" if bool(r["unstable"]) else ""))
    bars = ax.barh(y, values, height=0.6, color=colors, xerr=[lows, highs], error_kw={"elinewidth": 0.8, "capsize": 2})
    for patch, key in zip(bars, keys):
        if bool(keyed.loc[key, "unstable"]):
            patch.set_hatch("///")
            patch.set_alpha(0.45)
    ax.axvline(base, color="0.2", linewidth=1.2, label=f"overall drop {base:.1f}")
    if margin is not None:
        ax.axvline(base + margin, color="#c0392b", linewidth=1.0, linestyle="--", label=f"gate: overall + {margin:g}")
    ax.axvline(0, color="0.6", linewidth=0.6)
    ax.set_yticks(y, labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(f"{metric.replace('_', ' ')}: teacher − student, paired (95 % interval; hatched: below the minimum n)")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(f"{metric.replace('_', ' ')} per slice against the overall drop", fontsize=10)
    return _svg(figure)
