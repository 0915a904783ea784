"""A real Triton Inference Server on this machine, serving a model repository; used as a context manager.

We run the ``tritonserver`` binary bundled in the nvidia-pytriton wheel directly, over a serving
repository prepared in a temp dir (``serving_repository``): ONNX models run in ONNX Runtime inside a
standard Python-backend ``model.py``, so a request crosses tritonserver -> Python backend stub -> ONNX
Runtime and nothing else. Everything Triton is told about a model comes from the repository's own
config.pbtxt, so the embedded server batches, queues and reports metrics the way a staging Triton
configured from the same repository would.

Readiness: with model-control mode ``none`` Triton loads every model before it opens its endpoints and
exits if one fails, and its repository load/unload API is refused, so the set of served models cannot
change under a load test. ``start()`` still returns only after each model answers READY on
``/v2/models/NAME/ready``.
"""

from __future__ import annotations

import atexit
import ctypes
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from loadtest.errors import LoadtestError
from loadtest.repository import ModelRepository
from loadtest.serving.distribution import TritonDistribution, ensure_python_libdir_on_ld_path
from loadtest.serving.ports import free_port, port_is_free
from loadtest.serving.serving_repository import ServedModel, ServingOptions, prepare_serving_repository

LOG = logging.getLogger(__name__)

__all__ = ["EmbeddedTriton", "ServerPorts", "ensure_python_libdir_on_ld_path", "resolve_ports"]

# Python-backend shared memory per model instance: start small, grow on demand (PyTriton's choice too).
SHM_DEFAULT_BYTES = 4 * 1024 * 1024
SHM_GROWTH_BYTES = 1024 * 1024


@dataclass
class ServerPorts:
    """The three endpoints Triton opens."""

    http: int = 8000
    grpc: int = 8001
    metrics: int = 8002


