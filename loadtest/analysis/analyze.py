"""`analyze_run`: one run directory in, every table, the comparison and report.html out.

This is the orchestration only; each figure's definition lives in its own module (stats, capacity,
server_metrics, costs, footprint, metric_registry, verdict). The result is a typed ``Analysis``
(``loadtest.analysis.result``) that the terminal renderer, the Markdown summary and the HTML report all
read, so the three can never disagree; they import the result type, never this orchestrator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from loadtest.analysis import server_metrics as sm
from loadtest.analysis import stats
from loadtest.analysis.capacity import Capacity, StepResult, StepRules, capacity_at_budget, run_steps
from loadtest.analysis.costs import DEFAULT_GRID_G_PER_KWH, CostBook, CostFigures, cost_figures, load_cost_book
from loadtest.analysis.footprint import Footprint, footprints
from loadtest.analysis.metric_registry import METRICS
from loadtest.analysis.records import ALL_STAGES, RunData, completed_within, distinct, load_run, stage_frames, window_of
from loadtest.analysis.result import Analysis, BaselineComparison, Reference
from loadtest.analysis.verdict import verdict
from loadtest.errors import LoadtestError

DEFAULT_BUDGET_MS = 100.0


# ----------------------------------------------------------------------------------------------------
# latency table


@dataclass(frozen=True)
class StageWindow:
    """One model's records in one stage after warm-up, its measurement window and what completed in it."""

    stage: str
    window: tuple[float, float]
    frame: pd.DataFrame = field(repr=False)
    in_window: np.ndarray = field(repr=False)  # successful and answered by the window's end (throughput)
    loops: tuple[str, ...] = ()  # "open" and/or "closed"


def _latency_row(
    run: RunData, model: str, stage: str, parts: list[StageWindow], window_s: float, snaps: list[sm.Snapshot],
    windows: list[tuple[float, float]], percentile: float,
) -> dict[str, Any]:
    lat = _sorted_latencies(run, model, parts)
    tokens_done = sum(float(p.frame["tokens"].to_numpy()[p.in_window].sum()) for p in parts)
    done = sum(int(p.in_window.sum()) for p in parts)
    requests = sum(len(p.frame) for p in parts)
    loops = sorted({v for p in parts for v in p.loops})
    row: dict[str, Any] = {
        "model": model,
        "role": run.role(model),
        "stage": stage,
        "loop": ",".join(loops),
        "window_s": window_s,
        "requests": requests,
        "successes": int(lat.size),
        "errors": requests - int(lat.size),
        "error_rate": (requests - lat.size) / requests if requests else math.nan,
        "late": int(sum(int(p.frame["late"].to_numpy().sum()) for p in parts)),
        "dropped": _dropped(run, model, stage),
        "achieved_qps": done / window_s if window_s > 0 else math.nan,
        "tokens_per_s": tokens_done / window_s if window_s > 0 else math.nan,
        "mean_ms": float(lat.mean() * 1000) if lat.size else math.nan,
    }
    ests = stats.estimates(lat, tuple(sorted(set(stats.REPORTED_PERCENTILES) | {percentile})), presorted=True)
    for p, est in ests.items():
        key = stats.percentile_key(p)
        row[f"{key}_ms"] = est.value * 1000 if est.ci_ok else math.nan
        row[f"{key}_ci_low_ms"] = est.ci_low * 1000 if est.ci_ok else math.nan
        row[f"{key}_ci_high_ms"] = est.ci_high * 1000 if est.ci_ok else math.nan
        row[f"{key}_note"] = est.note
    row["max_ms"] = float(lat[-1] * 1000) if lat.size else math.nan
    # server side: sum the counter deltas over the windows this row covers
    splits = [sm.server_split(snaps, model, a, b, tight=stage != ALL_STAGES) for a, b in windows]
    if stage == ALL_STAGES and len(windows) > 1:
        whole = (min(a for a, _ in windows), max(b for _, b in windows))
        splits = [sm.server_split(snaps, model, *whole, tight=False)]
    splits = [s for s in splits if s is not None]
    n = sum(s.requests for s in splits)
    row["server_requests"] = n if splits else math.nan
    for key in ("queue_ms", "compute_input_ms", "compute_infer_ms", "compute_output_ms", "request_ms"):
        vals = [(getattr(s, key), s.requests) for s in splits if getattr(s, key) is not None]
        row[f"server_{key}"] = sum(v * w for v, w in vals) / sum(w for _, w in vals) if vals else math.nan
    batches = [(s.mean_batch_size, s.requests) for s in splits if s.mean_batch_size is not None]
    row["mean_batch_size"] = sum(v * w for v, w in batches) / sum(w for _, w in batches) if batches else math.nan
    return row


