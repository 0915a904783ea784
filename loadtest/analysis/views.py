"""The human-facing tables, formatted once and rendered three ways (terminal, Markdown, HTML).

Each view is a title, headers, formatted rows and a caption saying how the figures were obtained, so the
report, the review paste and the terminal always show the same numbers with the same caveats.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from loadtest.analysis import fmt, stats
from loadtest.analysis.metric_registry import METRICS, higher_is_better
from loadtest.analysis.metric_registry import label as metric_label
from loadtest.analysis.records import ALL_STAGES

if TYPE_CHECKING:  # pragma: no cover
    from loadtest.analysis.result import Analysis

# Columns of sentences rather than figures: every renderer wraps them (and aligns them left).
PROSE_HEADERS = frozenset({"Note", "Why not", "Energy source"})

@dataclass
class View:
    """A formatted table: what every renderer draws."""

    key: str
    title: str
    headers: list[str]
    rows: list[list[str]]
    caption: str = ""
    styles: list[list[str]] = field(default_factory=list)  # per cell: "", "good", "bad", "muted"


def _pcell(row: dict, p: float) -> str:
    key = stats.percentile_key(p)
    value = row.get(f"{key}_ms")
    if not fmt.ok(value):
        note = row.get(f"{key}_note") or ""
        if note.startswith("n="):
            need = note.split(">= ")[-1].rstrip(")")
            return f"n/a (n<{need})"
        return fmt.MISSING
    return f"{fmt.ms(value)} {fmt.ci(row.get(f'{key}_ci_low_ms'), row.get(f'{key}_ci_high_ms'))}"


def comparison_view(a: "Analysis") -> View:
    rows, styles = [], []
    estimate = any(c.energy_is_estimate for c in a.costs.values())
    for r in a.comparison.to_dict("records"):
        metric, unit = r["metric"], r["unit"]
        spec = METRICS.get(metric)
        label = spec.label if spec else metric
        if spec is not None and spec.estimate_when_energy_estimated and estimate:
            label += " (estimate)"
        shown_unit = {"fraction": "%", "count": ""}.get(unit, unit)
        ratio, saving = r["student_over_teacher"], r["saving_pct"]
        style, word = "", fmt.MISSING
        direction = higher_is_better(metric)
        if fmt.ok(ratio) and direction is not None:  # a descriptive figure is neither better nor worse
            word = "same"
            if ratio != 1:
                better = (ratio > 1) == direction
                style, word = ("good", "better") if better else ("bad", "worse")
        rows.append(
            [label, shown_unit, fmt.by_unit(r["teacher"], unit), fmt.by_unit(r["student"], unit),
             f"{ratio:.3f}×" if fmt.ok(ratio) else fmt.MISSING, fmt.pct(saving), word]
        )
        styles.append(["", "muted", "", "", style, style, style])
    refs = "; ".join(f"{a.role(m)}: {r.description}" for m, r in a.references.items())
    seqs = {f.flops_sequence_length for f in a.footprints.values() if f.flops_sequence_length}
    flops = (f"FLOPs counted from the exported graph at batch 1 and {', '.join(map(str, sorted(seqs)))} tokens (the "
             "run's mean): 2 × multiply-accumulates of MatMul/Gemm/Conv. " if seqs else "")
    caption = (
        f"Saving = 1 − student/teacher (negative for a figure where higher is better and the student is higher). "
        f"Parameters and size from the export manifest; {flops}Peak serving memory: highest resident set of the "
        "model's serving processes (recorded when the server ran on the load generator's machine). "
        f"Latency figures from {refs}. Budget: P{a.percentile:g} ≤ {a.budget_ms:g} ms ({a.budget_source})."
    )
    return View("comparison", "Teacher vs student", ["Figure", "Unit", "Teacher", "Student", "S/T", "Saving", "Student is"], rows, caption, styles)


def latency_view(a: "Analysis") -> View:
    headers = ["Model", "Stage", "Requests", "QPS", "Tokens/s", "P50 ms [95 % CI]", "P90 ms", "P95 ms [95 % CI]",
               "P99 ms [95 % CI]", "P99.9 ms", "Max ms", "Errors", "Late/dropped"]
    rows = []
    for r in a.latency.to_dict("records"):
        late = f"{int(r['late'])}/{int(r['dropped'])}" if fmt.ok(r.get("dropped")) else f"{int(r['late'])}/{fmt.MISSING}"
        p90 = fmt.ms(r.get("p90_ms")) if fmt.ok(r.get("p90_ms")) else _pcell(r, 90)
        p999 = fmt.ms(r.get("p999_ms")) if fmt.ok(r.get("p999_ms")) else _pcell(r, 99.9)
        rows.append(
            [who(r["model"], r["role"]), _stage(r["stage"]),
             f"{int(r['requests']):,}", fmt.num(r["achieved_qps"]), fmt.num(r["tokens_per_s"]), _pcell(r, 50), p90,
             _pcell(r, 95), _pcell(r, 99), p999, fmt.ms(r["max_ms"]), fmt.rate(r["error_rate"]), late]
        )
    loops = set(",".join(a.latency["loop"].astype(str)).split(",")) if len(a.latency) else set()
    measured_from = "; ".join(
        text for loop, text in (("open", "open loop: from the intended send time"),
                                ("closed", "closed loop: from the actual send")) if loop in loops
    ) or "from the send time"
    caption = (
        f"Client latency ({measured_from}). Percentiles: numpy '{stats.PERCENTILE_METHOD}' on "
        "raw latencies; 95 % CIs from order statistics (scipy.stats.quantile_test); 'n/a' where too few requests "
        "for a CI. QPS = successful requests / window after warm-up."
    )
    return View("latency", "Latency per model and stage", headers, rows, caption)


def who(model: str, role: str) -> str:
    """'teacher', or 'bert-base (teacher)' when the model's name is not its role."""
    return model if role in (model, "other") else f"{model} ({role})"


