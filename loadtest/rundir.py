"""The run directory contract: layout, record schema, manifest and shards, in one place.

Why one module: the load generator writes a run directory, and the sweep, the analyzer, the quality
evaluation and the report read it. When writer and reader each kept their own copy of the schema, a
change could split them silently; here the record columns are declared once (``RECORD_COLUMNS``) and
the Arrow schema, the pandas dtypes and the ``Record`` row type are all derived from that table.
Adding a nullable column is one line in ``RECORD_COLUMNS`` (appended, ``nullable=True, omittable=True``):
writers that do not know it leave it empty, and older shards without it read back as nulls.

Layout (docs/architecture.md, "Run directory")::

    results/<run-id>/            YYYYmmdd-HHMMSS-<kind>[-N], created atomically, never overwritten
      manifest.json              settings, versions, host, start/end, stages, models
      records/*.parquet          raw per-request rows, one shard per process per flush
      metrics/*.prom             Triton (and GPU exporter) /metrics snapshots
      quality/                   loadtest eval output
      tables/, report.html       analyzer output

Never imports Locust or gevent; pandas is imported only when a caller asks for a DataFrame.
"""

from __future__ import annotations

import json
import os
import platform
import re
import socket
import sys
import time
from collections import namedtuple
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from loadtest.errors import LoadtestError

# ---- layout -------------------------------------------------------------------------------------
DEFAULT_RESULTS_DIR = "results"
MANIFEST = "manifest.json"
RECORDS_DIR = "records"
METRICS_DIR = "metrics"
QUALITY_DIR = "quality"
TABLES_DIR = "tables"
REPORT_FILE = "report.html"

VERSIONED_PACKAGES = ("loadtest", "locust", "tritonclient", "gevent", "geventhttpclient", "grpcio", "numpy", "pyarrow")
_LABEL_RE = re.compile(r"[^A-Za-z0-9_.-]+")


# ---- record schema ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Column:
    """One record column: its Arrow type, whether it may be null, and what it means."""

    name: str
    type: pa.DataType
    meaning: str
    nullable: bool = False
    omittable: bool = False  # writers may leave it out (Record defaults it to None); trailing and nullable


RECORD_COLUMNS: tuple[Column, ...] = (
    Column("intended_start", pa.float64(), "epoch s the schedule intended (open loop); = start for closed loop"),
    Column("start", pa.float64(), "epoch s the request actually left"),
    Column("end", pa.float64(), "epoch s the answer (or error) arrived"),
    Column("latency_s", pa.float64(), "open loop: end - intended_start; closed loop: end - start; never rounded"),
    Column("service_time_s", pa.float64(), "end - start, always"),
    Column("model", pa.string(), "Triton model name"),
    Column("protocol", pa.string(), "http or grpc"),
    Column("batch_size", pa.int32(), "rows in this request"),
    Column("tokens", pa.int64(), "sum of the attention mask over the request"),
    Column("success", pa.bool_(), "the server answered without error"),
    Column("error", pa.string(), "the server's (or transport's) error text on failure", nullable=True),
    Column("stage", pa.string(), "stage label: shape stage, sweep step, or 'steady'"),
    Column("loop", pa.string(), "open or closed"),
    Column("late", pa.bool_(), "open loop: left more than the tolerance after its intended time"),
    Column("worker", pa.string(), "<hostname>-<pid> of the process that sent it"),
    Column("scenario", pa.string(), "scenario / user class name"),
    # Generative requests only (null for classifiers and for rows written before these columns existed).
    Column("ttft_s", pa.float64(), "streamed: first chunk with output text - start (open loop: intended start)",
           nullable=True, omittable=True),
    Column("input_tokens", pa.int64(), "prompt tokens (the server's count, else the client tokenizer's)",
           nullable=True, omittable=True),
    Column("output_tokens", pa.int64(), "output tokens (server usage count, else the tokenizer on the text; never chunks)",
           nullable=True, omittable=True),
    Column("token_count_source", pa.string(), "server or tokenizer: where output_tokens came from",
           nullable=True, omittable=True),
    Column("chunks", pa.int32(), "chunks that carried output text (1 for a whole answer)", nullable=True, omittable=True),
    Column("chunk_gap_mean_s", pa.float64(), "streamed: mean gap between consecutive text chunks",
           nullable=True, omittable=True),
    Column("chunk_gap_max_s", pa.float64(), "streamed: largest gap between consecutive text chunks",
           nullable=True, omittable=True),
)

