"""``loadtest run``: one Locust scenario, headless, with its run directory and figures at the end.

Locust stays in a child process (``loadtest.load.runner``); this module imports only typer at the top.
"""

from __future__ import annotations

from pathlib import Path

import typer


def preflight(host: str, values: dict, console, tokenizer: str = ""):
    """Everything the Locust processes will check, before Locust starts: one line and exit 2 on bad input.

    Server reachable and speaking the protocol, every model READY (``--wait-ready``), inputs fillable and
    the payloads buildable: the same ``build_context`` the Locust listener runs, without importing Locust.
    """
    from types import SimpleNamespace

    from loadtest.load.context import build_context
    from loadtest.load.settings import LoadOptions

    options = LoadOptions.from_namespace(SimpleNamespace(**{k: v for k, v in values.items() if v is not None}))
    with console.status(f"pre-flight: is {host} up with its models READY?") as status:
        return build_context(
            options, host, tokenizer=tokenizer,
            on_wait=lambda message: status.update(message.replace("loadtest: ", "pre-flight: ")),
        )  # fmt: skip


def register(app: typer.Typer) -> None:
    app.command(name="run", no_args_is_help=True)(run)


def run(
    scenario: str = typer.Argument(
        ..., help="Scenario name (steady, step, spike, soak, open_loop, ab), a locustfile, or a folder of them."
    ),
    host: str = typer.Option(..., "--host", help="Triton: http://HOST:8000 (HTTP) or grpc://HOST:8001 (gRPC)."),
    repository: Path = typer.Option(
        Path("model_repository"), "--repository",
        help="Optional local copy of a loadtest-exported repository (teacher/student, tokenizer). "
        "Without it the models and their inputs are read from the server.",
    ),
    users: int | None = typer.Option(None, "-u", "--users", help="Closed loop: concurrent users (peak for shapes)."),
    spawn_rate: float | None = typer.Option(None, "-r", "--spawn-rate", help="Users started per second."),
    run_time: str = typer.Option("60s", "-t", "--run-time", help="How long to run (30s, 5m, 1h)."),
    arrival_rate: float | None = typer.Option(
        None, "--arrival-rate", help="Open loop: requests/s per model for the whole test."
    ),
    arrival: str | None = typer.Option(None, "--arrival", help="Open loop: constant or poisson."),
    stages: str | None = typer.Option(
        None, "--stages", help="Stage plan DURATION:VALUE[:LABEL],... (users, or requests/s for open_loop)."
    ),
    shape: str | None = typer.Option(None, "--shape", help="Pick a shape when several are loaded (or 'none')."),
    models: str | None = typer.Option(
        None, "--models", help="Comma-separated models (default: the repository's teacher,student, else every READY model)."
    ),
    model_version: str | None = typer.Option(None, "--model-version", help="Version to load; must be READY."),
    wait_ready: float = typer.Option(
        0.0, "--wait-ready", help="Wait up to SECONDS for the server and every model to be READY before the clock."
    ),
    input_shape: str | None = typer.Option(
        None, "--input-shape", help="Variable input dims, perf_analyzer's --shape: NAME:d1,d2 [NAME2:...]."
    ),
    input_data: Path | None = typer.Option(None, "--input-data", help="Input values: a perf_analyzer JSON file."),
    int_range: str | None = typer.Option(None, "--int-range", help="Synthetic integers from LO:HI (default 0:100)."),
    tokenizer: Path | None = typer.Option(None, "--tokenizer", help="tokenizer.json for text payloads without a repository."),
    dataset: Path | None = typer.Option(None, "--dataset", help="JSONL/CSV/Parquet payload rows (else synthetic)."),
    lengths: str | None = typer.Option(
        None, "--lengths", help="Synthetic lengths: fixed:N, uniform:MIN:MAX, lognormal:MEDIAN:SIGMA, dataset."
    ),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Rows per request."),
    processes: int | None = typer.Option(None, "--processes", help="Locust worker processes on this machine."),
    results_dir: Path = typer.Option(Path("results"), "--results-dir", help="Where the run directory is created."),
    metrics_port: int = typer.Option(9646, "--metrics-port", help="Prometheus endpoint of the load generator; 0: off."),
    metrics_address: str = typer.Option(
        "127.0.0.1", "--metrics-address", help="Address the metrics endpoint binds (0.0.0.0: reachable from the network)."
    ),
    triton_metrics_url: str | None = typer.Option(
        None, "--triton-metrics-url", help="Triton /metrics to snapshot (default: the host's port 8002)."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Do not echo Locust's output."),
    api: str | None = typer.Option(
        None, "--api", help="LLM load: openai-chat, openai-completions, triton-generate or triton-grpc "
        "(scenarios llm or llm_open_loop; TTFT, ITL, output tokens per request)."
    ),
    teacher: str | None = typer.Option(None, "--teacher", help="LLM load: the teacher's served model name."),
    student: str | None = typer.Option(None, "--student", help="LLM load: the student's served model name."),
    output_lengths: str | None = typer.Option(
        None, "--output-lengths", help="LLM load: max_tokens per request (fixed:N, uniform:MIN:MAX, lognormal:M:S)."
    ),
    ignore_eos: bool = typer.Option(False, "--ignore-eos", help="LLM load: ask for exactly max_tokens."),
    no_stream: bool = typer.Option(False, "--no-stream", help="LLM load: whole answers (no TTFT/ITL)."),
    extra_body: str | None = typer.Option(None, "--extra-body", help="LLM load: JSON merged into each request."),
) -> None:
    """Run a Locust scenario headless against Triton; print the run directory and per-model latency."""
    from rich import box
    from rich.table import Table

    from loadtest.console import output_console
    from loadtest.credentials import redact_url
    from loadtest.load.runner import INCOMPLETE_EXIT_CODE, run_locust, scenario_path
    from loadtest.load.stages import parse_duration

    scenario_path(scenario)
    check_run_options(
        host=host, users=users, spawn_rate=spawn_rate, run_time=run_time, arrival_rate=arrival_rate,
        arrival=arrival, stages=stages, batch_size=batch_size, processes=processes, metrics_port=metrics_port,
        metrics_address=metrics_address, repository=repository, dataset=dataset, models=models,
        results_dir=results_dir,
    )  # fmt: skip
    console = output_console()
    echo = None if quiet else (lambda line: console.print(line, style="dim", markup=False, highlight=False, emoji=False))
    values = dict(
        repository=str(repository), models=models, dataset=str(dataset) if dataset else None, lengths=lengths,
        batch_size=batch_size, arrival_rate=arrival_rate, arrival=arrival, stages=stages,
        model_version=model_version, wait_ready=wait_ready, input_shape=input_shape,
        input_data=str(input_data) if input_data else None, int_range=int_range,
        payload_pool=64,
    )  # fmt: skip
    llm_args: list[str] = []
    if api:  # the generative pre-flight runs in Locust (Triton APIs: READY and decoupled; prompts built)
        llm_args = ["--api", api]
        for flag, value in (("--teacher", teacher), ("--student", student), ("--output-lengths", output_lengths),
                            ("--extra-body", extra_body)):  # fmt: skip
            if value:
                llm_args += [flag, value]
        llm_args += ["--ignore-eos"] if ignore_eos else []
        llm_args += ["--no-stream"] if no_stream else []
    else:
        context = preflight(host, values, console, str(tokenizer) if tokenizer else "")
        ready = ", ".join(f"{m.name} v{m.version or (m.versions[-1] if m.versions else '?')}" for m in context.served)
        console.print(f"pre-flight: {redact_url(host)} live, models READY: {ready}", highlight=False, soft_wrap=True)
    with console.status(f"running {scenario} against {redact_url(host)} for {run_time}"), \
            _log_progress(console, f"running {scenario}", parse_duration(run_time)):
        result = run_locust(
            scenario, host, users=users, spawn_rate=spawn_rate, run_time=run_time, arrival_rate=arrival_rate,
            arrival=arrival, stages=stages, shape=shape, models=models, repository=repository, dataset=dataset,
            lengths=lengths, batch_size=batch_size, results_dir=results_dir, processes=processes,
            metrics_port=metrics_port, triton_metrics_url=triton_metrics_url, on_output=echo,
            model_version=model_version, wait_ready=wait_ready or None, input_shape=input_shape, input_data=input_data,
            int_range=int_range, tokenizer=tokenizer, extra_args=[*llm_args, "--metrics-address", metrics_address],
            return_on_signal=True,
        )  # fmt: skip
    if result.signalled:
        import signal

        console.print(f"[yellow]{signal.Signals(result.signalled).name}: the load was stopped and the run finalised[/]")
    result.check()
    if api:
        from loadtest.analysis.generative import compute
        from loadtest.analysis.generative_report import print_figures

        print_figures(compute(result.run_dir, None, resamples=200), console)
        console.print(f"run directory: [bold]{result.run_dir}[/]  (loadtest analyze RUN --slo ttft_ms=N,itl_ms=N)")
        if result.exit_code != 0:
            raise typer.Exit(result.exit_code)
        return
    from loadtest.analysis.stats import PERCENTILE_METHOD

    summaries = result.summary()
    table = Table(box=box.SIMPLE_HEAD, caption=(
        f"successful requests; percentiles: numpy '{PERCENTILE_METHOD}' over every raw latency, [95 % CI] by order "
        "statistics (the figures `loadtest analyze` reports)"))  # fmt: skip
    columns = ("model", "requests", "failures", "late", "req/s", "tokens/s", "p50 ms", "p95 ms", "p99 ms", "max ms")
    for column in columns:
        table.add_column(column, justify="left" if column == "model" else "right")
    for s in summaries:
        cells = []
        for p in (50.0, 95.0, 99.0):
            e = s.percentiles[p]
            ci = f" [{e.ci_low * 1e3:.3f}, {e.ci_high * 1e3:.3f}]" if e.ci_ok else " [n/a: n too small]"
            cells.append(f"{e.value * 1e3:.3f}{ci}")
        table.add_row(
            s.model, str(s.requests), str(s.failures), str(s.late), f"{s.achieved_rps:.2f}", f"{s.tokens_per_s:.0f}",
            *cells, f"{s.max_s * 1e3:.3f}",
        )  # fmt: skip
    console.print(table)
    from loadtest.analysis.reconcile import reconcile

    console.print(reconcile(result.run_dir).line(), highlight=False, markup=False, emoji=False)
    console.print(
        "[dim]Locust's own percentiles (locust_bucketed_*.csv, locust_bucketed.html, web UI) round each latency "
        "into buckets (1 ms below 100 ms, 10 ms below 1 s): report the figures above or `loadtest analyze`.[/]",
        soft_wrap=True,
    )
    console.print(f"run directory: [bold]{result.run_dir}[/]")
    incomplete = result.incomplete_line()
    if incomplete:
        from loadtest.console import print_error

        print_error(incomplete)
    if result.signalled:
        raise SystemExit(128 + result.signalled)
    if incomplete:
        raise SystemExit(INCOMPLETE_EXIT_CODE)
    if result.exit_code != 0:
        raise SystemExit(result.exit_code)  # not typer.Exit: under standalone_mode=False click would return it


class _log_progress:
    """Outside a terminal (CI logs, ``| tee``) rich's status spinner prints nothing: print the run's clock
    instead, a line every 10 seconds, until Locust returns."""

    def __init__(self, console, description: str, total_s: float, every_s: float = 10.0):
        self.console, self.description, self.total_s, self.every_s = console, description, total_s, every_s
        self.thread = None

    def __enter__(self):
        import threading
        import time

        if self.console.is_terminal:
            return self
        self.done = threading.Event()
        started = time.monotonic()

        def tick() -> None:
            while not self.done.wait(self.every_s):
                elapsed = time.monotonic() - started
                self.console.print(f"{self.description}: {elapsed:.0f} s of {self.total_s:g} s",
                                   markup=False, highlight=False)  # fmt: skip

        self.thread = threading.Thread(target=tick, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.thread is not None:
            self.done.set()
            self.thread.join(timeout=1)


def check_run_options(*, host, users, spawn_rate, run_time, arrival_rate, arrival, stages, batch_size, processes,
                      metrics_port, metrics_address, repository, dataset, models=None,
                      results_dir=Path("results")) -> None:  # fmt: skip
    """Every option of ``loadtest run`` checked before a run directory exists or Locust starts (one line each)."""
    from loadtest import bounds
    from loadtest.errors import LoadtestError
    from loadtest.endpoint import parse_endpoint
    from loadtest.load.stages import parse_duration, parse_stage_plan

    parse_endpoint(host)
    bounds.check_users("-u/--users", users)
    bounds.check_number("-r/--spawn-rate", spawn_rate, 0, bounds.MAX_SPAWN_RATE, low_open=True, unit="users/s")
    duration = parse_duration(run_time)
    bounds.check_number("-t/--run-time", duration, 0, bounds.MAX_RUN_TIME_S, low_open=True, unit="s")
    bounds.check_arrival_rate("--arrival-rate", arrival_rate)
    if arrival is not None and arrival not in ("constant", "poisson"):
        raise LoadtestError(f"--arrival must be constant or poisson, got '{arrival}'")
    if stages is not None:
        parse_stage_plan(stages, lambda i, v: f"stage{i}")
    bounds.check_number("--batch-size", batch_size, 1, bounds.MAX_BATCH_SIZE)
    bounds.check_processes("--processes", processes)
    bounds.check_port("--metrics-port", metrics_port)
    bounds.check_bind_address("--metrics-address", metrics_address)
    bounds.check_writable_dir("--results-dir", results_dir)
    if dataset is not None and not Path(dataset).is_file():
        raise LoadtestError(f"--dataset {dataset} not found: give a JSONL, CSV or Parquet file")
    if Path(repository).exists() and not Path(repository).is_dir():
        raise LoadtestError(f"--repository {repository} is not a directory: give the model repository's folder")
    if not Path(repository).is_dir():
        return  # optional: without it the models are read from the server (the pre-flight checks them)
    from loadtest.repository import ModelRepository

    repo = ModelRepository(repository)
    if not (repo.path / "loadtest.json").is_file():
        return
    metadata = repo.read_metadata()  # a binary or malformed loadtest.json is one line here, not in Locust
    if not models:  # the repository's own teacher and student: their configs must be readable too
        for name in dict.fromkeys([metadata.teacher, metadata.student]):
            if repo.config_path(name).is_file():
                repo.read_config(name)
