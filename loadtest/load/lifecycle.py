"""Locust event listeners that give every test a run directory, records, metrics and snapshots.

Why listeners and not code in the scenarios: every scenario (and any user's own locustfile that
imports ``loadtest.load``) gets the same run directory, records and metrics without a line of its own.

This module only decides *when* things happen; the state they act on is one ``LoadProcess``
(``loadtest.load.process``), created here and handed to Locust's environment for users and shapes.
The pieces: records flushed by ``flushing``, Triton snapshots by ``snapshots``, the manifest by
``finalize``. Roles (Locust's runners): a *local* process does everything; with ``--processes``/
``--master``/``--worker`` the *master* owns the manifest, the stage plan and the snapshots, and each
*worker* writes its own record shards and serves its own metrics. The master hands the run directory
to workers through the options it sends with every spawn message, and forwards stage changes with a
custom message; workers report their row and dropped-send counts back with their stats reports.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import gevent
from locust import events
from locust.runners import MasterRunner, WorkerRunner
from tokenizers import Tokenizer  # noqa: F401  (loaded once, before --processes forks)

from loadtest.credentials import URL_CREDENTIALS_ENV, split_host
from loadtest.errors import LoadtestError
from loadtest.load import options as _options  # noqa: F401  (registers the command-line options)
from loadtest.load.client_metrics import metrics_port_for
from loadtest.load.finalize import (
    FINAL_REPORT_WAIT_S,
    base_manifest,
    finalize_local,
    finalize_master,
    run_kind,
    wait_for_final_reports,
)
from loadtest.load.flushing import RecordFlusher
from loadtest.load.options import load_generation_options, load_options
from loadtest.load.process import DRIVERS_MESSAGE, ENVIRONMENT_ATTRIBUTE, STAGE_MESSAGE, LoadProcess
from loadtest.load.records import RecordWriter, worker_id
from loadtest.load.settings import LoadOptions
from loadtest.load.snapshots import snapshot_metrics
from loadtest.load.stages import StageRecord
from loadtest.rundir import RunDir, claim_run_dir, create_run_dir

log = logging.getLogger("loadtest")

INCOMPLETE_EXIT_CODE = 3  # the run stopped early and its manifest says why (records lost, a worker lost)
RUN_DIR_KEY = "loadtest_active_run_dir"  # set on the master's options; travels to workers with spawn messages

PROCESS = LoadProcess()  # this process's state; one test at a time per process
events.request.add_listener(PROCESS.on_request)


class _Test:
    """What the listeners keep besides the process state: the Locust objects of the running test."""

    environment = None
    flusher: RecordFlusher | None = None
    finalizer: gevent.Greenlet | None = None
    watcher: gevent.Greenlet | None = None  # master: notices workers that stop answering
    metrics_server = None


_TEST = _Test()


# ---- stages and snapshots -------------------------------------------------------------------
def snapshot(label: str) -> None:
    options = PROCESS.options
    if options is None:
        return
    urls = (options.triton_metrics(PROCESS.host), options.gpu_metrics())
    snapshot_metrics(PROCESS.run, urls, label, warn=PROCESS.warn_once)


def _on_board_change(record: StageRecord) -> None:
    """Local/master: snapshot Triton at every stage boundary and keep the manifest's stage list current."""
    if PROCESS.run is None:  # a shape's first stage is published before the test (and its run dir) starts
        return
    gevent.spawn(snapshot, record.label)
    gevent.spawn(_write_manifest_stages)


def _write_manifest_stages() -> None:
    if PROCESS.run is not None:
        try:
            PROCESS.run.update_manifest(stages=PROCESS.board.stages_for_manifest())
        except OSError as exc:  # a full disk: the final manifest (written from the reserved space) has them
            PROCESS.warn_once("manifest-stages", "loadtest: cannot update the manifest's stages (%s)", exc.strerror or exc)


def _on_stage_message(environment, msg, **_kw) -> None:
    data = msg.data or {}
    PROCESS.board.publish(data["label"], rate=data.get("rate"), value=data.get("value"), kind=data.get("kind", ""))


