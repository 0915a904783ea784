"""Prometheus exporter for GPU power, energy, utilisation and memory (``loadtest gpu-exporter``).

Why our own exporter beside DCGM's and Triton's: it runs without containers or DCGM, gives the
energy counter the analyzer wants (``loadtest_gpu_energy_joules_total``, from NVML's counter or
integrated power), and on a machine without NVML it still serves, with ``loadtest_gpu_nvml_available 0``
and its own process metrics, so a dashboard or a scrape job never breaks for want of a GPU.

Readings are taken at scrape time (a custom collector), except integrated energy, which a
background thread accumulates every ``interval_s``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from loadtest.errors import LoadtestError
from loadtest.observability.energy import PowerIntegrator
from loadtest.observability.gpu import GPU, NVMLUnavailableError, get_gpus

DEFAULT_PORT = 9645
DEFAULT_ADDRESS = "127.0.0.1"
DEFAULT_INTERVAL_S = 0.5
LABELS = ("gpu", "uuid", "name")


class GPUCollector(Collector):
    """Yields the ``loadtest_gpu_*`` families for the given GPUs (none when NVML is unavailable)."""

    def __init__(self, gpus: Sequence[GPU], integrator: PowerIntegrator | None = None) -> None:
        self.gpus = list(gpus)
        self.integrator = integrator
        self.read_errors = 0

    def describe(self) -> Iterable[Metric]:
        return list(self._families())

    def _families(self) -> tuple[Metric, ...]:
        return (
            GaugeMetricFamily("loadtest_gpu_nvml_available", "1 when NVML answers and sees a GPU, else 0."),
            GaugeMetricFamily("loadtest_gpu_power_watts", "Board power draw (NVML).", labels=LABELS, unit="watts"),
            CounterMetricFamily(
                "loadtest_gpu_energy_joules",
                "Energy since the counter started: NVML's total-energy counter where the GPU has one, "
                "else power integrated by this exporter since it started.",
                labels=LABELS,
                unit="joules",
            ),
            GaugeMetricFamily(
                "loadtest_gpu_energy_counter_available",
                "1 when energy comes from the GPU's hardware counter, 0 when integrated from power samples.",
                labels=LABELS,
            ),
            GaugeMetricFamily(
                "loadtest_gpu_utilization_ratio",
                "Fraction of the last sample period a kernel was running (NVML).",
                labels=LABELS,
                unit="ratio",
            ),
            GaugeMetricFamily("loadtest_gpu_memory_used_bytes", "Device memory in use.", labels=LABELS, unit="bytes"),
            GaugeMetricFamily(
                "loadtest_gpu_memory_total_bytes", "Device memory installed.", labels=LABELS, unit="bytes"
            ),
            CounterMetricFamily(
                "loadtest_gpu_read_errors", "NVML reads that failed (the reading is left out of that scrape)."
            ),
        )

    def collect(self) -> Iterable[Metric]:
        available, power, energy, counter, util, used, total, errors = self._families()
        available.add_metric([], 1.0 if self.gpus else 0.0)
        integrated = self.integrator.sample() if self.integrator is not None else {}
        for gpu in self.gpus:
            labels = [str(gpu.index), gpu.identity.uuid, gpu.identity.name]
            readings = (
                (power, gpu.power_watts),
                (util, gpu.utilization_ratio),
                (used, gpu.memory_used_bytes),
                (total, gpu.memory_total_bytes),
            )
            for family, read in readings:
                try:
                    family.add_metric(labels, float(read()))
                except Exception:  # one failed NVML read must not fail the whole scrape
                    self.read_errors += 1
            counter.add_metric(labels, 1.0 if gpu.has_energy_counter else 0.0)
            try:
                joules = gpu.energy_joules() if gpu.has_energy_counter else integrated.get(gpu.index)
                if joules is not None:
                    energy.add_metric(labels, float(joules))
            except Exception:
                self.read_errors += 1
        errors.add_metric([], float(self.read_errors))
        return (available, power, energy, counter, util, used, total, errors)


class GPUExporter:
    """The GPU collector plus prometheus-client's process collectors behind an HTTP endpoint.

    ``nvml_reason`` is None when NVML works, else the one-line reason it does not (the exporter then
    serves process metrics and ``loadtest_gpu_nvml_available 0``).
    """

    def __init__(
        self,
        port: int = DEFAULT_PORT,
        address: str = DEFAULT_ADDRESS,
        interval_s: float = DEFAULT_INTERVAL_S,
        gpus: Sequence[GPU] | None = None,
    ) -> None:
        if interval_s <= 0:
            raise LoadtestError(f"--interval must be > 0 s, got {interval_s}")
        self.port = port
        self.address = address
        self.nvml_reason: str | None = None
        if gpus is None:
            try:
                gpus = get_gpus()
            except NVMLUnavailableError as exc:
                self.nvml_reason = str(exc)
                gpus = []
        self.gpus = list(gpus)
        without_counter = [g for g in self.gpus if not g.has_energy_counter]
        self.integrator = PowerIntegrator(without_counter, interval_s) if without_counter else None
        self.registry = CollectorRegistry()
        for collector in (ProcessCollector, PlatformCollector, GCCollector):
            collector(registry=self.registry)
        self.collector = GPUCollector(self.gpus, self.integrator)
        self.registry.register(self.collector)
        self._server = None
        self._thread = None

    @property
    def url(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"http://{host}:{self.port}/metrics"

    def start(self) -> GPUExporter:
        """Serve on ``address:port`` in a daemon thread (port 0 picks a free one)."""
        from prometheus_client import start_http_server

        try:
            self._server, self._thread = start_http_server(self.port, addr=self.address, registry=self.registry)
        except OSError as exc:
            raise LoadtestError(
                f"cannot serve GPU metrics on {self.address}:{self.port}: {exc.strerror or exc} "
                "(port busy? pick another with --port)"
            ) from None
        self.port = self._server.server_port
        if self.integrator is not None:
            self.integrator.start()
        return self

    def stop(self) -> None:
        if self.integrator is not None:
            self.integrator.stop()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> GPUExporter:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