def _sorted_latencies(run: RunData, model: str, parts: list[StageWindow]) -> np.ndarray:
    """Successful requests' latencies over some stages, sorted once (the latency row and the reference share it)."""
    cache = run.cache.setdefault("sorted_latencies", {})
    key = (model, tuple(p.stage for p in parts))
    if key not in cache:
        lat = np.concatenate([p.frame["latency_s"].to_numpy()[p.frame["success"].to_numpy()] for p in parts])
        lat.sort()
        cache[key] = lat
    return cache[key]


def _dropped(run: RunData, model: str, stage: str) -> float:
    if not run.dropped and "dropped" not in run.manifest:  # not recorded, which is not zero
        return math.nan
    if stage == ALL_STAGES:
        return float(sum(n for (m, _), n in run.dropped.items() if m == model))
    return float(run.dropped.get((model, stage), 0))


def _model_windows(run: RunData, model: str) -> list[StageWindow]:
    """The model's stages in the order they ran (computed once per run: every table reads them)."""
    cache = run.cache.setdefault("model_windows", {})
    if model not in cache:
        out = []
        for (m, stage), frame in stage_frames(run).items():
            if m != model:
                continue
            window = window_of(frame, run.stages.get(stage))
            out.append(StageWindow(stage, window, frame, completed_within(frame, window[1]).to_numpy(),
                                   tuple(distinct(frame["loop"]))))
        out.sort(key=lambda part: part.window[0])
        cache[model] = out
    return cache[model]


def latency_table(run: RunData, snaps: list[sm.Snapshot], percentile: float) -> pd.DataFrame:
    rows = []
    for model in run.models:
        parts = _model_windows(run, model)
        for part in parts:
            (a, b) = part.window
            rows.append(_latency_row(run, model, part.stage, [part], b - a, snaps, [(a, b)], percentile))
        if len(parts) > 1:
            total = sum(p.window[1] - p.window[0] for p in parts)
            rows.append(_latency_row(run, model, ALL_STAGES, parts, total, snaps, [p.window for p in parts], percentile))
        elif parts:
            row = dict(rows[-1])
            row["stage"] = ALL_STAGES
            rows.append(row)
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------------
# comparison

def figures_for(model: str | None, ref_row: dict | None, cap: Capacity | None, cost: CostFigures | None,
                footprint: Footprint | None = None) -> dict[str, float]:
    """Every comparison figure of one model (nan where not measured)."""
    out: dict[str, float] = {name: math.nan for name in METRICS}
    if model is None:
        return out
    for name, metric in METRICS.items():
        if metric.source == "latency":
            value = ref_row.get(name) if ref_row else None
        else:
            source = {"capacity": cap, "cost": cost, "footprint": footprint}[metric.source]
            value = getattr(source, name, None) if source is not None else None
        if value is not None:
            out[name] = float(value)
    return out


def comparison_table(teacher: dict[str, float], student: dict[str, float]) -> pd.DataFrame:
    """``metric, unit, teacher, student, student_over_teacher, saving_pct`` (saving = 1 - S/T, in %)."""
    rows = []
    for metric, spec in METRICS.items():
        unit = spec.unit
        t, s = teacher.get(metric, math.nan), student.get(metric, math.nan)
        ratio = s / t if math.isfinite(t) and math.isfinite(s) and t != 0 else math.nan
        rows.append(
            {"metric": metric, "unit": unit, "teacher": t, "student": s, "student_over_teacher": ratio,
             "saving_pct": (1 - ratio) * 100 if math.isfinite(ratio) else math.nan}
        )
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------------
# orchestration


