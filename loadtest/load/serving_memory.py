"""Peak resident memory of each model's serving processes, read from /proc when Triton runs on this machine.

Why here: the footprint table compares what each model costs to hold, and the only honest figure for a
CPU-served model is the resident set of the processes that run it. Triton's Python backend runs every
model instance in a stub process (``triton_python_backend_stub <repo>/<model>/<version>/model.py ... <model>_<g>_<i>``);
the kernel keeps each process's high-water mark (``VmHWM``), so one read when the test stops gives the
peak over the whole run without sampling. The server is found as the process listening on the
``--host`` port, and only its own stubs are counted (other Tritons on the machine are not). A remote
server, or models served inside tritonserver itself (its ONNX Runtime backend), give no per-model figure.
Never imports Locust or gevent.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

PROC = Path("/proc")
LOOPBACK = {"127.0.0.1", "localhost", "::1", "0.0.0.0", ""}
STUB = "triton_python_backend_stub"


def _listening_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("net/tcp", "net/tcp6"):
        try:
            lines = (PROC / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) > 9 and parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(parts[9])
    return inodes


def _pids() -> list[int]:
    return [int(p.name) for p in PROC.iterdir() if p.name.isdigit()]


def server_pid(port: int) -> int | None:
    """The process listening on ``port`` on this machine (None if none of ours is)."""
    wanted = {f"socket:[{inode}]" for inode in _listening_inodes(port)}
    if not wanted:
        return None
    for pid in _pids():
        try:
            for fd in (PROC / str(pid) / "fd").iterdir():
                if os.readlink(fd) in wanted:
                    return pid
        except OSError:  # gone, or not ours to read
            continue
    return None


def _status(pid: int) -> dict[str, str]:
    out = {}
    for line in (PROC / str(pid) / "status").read_text().splitlines():
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


def _kib(text: str | None) -> int:
    return int(text.split()[0]) * 1024 if text else 0


def _model_of(argv: list[str]) -> str:
    """The model a stub serves: its instance name ``<model>_<group>_<instance>`` (argv[8]), else the path."""
    if len(argv) > 8 and re.fullmatch(r".+_\d+_\d+", argv[8]):
        return argv[8].rsplit("_", 2)[0]
    parts = Path(argv[1]).parts  # <repository>/<model>/<version>/model.py
    return parts[-3] if len(parts) >= 3 else argv[1]


def serving_memory(host: str, port: int) -> dict[str, dict]:
    """``{model: {"peak_rss_bytes", "rss_bytes", "processes"}}`` of the server on ``host:port``; {} if not local."""
    if host not in LOOPBACK:
        return {}
    server = server_pid(port)
    if server is None:
        return {}
    found: dict[str, dict] = {}
    for pid in _pids():
        try:
            status = _status(pid)
            if int(status.get("PPid", "0")) != server:
                continue
            argv = (PROC / str(pid) / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if not argv or not argv[0].decode(errors="replace").endswith(STUB) or len(argv) < 2:
            continue
        model = _model_of([a.decode(errors="replace") for a in argv])
        entry = found.setdefault(model, {"peak_rss_bytes": 0, "rss_bytes": 0, "processes": 0})
        entry["peak_rss_bytes"] += _kib(status.get("VmHWM"))
        entry["rss_bytes"] += _kib(status.get("VmRSS"))
        entry["processes"] += 1
    return found
