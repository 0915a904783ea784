"""`loadtest sweep`: the highest load each model sustains with its latency percentile within a budget.

The search is MLPerf's server-scenario search: grow the load geometrically until a step fails, retry that
failure once slightly lower (latency is not always monotonic in load), then bisect between the last
passing and the first failing load until the interval is within ±tolerance of its midpoint. Each step is
its own Locust run (``loadtest.load.runner.run_locust``, a subprocess: this module never imports Locust)
with a warm-up stage and a measured stage; a step passes only when it *counts* by the same rules
``loadtest analyze`` applies (capacity.StepRules) and its percentile is within budget. A step that fails
only on stability while within budget is measured once more, as perf_analyzer extends an unstable
measurement. Teacher and student run with identical settings and the same coarse loads, one after the other.

The sweep directory has the layout of any run (manifest.json, records/, metrics/), each step's full Locust
run kept under ``steps/``, so ``loadtest analyze`` reproduces the answer from the raw records.
"""

from __future__ import annotations

import math
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from loadtest.analysis.capacity import StepResult, StepRules, step_result
from loadtest.errors import LoadtestError

STEPS_DIR = "steps"
WARM_PREFIX = "warm-"


class SweepSettings(BaseModel):
    """Everything that decides a sweep's steps; stored in the manifest so the run explains itself."""

    budget_ms: float = Field(gt=0)
    percentile: float = Field(95.0, gt=0, lt=100)
    mode: Literal["open", "closed"] = "open"
    start: float = Field(10.0, gt=0, description="first load: req/s per model (open) or users (closed)")
    growth: float = Field(2.0, gt=1.0)
    max_load: float = Field(5000.0, gt=0)
    min_load: float = Field(0.5, gt=0)
    tolerance: float = Field(0.05, gt=0, lt=1, description="stop bisecting within ±tolerance of the midpoint")
    retry_lower: float = Field(0.95, gt=0, lt=1, description="a first failure is retried once at load x this")
    max_steps: int = Field(24, ge=2, description="per model")
    warmup_s: float = Field(2.0, ge=0)
    duration_s: float = Field(30.0, gt=0, description="measured time per step (stretched to reach min requests)")
    arrival: Literal["constant", "poisson"] = "constant"
    rules: StepRules = Field(default_factory=StepRules)

    def step_duration(self, load: float) -> float:
        """Long enough for the rules' minimum duration and (open loop) minimum request count."""
        need = self.rules.effective_min_requests(self.percentile)
        base = max(self.duration_s, self.rules.min_duration_s)
        if self.mode == "open":
            base = max(base, 1.15 * need / load)
        return math.ceil(base)


@dataclass
class SearchResult:
    """One model's search: every step in order, and the final interval."""

    model: str
    steps: list[StepResult] = field(default_factory=list)
    best: StepResult | None = None  # highest passing load
    failing_load: float | None = None  # lowest failing load above it
    stopped: str = ""  # why the search ended

    @property
    def resolution(self) -> float | None:
        if self.best is None or self.failing_load is None:
            return None
        return (self.failing_load - self.best.load) / (self.failing_load + self.best.load)


def passes(step: StepResult, budget_ms: float) -> bool:
    return step.within(budget_ms)


def _only_stability(step: StepResult, budget_ms: float) -> bool:
    """Failed only for instability (not load, errors or length), with its percentile within budget."""
    if step.latency_ms > budget_ms:
        return False
    unstable_reasons = bool(step.reasons) and all("unstable" in r for r in step.reasons)  # throughput spread
    return unstable_reasons or (not step.reasons and step.drifts_past(budget_ms))


