"""Synthetic run directories with known ground truth, written in the exact record schema.

A queueing-like latency model per model: a lognormal service time plus an exponential wait whose mean
grows as load approaches the model's capacity; above capacity the backlog grows through the step, so the
step is unstable and misses the budget, as a real saturated server does. Triton metrics snapshots are
written with counters consistent with the records, so the server-side split has a known answer.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

SCHEMA = pa.schema([
    ("intended_start", pa.float64()), ("start", pa.float64()), ("end", pa.float64()),
    ("latency_s", pa.float64()), ("service_time_s", pa.float64()), ("model", pa.string()),
    ("protocol", pa.string()), ("batch_size", pa.int32()), ("tokens", pa.int64()), ("success", pa.bool_()),
    ("error", pa.string()), ("stage", pa.string()), ("loop", pa.string()), ("late", pa.bool_()),
    ("worker", pa.string()), ("scenario", pa.string()),
])


@dataclass
class SynthModel:
    name: str
    capacity_qps: float  # service rate (mean service time = 1 / capacity)
    rates: list[float]  # offered rates of its steps


@dataclass
class Truth:
    """What the generator put in, for assertions."""

    queue_us: dict[tuple[str, str], float] = field(default_factory=dict)  # mean per request, measured part
    infer_us: dict[tuple[str, str], float] = field(default_factory=dict)
    success: dict[str, int] = field(default_factory=dict)
    inferences: dict[str, int] = field(default_factory=dict)
    executions: dict[str, int] = field(default_factory=dict)
    energy_j: dict[str, float] = field(default_factory=dict)  # per model window
    latencies: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)  # (model, stage) after warm-up


def _metrics_text(counters: dict[str, dict[str, float]], power_w: float | None, energy_j: float | None) -> str:
    lines = []
    names = {
        "nv_inference_request_success": "success", "nv_inference_count": "inferences",
        "nv_inference_exec_count": "executions", "nv_inference_queue_duration_us": "queue_us",
        "nv_inference_compute_input_duration_us": "input_us", "nv_inference_compute_infer_duration_us": "infer_us",
        "nv_inference_compute_output_duration_us": "output_us", "nv_inference_request_duration_us": "request_us",
    }
    for metric, key in names.items():
        lines += [f"# HELP {metric} synthetic", f"# TYPE {metric} counter"]
        for model, c in counters.items():
            lines.append(f'{metric}{{model="{model}",version="1"}} {c[key]:.1f}')
    lines += ["# HELP nv_cpu_utilization CPU utilization rate [0.0 - 1.0]", "# TYPE nv_cpu_utilization gauge",
              "nv_cpu_utilization 0.5"]
    if power_w is not None:
        lines += ["# HELP nv_gpu_power_usage GPU power usage in watts", "# TYPE nv_gpu_power_usage gauge",
                  f'nv_gpu_power_usage{{gpu_uuid="GPU-0"}} {power_w:.3f}',
                  "# HELP nv_energy_consumption GPU energy consumption in joules since the Triton Server started",
                  "# TYPE nv_energy_consumption counter", f'nv_energy_consumption{{gpu_uuid="GPU-0"}} {energy_j:.3f}']
    return "\n".join(lines) + "\n"


def write_run(
    run_dir: Path,
    models: list[SynthModel],
    *,
    step_s: float = 10.0,
    warmup_s: float = 1.0,
    seed: int = 0,
    kind: str = "sweep",
    gpu_power: bool = False,
    budget_ms: float | None = None,
    shards: int = 2,
    error_rate: float = 0.0,
    all_fail: bool = False,
    t0: float = 1_700_000_000.0,
) -> Truth:
    """Write records/, metrics/ and manifest.json for sequential per-model steps; returns the ground truth."""
    rng = np.random.default_rng(seed)
    (run_dir / "records").mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics").mkdir(parents=True, exist_ok=True)
    truth = Truth()
    counters = {m.name: dict.fromkeys(
        ("success", "inferences", "executions", "queue_us", "input_us", "infer_us", "output_us", "request_us"), 0.0)
        for m in models}
    energy = 0.0
    idle_w, busy_w = 60.0, 250.0
    t = t0
    stages, rows = [], []
    power_now = idle_w

    def snapshot(time_s: float, label: str) -> None:
        text = _metrics_text(counters, power_now if gpu_power else None, energy if gpu_power else None)
        (run_dir / "metrics" / f"{int(round(time_s * 1000))}-{label}.prom").write_text(text)

    snapshot(t - 0.2, "start")
    for m in models:
        truth.energy_j[m.name] = 0.0
        for i, r in enumerate(m.rates):
            stage = f"{m.name}-step{i:02d}"
            start, end = t, t + step_s
            n = rng.poisson(r * step_s)
            intended = np.sort(rng.uniform(start, end, n))
            # FIFO single server (Lindley): service lognormal with mean 1/capacity
            sigma = 0.3
            service = rng.lognormal(np.log(1 / m.capacity_qps) - sigma**2 / 2, sigma, n)
            ends = np.empty(n)
            free_at = start
            for k in range(n):
                free_at = max(free_at, intended[k]) + service[k]
                ends[k] = free_at
            wait = ends - service - intended
            latency = ends - intended
            rho = r / m.capacity_qps
            success = np.ones(n, bool) if not all_fail else np.zeros(n, bool)
            if error_rate:
                success &= rng.random(n) >= error_rate
            tokens = rng.integers(20, 61, n)
            batch = rng.integers(1, 4, n)
            for k in range(n):
                rows.append((
                    float(intended[k]), float(intended[k] + 1e-4), float(ends[k]), float(latency[k]),
                    float(ends[k] - intended[k] - 1e-4), m.name, "http", int(1), int(tokens[k]), bool(success[k]),
                    None if success[k] else "synthetic failure", stage, "open", False,
                    f"host-{k % shards}", "synthetic",
                ))
            measured = intended >= start + warmup_s
            truth.latencies[(m.name, stage)] = latency[measured & success]

            def count(mask: np.ndarray) -> None:  # Triton sees every request, warm-up included
                c = counters[m.name]
                ok = mask & success
                c["success"] += int(ok.sum())
                c["inferences"] += int(ok.sum()) * 2  # two requests per executed batch on average
                c["executions"] += int(ok.sum())
                c["queue_us"] += float(wait[ok].sum() * 1e6)
                c["infer_us"] += float(service[ok].sum() * 1e6 * 0.8)
                c["input_us"] += float(service[ok].sum() * 1e6 * 0.1)
                c["output_us"] += float(service[ok].sum() * 1e6 * 0.1)
                c["request_us"] += float(latency[ok].sum() * 1e6)

            count(~measured)
            if (measured & success).any():
                truth.queue_us[(m.name, stage)] = float(wait[measured & success].mean() * 1e6)
                truth.infer_us[(m.name, stage)] = float(service[measured & success].mean() * 1e6 * 0.8)
            stages.append({"name": stage, "model": m.name, "start": start, "end": end, "warmup_s": warmup_s,
                           "offered_rate": r, "loop": "open"})
            # energy: power proportional to load, constant within the step
            power_now = idle_w + (busy_w - idle_w) * min(rho, 1.0)
            energy += power_now * warmup_s
            snapshot(start + warmup_s, f"{stage}-measure")
            count(measured)
            energy += power_now * (step_s - warmup_s)
            truth.energy_j[m.name] += power_now * (step_s - warmup_s)
            t = end + 0.5
            snapshot(end + 0.25, f"{stage}-end")
            power_now = idle_w
    table = pa.Table.from_pylist([dict(zip(SCHEMA.names, row)) for row in rows], schema=SCHEMA)
    order = np.argsort(np.array([r[0] for r in rows])) if rows else np.array([], int)
    table = table.take(pa.array(order))
    per = max(1, -(-table.num_rows // shards))
    for s in range(shards):
        part = table.slice(s * per, per)
        pq.write_table(part, run_dir / "records" / f"{os.getpid()}-host{s}-000.parquet")
    for m in models:
        truth.success[m.name] = int(counters[m.name]["success"])
    manifest = {
        "kind": kind, "scenario": "synthetic", "start": t0 - 0.2, "end": t,
        "models": {"teacher": models[0].name, "student": models[1].name if len(models) > 1 else None},
        "stages": stages,
    }
    if budget_ms is not None:
        manifest["sweep"] = {"budget_ms": budget_ms, "percentile": 95.0}
    (run_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return truth


def default_pair() -> list[SynthModel]:
    """Teacher saturating near 100 req/s, student near 250 req/s."""
    return [
        SynthModel("teacher", capacity_qps=100.0, rates=[20, 40, 60, 80, 90, 120]),
        SynthModel("student", capacity_qps=250.0, rates=[50, 100, 150, 200, 225, 300]),
    ]
