"""GPU readings, energy windows and the GPU exporter.

On a CPU machine: NVML is reported unavailable and the exporter still serves its process metrics
with ``loadtest_gpu_nvml_available 0``. Tests marked ``gpu`` run on a machine with an NVIDIA GPU
(the conftest skips them elsewhere) and check real power, a rising energy counter under load, and
the exporter's series.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from loadtest.errors import LoadtestError
from loadtest.observability.energy import EnergyMonitor, PowerIntegrator
from loadtest.observability.exporter import GPUExporter
from loadtest.observability.gpu import NVMLUnavailableError, get_gpus, nvml_is_available, nvml_unavailable_reason
from loadtest.serving.ports import free_port

GPU_FAMILIES = (
    "loadtest_gpu_power_watts",
    "loadtest_gpu_energy_joules",  # the parser strips _total from counter family names
    "loadtest_gpu_utilization_ratio",
    "loadtest_gpu_memory_used_bytes",
)


def scrape(url: str) -> dict[str, list]:
    """Family name -> samples of a /metrics page, parsed with prometheus-client's own parser."""
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


# --- any machine -----------------------------------------------------------------------------------


def test_probe_and_factory_agree():
    reason = nvml_unavailable_reason()
    assert nvml_is_available() is (reason is None)
    if reason is None:
        assert len(get_gpus()) >= 1
    else:
        assert reason.strip()
        with pytest.raises(NVMLUnavailableError, match=reason[:20]):
            get_gpus()


def test_exporter_serves_process_metrics_and_nvml_state():
    with GPUExporter(port=0) as exporter:
        families = scrape(exporter.url)
    assert families["process_cpu_seconds"], "prometheus-client's process collector is served"
    assert "python_info" in families
    (available,) = families["loadtest_gpu_nvml_available"]
    assert available.value == (0.0 if exporter.nvml_reason else 1.0)
    for name in GPU_FAMILIES:
        assert name in families, f"{name} is always declared"
        assert len(families[name]) == len(exporter.gpus)


def test_exporter_busy_port_is_a_user_error():
    with GPUExporter(port=0) as first:
        with pytest.raises(LoadtestError, match="port busy"):
            GPUExporter(port=first.port).start()


def test_exporter_rejects_nonpositive_interval():
    with pytest.raises(LoadtestError, match="interval"):
        GPUExporter(port=0, interval_s=0)


def test_energy_window_errors_are_user_errors():
    if not nvml_is_available():
        with pytest.raises(NVMLUnavailableError):
            EnergyMonitor()
        return
    with EnergyMonitor() as monitor:
        with pytest.raises(LoadtestError, match="never begun"):
            monitor.end_window("missing")
        monitor.begin_window("w")
        with pytest.raises(LoadtestError, match="already open"):
            monitor.begin_window("w")