def search(
    measure: Callable[[float], StepResult],
    settings: SweepSettings,
    model: str,
    on_step: Callable[[StepResult, SearchResult], None] | None = None,
) -> SearchResult:
    """Find the highest passing load for one model; ``measure(load)`` runs one step and judges it."""
    result = SearchResult(model)
    integer = settings.mode == "closed"
    tol = settings.tolerance

    def run(load: float) -> bool:
        if len(result.steps) >= settings.max_steps:
            raise _Exhausted
        step = measure(load)
        result.steps.append(step)
        if on_step:
            on_step(step, result)
        ok = passes(step, settings.budget_ms)
        if not ok and _only_stability(step, settings.budget_ms) and len(result.steps) < settings.max_steps:
            step = measure(load)  # perf_analyzer-style re-measurement of an unstable step
            result.steps.append(step)
            if on_step:
                on_step(step, result)
            ok = passes(step, settings.budget_ms)
        if ok and (result.best is None or load > result.best.load):
            result.best = step
        if not ok and (result.failing_load is None or load < result.failing_load):
            if result.best is None or load > result.best.load:
                result.failing_load = load
        return ok

    def done() -> bool:
        if result.best is None or result.failing_load is None:
            return False
        lo, hi = result.best.load, result.failing_load
        if integer and hi - lo <= 1:
            return True
        return (hi - lo) / (hi + lo) <= tol

    def rounded(x: float) -> float:
        return float(max(1, round(x))) if integer else float(f"{x:.4g}")

    try:
        load = rounded(settings.start)
        # 1. coarse growth until the first failure (or the ceiling)
        while run(load):
            if load >= settings.max_load:
                result.stopped = f"reached --max-load {settings.max_load:g} within budget"
                return result
            load = rounded(min(load * settings.growth, settings.max_load))
        # 2. nothing passes: come down until something does
        while result.best is None:
            lower = rounded(load / settings.growth)
            if lower >= load or lower < settings.min_load:
                result.stopped = f"P{settings.percentile:g} exceeds {settings.budget_ms:g} ms even at {load:g}"
                return result
            load = lower
            run(load)
        # 3. the first failure is retried once slightly lower (latency is not always monotonic in load)
        retry = rounded(result.failing_load * settings.retry_lower)
        if not done() and result.best.load < retry < result.failing_load:
            run(retry)
        # 4. bisection until the interval is within ±tolerance
        while not done():
            lo, hi = result.best.load, result.failing_load
            mid = rounded((lo + hi) / 2)
            if mid <= lo or mid >= hi:
                break
            run(mid)
        result.stopped = "interval within tolerance" if done() else "load resolution reached"
    except _Exhausted:
        result.stopped = f"stopped after --max-steps {settings.max_steps} steps"
    return result


class _Exhausted(Exception):
    pass


# ----------------------------------------------------------------------------------------------------
# running steps through Locust


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
    return step_dir, label, float(duration)


def judge_step(step_dir: Path, label: str, model: str, settings: SweepSettings) -> StepResult:
    """The step's figures and counting decision from its own records (the analyzer's rules)."""
    from loadtest.analysis.records import load_run

    try:
        run = load_run(step_dir)
    except LoadtestError as exc:  # every request failed: the step fails, the sweep goes on
        return _failed_step(model, label, settings, str(exc))
    frame = run.records[(run.records["stage"] == label) & (run.records["model"] == model)]
    info = run.stages.get(label)
    if len(frame) == 0:
        return _failed_step(model, label, settings, "no requests recorded in the measured stage")
    return step_result(frame, model, label, info, settings.rules, settings.percentile, run.dropped.get((model, label), 0))


def _failed_step(model: str, label: str, settings: SweepSettings, why: str) -> StepResult:
    load = float(label.rsplit("-", 1)[-1].rstrip("rpsu"))
    return StepResult(
        model=model, stage=label, loop=settings.mode, offered_rate=load if settings.mode == "open" else None,
        users=int(load) if settings.mode == "closed" else None, duration_s=0.0, requests=0, successes=0,
        error_rate=1.0, achieved_qps=0.0, tokens_per_s=0.0, percentile=settings.percentile, latency_ms=math.inf,
        ci_low_ms=math.nan, ci_high_ms=math.nan, counted=False, reasons=[f"error rate 100% ({why[:160]})"],
    )


# ----------------------------------------------------------------------------------------------------
# the sweep directory: one run-directory layout for all steps