def _on_drivers_message(environment, msg, **_kw) -> None:
    PROCESS.board.drivers = int(msg.data["drivers"])


# ---- records that cannot be written -----------------------------------------------------------
def _records_failed(writer: RecordWriter) -> None:
    """Rows cannot be written (a full disk): say it in one line and stop the test, rather than load the
    server for a run whose records are lost. The final manifest marks the run incomplete with counts."""
    if PROCESS.records_failure is not None:
        return
    PROCESS.records_failure = writer.failure
    log.error("loadtest: records cannot be written (%s): stopping the test; %d rows recorded so far, %d not "
              "recorded; the manifest marks the run incomplete", writer.failure, writer.rows_written,
              writer.rows_lost)  # fmt: skip
    if _TEST.environment is None or PROCESS.role == "worker":
        return  # a worker's report tells the master, which stops the whole test
    _stop_incomplete(_TEST.environment)


def _stop_incomplete(environment) -> None:
    environment.process_exit_code = INCOMPLETE_EXIT_CODE
    runner = environment.runner
    if runner is not None:
        headless = bool(getattr(environment.parsed_options, "headless", False))
        gevent.spawn_later(0, runner.quit if headless else runner.stop)


# ---- lost workers ---------------------------------------------------------------------------
WATCH_INTERVAL_S = 0.5


def _watch_workers(environment) -> None:
    """Master: a worker that stops answering mid-run (killed, crashed, OOM) is said loudly and stops the run.

    Why stop rather than redistribute: Locust would respawn the lost worker's users elsewhere, but its
    open-loop share of the schedule and its unflushed rows are gone; a run that silently measured less load
    than asked is worse than one that says so. The manifest lists the lost worker (``workers_lost``), the
    run is marked incomplete, and Locust exits 3 (``loadtest run`` prints the figures, then exits 3).
    """
    runner = environment.runner
    while True:
        gevent.sleep(WATCH_INTERVAL_S)
        for client in list(runner.clients.missing):
            if client.id in PROCESS.workers_lost:
                continue
            worker = PROCESS.worker_clients.get(client.id, client.id)
            last = PROCESS.worker_reports.get(worker, {})
            index = getattr(client, "index", None)
            PROCESS.workers_lost[client.id] = {"worker": worker, "locust_id": client.id, "index": index,
                                               "lost_at": time.time(), "rows_reported": last.get("rows", 0)}  # fmt: skip
            log.error("loadtest: worker %s (index %s) stopped answering mid-run (killed or crashed): its share of "
                      "the load is lost; stopping the run, which is marked incomplete (exit status %d)",
                      worker, index, INCOMPLETE_EXIT_CODE)  # fmt: skip
            _stop_incomplete(environment)


# ---- metrics endpoint -----------------------------------------------------------------------
def start_metrics_server(port: int, address: str = "127.0.0.1") -> None:
    """Serve this process's metrics; loopback unless ``--metrics-address`` opens it to the network.

    A busy port is a warning, not a failed test.
    """
    if _TEST.metrics_server is not None or port <= 0:
        return
    from gevent.pywsgi import WSGIServer

    server = WSGIServer((address, port), PROCESS.metrics.wsgi_app(), log=None, error_log=None)
    try:
        server.start()
    except OSError as exc:
        PROCESS.warn_once("metrics-port", "loadtest: metrics endpoint not started: port %d: %s", port, exc.strerror or exc)
        return
    _TEST.metrics_server = server
    log.info("loadtest: Prometheus metrics of this process at http://%s:%d/metrics", address, port)


# ---- roles and shape selection --------------------------------------------------------------
def _role(runner) -> str:
    if isinstance(runner, MasterRunner):
        return "master"
    if isinstance(runner, WorkerRunner):
        return "worker"
    return "local"


