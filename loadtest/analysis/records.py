"""The analyzer's view of a run directory: every record as a DataFrame, plus the manifest's stages.

The files themselves (layout, record schema, shard reading, manifest) are ``loadtest.rundir``'s; this
module turns them into what the analyzer computes on: roles, stages, dropped sends, windows.

The analyzer trusts nothing it has not checked: a missing directory, a run without records, a shard that
is not Parquet or lacks a schema column, or a run where every request failed is a one-line
``LoadtestError`` naming the path, never a traceback deep inside pandas.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from loadtest.errors import LoadtestError
from loadtest.rundir import read_manifest, read_records, records_frame, shard_paths

ALL_STAGES = "(all)"
# What the analyzer reads of each shard: the rest of the schema (start, service_time_s, protocol, batch_size,
# worker, scenario, the generative columns) stays in the files for other readers but is never loaded here.
ANALYSIS_COLUMNS = ("intended_start", "end", "latency_s", "model", "tokens", "success", "error", "stage", "loop", "late")
# Few distinct values over millions of rows: read as dictionary columns (pandas Categorical), never as one
# Python string object per row.
CATEGORICAL = ("model", "error", "stage", "loop")


@dataclass(frozen=True)
class StageInfo:
    """What the manifest says about one stage (a shape stage or a sweep step)."""

    name: str
    model: str | None = None  # the only model the stage drove, when it drove one
    start: float | None = None  # epoch seconds
    end: float | None = None
    warmup_s: float = 0.0
    offered_rate: float | None = None  # open loop: target arrivals/s
    users: int | None = None  # closed loop: concurrency
    loop: str | None = None


@dataclass
class RunData:
    """A loaded run: all records (every shard) and the manifest facts the analyzer uses."""

    run_dir: Path
    manifest: dict[str, Any]
    records: pd.DataFrame
    teacher: str | None
    student: str | None
    stages: dict[str, StageInfo] = field(default_factory=dict)
    dropped: dict[tuple[str, str], int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    cache: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)  # splits computed once

    @property
    def models(self) -> list[str]:
        """Models in display order: teacher, student, then any other model found in the records."""
        if "models" not in self.cache:
            self.cache["models"] = distinct(self.records["model"])
        found = self.cache["models"]
        ordered = [m for m in (self.teacher, self.student) if m and m in found]
        return ordered + sorted(m for m in found if m not in ordered)

    def role(self, model: str) -> str:
        if model == self.teacher:
            return "teacher"
        if model == self.student:
            return "student"
        return "other"

    @property
    def start(self) -> float:
        value = self.manifest.get("start")
        return float(value) if isinstance(value, (int, float)) else float(self.records["intended_start"].min())

    @property
    def end(self) -> float:
        value = self.manifest.get("end")
        return float(value) if isinstance(value, (int, float)) else float(self.records["end"].max())


def _read_run(run_dir: Path) -> pd.DataFrame:
    """Every shard's rows as a DataFrame, or a one-line LoadtestError for what a user can get wrong."""
    if not run_dir.exists():
        raise LoadtestError(f"run directory {run_dir} does not exist")
    if not run_dir.is_dir():
        raise LoadtestError(f"{run_dir} is not a directory (expected a run directory under results/)")
    shards = shard_paths(run_dir)
    if not shards:
        raise LoadtestError(f"{run_dir} has no request records (records/*.parquet): did the load test run?")
    table = read_records(run_dir, columns=ANALYSIS_COLUMNS, dictionary=CATEGORICAL)
    if table.num_rows == 0:
        raise LoadtestError(f"{shards[0].parent} holds {len(shards)} record shard(s) but no requests")
    return records_frame(table)


