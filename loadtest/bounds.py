"""The limits every numeric knob is checked against, and the one-line messages that say so.

Why one module: a rate of ``inf`` or ``1e9`` once made the open-loop driver spawn greenlets until
memory ran out, and ``--peak-qps 1e308`` produced a plan nobody could read. Each knob is checked
where the user gives it (CLI, Locust option, stage plan, gate policy) against the same table, and the
message names the option, the value and the allowed range. Never imports Locust or gevent.
"""

from __future__ import annotations

import ipaddress
import math

from loadtest.errors import LoadtestError

# One load generator (all its processes) cannot offer more than this; split bigger loads over machines.
MAX_ARRIVAL_RATE = 100_000.0  # requests/s per model
MAX_USERS = 100_000
MAX_SPAWN_RATE = 10_000.0
MAX_BATCH_SIZE = 65_536
MAX_IN_FLIGHT = 10_000
MAX_PAYLOAD_POOL = 1_000_000
MAX_PROCESSES = 512
MAX_RUN_TIME_S = 7 * 24 * 3600.0
MAX_TIMEOUT_S = 24 * 3600.0
MAX_PEAK_QPS = 1e8
MAX_BUDGET_MS = 3_600_000.0
MAX_STAGES = 1_000


def check_number(option: str, value: float | int | None, low: float, high: float, *, low_open: bool = False,
                 unit: str = "", fix: str = "") -> None:  # fmt: skip
    """Raise LoadtestError unless ``low <= value <= high`` (``low < value`` with ``low_open``) and finite."""
    if value is None:
        return
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise LoadtestError(f"{option} must be a number, got '{value}'") from None
    below = number <= low if low_open else number < low
    if math.isnan(number) or math.isinf(number) or below or number > high:
        bound = f"> {low:g}" if low_open else f">= {low:g}"
        suffix = f" {unit}" if unit else ""
        hint = f"; {fix}" if fix else ""
        raise LoadtestError(f"{option} must be finite, {bound} and <= {high:g}{suffix}, got {value}{hint}")


def check_port(option: str, port: int | None, *, allow_zero: bool = True, zero_means: str = "off") -> None:
    """A TCP port number: 1-65535 (0 too, where it means ``zero_means``)."""
    if port is None:
        return
    low = 0 if allow_zero else 1
    if not low <= int(port) <= 65535:
        zero = f" (0: {zero_means})" if allow_zero else ""
        raise LoadtestError(f"{option} must be a port number {low}-65535{zero}, got {port}")


def check_bind_address(option: str, address: str) -> str:
    """An IP address to bind (127.0.0.1, ::1, 0.0.0.0, a local interface's address) or ``localhost``."""
    text = (address or "").strip()
    if text == "localhost":
        return "127.0.0.1"
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise LoadtestError(
            f"{option} '{address}' is not an IP address: give 127.0.0.1 (this machine only) or 0.0.0.0 (every interface)"
        ) from None


def check_arrival_rate(option: str, rate: float | None) -> None:
    check_number(option, rate, 0, MAX_ARRIVAL_RATE, unit="requests/s per model",
                 fix="split a bigger load over several load-generator machines")  # fmt: skip


def check_users(option: str, users: float | None, *, low: int = 1) -> None:
    check_number(option, users, low, MAX_USERS, fix="use --master/--worker on several machines for more")


def check_processes(option: str, processes: int | None) -> None:
    """Locust's ``--processes``: -1 (one per core) or 1..MAX_PROCESSES."""
    if processes is None or processes == -1:
        return
    check_number(option, processes, 1, MAX_PROCESSES, fix="-1 starts one per CPU core")


def check_writable_dir(option: str, path) -> None:
    """``path`` is (or can be made) a directory we can write in: checked before minutes of work, not after.

    Creates the directory if missing (as the command would) but writes nothing else that stays.
    """
    import tempfile
    from pathlib import Path

    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise LoadtestError(f"{option} {folder}: {exc.strerror or exc}; pick a writable directory") from None
