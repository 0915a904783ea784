"""One sweep step: a Locust run at one load (a subprocess), judged by the analyzer's step rules.

Each step is its own run directory under ``<sweep>/steps/`` with a warm-up stage and a measured stage
(``loadtest.load.runner.run_locust``: Locust runs in a child process, so this package never imports it).
A step whose run failed outright is a structured ``FAILED`` outcome, not an exception: the search goes on.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from loadtest.analysis.capacity import FAILED, StepReason, StepResult, step_result
from loadtest.errors import LoadtestError
from loadtest.sweep.search import SweepSettings

STEPS_DIR = "steps"
WARM_PREFIX = "warm-"


@dataclass
class SweepTarget:
    """Where the load goes and how requests are built (passed straight to the load generator)."""

    host: str
    repository: Path
    protocol: str | None = None
    triton_metrics_url: str | None = None
    gpu_metrics_url: str | None = None
    processes: int | None = None
    lengths: str | None = None
    batch_size: int | None = None
    max_in_flight: int | None = None
    dataset: Path | None = None


def _label(model: str, index: int, load: float, mode: str) -> str:
    unit = "rps" if mode == "open" else "u"
    return f"{model}-{index:02d}-{load:g}{unit}"


def run_step(
    sweep_dir: Path, target: SweepTarget, settings: SweepSettings, model: str, index: int, load: float,
    on_line: Callable[[str], None] | None = None,
    on_drain: Callable[[str], None] | None = None,
) -> tuple[Path, str, float]:
    """One Locust run: a warm-up stage then the measured stage; returns (step dir, label, measured seconds)."""
    from loadtest.load.runner import run_locust

    label = _label(model, index, load, settings.mode)
    duration = settings.step_duration(load)
    value = f"{load:g}" if settings.mode == "open" else str(int(load))
    plan = f"{duration}s:{value}:{label}"
    if settings.warmup_s > 0:
        plan = f"{settings.warmup_s:g}s:{value}:{WARM_PREFIX}{label}," + plan
    step_dir = sweep_dir / STEPS_DIR / label
    run = run_locust(
        "open_loop" if settings.mode == "open" else "step",
        target.host,
        stages=plan,
        arrival=settings.arrival if settings.mode == "open" else None,
        models=[model],
        protocol=target.protocol,
        repository=target.repository,
        dataset=target.dataset,
        lengths=target.lengths,
        batch_size=target.batch_size,
        max_in_flight=target.max_in_flight,
        processes=target.processes,
        run_dir=step_dir,
        kind="sweep-step",
        metrics_port=0,
        triton_metrics_url=target.triton_metrics_url,
        gpu_metrics_url=target.gpu_metrics_url,
        on_output=on_line,
        timeout_s=settings.warmup_s + duration + 120,
    )
    run.check()
    if target.triton_metrics_url:  # the next step must not start on this one's backlog (loadtest.sweep.drain)
        from loadtest.sweep.drain import wait_until_drained

        drain = wait_until_drained(target.triton_metrics_url, model)
        if on_drain is not None and (not drain.drained or drain.seconds >= 1.0):
            on_drain(f"{label}: server queue {drain.describe()}")
    return step_dir, label, float(duration)


def judge_step(step_dir: Path, label: str, model: str, settings: SweepSettings, load: float) -> StepResult:
    """The step's figures and counting decision from its own records (the analyzer's rules) at ``load``."""
    from loadtest.analysis.records import load_run

    try:
        run = load_run(step_dir)
    except LoadtestError as exc:  # every request failed: the step fails, the sweep goes on
        return _failed_step(model, label, settings, load, str(exc))
    frame = run.records[(run.records["stage"] == label) & (run.records["model"] == model)]
    info = run.stages.get(label)
    if len(frame) == 0:
        return _failed_step(model, label, settings, load, "no requests recorded in the measured stage")
    return step_result(frame, model, label, info, settings.rules, settings.percentile, run.dropped.get((model, label), 0))


def _failed_step(model: str, label: str, settings: SweepSettings, load: float, why: str) -> StepResult:
    """A step whose run failed outright: a structured FAILED outcome at the load it was driven at."""
    return StepResult(
        model=model, stage=label, loop=settings.mode, offered_rate=load if settings.mode == "open" else None,
        users=int(load) if settings.mode == "closed" else None, duration_s=0.0, requests=0, successes=0,
        error_rate=1.0, achieved_qps=0.0, tokens_per_s=0.0, percentile=settings.percentile, latency_ms=math.inf,
        ci_low_ms=math.nan, ci_high_ms=math.nan, counted=False, reasons=[StepReason(FAILED, f"error rate 100% ({why[:160]})")],
    )
