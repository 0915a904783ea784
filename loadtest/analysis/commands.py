"""``loadtest analyze``, ``loadtest sweep`` and ``loadtest plan``: the analyzer's commands.

Only typer and the standard library at the top: pandas, scipy and matplotlib load inside the bodies so
``loadtest --help`` stays instant.
"""

from __future__ import annotations

from pathlib import Path

import typer

from loadtest import bounds
from loadtest.console import output_console
from loadtest.errors import LoadtestError

COST_FILE_HELP = "Cost file (YAML: instances with $/hour, accelerators, power). Default: the shipped list prices."
INSTANCE_HELP = "Instance type from the cost file the servers run on (default: the file's default_instance)."
GRID_HELP = "Grid carbon intensity for CO2e, g/kWh (475 = world average)."


def _check_budget(budget_ms: float | None, percentile: float | None) -> None:
    bounds.check_number("--budget-ms", budget_ms, 0, bounds.MAX_BUDGET_MS, low_open=True, unit="ms")
    bounds.check_number("--percentile", percentile, 0, 100, low_open=True)
    if percentile is not None and percentile >= 100:
        raise LoadtestError(f"--percentile must be below 100 (the maximum is not a percentile budget), got {percentile:g}")


def register(app: typer.Typer) -> None:
    app.command(name="sweep", no_args_is_help=True)(sweep)
    app.command(name="analyze", no_args_is_help=True)(analyze)
    app.command(name="plan", no_args_is_help=True)(plan)


def analyze(
    run_dir: Path = typer.Argument(..., help="Run directory (results/<run-id>) with records/ and manifest.json."),
    budget_ms: float | None = typer.Option(
        None, "--budget-ms", help="Latency budget for capacity and cost (default: the sweep's, else 100 ms)."
    ),
    percentile: float | None = typer.Option(
        None, "--percentile", help="Percentile the budget applies to: 95 (default) or 99, or any in (0, 100)."
    ),
    baseline: Path | None = typer.Option(
        None, "--baseline", help="Another run to compare with: version-over-version deltas of every figure."
    ),
    cost_file: Path | None = typer.Option(None, "--cost-file", help=COST_FILE_HELP),
    instance: str | None = typer.Option(None, "--instance", help=INSTANCE_HELP),
    prometheus_url: str | None = typer.Option(
        None, "--prometheus-url", help="Prometheus that scraped Triton during the run (range queries over its window)."
    ),
    grid_g_per_kwh: float = typer.Option(475.0, "--grid-g-per-kwh", help=GRID_HELP),
    steps: bool = typer.Option(True, "--steps/--no-steps", help="Print the per-step table too."),
    slo: str | None = typer.Option(
        None, "--slo", help="Generative runs: per-request SLO for goodput, ttft_ms=N,itl_ms=N[,e2e_ms=N]."
    ),
) -> None:
    """Build the tables, teacher-vs-student comparison and report.html of a run directory."""
    from loadtest.analysis.analyze import analyze_run
    from loadtest.analysis.generative import is_generative_run
    from loadtest.analysis.terminal import render_terminal

    _check_budget(budget_ms, percentile)
    bounds.check_number("--grid-g-per-kwh", grid_g_per_kwh, 0, 10_000, unit="g/kWh")
    if cost_file is not None:
        from loadtest.analysis.costs import load_cost_book

        load_cost_book(cost_file)
    console = output_console()
    if is_generative_run(run_dir):
        analyze_generative(run_dir, slo, cost_file, instance, console)
        return
    with console.status(f"analyzing {run_dir}"):
        result = analyze_run(
            run_dir, budget_ms=budget_ms, percentile=percentile, cost_file=cost_file, instance=instance,
            baseline=baseline, prometheus_url=prometheus_url, grid_g_per_kwh=grid_g_per_kwh,
        )
    render_terminal(result, console, steps=steps)


