"""GPU energy over measurement windows: ``begin_window(key)`` / ``end_window(key) -> Measurement``.

Why windows: the analyzer needs joules for exactly the span of a run or a sweep step (docs/method.md,
"Energy"), not a power curve. Where every GPU has NVML's total-energy counter (Volta and newer) a
window's energy is the counter's difference, the precise source; otherwise power is sampled in a
background thread and integrated with the trapezoid rule, and the measurement says so
(``source="integrated"``). Same idea as Zeus's ``ZeusMonitor``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from loadtest.errors import LoadtestError
from loadtest.observability.gpu import GPU, get_gpus

EnergySource = Literal["counter", "integrated"]


@dataclass(frozen=True)
class Measurement:
    """Energy spent by each GPU over one window."""

    key: str
    start: float  # epoch seconds
    end: float  # epoch seconds
    seconds: float  # measured with perf_counter
    joules: dict[int, float] = field(default_factory=dict)  # GPU index -> joules
    source: EnergySource = "counter"

    @property
    def total_joules(self) -> float:
        return float(sum(self.joules.values()))

    @property
    def mean_watts(self) -> float:
        return self.total_joules / self.seconds if self.seconds > 0 else float("nan")


class PowerIntegrator:
    """Cumulative joules per GPU from power samples (trapezoid rule), for GPUs without a counter.

    A daemon thread samples every ``interval_s``; :meth:`sample` may also be called at any moment
    (window edges) so a window's energy includes its own last fraction of an interval.
    """

    def __init__(self, gpus: Sequence[GPU], interval_s: float = 0.1) -> None:
        if interval_s <= 0:
            raise LoadtestError(f"power sampling interval must be > 0 s, got {interval_s}")
        self.gpus = list(gpus)
        self.interval_s = interval_s
        self._lock = threading.Lock()
        self._joules = {g.index: 0.0 for g in self.gpus}
        self._last: dict[int, tuple[float, float]] = {}  # index -> (perf_counter, watts)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.errors = 0  # failed power reads (skipped, the integral bridges them)

    def sample(self) -> dict[int, float]:
        """Read every GPU's power now, extend the integrals, and return cumulative joules."""
        with self._lock:
            for gpu in self.gpus:
                try:
                    watts = gpu.power_watts()
                except Exception:  # a transient NVML error must not stop the integration
                    self.errors += 1
                    continue
                now = time.perf_counter()
                last = self._last.get(gpu.index)
                if last is not None:
                    self._joules[gpu.index] += (watts + last[1]) / 2.0 * (now - last[0])
                self._last[gpu.index] = (now, watts)
            return dict(self._joules)

    def start(self) -> PowerIntegrator:
        if self._thread is None:
            self.sample()
            self._thread = threading.Thread(target=self._run, name="power-integrator", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5 * self.interval_s + 1)
            self._thread = None


class EnergyMonitor:
    """Energy per named window over a set of GPUs (all visible NVIDIA GPUs by default).

    Raises :class:`loadtest.observability.gpu.NVMLUnavailableError` when there is no GPU to measure.
    """

    def __init__(self, gpus: Sequence[GPU] | None = None, sample_interval_s: float = 0.1) -> None:
        self.gpus = list(gpus) if gpus is not None else get_gpus()
        if not self.gpus:
            raise LoadtestError("EnergyMonitor needs at least one GPU")
        # One source for all GPUs, so every window of a run is measured the same way.
        self.source: EnergySource = "counter" if all(g.has_energy_counter for g in self.gpus) else "integrated"
        self._integrator = (
            PowerIntegrator(self.gpus, sample_interval_s).start() if self.source == "integrated" else None
        )
        self._windows: dict[str, tuple[float, float, dict[int, float]]] = {}

    def cumulative_joules(self) -> dict[int, float]:
        """Energy so far per GPU: the hardware counter, or the integral since this monitor started."""
        if self._integrator is not None:
            return self._integrator.sample()
        return {g.index: float(g.energy_joules() or 0.0) for g in self.gpus}

    def begin_window(self, key: str) -> None:
        if key in self._windows:
            raise LoadtestError(f"energy window {key!r} is already open")
        self._windows[key] = (time.time(), time.perf_counter(), self.cumulative_joules())

    def end_window(self, key: str) -> Measurement:
        try:
            start_epoch, start_perf, start_joules = self._windows.pop(key)
        except KeyError:
            raise LoadtestError(f"energy window {key!r} was never begun") from None
        end_joules = self.cumulative_joules()
        end_perf = time.perf_counter()
        return Measurement(
            key=key,
            start=start_epoch,
            end=start_epoch + (end_perf - start_perf),
            seconds=end_perf - start_perf,
            joules={i: end_joules[i] - start_joules[i] for i in start_joules},
            source=self.source,
        )

    def close(self) -> None:
        if self._integrator is not None:
            self._integrator.stop()

    def __enter__(self) -> EnergyMonitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