def _rules_and_budget(run: RunData, budget_ms: float | None, percentile: float | None) -> tuple[StepRules, float, str, float]:
    sweep = run.manifest.get("sweep") if isinstance(run.manifest.get("sweep"), dict) else {}
    rules = StepRules.model_validate(sweep.get("rules", {})) if sweep.get("rules") else StepRules()
    if budget_ms is not None:
        if not budget_ms > 0:
            raise LoadtestError(f"--budget-ms must be > 0 (got {budget_ms:g})")
        budget, source = float(budget_ms), "given"
    elif isinstance(sweep.get("budget_ms"), (int, float)):
        budget, source = float(sweep["budget_ms"]), "the sweep's budget"
    else:
        budget, source = DEFAULT_BUDGET_MS, "default: no --budget-ms given"
    pct = float(percentile) if percentile is not None else float(sweep.get("percentile", 95.0))
    if not 0 < pct < 100:
        raise LoadtestError(f"--percentile must be between 0 and 100 (got {pct:g})")
    return rules, budget, source, pct


def _reference(run: RunData, model: str, latency: pd.DataFrame, stage: str, desc: str, basis: str) -> tuple[Reference, dict]:
    """The latency row and raw successful latencies (sorted) of one model over its reference stage."""
    rows = latency[latency["model"] == model]
    row = rows[rows["stage"] == stage].iloc[0].to_dict()
    parts = [p for p in _model_windows(run, model) if stage == ALL_STAGES or p.stage == stage]
    return Reference(model, stage, desc, _sorted_latencies(run, model, parts), basis), row


def _with_host_notes(steps: list[StepResult], manifest: dict) -> list[StepResult]:
    """A sweep measured who else used the machine during each step, and its speed before it: keep them with the step."""
    from dataclasses import replace

    seen = {}
    for summary in ((manifest.get("sweep") or {}).get("results") or {}).values():
        for row in (summary or {}).get("step_results") or []:
            if isinstance(row, dict) and row.get("others_share") is not None:
                seen[(row.get("model"), row.get("stage"))] = {
                    "others_share": row["others_share"], "host_note": row.get("host_note") or "",
                    "host_speed": row.get("host_speed"),
                }
    if not seen:
        return steps
    return [replace(s, **seen[(s.model, s.stage)]) if (s.model, s.stage) in seen else s for s in steps]


def _at_budget_step(steps: list[StepResult], model: str, cap: Capacity | None) -> StepResult | None:
    if cap is None or not cap.known:
        return None
    return next((s for s in steps if s.model == model and s.counted and s.achieved_qps == cap.qps_at_budget), None)


def _reference_stages(run: RunData, steps: list[StepResult], capacity: dict[str, Capacity], budget_ms: float,
                      is_sweep: bool) -> dict[str, tuple[str, str, str]]:
    """model -> (stage, description, basis) the latency comparison uses.

    A plain run compares each model's whole run (same load shape for both). A sweep compares at a *matched*
    load: the highest offered load both models ran as counted steps with the teacher within budget (the
    sweep's coarse steps are the same for both), so a P95 difference is not just a difference in load.
    """
    out = {m: (ALL_STAGES, "whole run after warm-up", "whole run") for m in run.models}
    if not is_sweep:
        return out
    t, s = run.teacher, run.student
    if t in run.models and s in run.models:
        t_steps = [x for x in steps if x.model == t and x.counted]
        s_steps = [x for x in steps if x.model == s and x.counted]
        pairs = [(a, b) for a in t_steps for b in s_steps if abs(a.load - b.load) <= 0.01 * max(a.load, b.load)]
        passing = [(a, b) for a, b in pairs if a.latency_ms <= budget_ms] or pairs
        if passing:
            a, b = max(passing, key=lambda pair: pair[0].load)
            unit = capacity[t].load_unit
            out[t] = (a.stage, f"matched load {a.load:g} {unit} (step {a.stage})", "matched load")
            out[s] = (b.stage, f"matched load {b.load:g} {unit} (step {b.stage})", "matched load")
            return out
    for m in run.models:
        best = _at_budget_step(steps, m, capacity.get(m))
        if best is not None:
            out[m] = (best.stage, f"its at-budget step {best.stage} ({best.load:g} {capacity[m].load_unit})", "at budget")
    return out


