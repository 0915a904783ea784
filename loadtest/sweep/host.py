"""Steps start on a quiet host: wait (bounded) until other processes leave the machine to the test.

The wait's sampling windows run ``speed_probe``, so each step also gets the machine's speed just before it
(relative to the sweep's first step: ``StepResult.host_speed``), at no extra time.

The queue drain (``drain``) makes a step independent of the step before it on the server; this makes it
independent of whatever else the machine is running. Both matter most on the shared, small hosts where
staging tests often run: on the demo's two cores one neighbour's test suite takes half the machine. The
wait is bounded (``host_quiet_wait_s`` of either sweep's settings): a host that never quietens is measured anyway, and each step
records what the neighbours took (``StepResult.others_share``), so a disturbed failure is measured again.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from loadtest.errors import LoadtestError
from loadtest.load.host_cpu import HostCpuMonitor

SAMPLE_S = 1.0


NOTABLE_SPEED_CHANGE = 0.1  # a step's machine speed this far from the first step's is named with the step


def is_disturbed(others_share: float | None, busy_share: float) -> bool:
    """Other processes took at least ``busy_share`` of the machine while the step ran."""
    return others_share is not None and others_share >= busy_share


def speed_note(speed: float | None) -> str:
    """A step's machine speed in words when it is notably off the first step's; "" otherwise."""
    if speed is None or abs(speed - 1) < NOTABLE_SPEED_CHANGE:
        return ""
    return f"machine at {speed:.2f}× its speed at the first step"


def quiet_host_monitor(host: str, protocol: str | None) -> HostCpuMonitor | None:
    """A CPU monitor for the target (its server counted apart when local); None where /proc is missing."""
    from loadtest.endpoint import parse_endpoint

    if not HostCpuMonitor.available():
        return None
    try:
        endpoint = parse_endpoint(host, protocol or "auto")
    except LoadtestError:  # a host the pre-flight would refuse: no server to count apart
        return HostCpuMonitor()
    return HostCpuMonitor(endpoint.host, endpoint.port)


def wait_for_quiet_host(monitor: HostCpuMonitor, busy_share: float, max_wait_s: float,
                        on_line: Callable[[str], None] | None = None) -> tuple[float, float]:
    """Sample the host until others take less than ``busy_share`` of it, for at most ``max_wait_s``.

    Returns (seconds waited, the speed probe's figure in the last window).
    """
    started = time.monotonic()
    told = False
    while True:
        share, speed = monitor.sample_with_speed(SAMPLE_S)
        waited = time.monotonic() - started
        if share.others_share < busy_share:
            if told and on_line:
                on_line(f"host quiet after {waited:.0f} s")
            return waited, speed
        if waited >= max_wait_s:
            if on_line:
                on_line(f"host still busy after {waited:.0f} s ({share.describe()}): measuring anyway")
            return waited, speed
        if not told and on_line:
            on_line(f"host busy ({share.describe()}): waiting up to {max_wait_s:g} s before the step")
            told = True


@dataclass
class StepHost:
    """What the host did around one step: its speed before (relative to the sweep's first step), others' CPU during."""

    speed: float | None = None
    others_share: float | None = None
    note: str = ""


class HostWatch:
    """Both sweeps' per-step routine: wait for a quiet host, probe its speed, measure others' CPU over the step."""

    def __init__(self, host: str, protocol: str | None, busy_share: float, max_wait_s: float,
                 on_line: Callable[[str], None] | None = None) -> None:  # fmt: skip
        self.monitor = quiet_host_monitor(host, protocol)
        self.busy_share, self.max_wait_s, self.on_line = busy_share, max_wait_s, on_line
        self._first_speed: float | None = None

    @contextmanager
    def step(self) -> Iterator[StepHost]:
        seen = StepHost()
        if self.monitor is None:
            yield seen
            return
        _, probe = wait_for_quiet_host(self.monitor, self.busy_share, self.max_wait_s, self.on_line)
        self._first_speed = self._first_speed or probe
        seen.speed = round(probe / self._first_speed, 3)
        self.monitor.begin_window("step")
        try:
            yield seen
        finally:
            share = self.monitor.end_window("step")
            seen.others_share, seen.note = round(share.others_share, 4), share.describe()