def _select_shape(environment) -> None:
    """Honour ``--shape``; with several shapes loaded and none picked, run without one (-u/-r/-t)."""
    parsed = environment.parsed_options
    wanted = (getattr(parsed, "shape", "") or "").strip()
    shapes = dict(environment.available_shape_classes or {})
    if wanted:
        if wanted.lower() == "none":
            environment.shape_class = None
            return
        matches = [
            shape for name, shape in shapes.items()
            if name.lower() == wanted.lower() or str(getattr(shape, "kind", "")).lower() == wanted.lower()
        ]  # fmt: skip
        if len(matches) != 1:
            known = ", ".join(f"{n} ({getattr(s, 'kind', '?')})" for n, s in shapes.items()) or "none loaded"
            problem = "matches several shapes" if matches else "is not a loaded shape"
            raise LoadtestError(f"--shape {wanted} {problem}; shapes: {known}")
        environment.shape_class = matches[0]
        matches[0].runner = environment.runner
    elif len(shapes) > 1 and not getattr(parsed, "class_picker", False):
        environment.shape_class = None
        log.info(
            "loadtest: %d load shapes loaded (%s): running plain -u/-r/-t; pick one with --shape NAME",
            len(shapes), ", ".join(shapes),
        )  # fmt: skip


def _wait_for_workers_on_quit(runner, extra_wait_s: float = 30.0) -> None:
    """Make the master's quit wait until every worker has quit (or a timeout), not a fixed 0.5 s.

    Locust's ``MasterRunner.quit`` sends "quit" and kills its message loop 0.5 s later; a worker that
    needs longer to finish its in-flight requests (measured here: 0.8 s on a busy 2-core machine) then
    loses its final stats report, and Locust undercounts the run. A worker's own "quit" message follows
    its final report on the same connection, so waiting for it makes the counts complete.
    """
    from locust.rpc import Message

    original = runner.quit

    def quit() -> None:
        if len(runner.clients) and not getattr(quit, "waiting", False):
            quit.waiting = True
            runner.stop(send_stop_to_client=False)
            for client in list(runner.clients.all):
                runner.server.send_to_client(Message("quit", None, client.id))
            deadline = time.monotonic() + runner.environment.stop_timeout + extra_wait_s
            while len(runner.clients) and time.monotonic() < deadline:
                gevent.sleep(0.05)
        original()

    runner.quit = quit


def hide_host_credentials(environment) -> None:
    """Move ``--host``'s user-info out of the host (which Locust writes into locust.html and we into the
    manifest) into this process's environment, where the Triton clients read it (``loadtest.credentials``)."""
    clean, user_info = split_host(environment.host)
    if user_info is None:
        return
    os.environ[URL_CREDENTIALS_ENV] = user_info
    environment.host = clean
    if environment.parsed_options is not None:
        environment.parsed_options.host = clean


def _select_workload(environment) -> None:
    """``--api`` set: only the LLM (generative) users run; unset: only the classifier users.

    So ``locust -f scenarios/`` loads every scenario and runs the ones that fit the server named.
    """
    generative = load_generation_options(environment).enabled
    classes = environment.user_classes
    keep = [c for c in classes if bool(getattr(c, "generative", False)) == generative]
    if classes and not keep:
        kind = "LLM users (without --api)" if not generative else "classifier users (with --api)"
        names = ", ".join(c.__name__ for c in classes)
        raise LoadtestError(f"the selected user classes ({names}) are {kind}: "
                            + ("add --api" if not generative else "pick an LLM user or drop --api"))
    if len(keep) != len(classes):
        classes[:] = keep