def analyze_generative(run_dir: Path, slo: str | None, cost_file: Path | None, instance: str | None, console) -> None:
    """TTFT/ITL/E2E, tokens/s, goodput, cost and energy of a generative run, its tables and report.html."""
    from loadtest.analysis import generative, generative_report

    objective = generative.SLO.parse(slo)
    with console.status(f"analyzing {run_dir}"):
        result = generative.compute(run_dir, objective, cost_file=cost_file, instance=instance)
        tables, report = generative_report.write_outputs(result)
    generative_report.render_terminal(result, console, tables, report)


def sweep(
    host: str = typer.Option(..., "--host", help="Triton: http://HOST:8000 (HTTP) or grpc://HOST:8001 (gRPC)."),
    budget_ms: float | None = typer.Option(
        None, "--budget-ms", help="Latency budget in ms the percentile must stay within (classifiers)."
    ),
    percentile: float = typer.Option(95.0, "--percentile", help="Percentile judged against the budget (95 or 99)."),
    repository: Path = typer.Option(
        Path("model_repository"), "--repository", help="Local copy of the model repository (tokenizer, inputs, roles)."
    ),
    models: str | None = typer.Option(
        None, "--models", help="Comma-separated models (default: the repository's teacher,student, else every READY model)."
    ),
    mode: str = typer.Option(
        "open", "--mode", help="open: fixed arrival-rate steps (req/s per model); closed: concurrency steps (users)."
    ),
    start: float | None = typer.Option(
        None, "--start", help="First step's load (req/s, or users in closed mode). Default 10 (generative: 1 req/s)."
    ),
    growth: float = typer.Option(2.0, "--growth", help="Coarse phase: each step multiplies the load by this."),
    max_load: float | None = typer.Option(
        None, "--max-load", help="Never drive more than this load (default 5000; generative: 200 req/s)."
    ),
    tolerance: float | None = typer.Option(
        None, "--tolerance", help="Bisect until the answer is known within ±this (default 0.05; generative: 0.1)."
    ),
    warmup: float = typer.Option(2.0, "--warmup", help="Seconds of each step discarded as warm-up."),
    duration: float | None = typer.Option(
        None, "--step-duration",
        help="Measured seconds per step (stretched to reach --min-requests). Shorter steps are quicker but, on a busy "
             "host, less repeatable (benchmarks/sweep_vs_bruteforce.py measures it). Default 30 (generative: 10).",
    ),
    min_requests: int | None = typer.Option(
        None, "--min-requests", help="Successful requests a step needs after warm-up (default 200; generative: 20)."
    ),
    max_error_rate: float = typer.Option(0.01, "--max-error-rate", help="A step with more errors fails."),
    stability_windows: int = typer.Option(3, "--stability-windows", help="Windows a step is split into for stability."),
    stability_threshold: float = typer.Option(
        0.25, "--stability-threshold", help="Relative rise (latency) / spread (throughput) across windows that fails a step."
    ),
    max_steps: int = typer.Option(24, "--max-steps", help="At most this many steps per model."),
    confirm_failures: bool = typer.Option(
        False, "--confirm-failures",
        help="Measure a failing step that kept up with its load once more; it fails only if it fails again. Costs a "
             "step per failure; keeps a busy host's stall from deciding the answer (the demo turns it on).",
    ),
    host_busy_share: float = typer.Option(
        0.1, "--host-busy-share",
        help="Each step waits (up to --host-quiet-wait) until processes other than the load generator and a local "
             "server take less than this share of the machine's CPU; a failing step they disturbed that much is "
             "measured again. 1 turns it off.",
    ),
    host_quiet_wait: float = typer.Option(30.0, "--host-quiet-wait", help="Longest wait (s) for a quiet host before a step."),
    arrival: str = typer.Option("constant", "--arrival", help="Open loop: constant or poisson inter-arrival times."),
    protocol: str | None = typer.Option(None, "--protocol", help="auto, http or grpc (default: from --host)."),
    lengths: str | None = typer.Option(None, "--lengths", help="Synthetic lengths (fixed:N, uniform:MIN:MAX, ...)."),
    dataset: Path | None = typer.Option(None, "--dataset", help="JSONL/CSV/Parquet payload rows (else synthetic)."),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Rows per request."),
    processes: int | None = typer.Option(None, "--processes", help="Locust worker processes (raise for high rates)."),
    triton_metrics_url: str | None = typer.Option(
        None, "--triton-metrics-url", help="Triton /metrics to snapshot per step (default: the host's port 8002)."
    ),
    gpu_metrics_url: str | None = typer.Option(None, "--gpu-metrics-url", help="GPU exporter /metrics to snapshot."),
    results_dir: Path = typer.Option(Path("results"), "--results-dir", help="Where the sweep's run directory goes."),
    wait_ready: float = typer.Option(
        0.0, "--wait-ready", help="Before the first step: wait up to SECONDS for the server and every model to be READY."
    ),
    cost_file: Path | None = typer.Option(None, "--cost-file", help=COST_FILE_HELP),
    instance: str | None = typer.Option(None, "--instance", help=INSTANCE_HELP),
    api: str | None = typer.Option(
        None, "--api", help="Generative sweep: openai-chat, openai-completions, triton-generate or triton-grpc."
    ),
    slo: str | None = typer.Option(None, "--slo", help="Generative: ttft_ms=N,itl_ms=N[,e2e_ms=N], judged at P95."),
    teacher: str | None = typer.Option(None, "--teacher", help="Generative: the teacher's served model name."),
    student: str | None = typer.Option(None, "--student", help="Generative: the student's served model name."),
    tokenizer: Path | None = typer.Option(None, "--tokenizer", help="Generative: tokenizer folder or tokenizer.json."),
    output_lengths: str | None = typer.Option(None, "--output-lengths", help="Generative: max_tokens (fixed:N, ...)."),
    ignore_eos: bool = typer.Option(False, "--ignore-eos", help="Generative: ask for exactly max_tokens."),
    extra_body: str | None = typer.Option(None, "--extra-body", help="Generative: JSON merged into each request."),
    max_in_flight: int | None = typer.Option(None, "--max-in-flight", help="Open loop: most requests in flight."),
) -> None:
    """Find each model's highest sustained load within a latency budget (growth, then bisection to ±5 %).

    With --api: each model's highest arrival rate whose P95 TTFT and P95 ITL meet --slo.
    """
    from loadtest.analysis.analyze import analyze_run
    from loadtest.analysis.capacity import StepRules
    from loadtest.sweep import SweepSettings, SweepTarget, run_sweep
    from loadtest.analysis.terminal import render_terminal
    from loadtest.errors import LoadtestError

    if api:
        from loadtest.analysis.generative_sweep import GenerativeSweepSettings

        load_args = ["--api", api]
        for flag, value in (("--tokenizer", tokenizer), ("--output-lengths", output_lengths), ("--lengths", lengths),
                            ("--dataset", dataset), ("--extra-body", extra_body)):  # fmt: skip
            if value is not None:
                load_args += [flag, str(value)]
        if ignore_eos:
            load_args.append("--ignore-eos")
        g_settings = GenerativeSweepSettings(
            slo=_generative_slo(slo), start=1.0 if start is None else start, growth=growth,
            max_rate=200.0 if max_load is None else max_load, tolerance=0.1 if tolerance is None else tolerance,
            max_steps=max_steps, warmup_s=warmup, duration_s=10.0 if duration is None else duration,
            min_requests=20 if min_requests is None else min_requests, max_error_rate=max_error_rate, arrival=arrival,
        )  # fmt: skip
        sweep_generative(host, g_settings, models, teacher, student, load_args, max_in_flight, results_dir, cost_file,
                         instance, {"api": api, "output_lengths": output_lengths, "ignore_eos": ignore_eos})
        return
    if budget_ms is None:
        raise LoadtestError("--budget-ms is required (or --api and --slo for a generative sweep)")
    start = 10.0 if start is None else start
    max_load = 5000.0 if max_load is None else max_load
    tolerance = 0.05 if tolerance is None else tolerance
    duration = 30.0 if duration is None else duration
    min_requests = 200 if min_requests is None else min_requests
    if mode not in ("open", "closed"):
        raise LoadtestError(f"--mode must be open or closed, got '{mode}'")
    from loadtest.endpoint import parse_endpoint

    parse_endpoint(host, protocol or "auto")
    _check_budget(budget_ms, percentile)
    high = bounds.MAX_ARRIVAL_RATE if mode == "open" else bounds.MAX_USERS
    bounds.check_number("--start", start, 0, high, low_open=True)
    bounds.check_number("--max-load", max_load, 0, high, low_open=True,
                        unit="req/s per model" if mode == "open" else "users")  # fmt: skip
    bounds.check_number("--step-duration", duration, 0, bounds.MAX_RUN_TIME_S, low_open=True, unit="s")
    bounds.check_number("--warmup", warmup, 0, bounds.MAX_RUN_TIME_S, unit="s")
    bounds.check_number("--host-quiet-wait", host_quiet_wait, 0, bounds.MAX_RUN_TIME_S, unit="s")
    bounds.check_number("--host-busy-share", host_busy_share, 0, 1, low_open=True)
    bounds.check_number("--batch-size", batch_size, 1, bounds.MAX_BATCH_SIZE)
    bounds.check_processes("--processes", processes)
    bounds.check_writable_dir("--results-dir", results_dir)
    if arrival not in ("constant", "poisson"):
        raise LoadtestError(f"--arrival must be constant or poisson, got '{arrival}'")
    try:
        settings = SweepSettings(
            budget_ms=budget_ms, percentile=percentile, mode=mode, start=start, growth=growth, max_load=max_load,
            tolerance=tolerance, max_steps=max_steps, warmup_s=warmup, duration_s=duration, arrival=arrival,
            confirm_failures=confirm_failures, host_busy_share=host_busy_share, host_quiet_wait_s=host_quiet_wait,
            rules=StepRules(min_requests=min_requests, max_error_rate=max_error_rate,
                            stability_windows=stability_windows, stability_threshold=stability_threshold,
                            min_duration_s=min(5.0, duration)),
        )
    except ValueError as exc:  # pydantic: name the first bad option
        err = exc.errors()[0] if hasattr(exc, "errors") else None
        where = "--" + str(err["loc"][-1]).replace("_", "-") if err else "option"
        raise LoadtestError(f"{where}: {err['msg'] if err else exc}") from None
    names, roles = _models(repository, models)
    console = output_console()
    from loadtest.load.preflight import check_server
    from loadtest.endpoint import parse_endpoint

    with console.status(f"pre-flight: is {host} up with its models READY?") as status:
        checked = check_server(parse_endpoint(host, protocol or "auto"), names or None, wait_ready_s=wait_ready,
                               on_wait=lambda message: status.update(message.replace("loadtest: ", "pre-flight: ")))  # fmt: skip
    names = checked.names
    target = SweepTarget(host=host, repository=repository, protocol=protocol, triton_metrics_url=triton_metrics_url,
                         gpu_metrics_url=gpu_metrics_url, processes=processes, lengths=lengths,
                         batch_size=batch_size, dataset=dataset)
    unit = "req/s" if mode == "open" else "users"
    console.print(f"sweeping {', '.join(names)} at P{percentile:g} ≤ {budget_ms:g} ms: from {start:g} {unit}, "
                  f"×{growth:g} then bisection to ±{tolerance:.0%}")
    outcome = run_sweep(target, settings, names, roles, results_dir=results_dir, console=console)
    result = analyze_run(outcome.run_dir, budget_ms=budget_ms, percentile=percentile, cost_file=cost_file,
                         instance=instance)
    render_terminal(result, console)


def _generative_slo(text: str | None):
    from loadtest.analysis.generative import SLO
    from loadtest.errors import LoadtestError

    objective = SLO.parse(text)
    if objective is None:
        raise LoadtestError("a generative sweep needs --slo ttft_ms=N,itl_ms=N[,e2e_ms=N]")
    return objective


def sweep_generative(host, settings, models, teacher, student, load_args, max_in_flight, results_dir, cost_file,
                     instance, generation) -> None:  # fmt: skip
    """Run the generative SLO sweep, then analyze its directory like any generative run."""
    from loadtest.analysis import generative, generative_report
    from loadtest.analysis.generative_sweep import GenerativeTarget, run_generative_sweep
    from loadtest.errors import LoadtestError

    names = [m.strip() for m in (models or "").split(",") if m.strip()] or [n for n in (teacher, student) if n]
    if not names:
        raise LoadtestError("name the served models: --models NAME[,NAME] or --teacher/--student")
    settings.validate()
    console = output_console()
    console.print(f"sweeping {', '.join(names)} for {settings.slo.describe()} at P95: from {settings.start:g} req/s, "
                  f"×{settings.growth:g} then bisection to ±{settings.tolerance:.0%}")  # fmt: skip
    target = GenerativeTarget(host, tuple(load_args), max_in_flight)
    outcome = run_generative_sweep(target, settings, list(dict.fromkeys(names)),
                                   {"teacher": teacher, "student": student}, generation, results_dir=results_dir,
                                   console=console)  # fmt: skip
    result = generative.compute(outcome.run_dir, settings.slo, cost_file=cost_file, instance=instance)
    tables, report = generative_report.write_outputs(result)
    generative_report.render_terminal(result, console, tables, report)