def distinct(values: pd.Series) -> list[str]:
    """Distinct non-null values of a column, as str; for a categorical, from its codes (no per-row objects)."""
    if isinstance(values.dtype, pd.CategoricalDtype):
        codes = values.cat.codes.to_numpy()
        present = np.bincount(codes[codes >= 0], minlength=len(values.cat.categories))
        return [str(values.cat.categories[i]) for i in np.flatnonzero(present)]
    return [str(v) for v in pd.unique(values.dropna())]


def _roles(manifest: dict[str, Any], found: list[str]) -> tuple[str | None, str | None]:
    """Teacher and student model names: the manifest's say, else the repository's default names."""
    models = manifest.get("models")
    teacher = student = None
    if isinstance(models, dict):
        teacher, student = models.get("teacher"), models.get("student")
    if teacher is None and "teacher" in found:
        teacher = "teacher"
    if student is None and "student" in found:
        student = "student"
    return (str(teacher) if teacher else None), (str(student) if student else None)


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _stages(manifest: dict[str, Any]) -> dict[str, StageInfo]:
    stages: dict[str, StageInfo] = {}
    raw = manifest.get("stages") or []
    if isinstance(raw, dict):
        raw = [dict(v, name=k) for k, v in raw.items() if isinstance(v, dict)]
    for item in raw:
        if not isinstance(item, dict) or "name" not in item:
            continue
        rate = next((_num(item[k]) for k in ("offered_rate", "rate", "target_rps", "arrival_rate") if k in item), None)
        users = next((_num(item[k]) for k in ("users", "concurrency") if k in item), None)
        stages[str(item["name"])] = StageInfo(
            name=str(item["name"]),
            model=str(item["model"]) if item.get("model") else None,
            start=_num(item.get("start")),
            end=_num(item.get("end")),
            warmup_s=_num(item.get("warmup_s")) or 0.0,
            offered_rate=rate,
            users=int(users) if users is not None else None,
            loop=str(item["loop"]) if item.get("loop") else None,
        )
    return stages


def _dropped(manifest: dict[str, Any]) -> dict[tuple[str, str], int]:
    """Dropped open-loop sends per (model, stage): ``{"model": {"stage": n}}`` or a list of rows."""
    raw = manifest.get("dropped") or {}
    out: dict[tuple[str, str], int] = {}
    if isinstance(raw, dict):
        for model, per_stage in raw.items():
            if isinstance(per_stage, dict):
                for stage, n in per_stage.items():
                    if _num(n) is not None:
                        out[(str(model), str(stage))] = out.get((str(model), str(stage)), 0) + int(n)
            elif _num(per_stage) is not None:
                out[(str(model), ALL_STAGES)] = int(per_stage)
    elif isinstance(raw, list):
        for row in raw:
            if isinstance(row, dict) and _num(row.get("dropped", row.get("count"))) is not None:
                key = (str(row.get("model")), str(row.get("stage", ALL_STAGES)))
                out[key] = out.get(key, 0) + int(row.get("dropped", row.get("count")))
    return out


def load_run(run_dir: Path | str) -> RunData:
    """Load a run directory; raises LoadtestError (one line) for anything a user can get wrong."""
    run_dir = Path(run_dir)
    records = _read_run(run_dir)
    manifest = read_manifest(run_dir)
    ok = int(records["success"].sum())
    if ok == 0:
        errors = records["error"].dropna()
        first = str(errors.iloc[0]).splitlines()[0][:200] if len(errors) else "no error text recorded"
        raise LoadtestError(
            f"{run_dir}: all {len(records)} recorded requests failed, nothing to measure (first error: {first})"
        )
    bad = ~np.isfinite(records["latency_s"].to_numpy()) & records["success"].to_numpy()
    notes: list[str] = []
    if bad.any():
        notes.append(f"{int(bad.sum())} successful record(s) without a finite latency were ignored")
        records = records[~bad].reset_index(drop=True)
    found = distinct(records["model"])
    teacher, student = _roles(manifest, found)
    if not manifest:
        notes.append("no manifest.json: stage timing and offered rates come from the records alone")
    run = RunData(run_dir, manifest, records, teacher, student, _stages(manifest), _dropped(manifest), notes)
    for role, name in (("teacher", teacher), ("student", student)):
        if name is None or name not in found:
            run.notes.append(f"no {role} records in this run: the comparison leaves its figures empty")
    return run