SCHEMA = pa.schema([pa.field(c.name, c.type, nullable=c.nullable) for c in RECORD_COLUMNS])
COLUMNS = tuple(SCHEMA.names)
_PYTHON_TYPES = {"double": float, "float": float, "string": str, "bool": bool}


def _python_type(column: Column):
    base = _PYTHON_TYPES.get(str(column.type), int)
    return base | None if column.nullable else base


def _pandas_dtype(column: Column) -> str:
    """The pandas dtype a column loads as: nullable integers and booleans use pandas' masked types."""
    kind = column.type
    if pa.types.is_string(kind):
        return "string"
    if pa.types.is_boolean(kind):
        return "boolean" if column.nullable else "bool"
    if pa.types.is_integer(kind):
        return str(kind).replace("int", "Int") if column.nullable else str(kind)
    return "float64"


PANDAS_DTYPES: dict[str, str] = {c.name: _pandas_dtype(c) for c in RECORD_COLUMNS}

# A named tuple, not a dataclass: one is built per request on the load generator's hot path, and a tuple
# is built in one C call (a frozen dataclass sets each field through ``object.__setattr__``) and is
# already the row ``rows_to_table`` transposes. Omittable columns are trailing and default to None.
_OMITTABLE = [c.name for c in RECORD_COLUMNS if c.omittable]
assert COLUMNS[len(COLUMNS) - len(_OMITTABLE):] == tuple(_OMITTABLE), "omittable columns must be the last ones"
assert all(c.nullable for c in RECORD_COLUMNS if c.omittable), "an omittable column must be nullable"
Record = namedtuple("Record", COLUMNS, defaults=(None,) * len(_OMITTABLE), module=__name__)
Record.__doc__ = "One request as the record schema stores it (fields = RECORD_COLUMNS, in order)."
Record.__annotations__ = {c.name: _python_type(c) for c in RECORD_COLUMNS}
# The error text (prefix) of a request answered with NaN or Inf: a failure the footprint table counts.
NONFINITE_ERROR = "non-finite output"


def rows_to_table(rows: list) -> pa.Table:
    """``Record`` rows as an Arrow table with exactly SCHEMA's types."""
    columns = list(zip(*rows)) if rows else [[] for _ in COLUMNS]
    return pa.Table.from_arrays([pa.array(col, type=f.type) for col, f in zip(columns, SCHEMA)], schema=SCHEMA)


# ---- run ids and directories --------------------------------------------------------------------
def safe_label(text: str) -> str:
    """A label usable in a file name (stage labels, run kinds)."""
    return _LABEL_RE.sub("_", str(text)).strip("_") or "unnamed"


def new_run_id(kind: str, when: float | None = None) -> str:
    stamp = datetime.fromtimestamp(time.time() if when is None else when).strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{safe_label(kind)}"


def create_run_dir(results_dir: Path | str, kind: str, when: float | None = None) -> Path:
    """Create and return a fresh ``<results_dir>/<run-id>`` (suffix ``-2``, ``-3``... if taken).

    ``mkdir`` is atomic, so two runs started in the same second never share a directory.
    """
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
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise LoadtestError(f"run directory {path} exists and is not a directory")
    if (path / MANIFEST).exists() or shard_paths(path):
        raise LoadtestError(f"run directory {path} already holds a run: runs are never overwritten")
    path.mkdir(parents=True, exist_ok=True)
    return path


