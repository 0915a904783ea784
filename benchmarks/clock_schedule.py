"""Clock and schedule: what the load generator adds to a latency, and whether open loop keeps its schedule.

Against a no-op ONNX model on the embedded Triton (the model of benchmarks/client_cost.py):

1. Low load, closed loop, one user, HTTP then gRPC: client P50 minus Triton's mean request duration over
   the same window (Δnv_inference_request_duration_us / Δnv_inference_request_success, from the run's
   metrics snapshots), both as `loadtest analyze` computes them. What remains is the client, the network
   stack and (de)serialisation.
2. Open loop (scenarios/open_loop.py, constant arrivals) at 10, 100 and 1,000 req/s: achieved send rate /
   intended rate over the measured window, the late-send fraction (left more than --late-tolerance after
   the intended time) and the dropped sends.

    python benchmarks/clock_schedule.py                 # 15 s per run
    python benchmarks/clock_schedule.py --duration 30 --rates 10,100,1000,2000

Nothing is asserted: the figures are what this machine measured while it ran (state the load average).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
BIN = Path(sys.executable).parent


def run_locust(scenario: str, host: str, repo: Path, run_dir: Path, metrics_url: str, duration: int,
               extra: list[str]) -> None:
    from client_cost import MODEL

    from loadtest.serving.ports import free_port

    cmd = [str(BIN / "locust"), "-f", str(ROOT / "scenarios" / scenario), "--headless", "-t", f"{duration}s",
           "--host", host, "--repository", str(repo), "--models", MODEL, "--lengths", "fixed:16",
           "--run-dir", str(run_dir), "--triton-metrics-url", metrics_url, "--only-summary", "--loglevel", "WARNING",
           "--metrics-port", str(free_port("127.0.0.1")), *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    if not list((run_dir / "records").glob("*.parquet")):
        raise SystemExit(f"{scenario} wrote no records (exit {proc.returncode}):\n{proc.stderr[-2000:]}")


def low_load(protocol: str, server, repo: Path, work: Path, duration: int) -> dict:
    from loadtest.analysis.analyze import compute
    from loadtest.analysis.records import ALL_STAGES

    run_dir = work / f"low-{protocol}"
    host = server.http_url if protocol == "http" else server.grpc_url
    run_locust("steady.py", host, repo, run_dir, server.metrics_url, duration, ["-u", "1", "-r", "1"])
    a = compute(run_dir, bootstrap_resamples=100)
    row = a.latency[a.latency["stage"] == ALL_STAGES].iloc[0]
    return {"requests": int(row["requests"]), "p50_ms": row["p50_ms"], "mean_ms": row["mean_ms"],
            "server_ms": row["server_request_ms"], "gap_ms": row["p50_ms"] - row["server_request_ms"]}


def open_loop(rate: float, server, repo: Path, work: Path, duration: int, tolerance: float) -> dict:
    import numpy as np

    run_dir = work / f"open-{rate:g}"
    run_locust("open_loop.py", server.http_url, repo, run_dir, server.metrics_url, duration,
               ["-u", "1", "--arrival-rate", f"{rate:g}", "--late-tolerance", f"{tolerance:g}"])
    table = _read(run_dir)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    dropped = sum(n for stages in (manifest.get("dropped") or {}).values() for n in stages.values())
    intended = table["intended_start"].to_numpy()
    lo, hi = intended.min() + 2.0, intended.max() - 1.0  # skip the first 2 s (start-up) and the last second
    inside = (intended >= lo) & (intended < hi)
    sent = table["start"].to_numpy()
    window = hi - lo
    lag = (sent - intended)[inside]
    return {"rate": rate, "window_s": window, "sent": int(inside.sum()),
            "achieved_over_intended": inside.sum() / (rate * window),
            "late_fraction": float(table["late"].to_numpy()[inside].mean()), "dropped": dropped,
            "send_lag_p50_ms": float(np.percentile(lag, 50) * 1000), "send_lag_p99_ms": float(np.percentile(lag, 99) * 1000),
            "errors": int((~table["success"].to_numpy()[inside]).sum())}


def _read(run_dir: Path):
    import pandas as pd
    import pyarrow.parquet as pq

    return pd.concat([pq.read_table(p, columns=["intended_start", "start", "late", "success"]).to_pandas()
                      for p in sorted((run_dir / "records").glob("*.parquet"))], ignore_index=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=15, help="seconds per run")
    parser.add_argument("--rates", default="10,100,1000", help="open-loop arrival rates, req/s")
    parser.add_argument("--late-tolerance", type=float, default=0.010, help="seconds (the load generator's default)")
    parser.add_argument("--skip-low-load", action="store_true", help="only the open-loop schedule part")
    args = parser.parse_args()

    from client_cost import build_noop_repository

    from loadtest.serving import EmbeddedTriton, ServerPorts

    work = Path(tempfile.mkdtemp(prefix="clock-schedule-"))
    repo, _ = build_noop_repository(work / "repository", 16)
    with EmbeddedTriton(repo, ServerPorts(0, 0, 0), log_file=work / "triton.log") as server:
        print(f"no-op model on the embedded Triton, 16 tokens; {os.cpu_count()} CPUs, load average "
              f"{os.getloadavg()[0]:.1f}; {args.duration} s per run", flush=True)
        print("\n| protocol | requests | client P50 | client mean | Triton mean request | P50 − Triton |")
        print("|---|---|---|---|---|---|")
        for protocol in () if args.skip_low_load else ("http", "grpc"):
            r = low_load(protocol, server, repo, work, args.duration)
            print(f"| {protocol} | {r['requests']:,} | {r['p50_ms']:.3f} ms | {r['mean_ms']:.3f} ms | "
                  f"{r['server_ms']:.3f} ms | {r['gap_ms']:.3f} ms |", flush=True)
        print(f"\n| intended req/s | sends in window | achieved / intended | late (> {args.late_tolerance * 1000:g} ms) "
              "| dropped | send lag P50 / P99 | errors |")
        print("|---|---|---|---|---|---|---|")
        for rate in (float(x) for x in args.rates.split(",")):
            r = open_loop(rate, server, repo, work, args.duration, args.late_tolerance)
            print(f"| {rate:g} | {r['sent']:,} | {r['achieved_over_intended']:.3f} | {r['late_fraction']:.2%} | "
                  f"{r['dropped']} | {r['send_lag_p50_ms']:.2f} / {r['send_lag_p99_ms']:.2f} ms | {r['errors']} |",
                  flush=True)
    print(f"\nload average after: {os.getloadavg()[0]:.1f}; run directories in {work}")


if __name__ == "__main__":
    main()