def window_of(frame: pd.DataFrame, info: StageInfo | None) -> tuple[float, float]:
    """The measurement window of some records: the stage's after warm-up, else their own extent."""
    start = float(frame["intended_start"].min()) if len(frame) else math.nan
    end = float(frame["end"].max()) if len(frame) else math.nan
    if info is not None:
        if info.start is not None:
            start = info.start + info.warmup_s
        if info.end is not None:
            end = info.end
    return start, end


def completed_within(frame: pd.DataFrame, end: float) -> pd.Series:
    """Successful requests answered by the window's end: what achieved throughput counts.

    A saturated server answers a step's backlog after the step: those answers still count for latency
    (they are what users saw) but not as throughput the step achieved.
    """
    return frame["success"] & (frame["end"] <= end + 1e-9)


def after_warmup(frame: pd.DataFrame, info: StageInfo | None) -> pd.DataFrame:
    """Drop the requests a stage's warm-up covers (intended to start before start + warmup)."""
    if info is None or info.start is None or info.warmup_s <= 0:
        return frame
    return frame[frame["intended_start"] >= info.start + info.warmup_s]


def _codes(column: pd.Series) -> tuple[np.ndarray, pd.CategoricalDtype]:
    cat = column if isinstance(column.dtype, pd.CategoricalDtype) else column.astype("category")
    return cat.cat.codes.to_numpy(), cat.dtype


def stage_frames(run: RunData) -> dict[tuple[str, str], pd.DataFrame]:
    """(model, stage) -> that model's records in that stage after warm-up, split in one pass and kept.

    Every table of the analyzer works per model and stage. One stable radix sort of the (model, stage)
    codes gives every group's rows in their original order; each group's frame is then built from plain
    column arrays. Masking the whole frame once per table instead would make the analysis quadratic-ish
    in the number of stages and far slower at 10M records.
    """
    if "stage_frames" not in run.cache:
        recs = run.records
        model_codes, model_dtype = _codes(recs["model"])
        stage_codes, stage_dtype = _codes(recs["stage"])
        n_stages = max(len(stage_dtype.categories), 1)
        key = model_codes.astype(np.int64) * n_stages + stage_codes
        key[(model_codes < 0) | (stage_codes < 0)] = -1
        small = key.max(initial=0) < np.iinfo(np.int16).max
        order = np.argsort(key.astype(np.int16) if small else key, kind="stable")  # int16: O(n) radix sort
        bounds = np.flatnonzero(np.diff(key[order])) + 1
        columns = {}
        for name in recs.columns:
            col = recs[name]
            columns[name] = (_codes(col) if isinstance(col.dtype, pd.CategoricalDtype) else (col.to_numpy(), None))
        intended = recs["intended_start"].to_numpy()
        out: dict[tuple[str, str], pd.DataFrame] = {}
        for rows in np.split(order, bounds):
            if rows.size == 0 or key[rows[0]] < 0:
                continue
            model = str(model_dtype.categories[model_codes[rows[0]]])
            stage = str(stage_dtype.categories[stage_codes[rows[0]]])
            info = run.stages.get(stage)
            if info is not None and info.start is not None and info.warmup_s > 0:
                rows = rows[intended[rows] >= info.start + info.warmup_s]  # after_warmup, on the row numbers
            if rows.size == 0:
                continue
            out[(model, stage)] = pd.DataFrame({
                name: (pd.Categorical.from_codes(values[rows], dtype=dtype) if dtype is not None else values[rows])
                for name, (values, dtype) in columns.items()
            }, copy=False)
        run.cache["stage_frames"] = out
    return run.cache["stage_frames"]
