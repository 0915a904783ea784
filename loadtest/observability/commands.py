"""CLI commands of the observability area: ``gpu-exporter`` and ``prometheus-config``.

Only typer and the standard library at import time: ``loadtest --help`` must stay instant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

DEFAULT_PORT = 9645  # mirrors loadtest.observability.exporter.DEFAULT_PORT (not imported: keeps --help light)


def gpu_exporter(
    port: int = typer.Option(
        DEFAULT_PORT, "--port", "-p", help="TCP port of the /metrics endpoint (0 picks a free one)."
    ),
    address: str = typer.Option(
        "127.0.0.1",
        "--address",
        help="Address to listen on. 127.0.0.1 serves this machine only; 0.0.0.0 lets a remote Prometheus scrape it.",
    ),
    interval: float = typer.Option(
        0.5,
        "--interval",
        min=0.01,
        help="Seconds between power samples for GPUs without NVML's energy counter (pre-Volta), "
        "whose energy is integrated from power. Other readings are taken at each scrape.",
    ),
) -> None:
    """Serve GPU power, energy, utilisation and memory (NVML) as Prometheus metrics.

    Metrics: loadtest_gpu_power_watts, loadtest_gpu_energy_joules_total, loadtest_gpu_utilization_ratio,
    loadtest_gpu_memory_used_bytes (labels gpu, uuid, name) and loadtest_gpu_nvml_available. Without NVML
    (a CPU-only machine) it says so once and keeps serving its own process metrics.
    """
    import signal
    import threading

    from rich.console import Console

    from loadtest import bounds
    from loadtest.observability.exporter import GPUExporter

    bounds.check_port("--port", port, zero_means="pick a free port")
    bounds.check_bind_address("--address", address)
    bounds.check_number("--interval", interval, 0, 3600, low_open=True, unit="s")
    console = Console(stderr=True, highlight=False, soft_wrap=True)
    exporter = GPUExporter(port=port, address=address, interval_s=interval)
    if exporter.nvml_reason is not None:
        console.print(
            f"NVML unavailable: {exporter.nvml_reason}. Serving process metrics and loadtest_gpu_nvml_available 0."
        )
    else:
        for gpu in exporter.gpus:
            source = "energy counter" if gpu.has_energy_counter else f"energy integrated from power every {interval} s"
            console.print(f"GPU {gpu.index}: {gpu.identity.name} ({gpu.identity.uuid}), {source}")
    exporter.start()
    console.print(f"serving GPU metrics on {exporter.url} (Ctrl-C to stop)")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())  # docker stop / kill: shut down cleanly
    try:
        while not stop.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        exporter.stop()
    console.print("GPU exporter stopped")


def prometheus_config(
    triton: list[str] = typer.Option(
        [], "--triton", help="Triton metrics endpoint HOST:PORT (port 8002 by default on Triton). Repeatable."
    ),
    client: list[str] = typer.Option(
        [],
        "--client",
        help="Load-generator metrics endpoint HOST:PORT: 9646 for the first process, 9647+ for --processes "
        "workers. Repeatable.",
    ),
    gpu_exporter: list[str] = typer.Option(
        [], "--gpu-exporter", help="loadtest gpu-exporter endpoint HOST:PORT (default port 9645). Repeatable."
    ),
    dcgm: list[str] = typer.Option([], "--dcgm", help="DCGM exporter endpoint HOST:PORT (port 9400). Repeatable."),
    compose: bool = typer.Option(
        False,
        "--compose",
        help="Start from the docker-compose stack's targets (service names) and replace only the jobs named "
        "here: e.g. --compose --triton staging.example:8002 for the stack's Locust against a remote Triton.",
    ),
    scrape_interval: str = typer.Option("1s", "--scrape-interval", help="Prometheus scrape interval, e.g. 1s or 2s."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write here instead of standard output."),
    check: bool = typer.Option(False, "--check", help="Validate the written file with promtool (needs -o)."),
) -> None:
    """Write a Prometheus configuration scraping Triton, the load generators and the GPU exporters.

    The scrape jobs are the ones of prometheus/prometheus.yml (the compose stack), pointed at the
    endpoints you name: use it to watch a remote staging Triton with your own Prometheus.
    """
    from loadtest.errors import LoadtestError
    from loadtest.observability import prometheus as prom

    given = prom.static_targets(triton=triton, clients=client, gpu_exporters=gpu_exporter, dcgm=dcgm) if (
        triton or client or gpu_exporter or dcgm
    ) else prom.PrometheusTargets()
    if compose:  # the stack's targets, with the jobs named on the command line replaced
        targets = prom.PrometheusTargets({**prom.compose_targets().jobs, **given.jobs})
    elif not given.jobs:
        raise LoadtestError("name at least one endpoint (--triton, --client, --gpu-exporter, --dcgm) or use --compose")
    else:
        targets = given
    header = prom.HEADER if compose and not given.jobs else prom.STATIC_HEADER
    text = prom.dump_config(prom.render_config(targets, scrape_interval), header)
    if output is None:
        if check:
            raise LoadtestError("--check validates a written file: add -o PATH")
        typer.echo(text, nl=False)
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    typer.echo(f"wrote {output}", err=True)
    if check:
        prom.check_config(output)
        typer.echo("promtool: configuration is valid", err=True)


def _help(doc: str | None) -> str:
    """A docstring as --help text: paragraphs reflowed (rich keeps single newlines as line breaks)."""
    paragraphs = (doc or "").strip().split("\n\n")
    return "\n\n".join(" ".join(p.split()) for p in paragraphs)


def register(app: typer.Typer) -> None:
    app.command(
        "gpu-exporter",
        help=_help(gpu_exporter.__doc__),
        short_help="Serve GPU power/energy metrics (NVML) for Prometheus.",
    )(gpu_exporter)
    app.command(
        "prometheus-config",
        help=_help(prometheus_config.__doc__),
        short_help="Write a Prometheus config scraping Triton, load generators and GPU exporters.",
    )(prometheus_config)