def merge_step(sweep_dir: Path, step_dir: Path, label: str, model: str, settings: SweepSettings) -> dict:
    """Copy a step's records (warm-up rows relabelled to the step) and snapshots into the sweep directory.

    Returns the step's manifest stage: name, model, start (warm-up start), warmup_s, end, load.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    from loadtest.rundir import METRICS_DIR, RECORDS_DIR, read_manifest, read_shard, shard_paths, snapshot_paths, write_shard

    manifest = read_manifest(step_dir)
    stages = {s["name"]: s for s in manifest.get("stages", []) if isinstance(s, dict) and "name" in s}
    measured = stages.get(label, {})
    warm = stages.get(WARM_PREFIX + label)
    start = (warm or measured).get("start")
    stage = {
        "name": label, "model": model, "start": start, "end": measured.get("end") or manifest.get("end"),
        "warmup_s": (measured.get("start") - start) if warm and measured.get("start") and start else 0.0,
        "loop": settings.mode,
    }
    if settings.mode == "open":
        stage["offered_rate"] = measured.get("offered_rate")
    else:
        stage["users"] = measured.get("users")
    records = sweep_dir / RECORDS_DIR
    records.mkdir(parents=True, exist_ok=True)
    for shard in shard_paths(step_dir):
        table = read_shard(shard)
        if table.num_rows:
            column = table.column("stage")
            relabelled = pc.if_else(pc.equal(column, WARM_PREFIX + label), pa.scalar(label), column)
            table = table.set_column(table.schema.get_field_index("stage"), table.schema.field("stage"), relabelled)
        write_shard(records, f"{label}-{shard.name}", table)
    metrics = sweep_dir / METRICS_DIR
    metrics.mkdir(parents=True, exist_ok=True)
    for snap in snapshot_paths(step_dir):
        stamp, _, rest = snap.name.partition("-")
        shutil.copyfile(snap, metrics / f"{stamp}-{label}-{rest}")
    dropped = manifest.get("dropped", {}).get(model, {}) if isinstance(manifest.get("dropped"), dict) else {}
    stage["dropped"] = int(dropped.get(label, 0)) if isinstance(dropped, dict) else 0
    stage["_manifest"] = manifest
    return stage


@dataclass
class SweepOutcome:
    run_dir: Path
    results: dict[str, SearchResult]


def run_sweep(
    target: SweepTarget,
    settings: SweepSettings,
    models: list[str],
    roles: dict[str, str | None],
    *,
    results_dir: Path = Path("results"),
    run_dir: Path | None = None,
    console=None,
) -> SweepOutcome:
    """Sweep every model in turn with the same settings; write the sweep's run directory."""
    from rich.console import Console

    from loadtest.credentials import redact_url
    from loadtest.rundir import RunDir, create_run_dir

    console = console or Console(stderr=True)
    sweep_dir = Path(run_dir) if run_dir else create_run_dir(results_dir, "sweep")
    sweep_dir.mkdir(parents=True, exist_ok=True)
    rundir = RunDir(sweep_dir)
    base = {
        "run_id": sweep_dir.name, "kind": "sweep", "scenario": "sweep", "host": redact_url(target.host),
        "models": {"teacher": roles.get("teacher"), "student": roles.get("student"), "names": models},
        "sweep": dict(settings.model_dump(), budget_ms=settings.budget_ms, results={}),
        "start": time.time(), "end": None, "stages": [], "dropped": {},
    }
    rundir.write_manifest(base)
    results: dict[str, SearchResult] = {}
    for model in models:
        counter = {"i": 0}

        def measure(load: float, model: str = model) -> StepResult:
            counter["i"] += 1
            step_s = settings.warmup_s + settings.step_duration(load)
            unit = "req/s" if settings.mode == "open" else "users"
            with _Ticker(console, f"{model} step {counter['i']}: {load:g} {unit}", step_s + 4):
                step_dir, label, _ = run_step(sweep_dir, target, settings, model, counter["i"], load)
            stage = merge_step(sweep_dir, step_dir, label, model, settings)
            step_manifest = stage.pop("_manifest")
            manifest = rundir.read_manifest()
            manifest["stages"].append({k: v for k, v in stage.items() if k != "dropped"})
            if stage["dropped"]:
                manifest["dropped"].setdefault(model, {})[label] = stage["dropped"]
            manifest.setdefault("versions", step_manifest.get("versions"))
            manifest.setdefault("client_host", step_manifest.get("client_host"))
            manifest["protocol"] = step_manifest.get("protocol")
            rundir.write_manifest(manifest)
            return judge_step(step_dir, label, model, settings)

        result = search(measure, settings, model, on_step=lambda s, r: _print_step(console, s, r, settings))
        results[model] = result
        manifest = rundir.read_manifest()
        manifest["sweep"]["results"][model] = _result_summary(result, settings)
        rundir.write_manifest(manifest)
        console.print(_result_line(result, settings))
    rundir.update_manifest(end=time.time())
    return SweepOutcome(sweep_dir, results)