def resolve_run(run: str | Path, results_root: Path | str = DEFAULT_RESULTS_DIR) -> Path:
    """A run given as a path, or as a run id under ``results/``."""
    path = Path(run)
    if path.is_dir():
        return path
    candidate = Path(results_root) / str(run)
    if candidate.is_dir():
        return candidate
    raise LoadtestError(f"run {run!r} not found (neither a directory nor {candidate})")


# ---- manifest -----------------------------------------------------------------------------------
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


def read_manifest(run_dir: Path | str) -> dict[str, Any]:
    """``manifest.json`` as a dict (``{}`` when absent: the records alone are still analysable)."""
    path = Path(run_dir) / MANIFEST
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise LoadtestError(f"{path}: the run's manifest is not UTF-8 JSON (a binary file?): restore it") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise LoadtestError(f"{path}: not valid JSON ({exc}); restore it or point at another run directory") from None
    if not isinstance(data, dict):
        raise LoadtestError(f"{path}: expected a JSON object (a loadtest manifest)")
    return data


def write_manifest(run_dir: Path | str, manifest: dict) -> Path:
    """Write ``manifest.json`` atomically (temporary name, then rename): readers never see half a file.

    Any URL user-info (``scheme://user:password@``) is scrubbed on the way out: secrets never reach a file.
    """
    from loadtest.credentials import scrub

    path = Path(run_dir) / MANIFEST
    tmp = path.with_name(f".{MANIFEST}.tmp")
    tmp.write_text(scrub(json.dumps(manifest, indent=2, sort_keys=False, default=str), None) + "\n")
    os.replace(tmp, path)
    return path


@dataclass
class RunDir:
    """A run directory and its manifest."""

    path: Path

    def __post_init__(self) -> None:
        self.path = Path(self.path)

    @property
    def run_id(self) -> str:
        return self.path.name

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    @property
    def records_dir(self) -> Path:
        return self.path / RECORDS_DIR

    @property
    def metrics_dir(self) -> Path:
        return self.path / METRICS_DIR

    @property
    def quality_dir(self) -> Path:
        return self.path / QUALITY_DIR

    @property
    def tables_dir(self) -> Path:
        return self.path / TABLES_DIR

    def read_manifest(self) -> dict:
        return read_manifest(self.path)

    def write_manifest(self, manifest: dict) -> Path:
        return write_manifest(self.path, manifest)

    def update_manifest(self, **fields) -> dict:
        manifest = self.read_manifest()
        manifest.update(fields)
        self.write_manifest(manifest)
        return manifest


# ---- metrics snapshots -------------------------------------------------------------------------
SNAPSHOT_NAME = re.compile(r"^(\d+)-(.+)\.prom$")  # <unix_ms>-<label>.prom


def write_snapshot(run_dir: Path | str, label: str, text: str, when: float | None = None) -> Path:
    """Save a /metrics text as ``metrics/<unix_ms>-<label>.prom`` (atomically)."""
    folder = Path(run_dir) / METRICS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    stamp = int((time.time() if when is None else when) * 1000)
    path = folder / f"{stamp}-{safe_label(label)}.prom"
    tmp = folder / f".{path.name}.tmp"
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
    return path


def snapshot_paths(run_dir: Path | str) -> list[Path]:
    """The run's snapshot files in file-name order (= time order)."""
    folder = Path(run_dir) / METRICS_DIR
    return sorted(folder.glob("*.prom")) if folder.is_dir() else []


# ---- record shards ------------------------------------------------------------------------------
def shard_paths(run_dir: Path | str) -> list[Path]:
    """Completed shard files of a run (temporary files are hidden and never listed)."""
    directory = Path(run_dir) / RECORDS_DIR
    return sorted(directory.glob("*.parquet")) if directory.is_dir() else []


def write_shard(directory: Path, name: str, table: pa.Table) -> Path:
    """Write one shard atomically: a hidden temporary file, then a rename (a reader never sees half a file)."""
    path = directory / name
    tmp = directory / f".{name}.tmp"
    try:
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _require_columns(names: Sequence[str], where: object, columns: Sequence[str] = COLUMNS) -> None:
    """A shard must carry every required column (nullable ones may be missing: added after it was written)."""
    missing = [c.name for c in RECORD_COLUMNS if c.name in columns and c.name not in names and not c.nullable]
    if missing:
        raise LoadtestError(f"{where}: record shard lacks column(s) {', '.join(missing)}")


