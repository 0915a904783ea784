"""One clock per process: ``perf_counter`` for every duration, anchored once to the epoch.

Why: latencies must be differences of a monotonic clock (never of wall-clock time, which can step),
while records also need absolute times to line up with Triton's metrics and other workers. Each
process takes one (epoch, perf_counter) anchor; an absolute time is ``anchor_epoch + (t - anchor_perf)``,
so absolute times inside one process are consistent to the nanosecond and latencies are never rounded.
A forked worker (``--processes``) re-anchors. Never imports Locust or gevent.
"""

from __future__ import annotations

import os
import time


class Clock:
    def __init__(self) -> None:
        self.reanchor()

    def reanchor(self) -> None:
        self.anchor_perf = time.perf_counter()
        self.anchor_epoch = time.time()

    @staticmethod
    def now() -> float:
        """The monotonic reading durations are taken from."""
        return time.perf_counter()

    def epoch(self, perf: float) -> float:
        """Epoch seconds of a ``perf_counter`` reading of this process."""
        return self.anchor_epoch + (perf - self.anchor_perf)


CLOCK = Clock()
os.register_at_fork(after_in_child=CLOCK.reanchor)
