"""Raw per-request records: one Parquet row per request, written as atomic shard files.

Why raw rows: Locust buckets its percentiles (whole milliseconds below 100 ms, 10 ms below 1 s) and
averages across windows; capacity figures need every latency as measured. Each process appends rows
in memory and a flusher writes them out at least every second as ``records/<worker>-<seq>.parquet``
(written to a hidden temporary name, then renamed, so a reader never sees half a file). ``close()``
writes the rest: the row count then equals the number of requests the process sent.

The schema is a contract (docs/architecture.md, "Record schema"). Never imports Locust or gevent; the
caller decides where the flush runs (a real thread here, gevent's thread pool under Locust).
"""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path
from typing import NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq

RECORDS_DIR = "records"
FLUSH_INTERVAL_S = 1.0
RESERVE_BYTES = 64 * 1024  # per process: room for the final manifest and last snapshot on a full disk

SCHEMA = pa.schema(
    [
        pa.field("intended_start", pa.float64(), nullable=False),
        pa.field("start", pa.float64(), nullable=False),
        pa.field("end", pa.float64(), nullable=False),
        pa.field("latency_s", pa.float64(), nullable=False),
        pa.field("service_time_s", pa.float64(), nullable=False),
        pa.field("model", pa.string(), nullable=False),
        pa.field("protocol", pa.string(), nullable=False),
        pa.field("batch_size", pa.int32(), nullable=False),
        pa.field("tokens", pa.int64(), nullable=False),
        pa.field("success", pa.bool_(), nullable=False),
        pa.field("error", pa.string(), nullable=True),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("loop", pa.string(), nullable=False),
        pa.field("late", pa.bool_(), nullable=False),
        pa.field("worker", pa.string(), nullable=False),
        pa.field("scenario", pa.string(), nullable=False),
        # Generative requests only (null for classifiers); docs/architecture.md, "Record schema".
        pa.field("ttft_s", pa.float64(), nullable=True),
        pa.field("input_tokens", pa.int64(), nullable=True),
        pa.field("output_tokens", pa.int64(), nullable=True),
        pa.field("token_count_source", pa.string(), nullable=True),
        pa.field("chunks", pa.int32(), nullable=True),
        pa.field("chunk_gap_mean_s", pa.float64(), nullable=True),
        pa.field("chunk_gap_max_s", pa.float64(), nullable=True),
    ]
)
COLUMNS = tuple(SCHEMA.names)
# The error text (prefix) of a request answered with NaN or Inf: a failure, counted in the footprint table.
NONFINITE_ERROR = "non-finite output"


class Record(NamedTuple):
    """One request as the schema stores it (field order = column order).

    A named tuple, not a dataclass: one is built per request on the load generator's hot path, and a
    tuple is built in one C call (a frozen dataclass sets each of its fields through ``object.__setattr__``)
    and is already the row ``rows_to_table`` transposes.
    """

    intended_start: float
    start: float
    end: float
    latency_s: float
    service_time_s: float
    model: str
    protocol: str
    batch_size: int
    tokens: int
    success: bool
    error: str | None
    stage: str
    loop: str
    late: bool
    worker: str
    scenario: str
    ttft_s: float | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    token_count_source: str | None = None  # "server" (usage counts) or "tokenizer" (the returned text)
    chunks: int | None = None  # chunks that carried output text (never taken for tokens)
    chunk_gap_mean_s: float | None = None
    chunk_gap_max_s: float | None = None


assert COLUMNS == Record._fields, "Record fields must follow SCHEMA"


def worker_id() -> str:
    """``<hostname>-<pid>``: unique per load-generator process, also across machines."""
    return f"{socket.gethostname()}-{os.getpid()}"


def rows_to_table(rows: list[Record]) -> pa.Table:
    """Rows as an Arrow table with exactly SCHEMA's types."""
    columns = list(zip(*rows)) if rows else [[] for _ in COLUMNS]
    return pa.Table.from_arrays(
        [pa.array(col, type=f.type) for col, f in zip(columns, SCHEMA)], schema=SCHEMA
    )


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
        table = rows_to_table(rows)
        path = self.directory / f"{self.worker}-{self._seq + 1:06d}.parquet"
        tmp = self.directory / f".{path.name}.tmp"
        try:
            pq.write_table(table, tmp, compression="zstd")
            os.replace(tmp, path)
        except OSError as exc:  # a full disk, a read-only remount, a quota: stop writing, count what is lost
            tmp.unlink(missing_ok=True)
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


def shard_paths(run_dir: Path | str) -> list[Path]:
    """Completed shard files of a run (temporary files are hidden and never listed)."""
    directory = Path(run_dir) / RECORDS_DIR
    return sorted(directory.glob("*.parquet")) if directory.is_dir() else []


def read_records(run_dir: Path | str) -> pa.Table:
    """All records of a run (every process, every worker) as one table with SCHEMA."""
    paths = shard_paths(run_dir)
    if not paths:
        return SCHEMA.empty_table()
    return pa.concat_tables([pq.read_table(p, schema=SCHEMA) for p in paths])
