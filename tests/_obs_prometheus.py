"""A real Prometheus server for tests: free loopback port, temporary storage, clean stop.

Uses the Debian package's ``prometheus`` binary (``apt-get install prometheus``); tests that need it
skip when it is absent.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import requests

from loadtest.observability.prometheus import STATIC_HEADER, PrometheusTargets, write_config
from loadtest.serving.ports import free_port

PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")


class PrometheusProcess:
    """``prometheus`` on 127.0.0.1 with the repository's scrape jobs pointed at ``targets``."""

    def __init__(self, workdir: Path, targets: PrometheusTargets, scrape_interval: str = "1s") -> None:
        if PROMETHEUS is None:
            raise RuntimeError("prometheus binary not found (apt-get install prometheus)")
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config = write_config(self.workdir / "prometheus.yml", targets, scrape_interval, STATIC_HEADER)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.workdir / "prometheus.log"
        self._proc: subprocess.Popen | None = None
        self._log = None

    def start(self, timeout_s: float = 60.0) -> PrometheusProcess:
        self._log = open(self.log_path, "wb")
        self._proc = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={self.config}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"prometheus exited ({self._proc.returncode}):\n{self.log_tail()}")
            try:
                if requests.get(f"{self.url}/-/ready", timeout=2).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"prometheus not ready after {timeout_s} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def targets(self) -> list[dict]:
        return requests.get(f"{self.url}/api/v1/targets", timeout=5).json()["data"]["activeTargets"]

    def wait_until_up(self, jobs: set[str], timeout_s: float = 30.0) -> list[dict]:
        """Wait until every target of ``jobs`` has been scraped successfully; return the targets."""
        deadline = time.monotonic() + timeout_s
        active: list[dict] = []
        while time.monotonic() < deadline:
            active = [t for t in self.targets() if t["labels"].get("job") in jobs]
            if {t["labels"]["job"] for t in active} >= jobs and all(t["health"] == "up" for t in active):
                return active
            time.sleep(0.5)
        raise AssertionError(f"targets of {sorted(jobs)} not all up after {timeout_s} s: {active}")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()  # SIGTERM: Prometheus flushes and exits
            try:
                self._proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=10)
        self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> PrometheusProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
