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
from collections.abc import Callable

from loadtest.errors import LoadtestError
from loadtest.load.host_cpu import HostCpuMonitor

SAMPLE_S = 1.0


def quiet_host_monitor(host: str, protocol: str | None) -> HostCpuMonitor | None:
    """A CPU monitor for the target (its server counted apart when local); None where /proc is missing."""
    from urllib.parse import urlsplit

    from loadtest.endpoint import parse_endpoint

    if not HostCpuMonitor.available():
        return None
    try:
        endpoint = parse_endpoint(host, protocol or "auto")
        return HostCpuMonitor(endpoint.host, endpoint.port)
    except LoadtestError:  # an OpenAI-style URL with a path: find the port ourselves
        parts = urlsplit(host if "://" in host else f"//{host}")
        try:
            return HostCpuMonitor(parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80))
        except ValueError:
            return HostCpuMonitor()


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
