"""Wait for the server to finish what an overloaded step left in its queue before the next step starts.

An open-loop step beyond capacity leaves hundreds or thousands of requests queued in Triton when its load
generator stops (the client gives up on them; the server still executes them). A step started on top of that
backlog measures the backlog, not its own load: on the 2-core machine a sweep's 84.6 req/s step right after a
160 req/s overload was answered at 56 req/s with P95 2.7 s, while a brute-force grid found every load up to
120 req/s within budget. Steps must be independent, so each one starts only once the model's queue is empty:
Triton's ``nv_inference_pending_request_count`` gauge is 0 (or, where a server does not export it, its
request counters have stopped moving).
"""

from __future__ import annotations

import time
import urllib.request
from dataclasses import dataclass

PENDING = "nv_inference_pending_request_count"
COUNTERS = ("nv_inference_request_success", "nv_inference_request_failure")


@dataclass
class Drain:
    """How the wait ended: drained (True) or gave up; how long it took; what it read."""

    drained: bool
    seconds: float
    how: str  # "pending gauge", "counters still", or why it could not tell

    def describe(self) -> str:
        state = "drained" if self.drained else "not drained"
        return f"{state} after {self.seconds:.1f} s ({self.how})"


def _read(url: str, timeout_s: float) -> str:
    with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 (the user's metrics URL)
        return response.read().decode("utf-8", "replace")


def _model_values(text: str, model: str) -> tuple[float | None, float | None]:
    """(pending requests, answered requests) of ``model`` summed over versions; None where not exported."""
    from loadtest.analysis.server_metrics import parse_snapshot_text

    snap = parse_snapshot_text(text, 0.0, "drain")
    pending = snap.model_total(PENDING, model)
    counts = [snap.model_total(name, model) for name in COUNTERS]
    answered = sum(c for c in counts if c is not None) if any(c is not None for c in counts) else None
    return pending, answered


def wait_until_drained(metrics_url: str | None, model: str, *, timeout_s: float = 120.0, poll_s: float = 0.25,
                       quiet_s: float = 1.0) -> Drain:
    """Block until ``model`` has nothing pending on the server (or ``timeout_s`` passes)."""
    started = time.monotonic()
    if not metrics_url:
        return Drain(False, 0.0, "no Triton metrics URL: cannot tell")
    last_answered, still_since = None, None
    while True:
        elapsed = time.monotonic() - started
        try:
            pending, answered = _model_values(_read(metrics_url, timeout_s=5.0), model)
        except (OSError, ValueError) as exc:
            return Drain(False, elapsed, f"metrics unreadable: {str(exc)[:80]}")
        if pending is not None:
            if pending <= 0:
                return Drain(True, elapsed, "pending gauge")
        elif answered is None:
            return Drain(False, elapsed, f"model '{model}' not in the server's metrics")
        else:
            now = time.monotonic()
            if answered != last_answered:
                last_answered, still_since = answered, now
            elif now - still_since >= quiet_s:
                return Drain(True, elapsed, "counters still")
        if elapsed >= timeout_s:
            return Drain(False, elapsed, f"still busy after {timeout_s:g} s")
        time.sleep(poll_s)
