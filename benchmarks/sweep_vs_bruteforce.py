"""QPS at budget: `loadtest sweep` (growth + bisection) against a brute-force fine-grained sweep.

Measures, on one server in one session: the sweep's answer twice (repeatability) and the highest passing
load of a fine grid of open-loop steps judged by the same step rules (accuracy). Prints the ratios; the
issue asks for agreement within ±10 % on both. Nothing here is asserted: the numbers are what was measured.

    python benchmarks/sweep_vs_bruteforce.py --host http://127.0.0.1:8000 --repository model_repository \\
        --model student --budget-ms 80
    python benchmarks/sweep_vs_bruteforce.py --tiny --budget-ms 80   # builds a tiny pair, serves it embedded

The grid runs from --grid-from to --grid-to times the first sweep's answer in steps of --grid-step
(ratio), unless --grid-from-qps/--grid-to-qps give it in absolute req/s.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def monotone_crossing(steps, budget_ms: float) -> float:
    """Achieved QPS where an isotonic (non-decreasing) fit of the grid's latency against load meets the budget.

    "Highest passing grid step" is what the issue names, but on a noisy machine one lucky step above the
    knee decides it; the monotone fit uses every step, so this second figure shows how much that matters.
    Steps that did not count are fitted as beyond the budget.
    """
    import numpy as np
    from sklearn.isotonic import IsotonicRegression

    loads = np.array([s.load for s in steps])
    latency = np.array([s.latency_ms if s.counted and math.isfinite(s.latency_ms) else 10 * budget_ms for s in steps])
    fitted = IsotonicRegression(increasing=True).fit_transform(loads, np.minimum(latency, 10 * budget_ms))
    within = np.flatnonzero(fitted <= budget_ms)
    if within.size == 0:
        return math.nan
    best = within[-1]
    return float(steps[best].achieved_qps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", help="Triton HTTP URL (else --tiny starts an embedded one)")
    parser.add_argument("--metrics-url", help="Triton /metrics (default: the host's port 8002)")
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--tiny", action="store_true", help="build a tiny random teacher/student and serve it")
    parser.add_argument("--model", default="student")
    parser.add_argument("--budget-ms", type=float, default=80.0)
    parser.add_argument("--percentile", type=float, default=95.0)
    parser.add_argument("--start", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--step-duration", type=float, default=30.0)
    parser.add_argument("--ascending", action="store_true", help="run the grid in load order (default: shuffled)")
    parser.add_argument("--grid-from", type=float, default=0.6)
    parser.add_argument("--grid-to", type=float, default=1.4)
    parser.add_argument("--grid-step", type=float, default=1.05)
    parser.add_argument("--grid-from-qps", type=float)
    parser.add_argument("--grid-to-qps", type=float)
    parser.add_argument("--out", type=Path, default=Path("results") / "benchmark-sweep")
    parser.add_argument("--min-requests", type=int, default=200)
    parser.add_argument("--confirm-failures", action="store_true", help="as `loadtest sweep --confirm-failures` (the demo's)")
    args = parser.parse_args()

    from rich.console import Console

    from loadtest.analysis.capacity import StepRules, capacity_at_budget
    from loadtest.sweep import SweepSettings, SweepTarget, judge_step, run_step, run_sweep
    from loadtest.sweep.host import HostWatch

    console = Console()
    server = None
    host, metrics, repository = args.host, args.metrics_url, args.repository
    if host is None:
        if not args.tiny:
            parser.error("give --host, or --tiny to start an embedded Triton on a tiny pair")
        from _model_fixtures import make_tiny_pair

        from exporters.pipeline import export_pair
        from loadtest.repository import TritonModelSettings
        from loadtest.serving import EmbeddedTriton, ServerPorts

        root = Path(tempfile.mkdtemp(prefix="bench-"))
        teacher, student = make_tiny_pair(root / "hf")
        repository = root / "model_repository"
        export_pair(teacher, student, repository, TritonModelSettings(max_batch_size=16, max_queue_delay_us=500))
        server = EmbeddedTriton(repository, ServerPorts(0, 0, 0), log_file=root / "triton.log")
        server.start()
        host, metrics = server.http_url, server.metrics_url
    try:
        settings = SweepSettings(
            budget_ms=args.budget_ms, percentile=args.percentile, start=args.start, warmup_s=args.warmup,
            duration_s=args.step_duration, rules=StepRules(min_requests=args.min_requests),
            confirm_failures=args.confirm_failures,
        )
        target = SweepTarget(host=host, repository=repository, triton_metrics_url=metrics)
        args.out.mkdir(parents=True, exist_ok=True)
        answers, took, sent, sweep_steps = [], [], [], []
        for i in (1, 2):
            t0 = time.monotonic()
            console.rule(f"sweep {i}")
            outcome = run_sweep(target, settings, [args.model], {"teacher": None, "student": args.model},
                                results_dir=args.out, console=console)
            result = outcome.results[args.model]
            answers.append(result.best.achieved_qps if result.best else math.nan)
            took.append(time.monotonic() - t0)
            sent.append(sum(st.requests for st in result.steps))
            sweep_steps.append(len(result.steps))
        lo_qps = args.grid_from_qps or answers[0] * args.grid_from
        hi_qps = args.grid_to_qps or answers[0] * args.grid_to
        grid = []
        load = lo_qps
        while load <= hi_qps * 1.0001:
            grid.append(float(f"{load:.4g}"))
            load *= args.grid_step
        console.rule(f"brute force: {len(grid)} steps from {grid[0]:g} to {grid[-1]:g} req/s")
        brute_dir = args.out / f"brute-{int(time.time())}"
        steps = []
        t0 = time.monotonic()
        order = list(grid)
        if not args.ascending:  # a host whose speed drifts over minutes would otherwise confound load with time
            random.Random(0).shuffle(order)
        watch = HostWatch(host, None, settings.host_busy_share, settings.host_quiet_wait_s, console.print)
        for i, load in enumerate(order, 1):  # grid steps start on a quiet host too, as the sweep's do
            with watch.step() as seen:
                step_dir, label, _ = run_step(brute_dir, target, settings, args.model, i, load)
            step = judge_step(step_dir, label, args.model, settings, load)
            note = f" ({seen.note}; machine speed {seen.speed:.2f}×)" if seen.speed is not None else ""
            steps.append(step)
            ok = step.within(args.budget_ms)
            console.print(f"  {load:g} req/s: {step.achieved_qps:.1f} achieved, P{args.percentile:g} "
                          f"{step.latency_ms:.3g} ms, counted={step.counted} → {'pass' if ok else 'fail'}{note}")
        brute_took = time.monotonic() - t0
        brute_sent = sum(st.requests for st in steps)
        steps.sort(key=lambda st: st.load)
        cap = capacity_at_budget(steps, args.model, args.budget_ms, args.percentile)
        brute = cap.qps_at_budget or math.nan
        monotone = monotone_crossing(steps, args.budget_ms)
        report = {
            "model": args.model, "budget_ms": args.budget_ms, "percentile": args.percentile,
            "sweep_qps": answers, "sweep_seconds": took, "sweep_steps": sweep_steps, "sweep_requests": sent,
            "brute_force_qps": brute, "brute_force_steps": len(grid), "brute_force_seconds": brute_took,
            "brute_force_requests": brute_sent,
            "sweep1_cost_vs_brute": {"seconds": took[0] / brute_took, "requests": sent[0] / max(1, brute_sent)}, "sweep1_over_brute": answers[0] / brute,
            "sweep2_over_brute": answers[1] / brute, "sweep2_over_sweep1": answers[1] / answers[0],
            "brute_force_monotone_qps": monotone, "sweep1_over_monotone": answers[0] / monotone,
            "sweep2_over_monotone": answers[1] / monotone,
            "grid": [{"load": s.load, "achieved_qps": s.achieved_qps, "latency_ms": s.latency_ms, "counted": s.counted,
                      "within": s.within(args.budget_ms)} for s in steps],
        }
        console.print_json(json.dumps(report))
        (args.out / "benchmark.json").write_text(json.dumps(report, indent=2))
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