def _models(repository: Path, models: str | None) -> tuple[list[str], dict[str, str | None]]:
    """Model names to sweep and who is teacher/student (from the repository's loadtest.json)."""

    from loadtest.errors import LoadtestError

    meta_path = repository / "loadtest.json"
    meta = {}
    if meta_path.is_file():
        from loadtest.repository import read_json

        meta = read_json(meta_path, "repository metadata")
        if not isinstance(meta, dict):
            raise LoadtestError(f"{meta_path} is not a JSON object naming teacher and student")
    teacher, student = meta.get("teacher"), meta.get("student")
    names = [m.strip() for m in models.split(",") if m.strip()] if models else [n for n in (teacher, student) if n]
    return list(dict.fromkeys(names)), {"teacher": teacher, "student": student}  # []: every READY model


def plan(
    run_dir: Path = typer.Argument(..., help="A run directory with capacity figures (best: a `loadtest sweep` run)."),
    peak_qps: float = typer.Option(..., "--peak-qps", help="Peak requests/s the service must absorb."),
    budget_ms: float | None = typer.Option(
        None, "--budget-ms", help="Latency budget (default: the sweep's; a different one reuses its steps)."
    ),
    percentile: float | None = typer.Option(None, "--percentile", help="Percentile the budget applies to (95)."),
    headroom: float = typer.Option(1.3, "--headroom", help="Capacity factor over peak (1.3 = 30 % spare)."),
    cost_file: Path | None = typer.Option(None, "--cost-file", help=COST_FILE_HELP),
    instance: str | None = typer.Option(None, "--instance", help=INSTANCE_HELP),
    slo: str | None = typer.Option(
        None, "--slo", help="Generative runs: the SLO capacity is judged against (default: the sweep's)."
    ),
) -> None:
    """Replicas and monthly cost for teacher and student at a peak load: the capacity plan in one table."""
    from rich.table import Table

    from loadtest.analysis import fmt
    from loadtest.analysis.analyze import compute
    from loadtest.analysis.plan import plan as make_plan
    from loadtest.analysis.plan import plan_frame, saving_line
    from loadtest.analysis.views import who
    from loadtest.rundir import RunDir

    bounds.check_number("--peak-qps", peak_qps, 0, bounds.MAX_PEAK_QPS, low_open=True, unit="req/s")
    bounds.check_number("--headroom", headroom, 1, 100, fix="1.3 keeps 30 % spare capacity")
    _check_budget(budget_ms, percentile)
    console = output_console()
    from loadtest.analysis.generative import is_generative_run

    if is_generative_run(run_dir):
        plan_generative(run_dir, peak_qps, headroom, slo, cost_file, instance, console)
        return
    with console.status(f"reading capacity from {run_dir}"):
        analysis = compute(run_dir, budget_ms=budget_ms, percentile=percentile, cost_file=cost_file, instance=instance)
    rows = make_plan(analysis, peak_qps, headroom)
    folder = RunDir(analysis.run_dir).tables_dir
    folder.mkdir(exist_ok=True)
    frame = plan_frame(rows)
    frame.to_csv(folder / "plan.csv", index=False)
    frame.to_parquet(folder / "plan.parquet", index=False)
    book = analysis.cost_book
    table = Table(
        title=f"Capacity plan: {peak_qps:g} req/s peak × {headroom:g} headroom at P{analysis.percentile:g} ≤ "
              f"{analysis.budget_ms:g} ms", title_justify="left", header_style="bold cyan",
        caption=f"Replica = one {rows[0].instance if rows else ''} serving as measured; monthly = replicas × $/hour × "
                f"{book.hours_per_month:g} h; prices: {book.basis}.", caption_justify="left", caption_style="dim",
    )
    for h in ("Model", "QPS at budget / replica", "Replicas", "Instance", "$/hour", "Monthly cost", "Note"):
        table.add_column(h, justify="left" if h in ("Model", "Instance", "Note") else "right")
    for r in rows:
        table.add_row(who(r.model, r.role), fmt.num(r.qps_at_budget_per_replica),
                      str(r.replicas) if r.replicas is not None else fmt.MISSING, r.instance, fmt.usd(r.usd_per_hour),
                      fmt.usd(r.monthly_usd), r.note)
    console.print(table)
    line = saving_line(rows)
    if line:
        console.print(line)
    console.print(f"table: {folder / 'plan.csv'}", style="dim")