def _result_summary(result: SearchResult, settings: SweepSettings) -> dict:
    best = result.best
    return {
        "qps_at_budget": best.achieved_qps if best else None,
        "tokens_per_s_at_budget": best.tokens_per_s if best else None,
        "load_low": best.load if best else None,
        "load_high": result.failing_load,
        "resolution_pct": result.resolution * 100 if result.resolution is not None else None,
        "steps": len(result.steps),
        "stopped": result.stopped,
        "step_results": [dict(asdict(s), reasons="; ".join(s.reasons)) for s in result.steps],
    }


def _result_line(result: SearchResult, settings: SweepSettings) -> str:
    unit = "req/s" if settings.mode == "open" else "users"
    if result.best is None:
        return f"[bold red]{result.model}[/]: no load met P{settings.percentile:g} ≤ {settings.budget_ms:g} ms ({result.stopped})"
    high = f"{result.failing_load:g}" if result.failing_load is not None else "?"
    res = f" (±{result.resolution * 100:.1f} %)" if result.resolution is not None else ""
    return (f"[bold green]{result.model}[/]: {result.best.achieved_qps:,.1f} req/s at P{settings.percentile:g} "
            f"{result.best.latency_ms:.3g} ms; capacity between {result.best.load:g} and {high} {unit}{res} — "
            f"{result.stopped}, {len(result.steps)} steps")


def _print_step(console, step: StepResult, result: SearchResult, settings: SweepSettings) -> None:
    ok = passes(step, settings.budget_ms)
    mark = "[green]pass[/]" if ok else "[red]fail[/]"
    ci = (f" [{step.ci_low_ms:.3g}, {step.ci_high_ms:.3g}]"
          if math.isfinite(step.ci_low_ms) and math.isfinite(step.ci_high_ms) else "")
    why_text = step.why_not_within(settings.budget_ms)
    why = f" [dim]({why_text})[/]" if why_text else ""
    interval = ""
    if result.best is not None:
        high = f"{result.failing_load:g}" if result.failing_load is not None else "…"
        interval = f"  interval [{result.best.load:g}, {high}]"
    console.print(
        f"  {step.stage}: {step.achieved_qps:,.1f} req/s, P{settings.percentile:g} {step.latency_ms:.3g} ms{ci}, "
        f"errors {step.error_rate:.1%} → {mark}{why}{interval}", highlight=False,
    )


class _Ticker:
    """A live progress bar over one step's expected duration while its Locust process runs."""

    def __init__(self, console, description: str, expected_s: float) -> None:
        self.console, self.description, self.expected_s = console, description, expected_s
        self._stop = threading.Event()

    def __enter__(self) -> "_Ticker":
        from rich.progress import BarColumn, TextColumn, TimeElapsedColumn

        from loadtest.console import make_progress

        self.progress = make_progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                                      console=self.console, transient=True)
        self.progress.start()
        self.task = self.progress.add_task(self.description, total=self.expected_s)
        started = time.monotonic()

        def tick() -> None:
            while not self._stop.wait(0.25):
                self.progress.update(self.task, completed=min(time.monotonic() - started, self.expected_s))

        self.thread = threading.Thread(target=tick, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self.thread.join(timeout=1)
        self.progress.stop()
