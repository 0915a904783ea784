"""GPU readings through NVML, behind a small abstract ``GPU`` class (the shape of Zeus's device layer).

Why an abstraction: the energy monitor and the exporter only need "power now", "energy so far",
utilisation and memory; keeping NVML behind one class confines its error codes and units (mW, mJ,
percent) to this file, and leaves room for another vendor without touching the callers.

Units leave this module in SI (watts, joules, bytes, ratio 0-1), as Prometheus conventions ask.
"""

from __future__ import annotations

import abc
import threading
from dataclasses import dataclass

from loadtest.errors import LoadtestError


class NVMLUnavailableError(LoadtestError):
    """NVML cannot be used here (no driver library, no GPU, or initialisation failed)."""


@dataclass(frozen=True)
class GPUIdentity:
    """What identifies a GPU in labels: NVML index, UUID and product name."""

    index: int
    uuid: str
    name: str


class GPU(abc.ABC):
    """One accelerator's instantaneous readings, in SI units."""

    def __init__(self, identity: GPUIdentity) -> None:
        self.identity = identity

    @property
    def index(self) -> int:
        return self.identity.index

    @property
    def has_energy_counter(self) -> bool:
        """Whether :meth:`energy_joules` reads a hardware counter (else callers integrate power)."""
        return False

    @abc.abstractmethod
    def power_watts(self) -> float:
        """Current board power draw in watts."""

    def energy_joules(self) -> float | None:
        """Cumulative energy since the driver loaded, in joules; None without a hardware counter."""
        return None

    @abc.abstractmethod
    def utilization_ratio(self) -> float:
        """Fraction (0-1) of the last sample period during which a kernel was running."""

    @abc.abstractmethod
    def memory_used_bytes(self) -> int:
        """Device memory in use, in bytes."""

    @abc.abstractmethod
    def memory_total_bytes(self) -> int:
        """Device memory installed, in bytes."""


# NVML keeps a process-wide reference count; initialise once and keep it for the process's life.
_nvml_lock = threading.Lock()
_nvml_state: dict[str, object] = {"initialised": False, "error": None}


def _init_nvml() -> None:
    """Initialise NVML once per process; raise NVMLUnavailableError with the driver's reason."""
    with _nvml_lock:
        if _nvml_state["initialised"]:
            return
        if _nvml_state["error"] is not None:
            raise NVMLUnavailableError(str(_nvml_state["error"]))
        try:
            import pynvml
        except ImportError as exc:  # nvidia-ml-py is a dependency; a broken install says so
            _nvml_state["error"] = f"nvidia-ml-py is not installed ({exc})"
            raise NVMLUnavailableError(str(_nvml_state["error"])) from exc
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            _nvml_state["error"] = f"{exc} (no NVIDIA driver on this machine?)"
            raise NVMLUnavailableError(str(_nvml_state["error"])) from exc
        _nvml_state["initialised"] = True


def nvml_unavailable_reason() -> str | None:
    """Why NVML cannot be used here, or None when it can (and reports at least one GPU)."""
    try:
        _init_nvml()
        import pynvml

        if pynvml.nvmlDeviceGetCount() == 0:
            return "NVML found no GPU"
    except NVMLUnavailableError as exc:
        return str(exc)
    except Exception as exc:  # pynvml.NVMLError from the count call
        return f"NVML error: {exc}"
    return None


def nvml_is_available() -> bool:
    """True when NVML initialises and sees at least one GPU."""
    return nvml_unavailable_reason() is None


class NVMLGPU(GPU):
    """A GPU read through NVML (``nvidia-ml-py``)."""

    def __init__(self, index: int) -> None:
        _init_nvml()
        import pynvml

        self._nvml = pynvml
        self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        super().__init__(
            GPUIdentity(
                index=index,
                uuid=str(pynvml.nvmlDeviceGetUUID(self._handle)),
                name=str(pynvml.nvmlDeviceGetName(self._handle)),
            )
        )
        # The total-energy counter exists from Volta on; older boards answer NOT_SUPPORTED.
        try:
            pynvml.nvmlDeviceGetTotalEnergyConsumption(self._handle)
            self._has_counter = True
        except pynvml.NVMLError:
            self._has_counter = False

    @property
    def has_energy_counter(self) -> bool:
        return self._has_counter

    def power_watts(self) -> float:
        return self._nvml.nvmlDeviceGetPowerUsage(self._handle) / 1000.0  # mW -> W

    def energy_joules(self) -> float | None:
        if not self._has_counter:
            return None
        return self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle) / 1000.0  # mJ -> J

    def utilization_ratio(self) -> float:
        return self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu / 100.0

    def memory_used_bytes(self) -> int:
        return int(self._nvml.nvmlDeviceGetMemoryInfo(self._handle).used)

    def memory_total_bytes(self) -> int:
        return int(self._nvml.nvmlDeviceGetMemoryInfo(self._handle).total)


def get_gpus(indices: list[int] | None = None) -> list[GPU]:
    """Every visible NVIDIA GPU (or those ``indices``); raises NVMLUnavailableError without NVML.

    NVML ignores ``CUDA_VISIBLE_DEVICES``: indices here are NVML's, as nvidia-smi shows them.
    """
    reason = nvml_unavailable_reason()
    if reason is not None:
        raise NVMLUnavailableError(reason)
    import pynvml

    count = pynvml.nvmlDeviceGetCount()
    wanted = list(range(count)) if indices is None else indices
    bad = [i for i in wanted if not 0 <= i < count]
    if bad:
        raise LoadtestError(f"GPU index {bad[0]} does not exist: NVML sees {count} GPU(s), indices 0-{count - 1}")
    return [NVMLGPU(i) for i in wanted]
