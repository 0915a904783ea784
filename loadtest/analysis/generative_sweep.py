"""`loadtest sweep --api ...`: the highest arrival rate at which a generative model meets its SLO.

A step is an open-loop Locust run of ``scenarios/llm_open_loop.py`` for one model at one arrival rate:
a warm-up stage (its rows are labelled ``warmup`` in the sweep directory and never counted), then the
measured stage. A step passes when it had enough successful requests, an error rate under the limit,
achieved at least 90 % of the offered rate, and its P95 TTFT and P95 ITL (and P95 E2E when the SLO has
one) are within the SLO. The search is the classifier sweep's: grow the rate geometrically until a step
fails, retry that failure once slightly lower (under the rate it delivered, when it could not keep up), then bisect until the interval is within ±tolerance of its
midpoint; the answer is the interval, with the last passing step's figures. The sweep directory is an
ordinary generative run directory, so ``loadtest analyze --slo`` reproduces every figure from the records.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from loadtest.analysis.generative import SLO, WARMUP_STAGE, WindowFigures, per_request, window_figures
from loadtest.errors import LoadtestError

STEPS_DIR = "steps"
WARM_PREFIX = "warm-"
MIN_ACHIEVED = 0.9  # achieved requests/s over offered


@dataclass(frozen=True)
class GenerativeSweepSettings:
    slo: SLO
    start: float = 1.0
    growth: float = 2.0
    max_rate: float = 200.0
    min_rate: float = 0.05
    tolerance: float = 0.1
    retry_lower: float = 0.95
    max_steps: int = 12
    warmup_s: float = 2.0
    duration_s: float = 10.0
    min_requests: int = 20
    max_error_rate: float = 0.01
    arrival: str = "constant"
    # Start each model after the first at the previous model's highest passing rate: a student is expected near
    # or above its teacher, so its search spends its steps bracketing instead of climbing from a low start.
    chain_start: bool = False
    # each step first waits (up to host_quiet_wait_s) until other processes take under host_busy_share of this
    # machine's CPU, and records what they took and the machine's speed (loadtest.sweep.host)
    host_busy_share: float = 0.1
    host_quiet_wait_s: float = 30.0

    def validate(self) -> None:
        checks = [
            (self.slo.ttft_ms is not None or self.slo.itl_ms is not None or self.slo.e2e_ms is not None,
             "--slo needs at least one bound: ttft_ms=N,itl_ms=N[,e2e_ms=N]"),
            (self.start > 0, "--start must be > 0 requests/s"), (self.growth > 1, "--growth must be > 1"),
            (self.max_rate >= self.start, "--max-load must be >= --start"),
            (0 < self.tolerance < 1, "--tolerance must be in (0, 1)"), (self.max_steps >= 2, "--max-steps must be >= 2"),
            (self.duration_s > 0, "--step-duration must be > 0"), (self.warmup_s >= 0, "--warmup must be >= 0"),
            (self.min_requests >= 1, "--min-requests must be >= 1"),
            (0 <= self.max_error_rate < 1, "--max-error-rate must be in [0, 1)"),
            (self.arrival in ("constant", "poisson"), "--arrival must be constant or poisson"),
        ]  # fmt: skip
        for ok, message in checks:
            if not ok:
                raise LoadtestError(message)

    def step_duration(self, rate: float) -> float:
        """Long enough for the minimum request count at this rate."""
        return float(math.ceil(max(self.duration_s, 1.2 * self.min_requests / rate)))


@dataclass
class Step:
    model: str
    label: str
    rate: float
    figures: WindowFigures | None
    passed: bool
    reasons: list[str]
    others_share: float | None = None  # share of the machine other processes took during the step
    host_speed: float | None = None  # the machine's speed before the step, relative to the sweep's first step


@dataclass
class GenerativeSearch:
    model: str
    steps: list[Step] = field(default_factory=list)
    best: Step | None = None
    failing_rate: float | None = None
    stopped: str = ""

    @property
    def resolution(self) -> float | None:
        if self.best is None or self.failing_rate is None:
            return None
        return (self.failing_rate - self.best.rate) / (self.failing_rate + self.best.rate)


def judge(frame: pd.DataFrame, model: str, label: str, rate: float, settings: GenerativeSweepSettings) -> Step:
    """Pass or fail one step from its measured records (warm-up already excluded)."""
    mine = per_request(frame[(frame["model"] == model) & (frame["stage"] == label)])
    figures = window_figures(mine, model, label, settings.slo, rate) if not mine.empty else None
    if figures is None:
        return Step(model, label, rate, None, False, ["no requests recorded in the measured stage"])
    reasons = []
    ok_requests = figures.requests - figures.failures
    if ok_requests < settings.min_requests:
        reasons.append(f"{ok_requests} successful requests < --min-requests {settings.min_requests}")
    if figures.error_rate > settings.max_error_rate:
        reasons.append(f"error rate {figures.error_rate:.1%} > {settings.max_error_rate:.1%}")
    if figures.requests_per_s < MIN_ACHIEVED * rate:
        reasons.append(f"achieved {figures.requests_per_s:.3g} req/s < {MIN_ACHIEVED:.0%} of {rate:g} offered")
    slo = settings.slo
    for metric, bound in (("ttft", slo.ttft_ms), ("itl", slo.itl_ms), ("e2e", slo.e2e_ms)):
        if bound is None:
            continue
        value = figures.p(metric, 95.0) * 1000
        if not math.isfinite(value) or value > bound:
            reasons.append(f"P95 {metric.upper()} {value:.4g} ms > {bound:g} ms")
    return Step(model, label, rate, figures, not reasons, reasons)


def search(measure: Callable[[float], Step], settings: GenerativeSweepSettings, model: str,
           on_step: Callable[[Step, GenerativeSearch], None] | None = None,
           start: float | None = None) -> GenerativeSearch:  # fmt: skip
    """Grow, retry the first failure once lower, bisect to ±tolerance (MLPerf server-scenario style)."""
    from loadtest.sweep.host import is_disturbed
    from loadtest.sweep.search import retry_below  # the same retry rule as the latency-budget search

    result = GenerativeSearch(model)

    def run(rate: float) -> bool:
        if len(result.steps) >= settings.max_steps:
            raise _Exhausted
        step = measure(rate)
        result.steps.append(step)
        if on_step:
            on_step(step, result)
        if not step.passed and is_disturbed(step.others_share, settings.host_busy_share) \
                and len(result.steps) < settings.max_steps:
            step = measure(rate)  # other processes took the machine during that step: its failure may be theirs
            result.steps.append(step)
            if on_step:
                on_step(step, result)
        if step.passed and (result.best is None or rate > result.best.rate):
            result.best = step
        if not step.passed and (result.failing_rate is None or rate < result.failing_rate):
            if result.best is None or rate > result.best.rate:
                result.failing_rate = rate
        return step.passed

    def done() -> bool:
        return result.resolution is not None and result.resolution <= settings.tolerance

    def rounded(x: float) -> float:
        return float(f"{x:.3g}")

    try:
        rate = rounded(start or settings.start)
        while run(rate):
            if rate >= settings.max_rate:
                result.stopped = f"reached --max-load {settings.max_rate:g} req/s within the SLO"
                return result
            rate = rounded(min(rate * settings.growth, settings.max_rate))
        while result.best is None:
            lower = rounded(rate / settings.growth)
            if lower >= rate or lower < settings.min_rate:
                result.stopped = f"the SLO is not met even at {rate:g} req/s"
                return result
            rate = lower
            run(rate)
        failed = next((s for s in result.steps if s.rate == result.failing_rate), None)
        delivered = failed.figures.requests_per_s if failed is not None and failed.figures is not None else 0.0
        overloaded = 0 < delivered < MIN_ACHIEVED * result.failing_rate
        retry = rounded(retry_below(result.failing_rate, delivered, overloaded, settings.retry_lower))
        if not done() and result.best.rate < retry < result.failing_rate:
            run(retry)
        while not done():
            mid = rounded((result.best.rate + result.failing_rate) / 2)
            if mid <= result.best.rate or mid >= result.failing_rate:
                break
            run(mid)
        result.stopped = "interval within tolerance" if done() else "rate resolution reached"
    except _Exhausted:
        result.stopped = f"stopped after --max-steps {settings.max_steps} steps"
    return result


class _Exhausted(Exception):
    pass


@dataclass(frozen=True)
class GenerativeTarget:
    """Where the load goes and what each request is (passed through to the LLM open-loop scenario)."""

    host: str
    load_args: tuple[str, ...]  # --api, --tokenizer, --lengths, --output-lengths, ... as given
    max_in_flight: int | None = None


def run_step(sweep_dir: Path, target: GenerativeTarget, settings: GenerativeSweepSettings, model: str, index: int,
             rate: float) -> tuple[Path, str]:  # fmt: skip
    from loadtest.load.runner import run_locust

    label = f"{_safe(model)}-{index:02d}-{rate:g}rps"
    duration = settings.step_duration(rate)
    plan = f"{duration:g}s:{rate:g}:{label}"
    if settings.warmup_s > 0:
        plan = f"{settings.warmup_s:g}s:{rate:g}:{WARM_PREFIX}{label}," + plan
    step_dir = sweep_dir / STEPS_DIR / label
    run = run_locust(
        "llm_open_loop", target.host, stages=plan, arrival=settings.arrival, models=[model], run_dir=step_dir,
        kind="sweep-step", metrics_port=0, triton_metrics_url="none", max_in_flight=target.max_in_flight,
        extra_args=[*target.load_args, "--warmup-requests", "0"], timeout_s=settings.warmup_s + duration + 120,
    )  # fmt: skip
    run.check()
    return step_dir, label


def _safe(model: str) -> str:
    return "".join(c if c.isalnum() or c in "._" else "_" for c in model.strip("/"))[-40:] or "model"


def merge_step(sweep_dir: Path, step_dir: Path, label: str) -> pd.DataFrame:
    """Copy a step's records into the sweep directory, its warm-up stage relabelled ``warmup``; return them."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from loadtest.rundir import RECORDS_DIR, read_records, write_shard

    table = read_records(step_dir)
    if table.num_rows:
        column = table.column("stage")
        relabelled = pc.if_else(pc.equal(column, WARM_PREFIX + label), pa.scalar(WARMUP_STAGE), column)
        table = table.set_column(table.schema.get_field_index("stage"), table.schema.field("stage"), relabelled)
        records = sweep_dir / RECORDS_DIR
        records.mkdir(parents=True, exist_ok=True)
        write_shard(records, f"{label}.parquet", table)
    return table.to_pandas()