@events.init.add_listener
def on_init(environment, runner=None, **_kw) -> None:
    runner = runner or environment.runner
    _TEST.environment = environment
    hide_host_credentials(environment)
    setattr(environment, ENVIRONMENT_ATTRIBUTE, PROCESS)
    PROCESS.role = _role(runner)
    PROCESS.worker = worker_id()  # after --processes forked: each worker has its own pid
    PROCESS.host = environment.host
    parsed = environment.parsed_options
    if parsed is None:
        return
    PROCESS.user_spawn_rate = getattr(parsed, "spawn_rate", None)
    if getattr(parsed, "reset_stats", False) and PROCESS.role != "worker":
        log.warning("loadtest: --reset-stats makes Locust forget the ramp-up; the records keep every request")
    try:
        _select_workload(environment)
    except LoadtestError as exc:
        log.error("loadtest: %s", exc)
        raise SystemExit(2) from None
    if PROCESS.role != "worker":
        try:
            _select_shape(environment)
        except LoadtestError as exc:
            log.error("loadtest: %s", exc)
            raise SystemExit(2) from None
        PROCESS.board.listeners.append(_on_board_change)
    if PROCESS.role == "worker":
        runner.register_message(STAGE_MESSAGE, _on_stage_message)
        runner.register_message(DRIVERS_MESSAGE, _on_drivers_message)
    if PROCESS.role == "master":
        _wait_for_workers_on_quit(runner)
    base_port = int(getattr(parsed, "metrics_port", 0) or 0)
    if base_port:
        # Forked --processes workers share one host, so each takes base + 1 + index; a worker on its own
        # machine or container (--worker) keeps the base port, where Prometheus' discovery expects it.
        forked = bool(getattr(parsed, "processes", None))
        index = runner.worker_index if PROCESS.role == "worker" and forked else None
        address = str(getattr(parsed, "metrics_address", "") or "127.0.0.1")
        start_metrics_server(metrics_port_for(base_port, index), "127.0.0.1" if address == "localhost" else address)
    _prepare_early(environment)


def _prepare(environment, options: LoadOptions) -> None:
    PROCESS.host = environment.host
    if PROCESS.prepare(options, load_generation_options(environment), environment.host):
        # Building blocks the event loop for a moment: refresh its cached clock, or timers set next
        # (Locust's -t among them) would count the blocked time as already elapsed.
        gevent.get_hub().loop.update_now()


def _prepare_early(environment) -> None:
    """Build payloads before the test (and -t's clock) starts; headless, a bad option ends the run here."""
    parsed = environment.parsed_options
    headless = bool(getattr(parsed, "headless", False)) or PROCESS.role == "worker"
    if not environment.host and not headless:
        return  # the web UI asks for the host when the test starts
    try:
        _prepare(environment, load_options(environment))
    except LoadtestError as exc:
        if PROCESS.role in ("worker", "master") or not headless:
            log.warning("loadtest: %s (checked again when the test starts)", exc)
            return
        log.error("loadtest: %s", exc)
        raise SystemExit(2) from None


@events.spawning_complete.add_listener
def on_spawning_complete(user_count=0, **_kw) -> None:
    """Local/master: tell open-loop drivers how many of them share the arrival rate."""
    environment = _TEST.environment
    if environment is None or environment.runner is None or PROCESS.role == "worker":
        return
    runner = environment.runner
    counts = runner.target_user_classes_count if PROCESS.role == "master" else runner.user_classes_count
    classes = runner.user_classes_by_name
    drivers = sum(n for name, n in counts.items() if getattr(classes.get(name), "open_loop", False))
    PROCESS.board.drivers = drivers
    if PROCESS.role == "master":
        runner.send_message(DRIVERS_MESSAGE, {"drivers": drivers})


def _fail(environment, message: str) -> None:
    """A user-caused problem at test start: one line, exit status 2; headless quits, the web UI stops."""
    PROCESS.error = message
    log.error("loadtest: %s", message)
    environment.process_exit_code = 2
    runner = environment.runner
    if runner is not None:
        headless = bool(getattr(environment.parsed_options, "headless", False))
        gevent.spawn_later(0, runner.quit if headless else runner.stop)


