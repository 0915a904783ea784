"""`loadtest demo`: the whole pipeline on this machine, end to end, in one command.

Build (or reuse) a real teacher and a real distilled student -> export both to ONNX with parity checks
into a Triton model repository -> serve them on an embedded Triton -> load them with Locust (a subprocess:
gevent never enters this process) -> evaluate quality through the served models -> analyze into tables
and report.html. Nothing here is simulated.

The load is a `loadtest sweep` by default: each model alone on the server, open-loop steps growing then
bisecting to the highest load whose P95 stays within the budget (±5 %). Fixed rates tell nothing about a
machine we have not seen (on a slow one every step overloads the teacher, on a fast one none do), and
driving both models at once makes the teacher's overload the student's latency. ``--quick`` and ``--rate``
instead drive the same fixed open-loop steps at both models together: short, but capacity is then only
known as far as those rates reach, and the verdict says so.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import typer

QUICK_RATES = (20.0, 80.0)


@dataclass
class DemoOptions:
    """What `loadtest demo` takes; defaults give a run of a few minutes on a 2-core machine."""

    quick: bool = False
    repository: Path = Path("model_repository")
    results: Path = Path("results")
    cache_dir: Path | None = None
    rates: tuple[float, ...] = ()  # fixed A/B open-loop steps; empty: sweep each model
    step_seconds: float = 8.0  # measured seconds per step (a sweep stretches low-rate steps to enough requests)
    warmup_seconds: float = 2.0
    sweep_start: float = 40.0  # req/s of the sweep's first step
    protocol: str = "http"
    budget_ms: float = 100.0
    percentile: float = 95.0
    batch_size: int = 1
    quality: bool = True
    max_batch_size: int = 32
    max_queue_delay_us: int = 2000
    instance_count: int = 1

    @classmethod
    def quick_preset(cls, **overrides) -> "DemoOptions":
        base = dict(quick=True, rates=QUICK_RATES)
        return cls(**{**base, **overrides})


def run_demo(options: DemoOptions, console=None) -> Path:
    """Run the demo and return its run directory."""
    from rich.progress import BarColumn, TextColumn, TimeElapsedColumn

    from exporters.pipeline import export_pair
    from loadtest.console import make_progress, output_console
    from loadtest.demopair.build import DemoSettings, build_or_reuse
    from loadtest.rundir import create_run_dir
    from loadtest.repository import TritonModelSettings
    from loadtest.serving import EmbeddedTriton, ServerPorts

    console = console or output_console()
    started = time.time()
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.fields[note]}"), TimeElapsedColumn())

    # 1. the pair
    settings = DemoSettings.quick() if options.quick else DemoSettings()
    with make_progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("demo pair", total=1.0, note="")
        pair = build_or_reuse(
            settings,
            cache_dir=options.cache_dir,
            progress=lambda message, fraction: progress.update(task, completed=fraction, note=message),
        )
        progress.update(task, completed=1.0, note="reused from cache" if pair.reused else f"built in {pair.build_seconds:.0f} s")

    # 2. export
    serving = TritonModelSettings(
        max_batch_size=options.max_batch_size,
        max_queue_delay_us=options.max_queue_delay_us,
        instance_count=options.instance_count,
    )
    with make_progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("export + parity", total=1.0, note="")
        report = export_pair(
            pair.teacher_dir,
            pair.student_dir,
            options.repository,
            serving,
            overwrite=True,
            progress=lambda message, fraction=None: progress.update(task, note=message, **({"completed": fraction} if fraction is not None else {})),
        )
        progress.update(task, completed=1.0, note=f"{options.repository}/ written")
    del report

    run_dir = create_run_dir(options.results, "demo")
    console.print(f"run directory: [bold]{run_dir}[/]")

    # 3. serve, load, evaluate
    with console.status("starting the embedded Triton ..."):
        server = EmbeddedTriton(options.repository, ServerPorts(8000, 8001, 8002), pick_free_ports=True,
                                log_file=run_dir / "triton.log")
        server.start()
    quality = None
    try:
        console.print(f"Triton READY on {server.http_url} (gRPC {server.grpc_url}, metrics {server.metrics_url})")
        if options.rates:
            _drive_steps(options, server, run_dir, console)
        else:
            _sweep(options, server, run_dir, console)
        if options.quality:
            from loadtest.quality.runner import EvalSettings, run_eval

            quality = run_eval(
                EvalSettings(dataset=pair.eval_path, host=server.http_url, repository=options.repository, run_dir=run_dir,
                             group_column="segment"),
                console=console,
            )
    finally:
        with console.status("stopping Triton ..."):
            server.stop()

    # 4. analyze
    from loadtest.analysis import analyze_run, render_terminal

    with console.status("analyzing ..."):
        analysis = analyze_run(run_dir, budget_ms=options.budget_ms, percentile=options.percentile)
    render_terminal(analysis, console)
    if quality is not None:
        from loadtest.quality.terminal import render_quality

        render_quality(quality, console)
    console.print(f"\n[bold green]done[/] in {time.time() - started:.0f} s: {run_dir}/report.html, tables in {run_dir}/tables/")
    return run_dir


def _sweep(options: DemoOptions, server, run_dir: Path, console) -> None:
    """QPS at the budget for each model alone: `loadtest sweep`'s search, into the demo's run directory."""
    from loadtest.sweep import SweepSettings, SweepTarget, run_sweep
    from loadtest.repository import ModelRepository

    meta = ModelRepository(options.repository).read_metadata()
    settings = SweepSettings(
        budget_ms=options.budget_ms, percentile=options.percentile, start=options.sweep_start,
        warmup_s=options.warmup_seconds, duration_s=options.step_seconds, confirm_failures=True,
    )
    host = server.http_url if options.protocol == "http" else server.grpc_url
    target = SweepTarget(host=host, repository=options.repository, protocol=options.protocol,
                         triton_metrics_url=server.metrics_url, batch_size=options.batch_size)
    console.print(
        f"sweeping {meta.teacher} then {meta.student}, each alone: open-loop steps from {settings.start:g} req/s, "
        f"×{settings.growth:g} until P{settings.percentile:g} > {settings.budget_ms:g} ms, then bisection to "
        f"±{settings.tolerance:.0%}"
    )
    run_sweep(target, settings, [meta.teacher, meta.student], {"teacher": meta.teacher, "student": meta.student},
              run_dir=run_dir, console=console)


def _drive_steps(options: DemoOptions, server, run_dir: Path, console) -> None:
    """Open-loop A/B steps: teacher and student get the same requests at the same intended times."""
    from rich.progress import BarColumn, TextColumn, TimeElapsedColumn

    from loadtest.console import make_progress
    from loadtest.load.runner import run_locust

    host = server.http_url if options.protocol == "http" else server.grpc_url
    step = options.step_seconds + options.warmup_seconds
    stages = ",".join(f"{step:g}s:{rate:g}:{rate:g}rps" for rate in options.rates)
    total = step * len(options.rates)
    with make_progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.fields[note]}"),
                       TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task("open-loop load, both models", total=total, note=stages)
        started, done = time.monotonic(), threading.Event()

        def tick() -> None:  # Locust runs headless and quiet; the bar follows the stage plan's clock
            while not done.wait(0.5):
                progress.update(task, completed=min(total, time.monotonic() - started))

        ticker = threading.Thread(target=tick, daemon=True)
        ticker.start()
        try:
            result = run_locust(
                "open_loop",
                host,
                stages=stages,
                repository=options.repository,
                batch_size=options.batch_size,
                run_dir=run_dir,
                triton_metrics_url=server.metrics_url,
                timeout_s=total + 120,
            )
        finally:
            done.set()
        progress.update(task, completed=total)
    result.check()


def demo(
    quick: bool = typer.Option(False, "--quick", help="Small pair and two fixed load steps, both models at once (under 2 minutes; what the tests run). Capacity is then known only up to the highest step."),
    repo: Path = typer.Option(Path("model_repository"), "--repo", help="Where to write the Triton model repository."),
    results: Path = typer.Option(Path("results"), "--results", help="Parent folder of run directories (never overwritten)."),
    cache_dir: Path = typer.Option(None, "--cache-dir", help="Demo pair cache (default $LOADTEST_CACHE or ~/.cache/loadtest)."),
    rate: list[float] = typer.Option(None, "--rate", help="Instead of the sweep: fixed open-loop rates (req/s per model) driven at both models at once; repeatable."),
    step_seconds: float = typer.Option(None, "--step-seconds", help="Measured seconds per load step, after a 2 s warm-up (default 8)."),
    sweep_start: float = typer.Option(40.0, "--sweep-start", help="First rate (req/s) of the sweep; it grows ×2 until the budget breaks, then bisects."),
    protocol: str = typer.Option("http", "--protocol", help="http or grpc."),
    budget_ms: float = typer.Option(100.0, "--budget-ms", help="Latency budget for QPS-at-budget and the verdict."),
    percentile: float = typer.Option(95.0, "--percentile", help="Percentile the budget applies to (95 or 99)."),
    no_quality: bool = typer.Option(False, "--no-quality", help="Skip the quality evaluation through the served models."),
    generative: bool = typer.Option(False, "--generative", help="The generative demo instead: Llama teacher + distilled student, exported with a KV cache and parity, streamed by Triton, each swept for its capacity under a TTFT+ITL SLO, quality per slice and segment, verdict (docs/generation.md). --quick: the small pair and short steps."),
    slo: str = typer.Option("ttft_ms=250,itl_ms=25", "--slo", help="--generative: the SLO both models are swept against, at P95."),
) -> None:
    """Build a teacher/student pair, export, serve on an embedded Triton, sweep both to their QPS at the budget, evaluate quality, report.

    About 7 minutes on 2 CPU cores (3 of them building the pair, cached for the next run); --quick: under 2.
    """
    from loadtest import bounds
    from loadtest.errors import LoadtestError

    if generative:
        from loadtest.analysis.generative import SLO
        from loadtest.gendemo import GenDemoOptions, run_generative_demo

        objective = SLO.parse(slo)
        if objective is None or objective.ttft_ms is None or objective.itl_ms is None:
            raise LoadtestError("--slo needs both bounds: ttft_ms=N,itl_ms=N")
        overrides = dict(repository=repo if repo != Path("model_repository") else Path("model_repository_gen"),
                         results=results, cache_dir=cache_dir, ttft_ms=objective.ttft_ms, itl_ms=objective.itl_ms,
                         quality=not no_quality)
        bounds.check_number("--step-seconds", step_seconds, 0, bounds.MAX_RUN_TIME_S, low_open=True, unit="s")
        bounds.check_writable_dir("--results", results)
        if step_seconds:
            overrides["step_seconds"] = step_seconds
        run_generative_demo(GenDemoOptions.quick_preset(**overrides) if quick else GenDemoOptions(**overrides))
        return
    if protocol not in ("http", "grpc"):
        raise LoadtestError(f"--protocol must be http or grpc, not {protocol!r}")
    for value in rate or ():
        bounds.check_number("--rate", value, 0, bounds.MAX_ARRIVAL_RATE, low_open=True)
    bounds.check_number("--step-seconds", step_seconds, 0, bounds.MAX_RUN_TIME_S, low_open=True, unit="s")
    bounds.check_number("--sweep-start", sweep_start, 0, bounds.MAX_ARRIVAL_RATE, low_open=True, unit="req/s")
    bounds.check_number("--budget-ms", budget_ms, 0, bounds.MAX_BUDGET_MS, low_open=True, unit="ms")
    bounds.check_number("--percentile", percentile, 0, 100, low_open=True)
    if percentile >= 100:
        raise LoadtestError(f"--percentile must be below 100, got {percentile:g}")
    bounds.check_writable_dir("--results", results)
    bounds.check_writable_dir("--repo", repo.parent if repo.parent != Path("") else Path("."))
    overrides = dict(repository=repo, results=results, cache_dir=cache_dir, protocol=protocol, budget_ms=budget_ms,
                     percentile=percentile, quality=not no_quality, sweep_start=sweep_start)
    if rate:
        overrides["rates"] = tuple(rate)
    if step_seconds:
        overrides["step_seconds"] = step_seconds
    options = DemoOptions.quick_preset(**overrides) if quick else DemoOptions(**overrides)
    run_demo(options)


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
