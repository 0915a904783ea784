"""Helpers for the load generator's integration tests: Triton's success counter and a stall."""

from __future__ import annotations

import os
import signal
import threading
import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def triton_success(metrics_url: str) -> dict[str, float]:
    """``nv_inference_request_success`` per model, from Triton's /metrics."""
    with urllib.request.urlopen(metrics_url, timeout=10) as response:
        text = response.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "nv_inference_request_success":
            for sample in family.samples:
                out[sample.labels["model"]] = out.get(sample.labels["model"], 0.0) + sample.value
    return out


def success_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, int]:
    return {model: int(after.get(model, 0) - before.get(model, 0)) for model in set(before) | set(after)}


class Staller:
    """Pause a process (SIGSTOP) for ``pause_s`` seconds, ``delay_s`` after ``trigger()``; always resumes it."""

    def __init__(self, pid: int, delay_s: float, pause_s: float):
        self.pid, self.delay_s, self.pause_s = pid, delay_s, pause_s
        self.started = threading.Event()
        self.cancelled = False
        self.stopped_at: float | None = None
        self.resumed_at: float | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def trigger(self) -> None:
        self.started.set()

    def _run(self) -> None:
        if not self.started.wait(timeout=120) or self.cancelled:
            return
        time.sleep(self.delay_s)
        os.kill(self.pid, signal.SIGSTOP)
        self.stopped_at = time.time()
        try:
            time.sleep(self.pause_s)
        finally:
            os.kill(self.pid, signal.SIGCONT)
            self.resumed_at = time.time()

    def join(self) -> None:
        """Wait for the pause to end; a pause that never began is cancelled, not started late."""
        if not self.started.is_set():
            self.cancelled = True
            self.started.set()
        self._thread.join(timeout=self.delay_s + self.pause_s + 10)
