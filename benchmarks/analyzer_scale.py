"""Analyzer scale: wall time and peak memory of `loadtest analyze` on 1M, 3M and 10M records.

Writes synthetic run directories in the real record schema (two models, teacher and student, five open-loop
stages, four load-generator processes, record shards as the writer makes them, Triton metrics snapshots at
the stage boundaries), then runs the whole analysis -- every table, comparison.csv and report.html -- once
per size in a fresh child process and reads that child's wall time and peak resident memory (``wait4``).
Prints one line per size and the growth ratios (time per record relative to the smallest size).

    python benchmarks/analyzer_scale.py                      # 1M, 3M, 10M
    python benchmarks/analyzer_scale.py --sizes 1e6 --keep   # one size, keep the run directory

Nothing is asserted: the figures are what this machine measured while it ran.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

STAGES = 5
WORKERS = 4
MODELS = {"teacher": (0.030, 0.35), "student": (0.012, 0.35)}  # lognormal median latency (s), sigma


def _schema() -> pa.Schema:
    from loadtest.rundir import SCHEMA

    return SCHEMA


def write_synthetic_run(run_dir: Path, n_records: int, *, shard_rows: int, seed: int = 0) -> dict:
    """A plain two-model run of ``n_records`` requests in the record schema; returns what it wrote."""
    schema = _schema()
    rng = np.random.default_rng(seed)
    (run_dir / "records").mkdir(parents=True)
    (run_dir / "metrics").mkdir()
    t0 = 1_750_000_000.0
    per_model_stage = n_records // (len(MODELS) * STAGES)
    rates = [250.0 * (i + 1) for i in range(STAGES)]  # per model; the stage lasts per_model_stage / rate
    stages, snaps, shard_no = [], [], 0
    counters = {m: dict.fromkeys(("success", "count", "exec", "queue", "input", "infer", "output", "request"), 0.0)
                for m in MODELS}
    start = t0
    _snapshot(run_dir, start, counters)
    for i, rate in enumerate(rates):
        name = f"step-{i + 1}"
        length = per_model_stage / rate
        stages.append({"name": name, "start": start, "end": start + length, "warmup_s": 1.0, "offered_rate": rate,
                       "loop": "open"})
        for model, (median, sigma) in MODELS.items():
            n = per_model_stage
            intended = start + np.sort(rng.uniform(0, length, n))
            delay = rng.exponential(0.0002, n)
            sent = intended + delay
            service = rng.lognormal(np.log(median * (1 + 0.1 * i)), sigma, n)
            end = sent + service
            success = rng.random(n) > 0.001
            tokens = rng.integers(16, 128, n)
            worker = rng.integers(0, WORKERS, n)
            for w in range(WORKERS):
                idx = np.flatnonzero(worker == w)
                for lo in range(0, idx.size, shard_rows):
                    part = idx[lo:lo + shard_rows]
                    m = part.size
                    base = {
                        "intended_start": intended[part], "start": sent[part], "end": end[part],
                        "latency_s": end[part] - intended[part], "service_time_s": service[part],
                        "model": np.full(m, model, dtype=object), "protocol": np.full(m, "http", dtype=object),
                        "batch_size": np.ones(m, dtype=np.int32), "tokens": tokens[part], "success": success[part],
                        "error": np.where(success[part], None, "HTTP 500: synthetic failure"),
                        "stage": np.full(m, name, dtype=object), "loop": np.full(m, "open", dtype=object),
                        "late": delay[part] > 0.001, "worker": np.full(m, f"bench-{w}", dtype=object),
                        "scenario": np.full(m, "TritonUser", dtype=object),
                    }  # columns the schema has beyond these (generative ones) are null, as for a classifier
                    table = pa.Table.from_arrays(
                        [pa.array(base[f.name], f.type) if f.name in base else pa.nulls(m, f.type) for f in schema],
                        schema=schema)
                    shard_no += 1
                    pq.write_table(table, run_dir / "records" / f"bench-{w}-{shard_no:06d}.parquet", compression="zstd")
            c = counters[model]
            ok = float(success.sum())
            c["success"] += ok
            c["count"] += ok
            c["exec"] += ok / 2
            c["queue"] += ok * 1000
            c["input"] += ok * 50
            c["infer"] += float(service[success].sum() * 1e6 * 0.8)
            c["output"] += ok * 20
            c["request"] += float(service[success].sum() * 1e6 * 0.9)
        start += length
        _snapshot(run_dir, start, counters)
        snaps.append(start)
    manifest = {"kind": "run", "start": t0, "end": start, "models": {"teacher": "teacher", "student": "student"},
                "stages": stages, "dropped": {m: {s["name"]: 0 for s in stages} for m in MODELS},
                "scenario": {"shape": "benchmark"}}
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    return {"records": per_model_stage * len(MODELS) * STAGES, "shards": shard_no}


def _snapshot(run_dir: Path, when: float, counters: dict) -> None:
    names = {"nv_inference_request_success": "success", "nv_inference_count": "count",
             "nv_inference_exec_count": "exec", "nv_inference_queue_duration_us": "queue",
             "nv_inference_compute_input_duration_us": "input", "nv_inference_compute_infer_duration_us": "infer",
             "nv_inference_compute_output_duration_us": "output", "nv_inference_request_duration_us": "request"}
    lines = []
    for metric, key in names.items():
        lines += [f"# HELP {metric} synthetic", f"# TYPE {metric} counter"]
        lines += [f'{metric}{{model="{m}",version="1"}} {c[key]:.1f}' for m, c in counters.items()]
    (run_dir / "metrics" / f"{int(when * 1000)}-bench.prom").write_text("\n".join(lines) + "\n")


CHILD = """
import sys, time
sys.path.insert(0, {root!r})
t0 = time.perf_counter()
from loadtest.analysis.analyze import compute
from loadtest.analysis.outputs import write_outputs
t1 = time.perf_counter()
a = compute({run!r})
t2 = time.perf_counter()
write_outputs(a)
t3 = time.perf_counter()
d = a.difference
print(f"PHASES import {{t1 - t0:.2f}} s, figures {{t2 - t1:.2f}} s, tables+report {{t3 - t2:.2f}} s")
print(f"BOOTSTRAP {{d.verdict}}: {{d.resamples}} resamples of {{d.n_student:,}} + {{d.n_teacher:,}} requests")
"""


def time_analyze(run_dir: Path) -> tuple[float, float, float, str]:
    """(wall s, CPU s, peak RSS GB, the child's output) of one full analysis in a fresh process."""
    code = CHILD.format(root=str(ROOT), run=str(run_dir))
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"analyze failed:\n{out}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024 / 1024, out  # ru_maxrss: KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1e6,3e6,1e7", help="comma-separated record counts")
    parser.add_argument("--shard-rows", type=int, default=20_000,
                        help="rows per record shard (the writer flushes once a second per process)")
    parser.add_argument("--workdir", type=Path, default=None, help="where run directories go (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the run directories")
    args = parser.parse_args()
    sizes = [int(float(s)) for s in args.sizes.split(",")]
    work = Path(tempfile.mkdtemp(prefix="analyzer-scale-", dir=args.workdir))
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; "
          f"two models, {STAGES} stages, {WORKERS} workers, {args.shard_rows:,} rows per shard")
    results = []
    try:
        for n in sizes:
            run = work / f"run-{n}"
            info = write_synthetic_run(run, n, shard_rows=args.shard_rows)
            load = os.getloadavg()[0]
            wall, cpu, rss, out = time_analyze(run)
            lines = {line.split(" ", 1)[0]: line.split(" ", 1)[1] for line in out.splitlines() if " " in line}
            results.append((info["records"], wall, cpu, rss))
            print(f"{info['records']:>12,} records ({info['shards']} shards): analyze {wall:6.2f} s wall, "
                  f"{cpu:6.2f} s CPU, peak RSS {rss:5.2f} GB (load average before: {load:.1f})\n"
                  f"{'':14}{lines.get('PHASES', '')}; bootstrap {lines.get('BOOTSTRAP', '')}", flush=True)
            if not args.keep:
                shutil.rmtree(run)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept {work}")
    if len(results) > 1:
        n0, w0, c0, r0 = results[0]
        for n, w, c, r in results[1:]:
            print(f"{n / n0:4.1f}x records -> {w / w0:.2f}x wall, {c / c0:.2f}x CPU, {r / r0:.2f}x peak RSS")


if __name__ == "__main__":
    main()
