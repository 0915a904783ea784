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

from loadtest.load.process import LoadProcess, merge_counts, nested_counts
from loadtest.load.settings import LoadOptions
from loadtest.rundir import client_host, versions

log = logging.getLogger("loadtest")
WORKER_REPORT_WAIT_S = 3.0


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
    rows = process.writer.rows_written if process.writer else 0
    process.run.update_manifest(
        end=time.time(),
        serving_footprint=_serving_memory(process),
        stages=process.board.stages_for_manifest(),
        records={"rows": rows, "workers": {process.worker: rows}},
        dropped=nested_counts(process.dropped),
        late=nested_counts(process.late),
        unrecorded=process.unrecorded,
        locust=dict(process.run.read_manifest().get("locust", {}), **_locust_totals(environment)),
    )
    log.info("loadtest: records and manifest in %s", process.run.path)


def wait_for_final_reports(environment, process: LoadProcess, wait_s: float = WORKER_REPORT_WAIT_S) -> None:
    """Master: wait (briefly) until every worker has sent its final report."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        reports = process.worker_reports.values()
        if reports and all(r.get("final") for r in reports) and len(reports) >= len(environment.runner.clients):
            return
        gevent.sleep(0.05)


def finalize_master(environment, process: LoadProcess) -> None:
    """Master: complete the manifest with the workers' counts added up."""
    reports = dict(process.worker_reports)
    dropped: dict = {}
    late: dict = {}
    for report in reports.values():
        merge_counts(dropped, report.get("dropped", {}))
        merge_counts(late, report.get("late", {}))
    process.run.update_manifest(
        end=time.time(),
        serving_footprint=_serving_memory(process),
        stages=process.board.stages_for_manifest(),
        records={"rows": sum(r.get("rows", 0) for r in reports.values()),
                 "workers": {w: r.get("rows", 0) for w, r in reports.items()},
                 "all_final": all(r.get("final") for r in reports.values())},
        dropped=dropped,
        late=late,
        unrecorded=sum(r.get("unrecorded", 0) for r in reports.values()),
        locust=dict(process.run.read_manifest().get("locust", {}), **_locust_totals(environment)),
    )  # fmt: skip
    log.info("loadtest: records and manifest in %s", process.run.path)
