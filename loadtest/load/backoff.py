"""Closed-loop backoff after connection errors: a dead server must not turn the client into a storm.

Why: a closed-loop user sends its next request as soon as the last one ends; when the server is down
a refused connection ends in microseconds, so a handful of users fired 3,400 refused requests/s at a
killed server, hiding in the noise and loading the client. After a *connection* error (refused,
reset, unavailable; not a slow or failing model) the user waits ``base * 2**n`` seconds (capped, with
jitter so users do not retry in lockstep), and the first success resets it. Every wait is counted
(``backoff`` in the manifest, ``loadtest_backoff_seconds_total`` in the client metrics) and each failed
attempt is still a recorded request: the backoff is visible, never hidden.

Open-loop drivers do not back off: their schedule is the experiment, and a failed send is recorded at
the rate the schedule asked for. Never imports Locust or gevent.
"""

from __future__ import annotations

import random

BASE_S = 0.05
CAP_S = 2.0
CONNECTION_ERRORS = (
    "connection refused", "econnrefused", "connection reset", "broken pipe", "unavailable", "failed to connect",
    "no route to host", "network is unreachable", "connection aborted", "remotedisconnected", "connection closed",
)  # fmt: skip


def is_connection_error(text: str | None) -> bool:
    """True for errors of the transport (the server is unreachable), not of the request or the model."""
    if not text:
        return False
    lowered = text.lower()
    return any(marker in lowered for marker in CONNECTION_ERRORS)


class Backoff:
    """Exponential backoff with full jitter: ``delay()`` after each failure, ``reset()`` after a success."""

    def __init__(self, base_s: float = BASE_S, cap_s: float = CAP_S, rng: random.Random | None = None):
        self.base_s, self.cap_s = base_s, cap_s
        self.failures = 0
        self.rng = rng or random.Random()

    def delay(self) -> float:
        ceiling = min(self.cap_s, self.base_s * 2**self.failures)
        self.failures += 1
        return ceiling / 2 + self.rng.uniform(0, ceiling / 2)

    def reset(self) -> None:
        self.failures = 0
