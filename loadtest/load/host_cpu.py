"""Who used this machine's CPU during a measurement window: the load generator, the server, everyone else.

Why: on a shared host the figure a load step measures is the server's capacity *minus what the neighbours
took*. A two-core staging box where somebody's test suite starts mid-step fails that step (the demo's
teacher step at 169 req/s was answered at 131/s, P95 2.4 s, between passing and failing steps answered
at 159 to 190/s); nothing in the step's own records says why. Measured here, the sweep can tell a
disturbed step from a failing load and measure it again once the host has quietened, and every step
line says how much of the machine was someone else's.

Windows work like Zeus's ``begin_window(key)`` / ``end_window(key)``. CPU seconds come from /proc:
the machine's busy time (user, nice, system) and the time the hypervisor took (steal) from
``/proc/stat``; this process and its descendants from ``os.times()`` (a step's Locust process has been
waited for by the window's end, so its CPU is in our children's times) plus any descendant still alive;
the server's process tree (the process listening on the target's port and its children, e.g. Triton's
Python-backend stubs) when it runs on this machine. Everything else, interrupts aside, is "others".
Never imports Locust or gevent.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from loadtest.load.serving_memory import LOOPBACK, server_pid

PROC = Path("/proc")
_HZ = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True)
class HostShare:
    """CPU used during one window, in cores (CPU seconds / wall seconds), split by who used it."""

    wall_s: float
    cores: int  # CPUs of this machine
    busy_cores: float  # user + nice + system of the whole machine
    steal_cores: float  # taken by the hypervisor for other guests
    ours_cores: float  # this process and its descendants (the load generator)
    server_cores: float | None  # the local server's process tree; None when the server is not on this machine

    @property
    def others_cores(self) -> float:
        """Cores used by processes that are neither the load generator nor the server, plus steal."""
        return max(0.0, self.busy_cores - self.ours_cores - (self.server_cores or 0.0)) + self.steal_cores

    @property
    def others_share(self) -> float:
        """``others_cores`` as a share of the machine."""
        return self.others_cores / self.cores if self.cores else 0.0

    def describe(self) -> str:
        server = f", server {self.server_cores:.2f}" if self.server_cores is not None else ""
        return (f"others used {self.others_cores:.2f} of {self.cores} cores "
                f"(load generator {self.ours_cores:.2f}{server})")


@dataclass(frozen=True)
class _Reading:
    at: float
    busy_s: float
    steal_s: float
    ours_s: float
    server_s: float | None


class HostCpuMonitor:
    """Measurement windows of the host's CPU, for a server on ``host:port`` (local or not)."""

    def __init__(self, host: str | None = None, port: int | None = None) -> None:
        self.host, self.port = host, port
        self._open: dict[str, _Reading] = {}

    @staticmethod
    def available() -> bool:
        return (PROC / "stat").is_file()

    def begin_window(self, key: str) -> None:
        self._open[key] = self._read()

    def end_window(self, key: str) -> HostShare:
        start, end = self._open.pop(key), self._read()
        wall = max(end.at - start.at, 1e-9)
        server = None
        if start.server_s is not None and end.server_s is not None:
            server = max(0.0, end.server_s - start.server_s) / wall
        return HostShare(
            wall_s=wall, cores=os.cpu_count() or 1,
            busy_cores=max(0.0, end.busy_s - start.busy_s) / wall,
            steal_cores=max(0.0, end.steal_s - start.steal_s) / wall,
            ours_cores=max(0.0, end.ours_s - start.ours_s) / wall,
            server_cores=server,
        )  # fmt: skip

    def sample_with_speed(self, seconds: float) -> tuple[HostShare, float]:
        """A window of ``seconds`` spent running ``speed_probe``: how busy the neighbours are, and how fast we are."""
        key = f"_probe-{time.monotonic()}"
        self.begin_window(key)
        speed = speed_probe(seconds)
        return self.end_window(key), speed


    def _read(self) -> _Reading:
        busy, steal = _machine_seconds()
        tree = _children()
        server, server_tree = None, set()
        if self.port is not None and (self.host or "") in LOOPBACK:
            pid = server_pid(self.port)
            if pid is not None:
                server_tree = {pid, *_descendants(pid, tree)}
                server = sum(_seconds(p) for p in server_tree)
        times = os.times()
        ours = times.user + times.system + times.children_user + times.children_system
        # live descendants (a Locust process still running); an embedded server we started is the server's
        ours += sum(_seconds(p) for p in _descendants(os.getpid(), tree) if p not in server_tree)
        return _Reading(time.monotonic(), busy, steal, ours, server)


def speed_probe(seconds: float) -> float:
    """Rounds per second of a fixed single-threaded CPU workload: this machine's speed now, in its own units.

    Why: a virtual machine's speed can move by a fifth over tens of seconds with nothing visible in /proc
    (the hypervisor's other tenants; benchmarks/served_drift.py). Comparing the probe before each step with
    the sweep's first one says whether a step ran on a slower machine. Pure Python on purpose: no thread
    pool or library dispatch between the clock and the work.
    """
    rounds, end = 0, time.perf_counter() + seconds
    started = time.perf_counter()
    while time.perf_counter() < end:
        total = 0
        for i in range(2000):
            total += i * i
        rounds += 1
    return rounds / max(time.perf_counter() - started, 1e-9)


def _machine_seconds() -> tuple[float, float]:
    """(user + nice + system, steal) CPU seconds of the whole machine since boot."""
    fields = (PROC / "stat").read_text().split("\n", 1)[0].split()[1:]
    values = [int(v) for v in fields]
    steal = values[7] if len(values) > 7 else 0
    return (values[0] + values[1] + values[2]) / _HZ, steal / _HZ


def _stat(pid: int) -> list[str] | None:
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()  # after "(comm)", which may hold spaces


def _seconds(pid: int) -> float:
    """CPU seconds of a live process and of the children it has reaped (utime, stime, cutime, cstime)."""
    fields = _stat(pid)
    return sum(int(fields[i]) for i in (11, 12, 13, 14)) / _HZ if fields else 0.0


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields:
                tree.setdefault(int(fields[1]), []).append(int(entry.name))
    return tree


def _descendants(pid: int, tree: dict[int, list[int]]) -> list[int]:
    out, todo = [], [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out
