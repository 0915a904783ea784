"""`loadtest serve`: a real Triton on this machine, configured from the repository's config.pbtxt files."""

from __future__ import annotations

from pathlib import Path

import typer


def serve(
    repo: Path = typer.Option(Path("model_repository"), "--repo", help="Triton model repository to serve."),
    http_port: int = typer.Option(8000, help="HTTP/REST (KServe v2) port."),
    grpc_port: int = typer.Option(8001, help="gRPC port."),
    metrics_port: int = typer.Option(8002, help="Prometheus /metrics port."),
    address: str = typer.Option("127.0.0.1", help="Address to bind; 0.0.0.0 exposes the server to the network."),
    pick_free_ports: bool = typer.Option(False, "--pick-free-ports", help="Replace busy ports by free ones instead of failing."),
    intra_op_threads: int = typer.Option(
        0, help="ONNX Runtime threads per instance of an ONNX model (0: the config's intra_op_thread_count, else cores / instance count)."
    ),
    ort_spinning: bool = typer.Option(
        False, "--ort-spinning/--no-ort-spinning",
        help="Let ONNX Runtime's worker threads busy-wait between runs (off: they would take CPU from Triton's own threads).",
    ),
    log_file: Path = typer.Option(None, help="Where Triton writes its log (default: a file in the temp dir)."),
    verbose: int = typer.Option(0, "--verbose", "-v", count=True, help="Triton verbose logging level."),
) -> None:
    """Serve a model repository on the Triton Inference Server bundled with nvidia-pytriton until Ctrl-C or SIGTERM.

    ONNX models run in ONNX Runtime inside a standard Python-backend model (generated in a temp dir; your
    repository is not modified); Python-backend models and ensembles are served as they are. Reports READY
    only once every model answers READY.
    """
    import signal
    import threading

    from rich.console import Console
    from rich.table import Table

    from loadtest.serving.embedded import EmbeddedTriton, ServerPorts

    check_serve_options(repo, (("--http-port", http_port), ("--grpc-port", grpc_port), ("--metrics-port", metrics_port)),
                        address)  # fmt: skip
    console = Console()
    server = EmbeddedTriton(
        repo,
        ServerPorts(http_port, grpc_port, metrics_port),
        address=address,
        pick_free_ports=pick_free_ports,
        intra_op_threads=intra_op_threads or None,
        allow_spinning=ort_spinning,
        log_verbose=verbose,
        log_file=log_file,
    )
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    with console.status(f"starting Triton with {len(server.models)} model(s) from {repo} ..."):
        server.start()
    try:
        table = Table(
            title=f"Triton Inference Server (embedded) is READY: all {len(server.served)} model(s) READY",
            title_justify="left",
        )
        table.add_column("model")
        table.add_column("served as")
        table.add_column("max batch", justify="right")
        table.add_column("queue delay µs", justify="right")
        table.add_column("instances", justify="right")
        table.add_column("ORT threads", justify="right")
        from loadtest.repository import settings_from_config

        for model in server.served:
            settings = settings_from_config(model.config)
            threads = model.config.parameters["intra_op_thread_count"].string_value if "intra_op_thread_count" in model.config.parameters else ""
            table.add_row(
                model.name,
                model.served_as,
                str(model.config.max_batch_size),
                str(settings.max_queue_delay_us) if settings.dynamic_batching else "off",
                f"{settings.instance_count} {settings.instance_kind}" if model.config.instance_group else "-",
                threads or "-",
            )
        console.print(table)
        console.print(f"HTTP    {server.http_url}\ngRPC    {server.grpc_url}\nmetrics {server.metrics_url}")
        console.print(f"log     {server.log_file}")
        console.print("[dim]Models are fixed while it runs (repository load/unload refused). Ctrl-C or SIGTERM stops it.[/]")
        while not stop.wait(1.0):
            if not server.is_alive():
                from loadtest.errors import LoadtestError

                raise LoadtestError(f"Triton exited unexpectedly; see {server.log_file}")
    finally:
        with console.status("stopping Triton ..."):
            server.stop()
        console.print("Triton stopped.")


def check_serve_options(repo: Path, ports, address: str) -> None:
    """Ports in range, a bindable address, a repository that exists: one line each, before Triton starts."""
    import socket

    from loadtest import bounds
    from loadtest.errors import LoadtestError

    for option, port in ports:
        bounds.check_port(option, port, zero_means="pick a free port")
    ip = bounds.check_bind_address("--address", address)
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((ip, 0))
        except OSError:
            raise LoadtestError(
                f"--address {address} is not an address of this machine: use 127.0.0.1 (local only) or 0.0.0.0"
            ) from None
    if not Path(repo).is_dir():
        raise LoadtestError(f"model repository {repo} does not exist: pass --repo (or run `loadtest export`)")


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
