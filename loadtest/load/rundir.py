"""Run directories: ``results/<run-id>/`` with a manifest, never overwritten.

Why: a capacity figure is only defensible with what produced it beside it: the settings, the software
versions, the client host, when it ran. The run id ``YYYYmmdd-HHMMSS-<kind>`` sorts by time; a clash
gets a numeric suffix, and directories are created with ``mkdir`` (atomic), so two runs started in
the same second never share a directory. Never imports Locust or gevent.
"""

from __future__ import annotations

import json
import os
import platform
import re
import socket
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from importlib import metadata
from pathlib import Path

from loadtest.errors import LoadtestError

MANIFEST = "manifest.json"
METRICS_DIR = "metrics"
DEFAULT_RESULTS_DIR = "results"
VERSIONED_PACKAGES = ("loadtest", "locust", "tritonclient", "gevent", "geventhttpclient", "grpcio", "numpy", "pyarrow")
_KIND_RE = re.compile(r"[^A-Za-z0-9_.-]+")


def safe_label(text: str) -> str:
    """A label usable in a file name (stage labels, run kinds)."""
    return _KIND_RE.sub("_", str(text)).strip("_") or "unnamed"


def new_run_id(kind: str, when: float | None = None) -> str:
    stamp = datetime.fromtimestamp(time.time() if when is None else when).strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{safe_label(kind)}"


def create_run_dir(results_dir: Path | str, kind: str, when: float | None = None) -> Path:
    """Create and return a fresh ``<results_dir>/<run-id>`` (suffix ``-2``, ``-3``... if taken)."""
    root = Path(results_dir)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LoadtestError(f"cannot create results directory {root}: {exc.strerror}; pick a writable --results-dir") from None
    base = new_run_id(kind, when)
    for n in range(1, 10_000):
        path = root / (base if n == 1 else f"{base}-{n}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        except OSError as exc:
            raise LoadtestError(f"cannot create a run directory in {root}: {exc.strerror}; pick a writable --results-dir") from None
        return path
    raise LoadtestError(f"too many runs named {base} in {root}")


def claim_run_dir(path: Path | str) -> Path:
    """Use a given run directory: created if missing, refused if it already holds records or a manifest."""
    from loadtest.load.records import shard_paths

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise LoadtestError(f"run directory {path} exists and is not a directory")
    if (path / MANIFEST).exists() or shard_paths(path):
        raise LoadtestError(f"run directory {path} already holds a run: runs are never overwritten")
    path.mkdir(parents=True, exist_ok=True)
    return path


def versions() -> dict[str, str]:
    """Versions of the packages that shape the numbers, plus Python's."""
    found = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def client_host() -> dict[str, object]:
    """The load generator's machine: a saturated client inflates latencies, so it belongs in the record."""
    return {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "python_executable": sys.executable,
    }


@dataclass
class RunDir:
    """A run directory and its manifest (atomic writes: write to a temporary name, then rename)."""

    path: Path

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    @property
    def metrics_dir(self) -> Path:
        return self.path / METRICS_DIR

    @property
    def run_id(self) -> str:
        return self.path.name

    def read_manifest(self) -> dict:
        if not self.manifest_path.is_file():
            return {}
        try:
            manifest = json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise LoadtestError(f"{self.manifest_path} is not a loadtest manifest (not UTF-8 JSON: {exc}); "
                                "restore it or point at another run directory") from None  # fmt: skip
        if not isinstance(manifest, dict):
            raise LoadtestError(f"{self.manifest_path} is not a loadtest manifest (a JSON object is expected)")
        return manifest

    def write_manifest(self, manifest: dict) -> Path:
        """Write atomically; any URL user-info (``scheme://user:password@``) is scrubbed on the way out."""
        from loadtest.credentials import scrub

        tmp = self.path / f".{MANIFEST}.tmp"
        tmp.write_text(scrub(json.dumps(manifest, indent=2, sort_keys=False, default=str), None) + "\n")
        os.replace(tmp, self.manifest_path)
        return self.manifest_path

    def update_manifest(self, **fields) -> dict:
        manifest = self.read_manifest()
        manifest.update(fields)
        self.write_manifest(manifest)
        return manifest
