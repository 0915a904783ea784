"""The sweep directory: every step's records and snapshots merged into one run-directory layout.

Why merge: ``loadtest analyze`` reads a sweep like any run (``loadtest.rundir``): records with each step's
stage label (warm-up rows relabelled to their step, so the analyzer's warm-up window drops them), the
snapshots bracketing each step, and a manifest stage per step with its load and warm-up.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from loadtest.sweep.search import SweepSettings
from loadtest.sweep.steps import WARM_PREFIX


def merge_step(sweep_dir: Path, step_dir: Path, label: str, model: str, settings: SweepSettings) -> dict:
    """Copy a step's records (warm-up rows relabelled to the step) and snapshots into the sweep directory.

    Returns the step's manifest stage: name, model, start (warm-up start), warmup_s, end, load.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    from loadtest.rundir import METRICS_DIR, RECORDS_DIR, read_manifest, read_shard, shard_paths, snapshot_paths, write_shard

    manifest = read_manifest(step_dir)
    stages = {s["name"]: s for s in manifest.get("stages", []) if isinstance(s, dict) and "name" in s}
    measured = stages.get(label, {})
    warm = stages.get(WARM_PREFIX + label)
    start = (warm or measured).get("start")
    stage = {
        "name": label, "model": model, "start": start, "end": measured.get("end") or manifest.get("end"),
        "warmup_s": (measured.get("start") - start) if warm and measured.get("start") and start else 0.0,
        "loop": settings.mode,
    }
    if settings.mode == "open":
        stage["offered_rate"] = measured.get("offered_rate")
    else:
        stage["users"] = measured.get("users")
    records = sweep_dir / RECORDS_DIR
    records.mkdir(parents=True, exist_ok=True)
    for shard in shard_paths(step_dir):
        table = read_shard(shard)
        if table.num_rows:
            column = table.column("stage")
            relabelled = pc.if_else(pc.equal(column, WARM_PREFIX + label), pa.scalar(label), column)
            table = table.set_column(table.schema.get_field_index("stage"), table.schema.field("stage"), relabelled)
        write_shard(records, f"{label}-{shard.name}", table)
    metrics = sweep_dir / METRICS_DIR
    metrics.mkdir(parents=True, exist_ok=True)
    for snap in snapshot_paths(step_dir):
        stamp, _, rest = snap.name.partition("-")
        shutil.copyfile(snap, metrics / f"{stamp}-{label}-{rest}")
    dropped = manifest.get("dropped", {}).get(model, {}) if isinstance(manifest.get("dropped"), dict) else {}
    stage["dropped"] = int(dropped.get(label, 0)) if isinstance(dropped, dict) else 0
    stage["_manifest"] = manifest
    return stage
