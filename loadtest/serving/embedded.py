"""A real Triton Inference Server, embedded through PyTriton, serving a repository's ONNX models.

PyTriton runs the actual ``tritonserver`` binary with its Python backend; each model instance is an
ONNX Runtime session in this process. Everything Triton is told comes from the repository's own
config.pbtxt (name, tensors, max batch, dynamic batcher, instance count), so the embedded server batches,
queues and reports metrics the way a staging Triton configured from the same repository would.
"""

from __future__ import annotations

import logging
import os
import sysconfig
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from loadtest.errors import LoadtestError
from loadtest.repository import ModelRepository, settings_from_config, tensor_specs
from loadtest.serving.ports import free_port, port_is_free

LOG = logging.getLogger(__name__)


@dataclass
class ServerPorts:
    """The three endpoints Triton opens."""

    http: int = 8000
    grpc: int = 8001
    metrics: int = 8002


def ensure_python_libdir_on_ld_path() -> None:
    """Make Triton's Python-backend stub load *this* interpreter's libpython.

    The stub links ``libpython3.X.so`` dynamically; with a non-system Python (pyenv, conda, venv over
    either) the system copy is found first and models fail to load with
    ``'_thread.RLock' object has no attribute '_recursion_count'``. PyTriton passes our environment to
    tritonserver, so prepending the interpreter's LIBDIR here is enough.
    """
    libdir = sysconfig.get_config_var("LIBDIR")
    if not libdir:
        return
    current = os.environ.get("LD_LIBRARY_PATH", "")
    if libdir not in current.split(":"):
        os.environ["LD_LIBRARY_PATH"] = f"{libdir}:{current}" if current else libdir


def resolve_ports(ports: ServerPorts, address: str, pick_free: bool) -> ServerPorts:
    """Check the requested ports; a busy one is an error, or is replaced when ``pick_free``."""
    host = "0.0.0.0" if address in ("0.0.0.0", "") else address
    chosen: dict[str, int] = {}
    for name in ("http", "grpc", "metrics"):
        port = getattr(ports, name)
        if port == 0 or (pick_free and not port_is_free(port, host)):
            port = free_port(host if host != "0.0.0.0" else "127.0.0.1", exclude=set(chosen.values()))
        elif not port_is_free(port, host):
            raise LoadtestError(
                f"{name} port {port} on {host} is busy (another Triton?): choose --{name}-port or use --pick-free-ports"
            )
        if port in chosen.values():
            raise LoadtestError(f"{name} port {port} is used twice: give the three endpoints different ports")
        chosen[name] = port
    return ServerPorts(**chosen)


