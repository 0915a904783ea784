"""The QPS-at-budget search: its algorithm on a known latency curve, and a short real sweep on Triton."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from loadtest.analysis.capacity import StepResult, StepRules
from loadtest.sweep import SweepSettings, SweepTarget, passes, run_sweep, search


def _step(load: float, latency_ms: float, *, counted: bool = True, reasons=(), mode: str = "open") -> StepResult:
    return StepResult(
        model="m", stage=f"m-{load:g}", loop=mode, offered_rate=load if mode == "open" else None,
        users=int(load) if mode == "closed" else None, duration_s=10.0, requests=1000, successes=1000,
        error_rate=0.0, achieved_qps=load * (0.99 if mode == "open" else 10), tokens_per_s=load * 40,
        percentile=95.0, latency_ms=latency_ms, ci_low_ms=latency_ms * 0.9, ci_high_ms=latency_ms * 1.1,
        counted=counted, reasons=list(reasons),
    )  # fmt: skip


def curve(capacity: float, budget: float = 50.0):
    """P95 grows with load and crosses the budget exactly at ``capacity``."""
    return lambda load: _step(load, budget * (load / capacity) ** 3)


def test_growth_then_bisection_brackets_the_capacity_within_tolerance():
    settings = SweepSettings(budget_ms=50.0, start=10, growth=2.0, tolerance=0.05)
    loads = []

    def measure(load):
        loads.append(load)
        return curve(137.0)(load)

    result = search(measure, settings, "m")
    assert loads[:5] == [10, 20, 40, 80, 160]  # coarse growth until the first failure
    assert loads[5] == 152  # the failure retried once, slightly lower
    lo, hi = result.best.load, result.failing_load
    assert lo <= 137 < hi and (hi - lo) / (hi + lo) <= 0.05
    assert result.stopped == "interval within tolerance"
    assert all(passes(s, 50.0) == (s.load <= 137) for s in result.steps)


def test_an_overloaded_first_failure_is_retried_below_what_the_server_delivered():
    """Growth overshoots to 320 req/s; the server answers 186/s: the retry goes to 95 % of 186, not of 320."""
    settings = SweepSettings(budget_ms=50.0, start=40, growth=2.0, tolerance=0.05)
    loads = []

    def measure(load):
        loads.append(load)
        step = curve(200.0)(load)
        return replace(step, achieved_qps=min(load * 0.99, 186.0))

    result = search(measure, settings, "m")
    assert loads[:4] == [40, 80, 160, 320]
    assert loads[4] == 176.7  # 0.95 x 186 delivered, not 0.95 x 320 offered
    lo, hi = result.best.load, result.failing_load
    assert lo <= 200 < hi and (hi - lo) / (hi + lo) <= 0.05


def test_a_first_failure_that_kept_up_is_retried_below_its_offered_rate():
    settings = SweepSettings(budget_ms=50.0, start=40, growth=2.0, tolerance=0.05)
    loads = []

    def measure(load):
        loads.append(load)
        return curve(300.0)(load)  # answered at 99 % of the offered rate: it kept up, latency broke the budget

    search(measure, settings, "m")
    assert loads[:5] == [40, 80, 160, 320, 304]


def test_confirm_failures_measures_a_failure_that_kept_up_once_more():
    """A stall fails the 80 req/s step once; confirmed, it passes, and the search goes on to the real knee."""
    settings = SweepSettings(budget_ms=50.0, start=40, growth=2.0, tolerance=0.05, confirm_failures=True)
    loads, stalled = [], {80.0}

    def measure(load):
        loads.append(load)
        if load in stalled:
            stalled.discard(load)
            return _step(load, 2300.0)  # kept up (answered 99 %), P95 blown by a stall
        if load >= 320:
            return replace(_step(load, 900.0), achieved_qps=186.0)  # could not keep up
        return curve(200.0)(load)

    result = search(measure, settings, "m")
    assert loads[:4] == [40, 80, 80, 160]  # the stalled step confirmed, and it passed
    assert loads.count(320) == 1  # an overload is not measured again
    failures_that_kept_up = [load for load in set(loads) if 200 < load < 320]
    assert all(loads.count(load) == 2 for load in failures_that_kept_up)  # each honest failure confirmed
    lo, hi = result.best.load, result.failing_load
    assert lo <= 200 < hi and (hi - lo) / (hi + lo) <= 0.05


def test_a_step_that_fell_behind_its_schedule_is_not_confirmed_even_near_its_offered_rate():
    from loadtest.analysis.capacity import BELOW_OFFERED, StepReason

    settings = SweepSettings(budget_ms=50.0, start=40, growth=2.0, tolerance=0.05, confirm_failures=True)
    loads = []

    def measure(load):
        loads.append(load)
        if load >= 160:  # answered 94 % of the offered rate: above 90 %, but behind the analyzer's 95 % schedule rule
            return replace(_step(load, 900.0), achieved_qps=0.94 * load,
                           reasons=[StepReason(BELOW_OFFERED, "answered 94 % of scheduled sends")])
        return curve(150.0)(load)

    search(measure, settings, "m")
    assert all(loads.count(load) == 1 for load in loads if load >= 160)


def test_a_failure_the_hosts_neighbours_disturbed_is_measured_again():
    """Others took 60 % of the machine during the 160 req/s step: it is measured again, and passes."""
    settings = SweepSettings(budget_ms=50.0, start=40, growth=2.0, tolerance=0.05, host_busy_share=0.1)
    loads, busy = [], {160.0}

    def measure(load):
        loads.append(load)
        if load in busy:
            busy.discard(load)
            return replace(_step(load, 900.0), achieved_qps=0.6 * load, others_share=0.6, host_note="others used 1.2 of 2 cores")
        return replace(curve(200.0)(load), others_share=0.01)

    result = search(measure, settings, "m")
    assert loads[:4] == [40, 80, 160, 160]  # fell behind, but disturbed: measured again (and passed)
    assert result.best.load >= 160
    quiet_failures = [load for load in set(loads) if load > 200]
    assert all(loads.count(load) == 1 for load in quiet_failures)  # an undisturbed failure is not


def test_falling_behind_below_a_rate_already_sustained_is_measured_again():
    """A step that delivers less than a lower, passing step delivered contradicts it: measured once more."""
    settings = SweepSettings(budget_ms=50.0, start=40, growth=2.0, tolerance=0.05)
    loads, stalled = [], {"once"}

    def measure(load):
        loads.append(load)
        if load >= 320:
            return replace(_step(load, 900.0), achieved_qps=200.0)  # saturated at 200/s
        if 160 < load < 200 and stalled:
            stalled.clear()
            return replace(_step(load, 2400.0), achieved_qps=131.0)  # below the 158/s delivered at 160
        return curve(200.0)(load)

    result = search(measure, settings, "m")
    stalled_load = next(load for load in loads if 160 < load < 200)
    assert loads.count(stalled_load) == 2
    assert loads.count(320) == 1  # its 200/s is above every pass: an honest overload
    assert result.best.load > 160


def test_without_confirm_failures_a_single_failure_decides():
    settings = SweepSettings(budget_ms=50.0, start=40, growth=2.0, tolerance=0.05)
    loads = []

    def measure(load):
        loads.append(load)
        return curve(150.0)(load)

    search(measure, settings, "m")
    assert loads.count(160) == 1


def test_an_unstable_step_within_budget_is_measured_again():
    settings = SweepSettings(budget_ms=50.0, start=10, tolerance=0.2, max_steps=10)
    seen: dict[float, int] = {}

    def measure(load):
        seen[load] = seen.get(load, 0) + 1
        if load == 20 and seen[load] == 1:
            # P95 20 ms overall, but rising window after window to 60 ms: past the 50 ms budget at its end
            return replace(_step(load, 20), drifting=True, window_latency_ms=[10.0, 20.0, 60.0], stability_percentile=95.0)
        return curve(70.0)(load)

    result = search(measure, settings, "m")
    assert seen[20] == 2 and result.best.load >= 40


def _step_from_records(windows: list[list[tuple[float, float]]], per_window: int = 400) -> StepResult:
    """A real step_result over 100 req/s of records; each window mixes (fraction, latency ms) groups."""
    import numpy as np

    from loadtest.analysis.capacity import step_result

    rng = np.random.default_rng(0)
    parts = []
    for groups in windows:
        sizes = [round(per_window * f) for f, _ in groups]
        parts.append(np.concatenate([rng.normal(ms, ms * 0.02, n) for n, (_, ms) in zip(sizes, groups)]))
    latency = np.concatenate(parts) / 1000
    intended = np.arange(latency.size) / 100.0
    frame = pd.DataFrame({
        "intended_start": intended, "start": intended, "end": intended + latency, "latency_s": latency,
        "model": "m", "success": True, "tokens": 10, "stage": "s", "loop": "open", "late": False,
    })  # fmt: skip
    return step_result(frame, "m", "s", None, StepRules(), 95.0)


def test_latency_drift_fails_a_step_only_past_the_budget():
    creeping = _step_from_records([[(1, 20.0)], [(1, 30.0)], [(1, 40.0)]])  # rising, within 50 ms to the end
    assert creeping.drifting and creeping.counted
    assert creeping.within(50.0) and creeping.why_not_within(50.0) == ""
    # the whole step's P95 is ~30 ms, but the last window's P95 reaches 80 ms: it would not hold 50 ms longer
    runaway = _step_from_records([[(1, 20.0)], [(1, 30.0)], [(0.9, 30.0), (0.1, 80.0)]])
    assert runaway.latency_ms < 50.0 and runaway.drifting and runaway.counted
    assert not runaway.within(50.0) and "beyond the budget" in runaway.why_not_within(50.0)
    assert runaway.within(90.0)
    flat = _step_from_records([[(1, 30.0)], [(1, 30.0)], [(1, 30.0)]])
    assert not flat.drifting and flat.within(50.0)


def test_nothing_within_budget_comes_down_then_says_so():
    settings = SweepSettings(budget_ms=50.0, start=40, min_load=2, max_steps=20)
    result = search(lambda load: _step(load, 80.0), settings, "m")
    assert result.best is None and "exceeds 50 ms" in result.stopped
    assert [s.load for s in result.steps][:3] == [40, 20, 10]


def test_closed_loop_bisects_whole_users():
    settings = SweepSettings(budget_ms=50.0, mode="closed", start=1, tolerance=0.05)
    result = search(lambda users: _step(users, 50.0 * (users / 11.5) ** 2, mode="closed"), settings, "m")
    assert result.best.load == 11 and result.failing_load == 12
    assert all(float(s.load).is_integer() for s in result.steps)


def test_max_steps_bounds_the_search():
    settings = SweepSettings(budget_ms=50.0, start=1, max_steps=4, max_load=1e6)
    result = search(curve(1e5), settings, "m")
    assert len(result.steps) == 4 and "max-steps" in result.stopped


def test_real_sweep_writes_a_run_directory_analyze_reproduces(triton_server, tmp_path):
    """Both models, same settings, against the real embedded Triton; a budget no step misses keeps it short."""
    from loadtest.analysis import analyze_run

    settings = SweepSettings(
        budget_ms=5000.0, start=10, growth=2.0, max_steps=2, warmup_s=1.0, duration_s=3.0,
        rules=StepRules(min_duration_s=2.0, min_requests=25),
    )  # fmt: skip
    target = SweepTarget(host=triton_server.http_url, repository=triton_server.repository,
                         triton_metrics_url=triton_server.metrics_url)
    outcome = run_sweep(target, settings, ["teacher", "student"], {"teacher": "teacher", "student": "student"},
                        results_dir=tmp_path)
    run_dir = outcome.run_dir
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["kind"] == "sweep" and manifest["end"] > manifest["start"]
    # two steps per model starting at 10 req/s; the second is 20 (growth), or 10 again (a re-measured unstable
    # step) or 5 (coming down) on a host too busy to keep the schedule: which one is the machine's, not ours
    for model in ("teacher", "student"):
        loads = [s["offered_rate"] for s in manifest["stages"] if s["model"] == model]
        assert loads[0] == 10 and loads[1] in (20, 10, 5) and len(loads) == 2
    assert all(s["warmup_s"] > 0.5 for s in manifest["stages"])
    # the steps' repository and serving memory reach the sweep's manifest: the footprint rows need them
    assert Path(manifest["settings"]["repository"]) == Path(triton_server.repository)
    assert all(manifest["serving_footprint"][m]["peak_rss_bytes"] > 0 for m in ("teacher", "student"))
    assert list((run_dir / "records").glob("*.parquet")) and list((run_dir / "metrics").glob("*.prom"))
    for model, result in outcome.results.items():
        assert len(result.steps) == 2 and "max-steps" in result.stopped
        assert all(s.error_rate == 0 for s in result.steps)
    # the analyzer, from the raw records alone, reaches the sweep's own step decisions
    analysis = analyze_run(run_dir)
    assert analysis.budget_ms == 5000.0 and analysis.kind == "sweep"
    for model, result in outcome.results.items():
        mine = {s.stage: s for s in analysis.steps if s.model == model}
        for step in result.steps:
            again = mine[step.stage]
            assert again.successes == step.successes and again.counted == step.counted
            assert again.latency_ms == pytest.approx(step.latency_ms)
            # who else used the machine, and its speed, measured by the sweep and kept by the analyzer
            assert step.others_share is not None and again.others_share == step.others_share
            assert step.host_speed is not None and again.host_speed == step.host_speed
        if result.best is not None:
            assert analysis.capacity[model].qps_at_budget == pytest.approx(result.best.achieved_qps)
    assert next(iter(outcome.results.values())).steps[0].host_speed == 1.0  # the sweep's first step is the reference
    latency = pd.read_csv(run_dir / "tables" / "latency.csv")
    assert latency["server_queue_ms"].notna().all()  # every step bracketed by its own snapshots
    comparison = analysis.comparison.set_index("metric")
    assert not math.isnan(comparison.at["p95_ms", "student"])
    assert comparison.at["peak_rss_mb", "student"] > 0 and comparison.at["parameters", "student"] > 0
