"""Who used the CPU during a window (loadtest.load.host_cpu) and the sweep's quiet-host wait, with real processes.

CPU seconds, not wall time, are asserted: a burner stops after a fixed amount of its own CPU time, so the
figures hold on a loaded machine (a neighbour can only add to "others", never take from a burner's count).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from loadtest.load.host_cpu import HostCpuMonitor
from loadtest.sweep import SweepSettings
from loadtest.sweep.host import wait_for_quiet_host

pytestmark = pytest.mark.skipif(not HostCpuMonitor.available(), reason="needs /proc")

BURN = "import time\nwhile time.process_time() < {cpu}: pass\n"


def _detached(code: str, done: Path) -> None:
    """Run ``code`` in a grandchild that init adopts (not our descendant: a neighbour), touching ``done`` at the end."""
    script = code + f"\nopen({str(done)!r}, 'w').close()\n"
    subprocess.run(["sh", "-c", f'"{sys.executable}" -c "$0" >/dev/null 2>&1 &', script], check=True)


def _wait_for(path: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_a_child_process_is_the_load_generators_cpu():
    monitor = HostCpuMonitor()
    monitor.begin_window("child")
    subprocess.run([sys.executable, "-c", BURN.format(cpu=0.6)], check=True)
    share = monitor.end_window("child")
    assert share.ours_cores * share.wall_s >= 0.55  # the child's CPU, reaped into our children's times
    assert share.server_cores is None  # no server port given


def test_a_detached_process_is_someone_elses_cpu(tmp_path):
    monitor = HostCpuMonitor()
    done = tmp_path / "done"
    monitor.begin_window("neighbour")
    _detached(BURN.format(cpu=0.6), done)
    _wait_for(done)
    share = monitor.end_window("neighbour")
    assert share.others_cores * share.wall_s >= 0.5
    assert share.ours_cores * share.wall_s < 0.3  # we only slept and polled
    assert "others used" in share.describe()


def test_the_local_servers_process_tree_is_counted_apart(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ready, burnt, done = tmp_path / "ready", tmp_path / "burnt", tmp_path / "done"

    def wait_file(name: str) -> str:
        return f"while not os.path.exists({str(tmp_path / name)!r}): time.sleep(0.01)\n"

    server = (  # listens, burns CPU when told, keeps listening until told to stop
        "import socket, time, os\n"
        f"s = socket.socket(); s.bind(('127.0.0.1', {port})); s.listen()\n"
        f"open({str(ready)!r}, 'w').close()\n" + wait_file("go") + BURN.format(cpu=0.8)
        + f"open({str(burnt)!r}, 'w').close()\n" + wait_file("stop")
    )
    _detached(server, done)
    _wait_for(ready)
    monitor, blind = HostCpuMonitor("127.0.0.1", port), HostCpuMonitor()  # blind: no server to count apart
    monitor.begin_window("server")
    blind.begin_window("server")
    (tmp_path / "go").touch()
    _wait_for(burnt)
    share, seen_blind = monitor.end_window("server"), blind.end_window("server")
    (tmp_path / "stop").touch()
    assert share.server_cores is not None and seen_blind.server_cores is None
    assert share.server_cores * share.wall_s >= 0.7
    # the same window: what the blind monitor calls a neighbour's is the server's when its port is known
    moved = seen_blind.others_cores * seen_blind.wall_s - share.others_cores * share.wall_s
    assert moved >= 0.6
    _wait_for(done)


def test_a_step_waits_for_a_busy_host_then_starts(tmp_path):
    cores = os.cpu_count() or 1
    settings = SweepSettings(budget_ms=100, host_busy_share=min(1.0, 0.6 / cores), host_quiet_wait_s=60)
    done, lines = tmp_path / "done", []
    _detached(BURN.format(cpu=2.5), done)
    time.sleep(0.3)
    waited, speed = wait_for_quiet_host(HostCpuMonitor(), settings.host_busy_share, settings.host_quiet_wait_s, lines.append)
    assert done.exists()  # it waited for the neighbour to finish
    assert waited >= 1.0 and lines and lines[0].startswith("host busy")
    assert speed > 0  # the wait's windows ran the speed probe


def test_the_wait_is_bounded(tmp_path):
    settings = SweepSettings(budget_ms=100, host_busy_share=min(1.0, 0.6 / (os.cpu_count() or 1)), host_quiet_wait_s=0)
    done, lines = tmp_path / "done", []
    _detached(BURN.format(cpu=3.0), done)
    time.sleep(0.3)
    wait_for_quiet_host(HostCpuMonitor(), settings.host_busy_share, settings.host_quiet_wait_s, lines.append)
    assert not done.exists() and "measuring anyway" in lines[-1]
    _wait_for(done)


def test_the_speed_probe_is_the_load_generators_cpu_not_a_neighbours():
    """The quiet-host windows run the probe: its CPU must land on our side, or every wait would see a busy host."""
    share, speed = HostCpuMonitor().sample_with_speed(0.5)
    assert speed > 0
    assert share.ours_cores * share.wall_s >= 0.3  # the probe's own CPU (a single thread busy for 0.5 s)