def test_gpu_exporter_command_without_gpu_says_so_once_and_serves():
    """The CLI command on this machine: one NVML line (when there is no GPU), then it serves."""
    port = free_port()
    env = dict(os.environ, COLUMNS="200")
    proc = subprocess.Popen(
        [sys.executable, "-c", "from loadtest.cli import main; main()", "gpu-exporter", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 60
        families = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                families = scrape(f"http://127.0.0.1:{port}/metrics")
                break
            except OSError:
                time.sleep(0.2)
        assert families is not None, f"exporter did not serve (exit {proc.poll()})"
        assert families["process_cpu_seconds"]
        time.sleep(1.5)  # a few scrape/sampling cycles: the NVML message must not repeat
        scrape(f"http://127.0.0.1:{port}/metrics")
    finally:
        proc.terminate()
        output, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, output  # SIGTERM is a clean stop
    assert f"serving GPU metrics on http://127.0.0.1:{port}/metrics" in output
    if nvml_is_available():
        assert "NVML unavailable" not in output
        assert "GPU 0:" in output
    else:
        assert output.count("NVML unavailable: ") == 1, output
        (available,) = families["loadtest_gpu_nvml_available"]
        assert available.value == 0.0


# --- with an NVIDIA GPU ----------------------------------------------------------------------------


def _busy_gpu(seconds: float) -> bool:
    """Keep GPU 0 busy with matrix products for ``seconds``; False when torch has no CUDA here."""
    try:
        import torch
    except ImportError:
        return False
    if not torch.cuda.is_available():
        return False
    a = torch.randn(4096, 4096, device="cuda")
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for _ in range(20):
            a = torch.tanh(a @ a)
        torch.cuda.synchronize()
    return True


@pytest.mark.gpu
def test_gpu_readings_are_physical():
    gpus = get_gpus()
    for gpu in gpus:
        assert gpu.power_watts() > 0
        assert 0.0 <= gpu.utilization_ratio() <= 1.0
        assert 0 <= gpu.memory_used_bytes() <= gpu.memory_total_bytes()
        assert gpu.memory_total_bytes() > 0
        assert gpu.identity.uuid.startswith("GPU-")
        assert gpu.identity.name


@pytest.mark.gpu
def test_energy_window_of_an_idle_gpu():
    gpu = get_gpus([0])[0]
    with EnergyMonitor([gpu]) as monitor:
        monitor.begin_window("idle")
        time.sleep(3)
        idle = monitor.end_window("idle")
    assert idle.total_joules > 0, "an idle GPU still draws power"
    assert idle.seconds >= 3 and idle.end > idle.start
    assert set(idle.joules) == {gpu.index}
    assert idle.source == ("counter" if gpu.has_energy_counter else "integrated")
    assert 0 < idle.mean_watts < 2000, idle


@pytest.mark.gpu
def test_energy_counter_rises_faster_under_load():
    try:
        import torch

        cuda = torch.cuda.is_available()
    except ImportError:
        cuda = False
    if not cuda:
        pytest.skip("needs torch with CUDA to load the GPU (this torch is CPU-only)")
    gpu = get_gpus([0])[0]
    with EnergyMonitor([gpu]) as monitor:
        monitor.begin_window("idle")
        time.sleep(4)
        idle = monitor.end_window("idle")
        monitor.begin_window("load")
        assert _busy_gpu(4.0)
        busy = monitor.end_window("load")
    assert busy.total_joules > 0
    assert busy.mean_watts > idle.mean_watts, (idle, busy)


@pytest.mark.gpu
def test_integrated_power_agrees_with_counter():
    gpu = get_gpus([0])[0]
    if not gpu.has_energy_counter:
        pytest.skip(f"{gpu.identity.name} has no energy counter to compare with")
    integrator = PowerIntegrator([gpu], interval_s=0.05).start()
    try:
        counter_start, integral_start = gpu.energy_joules(), integrator.sample()[0]
        if not _busy_gpu(5.0):
            time.sleep(5.0)
        counter_j = gpu.energy_joules() - counter_start
        integral_j = integrator.sample()[0] - integral_start
    finally:
        integrator.stop()
    assert counter_j > 0 and integral_j > 0
    # NVML power is a ~1 s moving average: the two sources agree loosely over a few seconds.
    assert abs(integral_j - counter_j) / counter_j < 0.5, (counter_j, integral_j)


@pytest.mark.gpu
def test_exporter_serves_gpu_series():
    with GPUExporter(port=0) as exporter:
        assert exporter.nvml_reason is None
        first = scrape(exporter.url)
        _busy_gpu(2.0) or time.sleep(2.0)
        second = scrape(exporter.url)
    assert first["loadtest_gpu_nvml_available"][0].value == 1.0
    for name in GPU_FAMILIES:
        assert len(second[name]) == len(exporter.gpus), name
        for sample in second[name]:
            assert set(sample.labels) == {"gpu", "uuid", "name"}
    power = [s.value for s in second["loadtest_gpu_power_watts"]]
    assert all(w > 0 for w in power)
    energy = {s.labels["gpu"]: s.value for s in second["loadtest_gpu_energy_joules"] if s.name.endswith("_total")}
    energy_before = {s.labels["gpu"]: s.value for s in first["loadtest_gpu_energy_joules"] if s.name.endswith("_total")}
    assert all(energy[g] > energy_before[g] for g in energy), (energy_before, energy)