@dataclass
class GenerativeSweepOutcome:
    run_dir: Path
    results: dict[str, GenerativeSearch]


def run_generative_sweep(target: GenerativeTarget, settings: GenerativeSweepSettings, models: list[str],
                         roles: dict[str, str | None], generation: dict, *, results_dir: Path = Path("results"),
                         console=None) -> GenerativeSweepOutcome:  # fmt: skip
    """Sweep every model in turn with the same settings; write the sweep's run directory."""
    from rich.console import Console

    from loadtest.sweep.host import HostWatch
    from loadtest.sweep.run import _Ticker
    from loadtest.rundir import RunDir, create_run_dir

    settings.validate()
    console = console or Console(stderr=True)
    sweep_dir = create_run_dir(results_dir, "sweep")
    rundir = RunDir(sweep_dir)
    rundir.write_manifest({
        "run_id": sweep_dir.name, "kind": "sweep", "workload": "generative", "scenario": "sweep",
        "host": target.host, "protocol": generation.get("api"), "generation": generation,
        "models": {"teacher": roles.get("teacher"), "student": roles.get("student"), "names": models},
        "sweep": {"slo": settings.slo.__dict__, "start": settings.start, "growth": settings.growth,
                  "tolerance": settings.tolerance, "max_steps": settings.max_steps, "warmup_s": settings.warmup_s,
                  "duration_s": settings.duration_s, "min_requests": settings.min_requests,
                  "chain_start": settings.chain_start, "results": {}},
        "start": time.time(), "end": None, "stages": [],
    })  # fmt: skip
    results: dict[str, GenerativeSearch] = {}
    previous: GenerativeSearch | None = None
    watch = HostWatch(target.host, None, settings.host_busy_share, settings.host_quiet_wait_s,
                      lambda line: console.print(f"  [dim]{line}[/]"))
    for model in models:
        counter = {"i": 0}
        start = settings.start
        if settings.chain_start and previous is not None and previous.best is not None:
            start = max(settings.start, previous.best.rate)
            console.print(f"{model}: starting at {start:g} req/s, {previous.model}'s highest passing rate")

        def measure(rate: float, model: str = model) -> Step:
            counter["i"] += 1
            expected = settings.warmup_s + settings.step_duration(rate) + 6
            with watch.step() as host, _Ticker(console, f"{model} step {counter['i']}: {rate:g} req/s", expected):
                step_dir, label = run_step(sweep_dir, target, settings, model, counter["i"], rate)
            frame = merge_step(sweep_dir, step_dir, label)
            step_manifest = RunDir(step_dir).read_manifest()
            measured = next((s for s in step_manifest.get("stages", []) if s.get("name") == label), {})
            manifest = rundir.read_manifest()
            manifest["stages"].append({"name": label, "model": model, "start": measured.get("start"),
                                       "end": measured.get("end"), "offered_rate": rate, "loop": "open"})  # fmt: skip
            manifest.setdefault("versions", step_manifest.get("versions"))
            rundir.write_manifest(manifest)
            step = judge(frame, model, label, rate, settings)
            step.others_share, step.host_speed = host.others_share, host.speed
            return step

        def on_step(step: Step, result: GenerativeSearch) -> None:
            _print_step(console, step, result, settings.host_busy_share)

        result = search(measure, settings, model, on_step=on_step, start=start)
        results[model] = result
        previous = result
        manifest = rundir.read_manifest()
        manifest["sweep"]["results"][model] = {
            "start": start, "rate_low": result.best.rate if result.best else None, "rate_high": result.failing_rate,
            "best_stage": result.best.label if result.best else None,
            "resolution_pct": result.resolution * 100 if result.resolution is not None else None,
            "requests_per_s": result.best.figures.requests_per_s if result.best else None,
            "output_tokens_per_s": result.best.figures.output_tokens_per_s if result.best else None,
            "steps": [{"label": s.label, "rate": s.rate, "passed": s.passed, "reasons": "; ".join(s.reasons),
                       "others_share": s.others_share, "host_speed": s.host_speed} for s in result.steps],
            "stopped": result.stopped,
        }  # fmt: skip
        rundir.write_manifest(manifest)
        console.print(result_line(result, settings))
    rundir.update_manifest(end=time.time())
    return GenerativeSweepOutcome(sweep_dir, results)


def result_line(result: GenerativeSearch, settings: GenerativeSweepSettings) -> str:
    if result.best is None:
        return f"[bold red]{result.model}[/]: no arrival rate met {settings.slo.describe()} ({result.stopped})"
    f = result.best.figures
    high = f"{result.failing_rate:g}" if result.failing_rate is not None else "?"
    res = f" (±{result.resolution * 100:.1f} %)" if result.resolution is not None else ""
    return (f"[bold green]{result.model}[/]: capacity under {settings.slo.describe()} between {result.best.rate:g} "
            f"and {high} req/s{res}: at {result.best.rate:g}, {f.requests_per_s:.3g} req/s, "
            f"{f.output_tokens_per_s:.4g} output tok/s, P95 TTFT {f.p('ttft', 95) * 1000:.4g} ms, "
            f"P95 ITL {f.p('itl', 95) * 1000:.4g} ms — {result.stopped}, {len(result.steps)} steps")


def _print_step(console, step: Step, result: GenerativeSearch, busy_share: float) -> None:
    from loadtest.sweep.host import is_disturbed, speed_note

    f = step.figures
    figures = (f"{f.requests_per_s:.3g} req/s, P95 TTFT {f.p('ttft', 95) * 1000:.4g} ms, P95 ITL "
               f"{f.p('itl', 95) * 1000:.4g} ms, errors {f.error_rate:.1%}") if f else "no figures"  # fmt: skip
    mark = "[green]pass[/]" if step.passed else "[red]fail[/]"
    notes = list(step.reasons)
    if is_disturbed(step.others_share, busy_share):
        notes.append(f"others took {step.others_share:.0%} of the machine")
    speed = speed_note(step.host_speed)
    if speed:
        notes.append(speed)
    why = f" [dim]({'; '.join(notes)})[/]" if notes else ""
    interval = ""
    if result.best is not None:
        interval = f"  interval [{result.best.rate:g}, {result.failing_rate if result.failing_rate else '…'}]"
    console.print(f"  {step.label}: {figures} → {mark}{why}{interval}", highlight=False)


def plan_rows(analysis, peak_qps: float, headroom: float, cost_file: Path | None = None):
    """Replicas per model from its SLO capacity (requests/s of the best stage meeting the SLO at P95)."""
    from loadtest.analysis.costs import load_cost_book
    from loadtest.analysis.plan import PlanRow, replicas_needed

    if not peak_qps > 0:
        raise LoadtestError(f"--peak-qps must be > 0 (got {peak_qps:g})")
    if headroom < 1:
        raise LoadtestError(f"--headroom is a factor >= 1 (1.3 = 30 % spare capacity), got {headroom:g}")
    if analysis.slo is None:
        raise LoadtestError("a generative plan needs the SLO: pass --slo ttft_ms=N,itl_ms=N (or plan a sweep run)")
    book = load_cost_book(cost_file)
    rows = []
    for model in analysis.models:
        ref = analysis.reference[model]
        cost = analysis.costs[model]
        capacity = ref.requests_per_s if ref.slo_p95_ok and ref.error_rate <= 0.01 else None
        if capacity and ref.offered_rate:  # the conservative end: never more than the rate offered
            capacity = min(capacity, ref.offered_rate)
        if capacity:
            n = replicas_needed(peak_qps, headroom, capacity)
            monthly, note = n * cost.usd_per_hour * book.hours_per_month, f"capacity from stage {ref.stage}"
        else:
            n, monthly, note = None, None, f"no stage met {analysis.slo.describe()} at P95"
        rows.append(PlanRow(model, analysis.role(model), peak_qps, headroom, capacity, n, cost.instance,
                            cost.usd_per_hour, book.hours_per_month, monthly, note))  # fmt: skip
    return rows
