"""The run's manifest: written when the test starts, completed when it stops.

Why its own module: what a manifest holds (settings, versions, host, models, stages, counts) is the
run directory's promise to the analyzer (docs/architecture.md, "Run directory"); the Locust listeners
only decide *when* it is written. A local process completes the manifest itself; a master waits
briefly for every worker's final report and adds their counts up.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import gevent
import pyarrow.parquet as pq

from loadtest.load.process import LoadProcess, merge_counts, nested_counts
from loadtest.load.settings import LoadOptions
from loadtest.rundir import client_host, shard_paths, versions

log = logging.getLogger("loadtest")
FINAL_REPORT_WAIT_S = 30.0


def run_kind(environment) -> str:
    """The run id's kind: the shape's kind, else the single locustfile's name, else "scenarios"."""
    shape = environment.shape_class
    if shape is not None and getattr(shape, "kind", None):
        return str(shape.kind)
    files = list(getattr(environment, "parsed_locustfiles", None) or [])
    if len(files) == 1:
        return Path(files[0]).stem
    return "scenarios"


def _models(process: LoadProcess) -> dict | None:
    """``{"teacher", "student", "names"}``: which loaded model plays which role (the analyzer pairs them)."""
    context = process.context
    if context is None:
        return None
    names = context.model_names
    return {
        "teacher": context.teacher if context.teacher in names else None,
        "student": context.student if context.student in names else None,
        "names": names,
        # as the server described each model at test start (the inputs the payloads were built for)
        "served": [
            {"name": m.name, "version": m.version or (m.versions[-1] if m.versions else None), "platform": m.platform,
             "max_batch_size": m.max_batch_size, "decoupled": m.decoupled,
             "inputs": [{"name": t.name, "datatype": t.datatype, "dims": list(t.dims)} for t in m.inputs]}
            for m in getattr(context, "served", ())
        ],
    }  # fmt: skip


def base_manifest(environment, process: LoadProcess, options: LoadOptions) -> dict:
    """The manifest at test start: everything but the end time and the counts."""
    parsed = environment.parsed_options
    shape = environment.shape_class
    context = process.context
    return {
        "run_id": process.run.run_id,
        "kind": run_kind(environment),
        "scenario": {
            "locustfiles": list(getattr(environment, "parsed_locustfiles", None) or []),
            "user_classes": [c.__name__ for c in environment.user_classes],
            "shape": type(shape).__name__ if shape is not None else None,
        },
        "host": environment.host,
        "protocol": context.endpoint.protocol if context else None,
        "credentials": context.credentials.describe() if context is not None else None,
        "models": _models(process),
        "payloads": context.payload_description if context else None,
        "settings": options.settings(),
        "workload": "generative" if process.generative else "classifier",
        "generation": context.generation.settings() if process.generative else None,
        "locust": {
            "users": getattr(parsed, "num_users", None),
            "spawn_rate": getattr(parsed, "spawn_rate", None),
            "run_time": getattr(parsed, "run_time", None),
            "processes": getattr(parsed, "processes", None),
            "expect_workers": getattr(parsed, "expect_workers", None) if process.role == "master" else None,
            "headless": getattr(parsed, "headless", None),
            "stop_timeout": environment.stop_timeout,
        },
        "role": process.role,
        "versions": versions(),
        "client_host": client_host(),
        "start": process.started,
        "end": None,
        "stages": process.board.stages_for_manifest(),
    }


def _locust_totals(environment) -> dict:
    total = environment.runner.stats.total
    return {"requests": total.num_requests, "failures": total.num_failures}


def _serving_memory(process: LoadProcess) -> dict:
    """Peak RSS of each model's serving processes when Triton runs on this machine (the footprint table)."""
    from loadtest.load.serving_memory import serving_memory

    endpoint = process.context.endpoint if process.context else None
    endpoint = getattr(endpoint, "server", endpoint)  # an LLM endpoint wraps the server's
    if endpoint is None:
        return {}
    try:
        return serving_memory(endpoint.host, endpoint.port)
    except OSError:  # /proc unreadable (another OS, a container without it): no figure, never a failed test
        return {}