def _claim_run_dir(environment, options: LoadOptions) -> Path:
    """Local/master: create (or claim --run-dir) the run directory; worker: the one the master sent."""
    if PROCESS.role in ("local", "master"):
        given = options.run_dir
        path = claim_run_dir(given) if given else create_run_dir(options.records_dir, run_kind(environment))
        setattr(environment.parsed_options, RUN_DIR_KEY, str(path))
        return path
    path = Path(getattr(environment.parsed_options, RUN_DIR_KEY, "") or options.run_dir or "")
    if not str(path) or str(path) == ".":
        raise LoadtestError("worker got no run directory from the master (is the master a loadtest scenario?)")
    path.mkdir(parents=True, exist_ok=True)
    return path


@events.test_start.add_listener
def on_test_start(environment, **_kw) -> None:
    _TEST.environment = environment
    hide_host_credentials(environment)  # the web UI sets the host at start
    PROCESS.start_test(time.time())
    try:
        options = load_options(environment)
        PROCESS.options = options
        try:
            _prepare(environment, options)
        except LoadtestError as exc:
            if PROCESS.role != "master":
                raise
            # the master sends nothing; its context only names models and protocol in the manifest
            PROCESS.warn_once("master-context", "loadtest: %s (the workers check it again)", exc)
        PROCESS.run = RunDir(_claim_run_dir(environment, options))
    except LoadtestError as exc:
        _fail(environment, str(exc))
        return
    if PROCESS.role in ("local", "worker"):
        PROCESS.writer = RecordWriter(PROCESS.run.path, worker=PROCESS.worker)
        _TEST.flusher = RecordFlusher(PROCESS.writer, on_failure=_records_failed)
    if PROCESS.role == "master" and _TEST.watcher is None:
        _TEST.watcher = gevent.spawn(_watch_workers, environment)
    if PROCESS.role in ("local", "master"):
        if not PROCESS.board.history:  # no shape: the whole run is one stage
            PROCESS.board.publish(PROCESS.board.label, notify=False)
        PROCESS.run.write_manifest(base_manifest(environment, PROCESS, options))
        snapshot("start")
        log.info("loadtest: run directory %s", PROCESS.run.path)


@events.test_stop.add_listener
def on_test_stop(environment, **_kw) -> None:
    if PROCESS.run is None:
        return
    PROCESS.board.close()
    if _TEST.flusher is not None:
        _TEST.flusher.stop()
        _TEST.flusher = None
    if PROCESS.role == "worker":
        PROCESS.board.reset()  # the master sends the next test's stages and driver count afresh
    elif PROCESS.role == "local":
        snapshot("stop")
        finalize_local(environment, PROCESS)
        PROCESS.board.reset()
    else:
        _TEST.finalizer = gevent.spawn(_finalize_master, environment)


def _finalize_master(environment) -> None:
    wait_for_final_reports(environment, PROCESS)
    if _TEST.watcher is not None:
        _TEST.watcher.kill(block=False)
        _TEST.watcher = None
    snapshot("stop")
    finalize_master(environment, PROCESS)
    PROCESS.board.reset()


@events.report_to_master.add_listener
def on_report_to_master(client_id=None, data=None, **_kw) -> None:
    if data is not None and PROCESS.run is not None:
        data["loadtest"] = PROCESS.report(final=PROCESS.writer is not None and PROCESS.writer.closed)


@events.worker_report.add_listener
def on_worker_report(client_id=None, data=None, **_kw) -> None:
    report = (data or {}).get("loadtest")
    if report and PROCESS.run is not None and report.get("run_dir") == str(PROCESS.run.path):
        PROCESS.worker_reports[report["worker"]] = report
        PROCESS.worker_clients[client_id] = report["worker"]
        failure = report.get("records_failure")
        if failure and PROCESS.records_failure is None:
            PROCESS.records_failure = failure
            log.error("loadtest: worker %s cannot write records (%s): stopping the test; the manifest marks the "
                      "run incomplete", report["worker"], failure)  # fmt: skip
            _stop_incomplete(_TEST.environment)


@events.quitting.add_listener
def on_quitting(environment, **_kw) -> None:
    if _TEST.finalizer is not None:
        _TEST.finalizer.join(timeout=FINAL_REPORT_WAIT_S + (environment.stop_timeout or 0) + 10)
        _TEST.finalizer = None
