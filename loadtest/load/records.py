"""Raw per-request records: one Parquet row per request, written as atomic shard files.

Why raw rows: Locust buckets its percentiles (whole milliseconds below 100 ms, 10 ms below 1 s) and
averages across windows; capacity figures need every latency as measured. Each process appends rows
in memory and a flusher writes them out at least every second as ``records/<worker>-<seq>.parquet``
(written to a hidden temporary name, then renamed, so a reader never sees half a file). ``close()``
writes the rest: the row count then equals the number of requests the process sent.

The schema, the shard naming rules and the reader live in ``loadtest.rundir`` (the run-directory
contract); this module only buffers and writes. Never imports Locust or gevent; the caller decides
where the flush runs (a real thread here, gevent's thread pool under Locust).
"""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

from loadtest.rundir import RECORDS_DIR, Record, rows_to_table, write_shard

FLUSH_INTERVAL_S = 1.0
RESERVE_BYTES = 64 * 1024  # per process: room for the final manifest and last snapshot on a full disk
RECORD_KEY = "loadtest_record"  # a request event's context carries its Record under this key


def worker_id() -> str:
    """``<hostname>-<pid>``: unique per load-generator process, also across machines."""
    return f"{socket.gethostname()}-{os.getpid()}"


class RecordWriter:
    """Buffers rows of one process and writes them as Parquet shards under ``<run_dir>/records``.

    ``append`` is cheap (a list append) and is called on the hot path; ``flush`` drains the buffer and
    writes one shard. ``start_background()`` flushes from a thread every ``interval`` seconds; under
    gevent, call ``drain()`` in the event loop and ``write(rows)`` in a real thread instead.
    """

    def __init__(self, run_dir: Path | str, worker: str | None = None, interval: float = FLUSH_INTERVAL_S,
                 reserve_bytes: int = RESERVE_BYTES):  # fmt: skip
        self.directory = Path(run_dir) / RECORDS_DIR
        self.directory.mkdir(parents=True, exist_ok=True)
        self.failure: str | None = None  # why rows could not be written (a full disk): then they are counted
        self.rows_lost = 0
        self.reserve = self.directory / f".reserve-{worker or worker_id()}"
        try:  # room kept for the final manifest should the disk fill up (released by release_reserve)
            self.reserve.write_bytes(b"\0" * reserve_bytes)
        except OSError:
            self.reserve.unlink(missing_ok=True)
        self.worker = worker or worker_id()
        self.interval = interval
        self._rows: list[Record] = []
        self._seq = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.rows_written = 0
        self.shards: list[Path] = []
        self.closed = False

    def append(self, record: Record) -> None:
        if self.closed:
            raise RuntimeError("record writer is closed")
        self._rows.append(record)

    @property
    def pending(self) -> int:
        return len(self._rows)

    def drain(self) -> list[Record]:
        """Take the buffered rows (atomic under the GIL: the list is swapped, never copied)."""
        rows, self._rows = self._rows, []
        return rows

    def write(self, rows: list[Record]) -> Path | None:
        """Write ``rows`` as one shard: hidden temporary file, then an atomic rename.

        Not re-entrant: one caller at a time (the background thread, or the gevent flusher).
        """
        if not rows:
            return None
        if self.failure is not None:  # once a write failed, later rows are counted, not half-written
            self.rows_lost += len(rows)
            return None
        try:
            path = write_shard(self.directory, f"{self.worker}-{self._seq + 1:06d}.parquet", rows_to_table(rows))
        except OSError as exc:  # a full disk, a read-only remount, a quota: stop writing, count what is lost
            reason = exc.strerror or (str(exc).splitlines() or [type(exc).__name__])[0]
            self.failure = f"{reason} writing {self.directory}"
            self.rows_lost += len(rows)
            self.release_reserve()
            return None
        self._seq += 1
        self.rows_written += len(rows)
        self.shards.append(path)
        return path

    def flush(self) -> Path | None:
        return self.write(self.drain())

    def start_background(self) -> None:
        """Flush from a thread every ``interval`` seconds until ``close()``."""

        def loop() -> None:
            while not self._stop.wait(self.interval):
                self.flush()

        self._thread = threading.Thread(target=loop, name="loadtest-records", daemon=True)
        self._thread.start()

    def close(self) -> int:
        """Stop the flusher, write what is left, and return the rows this writer wrote in all."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.flush()
        self.closed = True
        self.release_reserve()
        return self.rows_written

    def release_reserve(self) -> None:
        """Free the space kept for the end of the run (the manifest must be writable on a full disk)."""
        try:
            self.reserve.unlink(missing_ok=True)
        except OSError:
            pass