def resolve_ports(ports: ServerPorts, address: str, pick_free: bool) -> ServerPorts:
    """Check the requested ports; 0 means any free port; a busy one is an error, or is replaced when ``pick_free``."""
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
    """Serve every model of a repository on the wheel's tritonserver."""

    def __init__(
        self,
        repository: Path | str,
        ports: ServerPorts | None = None,
        *,
        address: str = "127.0.0.1",
        pick_free_ports: bool = False,
        intra_op_threads: int | None = None,
        allow_spinning: bool | None = False,
        log_verbose: int = 0,
        metrics_interval_ms: int = 1000,
        log_file: Path | str | None = None,
        start_timeout_s: float = 300.0,
        exit_timeout_s: int = 5,
    ):
        self.repository = Path(repository)
        self.model_repository = ModelRepository(repository)
        self.models = self.model_repository.validate()
        self.address = address
        self.ports = resolve_ports(ports or ServerPorts(), address, pick_free_ports)
        self.options = ServingOptions(intra_op_threads=intra_op_threads, allow_spinning=allow_spinning)
        self.log_verbose = log_verbose
        self.metrics_interval_ms = metrics_interval_ms
        self.start_timeout_s = start_timeout_s
        self.exit_timeout_s = exit_timeout_s
        # tritonserver's log and console (NVML/DCGM warnings on a CPU machine) go to this file, not our terminal.
        self.log_file = Path(log_file) if log_file else Path(tempfile.gettempdir()) / f"loadtest-triton-{os.getpid()}.log"
        self.served: list[ServedModel] = []
        self.workspace: Path | None = None
        self._process: subprocess.Popen | None = None

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
        return self._process.pid if self._process is not None else None

    @property
    def serving_repository(self) -> Path | None:
        return self.workspace / "models" if self.workspace else None

    # ---- lifecycle ----------------------------------------------------------------------------
    def command(self, distribution: TritonDistribution) -> list[str]:
        """The tritonserver command line (the workspace must exist)."""
        assert self.workspace is not None
        shm_prefix = f"loadtest{os.getpid()}x{id(self) % 100000}_"
        return [
            str(distribution.binary),
            f"--model-repository={self.workspace / 'models'}",
            f"--backend-directory={self.workspace / 'backends'}",
            "--model-control-mode=none",  # load all at start, exit if one fails, refuse load/unload
            "--strict-readiness=true",
            "--exit-on-error=true",
            f"--exit-timeout-secs={self.exit_timeout_s}",
            f"--http-address={self.address}",
            f"--http-port={self.ports.http}",
            f"--grpc-address={self.address}",
            f"--grpc-port={self.ports.grpc}",
            f"--metrics-address={self.address}",
            f"--metrics-port={self.ports.metrics}",
            "--allow-metrics=true",
            "--allow-cpu-metrics=true",
            f"--allow-gpu-metrics={'true' if self.options.gpu_available else 'false'}",
            f"--metrics-interval-ms={self.metrics_interval_ms}",
            f"--log-verbose={self.log_verbose}",
            f"--backend-config=python,shm-region-prefix-name={shm_prefix}",
            f"--backend-config=python,shm-default-byte-size={SHM_DEFAULT_BYTES}",
            f"--backend-config=python,shm-growth-byte-size={SHM_GROWTH_BYTES}",
        ]

    def start(self) -> EmbeddedTriton:
        """Prepare the serving repository, start tritonserver, and return once every model is READY."""
        if self._process is not None:
            return self
        distribution = TritonDistribution.find()
        self.options = ServingOptions(
            intra_op_threads=self.options.intra_op_threads,
            allow_spinning=self.options.allow_spinning,
            gpu_available=_gpu_visible(),
        )
        self.workspace = Path(tempfile.mkdtemp(prefix="loadtest-serving-"))
        try:
            self.served = prepare_serving_repository(self.model_repository, self.workspace / "models", self.options)
            distribution.assemble_backends(self.workspace / "backends")
            self.log_file.parent.mkdir(parents=True, exist_ok=True)
            with open(self.log_file, "ab") as log:
                self._process = subprocess.Popen(
                    self.command(distribution),
                    env=distribution.environment(),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    preexec_fn=_die_with_parent if threading.current_thread() is threading.main_thread() else None,
                )
            atexit.register(self.stop)
            self._wait_until_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        pending = list(self.models)
        with requests.Session() as session:
            while pending:
                if self._process.poll() is not None:
                    raise LoadtestError(f"Triton failed to start: {self._failure_reason()} (log: {self.log_file})")
                if time.monotonic() > deadline:
                    raise LoadtestError(
                        f"Triton did not report {', '.join(pending)} READY within {self.start_timeout_s:.0f} s "
                        f"(log: {self.log_file})"
                    )
                try:
                    pending = [m for m in pending if session.get(f"{self.http_url}/v2/models/{m}/ready", timeout=2).status_code != 200]
                except requests.RequestException:
                    pass  # endpoints open only after every model has loaded
                if pending:
                    time.sleep(0.1)

    def _failure_reason(self) -> str:
        """The first error Triton logged (a model that failed to load, a port it could not bind)."""
        try:
            lines = self.log_file.read_text(errors="replace").splitlines()
        except OSError:
            return f"tritonserver exited with code {self._process.returncode}"
        errors = [line for line in lines if line.startswith("E") and "nvml" not in line.lower() and "dcgm" not in line.lower()]
        important = [e for e in errors if any(k in e.lower() for k in ("failed to load", "address already in use", "failed to start"))]
        if important or errors:
            # "E1201 12:00:00.0 1 file.cc:42] \"failed to load 'x' ...\n\nAt: ...\"": keep the message's first line
            message = (important or errors)[0].split("] ", 1)[-1].strip().strip('"')
            return message.split("\\n")[0].strip()
        return f"tritonserver exited with code {self._process.returncode}"

    def stop(self) -> None:
        """Stop tritonserver (SIGINT, then SIGKILL after the exit timeout) and remove the workspace; idempotent."""
        process, self._process = self._process, None
        atexit.unregister(self.stop)
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=self.exit_timeout_s + 10)
            except subprocess.TimeoutExpired:
                LOG.warning("tritonserver did not exit in time; killing it")
                process.kill()
                process.wait()
        if self.workspace is not None:
            shutil.rmtree(self.workspace, ignore_errors=True)
            self.workspace = None

    def is_alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def __enter__(self) -> EmbeddedTriton:
        return self.start()

    def __exit__(self, *_exc) -> None:
        self.stop()


def _gpu_visible() -> bool:
    try:
        from loadtest.observability.gpu import nvml_unavailable_reason

        return nvml_unavailable_reason() is None
    except Exception:
        return False


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it when our process dies, so no tritonserver outlives a crash.

    Linux sends the signal when the *thread* that forked exits, hence only for servers started from the
    main thread.
    """
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass
