"""One line that says whether every request is accounted for: records vs Locust vs Triton.

Why: a figure is only defensible if nothing went missing between the client and the server. Three
independent counts exist for a run: our raw records (one row per request), Locust's own request count
(in the manifest), and Triton's ``nv_inference_request_success`` + ``nv_inference_request_failure``
deltas between the run's first and last metrics snapshots (``metrics/*.prom``). When they agree the
line says so; when they do not, it names each gap and its usual cause. The manifest's own bookkeeping
(rows a process could not write, open-loop sends dropped, a worker lost) is named too.

Never imports Locust or gevent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

SUCCESS = "nv_inference_request_success"
FAILURE = "nv_inference_request_failure"


@dataclass
class Reconciliation:
    records: int
    records_failed: int
    locust: int | None
    locust_failed: int | None
    triton_success: int | None
    triton_failure: int | None
    gaps: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # not gaps, but worth knowing (e.g. backoff)

    @property
    def triton(self) -> int | None:
        if self.triton_success is None:
            return None
        return self.triton_success + (self.triton_failure or 0)

    @property
    def agrees(self) -> bool:
        return not self.gaps

    def line(self) -> str:
        def n(x):
            return "n/a" if x is None else f"{x:,}"

        parts = [f"records {n(self.records)} ({n(self.records_failed)} failed)"]
        parts.append(f"Locust {n(self.locust)}" + (f" ({n(self.locust_failed)} failed)" if self.locust is not None else ""))
        if self.triton is None:
            parts.append("Triton n/a")
        else:
            parts.append(f"Triton {n(self.triton)} ({n(self.triton_success)} ok + {n(self.triton_failure)} failed)")
        verdict = "all agree" if self.agrees else "gap: " + "; ".join(self.gaps)
        notes = "".join(f"; {note}" for note in self.notes)
        return "reconciliation: " + " vs ".join(parts) + f": {verdict}{notes}"


def _snapshot_files(run_dir: Path) -> list[Path]:
    folder = run_dir / "metrics"
    return sorted(folder.glob("*.prom")) if folder.is_dir() else []


def _triton_counts(path: Path, models: set[str]) -> tuple[float, float] | None:
    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = path.read_text(encoding="utf-8", errors="replace")
        success = failure = 0.0
        seen = False
        for family in text_string_to_metric_families(text):
            if family.name not in (SUCCESS, FAILURE):
                continue
            for sample in family.samples:
                if sample.name.endswith("_created") or (models and sample.labels.get("model") not in models):
                    continue
                seen = True
                if family.name == SUCCESS:
                    success += sample.value
                else:
                    failure += sample.value
    except (OSError, ValueError):
        return None
    return (success, failure) if seen else None


def reconcile(run_dir: Path | str) -> Reconciliation:
    """Compare the three counts of one run directory (a run that never wrote records still reconciles)."""
    import json

    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    run_dir = Path(run_dir)
    manifest: dict = {}
    try:
        manifest = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        pass
    records = failed = 0
    models: set[str] = set()
    folder = run_dir / "records"
    for shard in sorted(folder.glob("*.parquet")) if folder.is_dir() else []:
        try:
            table = pq.read_table(shard, columns=["model", "success"])
        except Exception:  # an unreadable shard is the analyzer's to report; here it counts as missing
            continue
        records += table.num_rows
        failed += table.num_rows - int(pc.sum(table["success"]).as_py() or 0)
        models.update(str(m) for m in pc.unique(table["model"]).to_pylist())
    locust = manifest.get("locust") or {}
    result = Reconciliation(records, failed, locust.get("requests"), locust.get("failures"), None, None)
    files = _snapshot_files(run_dir)
    first = _triton_counts(files[0], models) if len(files) >= 2 else None
    last = _triton_counts(files[-1], models) if len(files) >= 2 else None
    if first is not None and last is not None:
        result.triton_success = int(round(last[0] - first[0]))
        result.triton_failure = int(round(last[1] - first[1]))
    _name_gaps(result, manifest)
    return result


def _name_gaps(r: Reconciliation, manifest: dict) -> None:
    gaps = r.gaps
    if r.locust is not None and r.locust != r.records:
        diff = r.records - r.locust
        if diff > 0:
            gaps.append(f"Locust counted {diff:,} fewer than the records (requests in flight when it froze its stats, "
                        "or a worker's last report lost)")  # fmt: skip
        else:
            gaps.append(f"Locust counted {-diff:,} more than the records (rows not written: see 'records' in the manifest)")
    if r.triton is None:
        gaps.append("no Triton count (no start/stop metrics snapshots: --triton-metrics-url none or unreachable)")
    elif r.triton != r.records:
        diff = r.records - r.triton
        if diff > 0:
            gaps.append(f"{diff:,} recorded request(s) never reached Triton (connection/transport errors)")
        else:
            gaps.append(f"Triton counted {-diff:,} more (other clients on the server during the run, or rows not "
                        "recorded)")  # fmt: skip
    info = manifest.get("records") or {}
    lost = int(info.get("not_recorded") or 0) + int(manifest.get("unrecorded") or 0)
    if lost:
        gaps.append(f"{lost:,} request(s) completed but not recorded ({info.get('incomplete_reason') or 'see manifest'})")
    for worker in manifest.get("workers_lost") or []:
        gaps.append(f"worker {worker.get('worker', '?')} was lost mid-run")
    if manifest.get("backoff", {}).get("events"):
        b = manifest["backoff"]
        r.notes.append(f"connection errors: clients backed off {b['events']:,} time(s), {b.get('seconds', 0):.1f} s in all")