def _energy(run: RunData, model: str, ref_stage: str, snaps: list[sm.Snapshot], inst, gpu: bool,
            cap: Capacity | None) -> tuple:
    """(joules, window_s, tokens, method, estimate) for energy per token.

    Measured GPU energy is taken over the model's window (a sweep's at-budget step, else the whole run), and
    only when no other model was under load at the same time (it could not be attributed). A declared
    wattage (CPU-only) is the whole machine's draw, like its price: at the budget it gives
    W x 1 s / tokens-per-second-at-budget, the energy counterpart of cost per token, attributable to each
    model even when both ran together.
    """
    parts = [p for p in _model_windows(run, model) if ref_stage == ALL_STAGES or p.stage == ref_stage]
    if not parts:
        return None, None, None, "no records", False
    windows = [p.window for p in parts]
    tokens = float(sum(p.frame["tokens"].to_numpy()[p.in_window].sum() for p in parts))
    window_s = sum(b - a for a, b in windows)
    if not gpu and inst.declared_power_w:
        label = f"declared {inst.declared_power_w:g} W (estimate)"
        if cap is not None and cap.tokens_per_s_at_budget:
            return inst.declared_power_w, 1.0, cap.tokens_per_s_at_budget, label + " at the budget's tokens/s", True
    others = [p.window for m in run.models if m != model for p in _model_windows(run, m)]
    overlap = sum(max(0.0, min(b, d) - max(a, c)) for a, b in windows for c, d in others)
    if overlap > 0.05 * window_s:
        return None, window_s, tokens, "not attributable: another model was under load at the same time", False
    if gpu:
        measured = [sm.energy(snaps, a, b) for a, b in windows]
        if any(m is None for m in measured):
            return None, window_s, tokens, "GPU power present but no samples bracket the window", False
        return sum(m.joules for m in measured), window_s, tokens, measured[0].method, False
    if inst.declared_power_w:
        return inst.declared_power_w * window_s, window_s, tokens, f"declared {inst.declared_power_w:g} W (estimate)", True
    return None, window_s, tokens, "no power measured and no declared wattage for this instance", False


def compute(
    run_dir: Path,
    *,
    budget_ms: float | None = None,
    percentile: float | None = None,
    cost_file: Path | None = None,
    instance: str | None = None,
    prometheus_url: str | None = None,
    grid_g_per_kwh: float = DEFAULT_GRID_G_PER_KWH,
    rules: StepRules | None = None,
    bootstrap_resamples: int = 10_000,
) -> Analysis:
    """All figures of a run, without writing anything."""
    run = load_run(run_dir)
    book = load_cost_book(cost_file)
    inst = book.instance(instance)
    if not grid_g_per_kwh >= 0:
        raise LoadtestError(f"--grid-g-per-kwh must be >= 0 (got {grid_g_per_kwh:g})")
    manifest_rules, budget, budget_source, pct = _rules_and_budget(run, budget_ms, percentile)
    rules = rules or manifest_rules
    notes = list(run.notes)
    snaps, snap_notes = sm.read_snapshots(run.run_dir)
    notes += snap_notes
    if prometheus_url:
        snaps = sorted(snaps + sm.query_prometheus(prometheus_url, run.start, run.end), key=lambda s: s.time_s)
    if not snaps:
        notes.append("no Triton metrics (no metrics/*.prom snapshots, no --prometheus-url): server-side split left empty")
    gpu = sm.has_gpu_metrics(snaps)

    latency = latency_table(run, snaps, pct)
    steps = _with_host_notes(run_steps(run, rules, pct), run.manifest)
    is_sweep = str(run.manifest.get("kind", "")) == "sweep" or bool(run.manifest.get("sweep"))
    capacity = {m: capacity_at_budget(steps, m, budget, pct) for m in run.models}
    references: dict[str, Reference] = {}
    ref_rows: dict[str, dict] = {}
    costs: dict[str, CostFigures] = {}
    chosen = _reference_stages(run, steps, capacity, budget, is_sweep)
    for m in run.models:
        references[m], ref_rows[m] = _reference(run, m, latency, *chosen[m])
        best = _at_budget_step(steps, m, capacity[m]) if is_sweep else None
        energy_stage = best.stage if best is not None else ALL_STAGES
        joules, window_s, tokens, method, estimate = _energy(run, m, energy_stage, snaps, inst, gpu, capacity[m])
        if best is not None and "budget" not in method:
            method += f" (at-budget step {best.stage})"
        cap = capacity[m]
        costs[m] = cost_figures(
            m, inst, book.basis, qps_at_budget=cap.qps_at_budget, tokens_per_s_at_budget=cap.tokens_per_s_at_budget,
            energy_j=joules, energy_window_s=window_s, tokens_in_window=tokens, energy_method=method,
            energy_is_estimate=estimate, grid_g_per_kwh=grid_g_per_kwh,
        )
    if gpu and inst.accelerators == 0:
        notes.append(f"the run has GPU power metrics but instance {inst.name} has no accelerator: pass --instance")
    t, s = run.teacher, run.student
    mean_tokens = {m: sum(float(p.frame["tokens"].sum()) for p in parts) / sum(len(p.frame) for p in parts)
                   for m in run.models if (parts := _model_windows(run, m))}
    prints = footprints(run.models, run.manifest, run.run_dir, run.records, mean_tokens)
    notes += [f"footprint of {m}: {f.notes}" for m, f in prints.items() if f.notes and m in (t, s)]
    t_fig = figures_for(t if t in run.models else None, ref_rows.get(t), capacity.get(t), costs.get(t), prints.get(t))
    s_fig = figures_for(s if s in run.models else None, ref_rows.get(s), capacity.get(s), costs.get(s), prints.get(s))
    comparison = comparison_table(t_fig, s_fig)
    difference = None
    if t in references and s in references:
        difference = stats.percentile_difference(
            references[s].latencies_s, references[t].latencies_s, p=95.0, resamples=bootstrap_resamples
        )
    summary = verdict(teacher=t, student=s, models=run.models, percentile=pct, budget_ms=budget, comparison=comparison,
                      capacity=capacity, costs=costs, difference=difference, references=references)  # fmt: skip
    return Analysis(
        run_dir=run.run_dir, run_id=run.run_dir.name, kind=str(run.manifest.get("kind", "run")),
        teacher=t, student=s, models=run.models, budget_ms=budget, budget_source=budget_source, percentile=pct,
        rules=rules, latency=latency, steps=steps, capacity=capacity, costs=costs, cost_book=book,
        comparison=comparison, difference=difference, references=references, power=sm.power_series(snaps),
        footprints=prints,
        grid_g_per_kwh=grid_g_per_kwh, verdict=summary, notes=notes, manifest=run.manifest,
        windows={m: [(p.stage, *p.window) for p in _model_windows(run, m)] for m in run.models},
    )