def finalize_local(environment, process: LoadProcess) -> None:
    """Local: complete the manifest (every row is written by now)."""
    writer = process.writer
    rows = writer.rows_written if writer else 0
    records = {"rows": rows, "workers": {process.worker: rows}}
    if writer is not None and writer.failure:
        records.update(not_recorded=writer.rows_lost + process.unrecorded, incomplete_reason=writer.failure)
    process.run.update_manifest(
        end=time.time(),
        complete=not (writer is not None and writer.failure),
        serving_footprint=_serving_memory(process),
        stages=process.board.stages_for_manifest(),
        records=records,
        dropped=nested_counts(process.dropped),
        late=nested_counts(process.late),
        unrecorded=process.unrecorded,
        backoff={"events": process.backoff_events, "seconds": round(process.backoff_seconds, 3)},
        locust=dict(process.run.read_manifest().get("locust", {}), **_locust_totals(environment)),
    )
    log.info("loadtest: records and manifest in %s", process.run.path)


def wait_for_final_reports(environment, process: LoadProcess, wait_s: float = FINAL_REPORT_WAIT_S) -> None:
    """Master: wait for every live worker's final report (up to ``wait_s`` beyond the stop timeout).

    Workers stopped by a signal (SIGTERM to ``loadtest run``) can take seconds on a busy machine to finish
    their in-flight requests; their final report carries their last rows and Locust's last stats, so the
    manifest waits for it rather than record stale counts.
    """
    deadline = time.monotonic() + wait_s + (environment.stop_timeout or 0)
    while time.monotonic() < deadline:
        lost = {w["worker"] for w in process.workers_lost.values()}
        reports = [r for worker, r in process.worker_reports.items() if worker not in lost]
        alive = len(environment.runner.clients) - len(environment.runner.clients.missing)
        if reports and all(r.get("final") for r in reports) and len(reports) >= alive:
            return
        gevent.sleep(0.05)


def _rows_on_disk(run_dir: Path, worker: str) -> int:
    """Rows in a worker's completed shards (what survives of a worker that vanished)."""
    total = 0
    for path in shard_paths(run_dir):
        if path.name.startswith(f"{worker}-"):
            try:
                total += pq.read_metadata(path).num_rows
            except Exception:  # noqa: BLE001  a torn shard: the analyzer reports it
                pass
    return total


def finalize_master(environment, process: LoadProcess) -> None:
    """Master: complete the manifest with the workers' counts added up."""
    reports = dict(process.worker_reports)
    lost_workers = list(process.workers_lost.values())
    for info in lost_workers:  # its last report is stale: count what reached the disk
        info["rows_on_disk"] = _rows_on_disk(process.run.path, info["worker"])
        if info["worker"] in reports:
            reports[info["worker"]] = dict(reports[info["worker"]], rows=info["rows_on_disk"])
    failures = [r.get("records_failure") for r in reports.values() if r.get("records_failure")]
    not_recorded = sum(r.get("not_recorded", 0) for r in reports.values())
    dropped: dict = {}
    late: dict = {}
    for report in reports.values():
        merge_counts(dropped, report.get("dropped", {}))
        merge_counts(late, report.get("late", {}))
    process.run.update_manifest(
        end=time.time(),
        serving_footprint=_serving_memory(process),
        stages=process.board.stages_for_manifest(),
        complete=not (failures or lost_workers),
        workers_lost=lost_workers,
        records={"rows": sum(r.get("rows", 0) for r in reports.values()),
                 "workers": {w: r.get("rows", 0) for w, r in reports.items()},
                 "all_final": all(r.get("final") for r in reports.values()),
                 **({"not_recorded": not_recorded, "incomplete_reason": failures[0]} if failures else {})},
        dropped=dropped,
        late=late,
        unrecorded=sum(r.get("unrecorded", 0) for r in reports.values()),
        backoff={"events": sum(r.get("backoff", {}).get("events", 0) for r in reports.values()),
                 "seconds": round(sum(r.get("backoff", {}).get("seconds", 0.0) for r in reports.values()), 3)},
        locust=dict(process.run.read_manifest().get("locust", {}), **_locust_totals(environment)),
    )  # fmt: skip
    log.info("loadtest: records and manifest in %s", process.run.path)