def _stage(stage: str) -> str:
    return "whole run" if stage == ALL_STAGES else stage


def server_view(a: "Analysis") -> View:
    headers = ["Model", "Stage", "Client mean ms", "Triton request ms", "Queue ms", "Compute input ms",
               "Compute infer ms", "Compute output ms", "Mean executed batch", "Triton requests"]
    rows = []
    for r in a.latency.to_dict("records"):
        rows.append(
            [r["model"], _stage(r["stage"]), fmt.ms(r["mean_ms"]), fmt.ms(r["server_request_ms"]),
             fmt.ms(r["server_queue_ms"]), fmt.ms(r["server_compute_input_ms"]), fmt.ms(r["server_compute_infer_ms"]),
             fmt.ms(r["server_compute_output_ms"]), fmt.num(r["mean_batch_size"]),
             f"{int(r['server_requests']):,}" if fmt.ok(r["server_requests"]) else fmt.MISSING]
        )
    caption = (
        "Triton's averages per request from counter deltas over each window (nv_inference_*_duration_us / "
        "nv_inference_request_success); mean executed batch = Δnv_inference_count / Δnv_inference_exec_count. "
        "The gap between client mean and Triton request time is network, serialization and client overhead."
    )
    return View("server", "Client vs Triton server-side split", headers, rows, caption)


def capacity_view(a: "Analysis") -> View:
    headers = ["Model", f"QPS at P{a.percentile:g} ≤ {a.budget_ms:g} ms", "Tokens/s at budget",
               f"P{a.percentile:g} there (ms)", "Known within", "Steps counted", "Note"]
    rows = []
    for m, c in a.capacity.items():
        within = (
            f"{fmt.num(c.load_low)}–{fmt.num(c.load_high)} {c.load_unit}" if c.load_high is not None and c.known
            else (f"≥ {fmt.num(c.load_low)} {c.load_unit}" if c.known else fmt.MISSING)
        )
        rows.append([who(m, a.role(m)), fmt.num(c.qps_at_budget), fmt.num(c.tokens_per_s_at_budget),
                     fmt.ms(c.latency_at_budget_ms), within, f"{c.steps_counted}/{c.steps_total}", c.note])
    r = a.rules
    caption = (
        f"Highest achieved QPS among counted steps with P{a.percentile:g} within budget. A step counts with ≥ "
        f"{r.min_duration_s:g} s and ≥ {r.effective_min_requests(a.percentile)} requests after warm-up, errors ≤ "
        f"{r.max_error_rate:.0%}, ≥ {r.min_achieved_ratio:.0%} of the sends scheduled in the window answered in it (open "
        f"loop) and throughput steady across {r.stability_windows} windows (spread ≤ {r.stability_threshold:.0%} or "
        f"within Poisson noise). It is within budget when its P{a.percentile:g} is, and its latency is not drifting "
        f"upward past the budget (rising each window, by > {r.stability_threshold:.0%} overall and beyond its CI, to "
        "a last window beyond the budget)."
    )
    return View("capacity", "Capacity at the latency budget", headers, rows, caption)


def cost_view(a: "Analysis") -> View:
    headers = ["Model", "Instance", "$/hour", "$ per 1M tokens", "$ per 1k requests", "Energy per 1M tokens",
               "CO2e per 1M tokens", "Energy source"]
    rows = []
    for m, c in a.costs.items():
        est = " (estimate)" if c.energy_is_estimate else ""
        energy = f"{fmt.num(c.energy_per_1m_tokens_j)} J{est}" if fmt.ok(c.energy_per_1m_tokens_j) else fmt.MISSING
        co2 = f"{fmt.num(c.co2e_g_per_1m_tokens)} g{est}" if fmt.ok(c.co2e_g_per_1m_tokens) else fmt.MISSING
        accel = f"{c.accelerators}× {c.accelerator}" if c.accelerators else "CPU only"
        rows.append([who(m, a.role(m)), f"{c.instance} ({accel})", fmt.usd(c.usd_per_hour),
                     fmt.usd(c.cost_per_1m_tokens_usd), fmt.usd(c.cost_per_1k_requests_usd), energy, co2, c.energy_method])
    book = a.cost_book
    caption = (
        f"Prices: {book.basis} ({book.currency}), from the cost file — inputs, not measurements. "
        "Cost per 1M tokens = $/hour ÷ (tokens/s at budget × 3600) × 10⁶; per 1k requests likewise with QPS. "
        "Energy per 1M tokens = measured energy over the window (a sweep's at-budget step, else the whole run) / tokens "
        "answered in it × 10⁶; with a declared wattage (estimate): W ÷ tokens/s at budget × 10⁶. "
        f"CO2e at {a.grid_g_per_kwh:g} g/kWh."
    )
    return View("cost", "Cost, energy and carbon", headers, rows, caption)