def compare_with_baseline(current: Analysis, baseline: Analysis) -> BaselineComparison:
    """Per role, every comparison figure of the baseline run next to this run's, and the change in %."""
    rows = []
    changes: dict[str, stats.DifferenceTest] = {}
    for role in ("teacher", "student"):
        for metric, spec in METRICS.items():
            unit = spec.unit
            b = baseline.comparison.set_index("metric").at[metric, role]
            c = current.comparison.set_index("metric").at[metric, role]
            change = (c / b - 1) * 100 if math.isfinite(b) and math.isfinite(c) and b != 0 else math.nan
            rows.append({"role": role, "metric": metric, "unit": unit, "baseline": b, "current": c, "change_pct": change})
        cur_model = current.teacher if role == "teacher" else current.student
        base_model = baseline.teacher if role == "teacher" else baseline.student
        if cur_model in current.references and base_model in baseline.references:
            changes[role] = stats.percentile_difference(
                current.references[cur_model].latencies_s, baseline.references[base_model].latencies_s, p=95.0
            )
    return BaselineComparison(baseline.run_dir, pd.DataFrame(rows), changes)


def analyze_run(
    run_dir: Path,
    *,
    budget_ms: float | None = None,
    percentile: float | None = 95.0,
    cost_file: Path | None = None,
    instance: str | None = None,
    baseline: Path | None = None,
    prometheus_url: str | None = None,
    grid_g_per_kwh: float = DEFAULT_GRID_G_PER_KWH,
) -> Analysis:
    """Analyze a run directory: writes ``tables/*.csv|parquet``, ``tables/summary.md`` and ``report.html``."""
    from loadtest.analysis.outputs import write_outputs

    run_dir = Path(run_dir)
    analysis = compute(
        run_dir, budget_ms=budget_ms, percentile=percentile, cost_file=cost_file, instance=instance,
        prometheus_url=prometheus_url, grid_g_per_kwh=grid_g_per_kwh,
    )
    if baseline is not None:
        base = compute(
            Path(baseline), budget_ms=analysis.budget_ms, percentile=analysis.percentile, cost_file=cost_file,
            instance=instance, grid_g_per_kwh=grid_g_per_kwh,
        )
        analysis.baseline = compare_with_baseline(analysis, base)
    from loadtest.analysis.reconcile import reconcile

    analysis.notes.insert(0, reconcile(run_dir).line())  # every summary and report.html says what adds up
    write_outputs(analysis)
    return analysis