class EmbeddedTriton:
    """Serve every ONNX model of a repository on an embedded Triton; use as a context manager."""

    def __init__(
        self,
        repository: Path | str,
        ports: ServerPorts | None = None,
        *,
        address: str = "127.0.0.1",
        pick_free_ports: bool = False,
        intra_op_threads: int | None = None,
        log_verbose: int = 0,
        metrics_interval_ms: int = 1000,
        log_file: Path | str | None = None,
    ):
        self.repository = Path(repository)
        self.model_repository = ModelRepository(repository)
        self.models = self.model_repository.validate()
        self.address = address
        self.ports = resolve_ports(ports or ServerPorts(), address, pick_free_ports)
        self.intra_op_threads = intra_op_threads
        self.log_verbose = log_verbose
        self.metrics_interval_ms = metrics_interval_ms
        # Triton's own log goes to a file (PyTriton would echo it all to stdout otherwise).
        self.log_file = Path(log_file) if log_file else Path(tempfile.gettempdir()) / f"loadtest-triton-{os.getpid()}.log"
        self._triton = None

    # ---- endpoints ----------------------------------------------------------------------------
    @property
    def host(self) -> str:
        return "127.0.0.1" if self.address in ("0.0.0.0", "") else self.address

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.ports.http}"

    @property
    def grpc_url(self) -> str:
        return f"grpc://{self.host}:{self.ports.grpc}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.ports.metrics}/metrics"

    @property
    def http_port(self) -> int:
        return self.ports.http

    @property
    def grpc_port(self) -> int:
        return self.ports.grpc

    @property
    def metrics_port(self) -> int:
        return self.ports.metrics

    @property
    def tritonserver_pid(self) -> int | None:
        """PID of the tritonserver child (tests pause it to simulate a stall)."""
        server = getattr(self._triton, "_triton_server", None)
        running = getattr(server, "_tritonserver_running_cmd", None)
        return running.pid if running is not None else None

    # ---- lifecycle ----------------------------------------------------------------------------
    def start(self) -> "EmbeddedTriton":
        """Start tritonserver, bind every model, and return once all are READY."""
        ensure_python_libdir_on_ld_path()
        from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
        from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig

        from loadtest.serving.onnx_instance import OnnxInstance, ort_providers

        for noisy in ("pytriton", "sh"):
            logging.getLogger(noisy).setLevel(logging.WARNING if self.log_verbose == 0 else logging.DEBUG)

        config = TritonConfig(
            http_address=self.address,
            grpc_address=self.address,
            metrics_address=self.address,
            http_port=self.ports.http,
            grpc_port=self.ports.grpc,
            metrics_port=self.ports.metrics,
            allow_cpu_metrics=True,
            metrics_interval_ms=self.metrics_interval_ms,
            log_verbose=self.log_verbose or None,  # PyTriton echoes server logs whenever this is set
            exit_timeout_secs=5,
            log_file=self.log_file,
        )
        # Loopback by default, and statistics are what operators read: leave Triton's APIs unrestricted.
        self._triton = Triton(
            config=config,
            security_config=TritonSecurityConfig(restricted_endpoints=[]),
        )
        cpu_count = os.cpu_count() or 1
        try:
            for name in self.models:
                model_config = self.model_repository.read_config(name)
                if model_config.platform != "onnxruntime_onnx":
                    raise LoadtestError(
                        f"model '{name}' is {model_config.platform}: the embedded server runs ONNX models only; "
                        "serve TensorRT plans with a real Triton (docker compose up)"
                    )
                settings = settings_from_config(model_config)
                inputs = tensor_specs(model_config.input)
                outputs = tensor_specs(model_config.output)
                threads = self.intra_op_threads or max(1, cpu_count // settings.instance_count)
                providers = ort_providers(settings.instance_kind, settings.tensorrt_accelerator)
                model_path = self.model_repository.model_file(name)
                instances = [
                    OnnxInstance(model_path, inputs, outputs, providers, threads) for _ in range(settings.instance_count)
                ]
                batcher = DynamicBatcher(
                    max_queue_delay_microseconds=settings.max_queue_delay_us,
                    preferred_batch_size=settings.preferred_batch_sizes or None,
                )
                self._triton.bind(
                    model_name=name,
                    infer_func=instances,
                    inputs=[Tensor(name=s.name, dtype=np.dtype(s.dtype), shape=s.dims) for s in inputs],
                    outputs=[Tensor(name=s.name, dtype=np.dtype(s.dtype), shape=s.dims) for s in outputs],
                    config=ModelConfig(
                        batching=True,
                        max_batch_size=settings.max_batch_size,
                        batcher=batcher if settings.dynamic_batching else DynamicBatcher(),
                    ),
                    strict=False,
                )
            _quiet_server_echo(self._triton, self.log_verbose)
            self._triton.run()
        except LoadtestError:
            self.stop()
            raise
        except Exception as exc:
            self.stop()
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise LoadtestError(f"Triton failed to start: {message}") from exc
        return self

    def stop(self) -> None:
        """Stop tritonserver and wait for it (idempotent)."""
        if self._triton is not None:
            try:
                self._triton.stop()
            finally:
                self._triton = None

    def is_alive(self) -> bool:
        return self._triton is not None and self._triton.is_alive()

    def __enter__(self) -> "EmbeddedTriton":
        return self.start()

    def __exit__(self, *_exc) -> None:
        self.stop()


def _quiet_server_echo(triton, log_verbose: int) -> None:
    """Stop PyTriton echoing tritonserver's console to our stdout (its ``TritonServer(verbose=True)`` default).

    Triton's log already goes to ``log_file``; what still reached the terminal were stray lines such as
    DCGM's "Failed to initialize NVML" on a CPU machine and "Signal (2) received." at shutdown, which read
    like errors. PyTriton (pinned in constraints.txt) has no public switch, so this sets its private flag
    when present and otherwise leaves the echo on.
    """
    if log_verbose:
        return
    initialize = getattr(triton, "_initialize_server", None)
    if getattr(triton, "_triton_server", None) is None and callable(initialize):
        initialize()
    server = getattr(triton, "_triton_server", None)
    if server is not None and hasattr(server, "_verbose"):
        server._verbose = False