def steps_view(a: "Analysis") -> View:
    headers = ["Model", "Step", "Load", "Achieved QPS", f"P{a.percentile:g} ms [95 % CI]", "Errors", "Counts",
               "Within budget", "Why not"]
    from loadtest.sweep.host import speed_note

    host = any(s.others_share is not None for s in a.steps)
    if host:
        headers[-1:-1] = ["Others' CPU", "Machine speed"]
    rows, styles = [], []
    for s in a.steps:
        load = f"{s.offered_rate:g}/s" if s.offered_rate else (f"{s.users} users" if s.users else fmt.MISSING)
        within = s.within(a.budget_ms)
        row = [s.model, s.stage, load, fmt.num(s.achieved_qps),
               f"{fmt.ms(s.latency_ms)} {fmt.ci(s.ci_low_ms, s.ci_high_ms)}", fmt.rate(s.error_rate),
               "yes" if s.counted else "no", "yes" if within else "no", s.why_not_within(a.budget_ms)]
        style = ["", "", "", "", "", "", "" if s.counted else "muted", "good" if within else "bad", "muted"]
        if host:
            row[-1:-1] = [fmt.rate(s.others_share) if s.others_share is not None else fmt.MISSING,
                          f"{s.host_speed:.2f}×" if s.host_speed is not None else fmt.MISSING]
            style[-1:-1] = ["muted", "bad" if speed_note(s.host_speed) else "muted"]
        rows.append(row)
        styles.append(style)
    caption = "Each stage of each model, judged by the step rules above."
    if host:
        caption += (" Others' CPU: the share of this machine's CPU that processes other than the load generator and a "
                    "local server took during the step (a failing step above the sweep's --host-busy-share was measured again). "
                    "Machine speed: a fixed single-threaded workload's speed just before the step, relative to the "
                    "sweep's first step; a virtual machine can slow down with nothing visible in its own CPU figures.")
    return View("steps", "Steps", headers, rows, caption, styles)


def significance_line(a: "Analysis") -> str:
    d = a.difference
    if d is None:
        return "P95 difference: not tested (needs both teacher and student)."
    if not math.isfinite(d.difference_s):
        return f"P95 difference: {d.verdict}."
    return (
        f"P95 student − teacher = {d.difference_s * 1000:+.3g} ms, bootstrap 95 % CI [{d.ci_low_s * 1000:+.3g}, "
        f"{d.ci_high_s * 1000:+.3g}] ms ({d.resamples:,} seeded resamples within each model, of all "
        f"{d.n_student:,} student and {d.n_teacher:,} teacher requests: no subsample); noise threshold "
        f"±{d.noise_threshold_s * 1000:.3g} ms (1 % of the teacher's P95): "
        f"{'significant, student ' + d.verdict if d.significant else d.verdict}."
    )


def baseline_view(a: "Analysis") -> View | None:
    if a.baseline is None:
        return None
    rows, styles = [], []
    for r in a.baseline.deltas.to_dict("records"):
        if not (fmt.ok(r["baseline"]) or fmt.ok(r["current"])):
            continue
        ch = r["change_pct"]
        style = ""
        direction = higher_is_better(r["metric"])
        if fmt.ok(ch) and ch != 0 and direction is not None:
            style = "good" if (ch > 0) == direction else "bad"
        rows.append([r["role"], metric_label(r["metric"]), fmt.by_unit(r["baseline"], r["unit"]),
                     fmt.by_unit(r["current"], r["unit"]), fmt.pct(ch)])
        styles.append(["", "", "", "", style])
    tests = "; ".join(
        f"{role} P95 {d.difference_s * 1000:+.3g} ms [{d.ci_low_s * 1000:+.3g}, {d.ci_high_s * 1000:+.3g}]: "
        f"{'significant (' + d.verdict + ')' if d.significant else d.verdict}"
        for role, d in a.baseline.p95_changes.items() if math.isfinite(d.difference_s)
    )
    caption = f"Baseline: {a.baseline.baseline_dir}. Change = current / baseline − 1. {tests}"
    return View("baseline", "Version over version (vs baseline)", ["Role", "Figure", "Baseline", "Current", "Change"],
                rows, caption, styles)


def all_views(a: "Analysis") -> list[View]:
    views = [comparison_view(a), capacity_view(a), cost_view(a), latency_view(a), server_view(a), steps_view(a)]
    base = baseline_view(a)
    if base is not None:
        views.insert(1, base)
    return views