def plan_generative(run_dir: Path, peak_qps: float, headroom: float, slo: str | None, cost_file, instance,
                    console) -> None:  # fmt: skip
    """Replicas for a generative run from each model's capacity under the SLO."""
    from rich.table import Table

    from loadtest.analysis import fmt, generative
    from loadtest.analysis.generative_sweep import plan_rows
    from loadtest.analysis.plan import plan_frame, saving_line
    from loadtest.rundir import read_manifest

    objective = generative.SLO.parse(slo)
    if objective is None:
        stored = (read_manifest(run_dir).get("sweep") or {}).get("slo")
        objective = generative.SLO(**stored) if stored else None
    with console.status(f"reading capacity from {run_dir}"):
        analysis = generative.compute(run_dir, objective, cost_file=cost_file, instance=instance, resamples=200)
    rows = plan_rows(analysis, peak_qps, headroom, cost_file)
    folder = analysis.run_dir / "tables"
    folder.mkdir(exist_ok=True)
    plan_frame(rows).to_csv(folder / "plan.csv", index=False)
    table = Table(title=f"Capacity plan: {peak_qps:g} req/s peak × {headroom:g} headroom under "
                        f"{objective.describe()} at P95", title_justify="left", header_style="bold cyan")  # fmt: skip
    for name in ("model", "role", "req/s per replica", "replicas", "instance", "monthly", "note"):
        table.add_column(name, justify="left" if name in ("model", "role", "instance", "note") else "right")
    for r in rows:
        table.add_row(r.model, r.role, fmt.num(r.qps_at_budget_per_replica), str(r.replicas or "—"), r.instance,
                      fmt.usd(r.monthly_usd) if r.monthly_usd is not None else "—", r.note)  # fmt: skip
    console.print(table)
    line = saving_line(rows)
    if line:
        console.print(line)