def _target_type(name: str, dictionary: Sequence[str]) -> pa.DataType:
    kind = SCHEMA.field(name).type
    return pa.dictionary(pa.int32(), kind) if name in dictionary else kind


def conform(table: pa.Table, where: object, columns: Sequence[str] = COLUMNS, dictionary: Sequence[str] = ()) -> pa.Table:
    """``columns`` of a shard's table in SCHEMA's types (``dictionary`` columns dictionary-encoded).

    A missing nullable column (a shard written before the column existed) becomes nulls, a null in a
    required boolean reads as False; a missing required column or an impossible cast is a one-line
    LoadtestError naming ``where``.
    """
    _require_columns(table.column_names, where, columns)
    import pyarrow.compute as pc

    arrays, fields = [], []
    for name in columns:
        spec = SCHEMA.field(name)
        target = _target_type(name, dictionary)
        if name not in table.column_names:
            column = pa.nulls(table.num_rows, type=target)
        else:
            column = table.column(name)
            try:
                column = column if column.type == target else column.cast(target)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise LoadtestError(f"{where}: column {name} does not fit the record schema ({str(exc).splitlines()[0]})") from None
            if not spec.nullable and pa.types.is_boolean(target) and column.null_count:
                column = pc.fill_null(column, False)
        arrays.append(column)
        fields.append(pa.field(name, target, nullable=spec.nullable))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def read_shard(path: Path, columns: Sequence[str] | None = None, dictionary: Sequence[str] = ()) -> pa.Table:
    """One shard, checked against the whole schema, with ``columns`` (default: all) conformed to it."""
    columns = list(columns or COLUMNS)
    unknown = [c for c in columns if c not in COLUMNS]
    if unknown:
        raise ValueError(f"not record columns: {unknown}")
    try:
        handle = pq.ParquetFile(path, read_dictionary=[c for c in dictionary if c in columns] or None)
        names = handle.schema_arrow.names
        _require_columns(names, path)  # the whole schema, also when only a few columns are read
        table = handle.read(columns=[c for c in columns if c in names])
    except (OSError, pa.ArrowException) as exc:
        raise LoadtestError(f"{path}: not a readable Parquet record shard ({str(exc).splitlines()[0]})") from None
    return conform(table, path, columns, dictionary)


def read_records(run_dir: Path | str, columns: Sequence[str] | None = None, dictionary: Sequence[str] = ()) -> pa.Table:
    """Every record of a run (all processes, all flushes) as one table (empty if none).

    ``columns``: read only these (a reader that needs a few columns of millions of rows reads no more);
    ``dictionary``: string columns with few distinct values, read dictionary-encoded (pandas Categorical).
    """
    columns = list(columns or COLUMNS)
    tables = [read_shard(p, columns, dictionary) for p in shard_paths(run_dir)]
    if not tables:
        return pa.schema([pa.field(c, _target_type(c, dictionary), SCHEMA.field(c).nullable) for c in columns]).empty_table()
    return pa.concat_tables(tables)


def records_frame(table: pa.Table):
    """A records table as a pandas DataFrame: PANDAS_DTYPES, dictionary columns as Categoricals of str."""
    import pandas as pd

    frame = table.to_pandas(split_blocks=True, self_destruct=True)
    for column in frame.columns:
        values = frame[column]
        if isinstance(values.dtype, pd.CategoricalDtype):
            # categories as plain str: comparisons with str model/stage names and str() of values just work
            frame[column] = values.cat.rename_categories([str(c) for c in values.cat.categories])
        elif str(values.dtype) != PANDAS_DTYPES[column]:
            frame[column] = values.astype(PANDAS_DTYPES[column])
    return frame
