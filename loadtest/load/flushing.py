"""Record flushing under gevent: rows drained in the event loop, Parquet written in a real thread.

Why a real thread: encoding a shard takes milliseconds of CPU; done in the event loop it would delay
every greenlet that times a request. The loop only swaps the writer's buffer (``drain``) on a fixed
beat and hands the rows to gevent's thread pool (``write``).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import gevent
from gevent.event import Event

from loadtest.load.records import RecordWriter


class RecordFlusher:
    """Writes a RecordWriter's buffered rows every ``writer.interval`` seconds until ``stop()``.

    When a write fails (a full disk), the beat stops and ``on_failure(writer)`` is called once.
    """

    def __init__(self, writer: RecordWriter, on_failure: Callable[[RecordWriter], None] | None = None):
        self.writer = writer
        self.on_failure = on_failure
        self._stop = Event()
        self._greenlet = gevent.spawn(self._loop)

    def _loop(self) -> None:
        writer = self.writer
        pool = gevent.get_hub().threadpool
        deadline = time.monotonic() + writer.interval
        while not self._stop.wait(timeout=max(deadline - time.monotonic(), 0.0)):
            deadline += writer.interval  # a fixed beat, whatever a write takes
            rows = writer.drain()
            if rows:
                pool.apply(writer.write, (rows,))
            if writer.failure is not None:
                if self.on_failure is not None:
                    self.on_failure(writer)
                return

    def stop(self) -> int:
        """Stop the beat, write what is left, close the writer; returns the rows written in all."""
        self._stop.set()
        self._greenlet.join()
        return self.writer.close() if not self.writer.closed else self.writer.rows_written
