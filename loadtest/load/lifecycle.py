"""Test lifecycle listeners: run directory, records, metrics endpoint, Triton snapshots, stages.

Why listeners and not code in the scenarios: every scenario (and any user's own locustfile that
imports ``loadtest.load``) gets the same run directory, records and metrics without a line of its own.

Roles (Locust's runners): a *local* process does everything; with ``--processes``/``--master``/
``--worker`` the *master* owns the run directory's manifest, the stage plan and the Triton snapshots,
and each *worker* writes its own record shards (``records/<host>-<pid>-<seq>.parquet``) and serves its
own metrics. The master hands the run directory to workers through the options it sends them with
every spawn message, and forwards stage changes with a custom message; workers report their row and
dropped-send counts back with their stats reports.
"""

from __future__ import annotations

import logging
import os
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import gevent
from gevent.event import Event
from locust import events
from locust.runners import MasterRunner, WorkerRunner
from tokenizers import Tokenizer  # noqa: F401  (loaded once, before --processes forks)

from loadtest.credentials import URL_CREDENTIALS_ENV, split_host
from loadtest.errors import LoadtestError
from loadtest.load import options as _options  # noqa: F401  (registers the command-line options)
from loadtest.load.backoff import CAP_S
from loadtest.load.client_metrics import ClientMetrics, metrics_port_for
from loadtest.load.context import LoadContext, build_context
from loadtest.load.options import load_generation_options, load_options
from loadtest.load.records import RecordWriter, worker_id
from loadtest.load.rundir import RunDir, claim_run_dir, client_host, create_run_dir, safe_label, versions
from loadtest.load.settings import LoadOptions
from loadtest.load.stages import StageBoard, StageRecord

log = logging.getLogger("loadtest")

INCOMPLETE_EXIT_CODE = 3  # the run stopped early and its manifest says why (records lost, a worker lost)
RUN_DIR_KEY = "loadtest_active_run_dir"  # set on the master's options; travels to workers with spawn messages
STAGE_MESSAGE = "loadtest_stage"
DRIVERS_MESSAGE = "loadtest_drivers"
SNAPSHOT_TIMEOUT_S = 5.0


@dataclass
class ProcessState:
    """Everything this process keeps for the current test (one test at a time per process)."""

    board: StageBoard = field(default_factory=StageBoard)
    metrics: ClientMetrics = field(default_factory=ClientMetrics)
    role: str = "local"  # local | master | worker
    worker: str = field(default_factory=worker_id)
    options: LoadOptions | None = None
    context: LoadContext | None = None
    context_key: tuple | None = None
    error: str | None = None
    run: RunDir | None = None
    writer: RecordWriter | None = None
    flusher: gevent.Greenlet | None = None
    flusher_stop: Event | None = None
    prepared: dict = field(default_factory=dict)  # protocol -> model -> [PreparedRequest]
    dropped: Counter = field(default_factory=Counter)  # (model, stage) -> sends that never left
    late: Counter = field(default_factory=Counter)  # (model, stage) -> sends that left late
    offered: dict = field(default_factory=dict)  # open-loop driver number -> its requests/s per model
    unrecorded: int = 0  # requests completed after the writer closed (should stay 0)
    records_failure: str | None = None  # why this process's rows could not be written (None: they were)
    workers_lost: dict = field(default_factory=dict)  # master: Locust client id -> what is known of it when lost
    worker_clients: dict = field(default_factory=dict)  # master: Locust client id -> our worker id
    watcher: gevent.Greenlet | None = None
    backoff_events: int = 0  # closed-loop waits after connection errors (loadtest.load.backoff)
    backoff_seconds: float = 0.0
    worker_reports: dict = field(default_factory=dict)  # master: worker id -> latest loadtest report
    warned: set = field(default_factory=set)
    metrics_server: object | None = None
    user_spawn_rate: float | None = None  # -r as given (None: shapes ramp each stage within a second)
    started: float | None = None
    finalizer: gevent.Greenlet | None = None


STATE = ProcessState()


def warn_once(key: str, message: str, *args) -> None:
    if key not in STATE.warned:
        STATE.warned.add(key)
        log.warning(message, *args)


def current_context() -> LoadContext | None:
    return STATE.context


def prepared_requests(protocol: str) -> dict:
    """``{model: [PreparedRequest]}`` for this test, built once per process and protocol."""
    from loadtest.load.triton_client import prepare_request

    if protocol not in STATE.prepared:
        context = STATE.context
        if getattr(context, "generative", False):
            from loadtest.load.stream_clients import prepare_requests

            STATE.prepared[protocol] = prepare_requests(context)
            return STATE.prepared[protocol]
        STATE.prepared[protocol] = {
            spec.name: [prepare_request(protocol, spec, payload, context.options.model_version)
                        for payload in context.payloads_for(spec.name)]
            for spec in context.models
        }
    return STATE.prepared[protocol]


# ---- stages ---------------------------------------------------------------------------------
def publish_stage(environment, label: str, *, value: float | None = None, rate: float | None = None,
                  kind: str = "steady") -> None:  # fmt: skip
    """Make ``label`` the stage of every request from now on, in this process and all workers."""
    history = STATE.board.history
    if history and history[-1].end is None and (history[-1].label, history[-1].value, history[-1].rate) == (
        label, value, rate
    ):
        return  # already current (Locust resets a shape's clock when a distributed test starts)
    STATE.board.publish(label, rate=rate, value=value, kind=kind)
    runner = environment.runner
    if isinstance(runner, MasterRunner):
        runner.send_message(STAGE_MESSAGE, {"label": label, "value": value, "rate": rate, "kind": kind})


def _on_stage_message(environment, msg, **_kw) -> None:
    data = msg.data or {}
    STATE.board.publish(data["label"], rate=data.get("rate"), value=data.get("value"), kind=data.get("kind", ""))


def _on_drivers_message(environment, msg, **_kw) -> None:
    STATE.board.drivers = int(msg.data["drivers"])


def _on_board_change(record: StageRecord) -> None:
    """Local/master: snapshot Triton at every stage boundary and keep the manifest's stage list current."""
    if STATE.run is None:  # a shape's first stage is published before the test (and its run dir) starts
        return
    gevent.spawn(snapshot_metrics, record.label)
    gevent.spawn(_write_manifest_stages)


def _write_manifest_stages() -> None:
    if STATE.run is not None:
        try:
            STATE.run.update_manifest(stages=STATE.board.stages_for_manifest())
        except OSError as exc:  # a full disk: the final manifest (written from the reserved space) has them
            warn_once("manifest-stages", "loadtest: cannot update the manifest's stages (%s)", exc.strerror or exc)


# ---- metrics snapshots ----------------------------------------------------------------------
def _fetch(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=SNAPSHOT_TIMEOUT_S) as response:
            return response.read().decode("utf-8", errors="replace")
    except Exception as exc:  # never fatal: the analyzer then lacks the server-side split, and says so
        warn_once(f"fetch:{url}", "loadtest: cannot fetch metrics from %s (%s); snapshots skipped", url, exc)
        return None


def snapshot_metrics(label: str) -> Path | None:
    """Save Triton's (and the GPU exporter's) /metrics text as ``metrics/<unix_ms>-<label>.prom``.

    Both texts go in one file: their metric families do not overlap (``nv_*`` vs the exporter's), so
    the file stays valid Prometheus text.
    """
    run, options = STATE.run, STATE.options
    if run is None or options is None:
        return None
    host = _ENV["environment"].host if "environment" in _ENV else None
    urls = [u for u in (options.triton_metrics(host), options.gpu_metrics()) if u]
    if not urls:
        return None
    stamp = int(time.time() * 1000)
    texts = [text for text in (_fetch(u) for u in urls) if text is not None]
    if not texts:
        return None
    run.metrics_dir.mkdir(parents=True, exist_ok=True)
    path = run.metrics_dir / f"{stamp}-{safe_label(label)}.prom"
    tmp = run.metrics_dir / f".{path.name}.tmp"
    try:
        tmp.write_text("\n".join(t.rstrip("\n") for t in texts) + "\n")
        tmp.replace(path)
    except OSError as exc:  # a full disk: the analyzer then lacks this snapshot, and the log says why
        tmp.unlink(missing_ok=True)
        warn_once(f"snapshot-write:{exc.errno}", "loadtest: cannot write a metrics snapshot (%s)", exc.strerror or exc)
        return None
    return path


# ---- metrics endpoint -----------------------------------------------------------------------
def start_metrics_server(port: int, address: str = "127.0.0.1") -> None:
    """Serve this process's metrics; loopback unless ``--metrics-address`` opens it to the network."""
    if STATE.metrics_server is not None or port <= 0:
        return
    from gevent.pywsgi import WSGIServer

    server = WSGIServer((address, port), STATE.metrics.wsgi_app(), log=None, error_log=None)
    try:
        server.start()
    except OSError as exc:
        warn_once("metrics-port", "loadtest: metrics endpoint not started: port %d: %s", port, exc.strerror or exc)
        return
    STATE.metrics_server = server
    log.info("loadtest: Prometheus metrics of this process at http://%s:%d/metrics", address, port)


# ---- records --------------------------------------------------------------------------------
def _flush_loop(writer: RecordWriter, stop: Event) -> None:
    """Write the buffered rows every ``writer.interval`` seconds (on a fixed beat, whatever a write takes)
    in a real thread, so Parquet encoding never blocks the event loop that times the requests."""
    pool = gevent.get_hub().threadpool
    deadline = time.monotonic() + writer.interval
    while not stop.wait(timeout=max(deadline - time.monotonic(), 0.0)):
        deadline += writer.interval
        rows = writer.drain()
        if rows:
            pool.apply(writer.write, (rows,))
        if writer.failure is not None:
            _records_failed(writer)
            return


def _records_failed(writer: RecordWriter) -> None:
    """Rows cannot be written (a full disk): say it in one line and stop the test, rather than load the
    server for a run whose records are lost. The final manifest marks the run incomplete with counts."""
    if STATE.records_failure is not None:
        return
    STATE.records_failure = writer.failure
    log.error("loadtest: records cannot be written (%s): stopping the test; %d rows recorded so far, %d not "
              "recorded; the manifest marks the run incomplete", writer.failure, writer.rows_written,
              writer.rows_lost)  # fmt: skip
    environment = _ENV.get("environment")
    if environment is None or STATE.role == "worker":
        return  # a worker's report tells the master, which stops the whole test
    _stop_incomplete(environment)


def _stop_incomplete(environment) -> None:
    environment.process_exit_code = INCOMPLETE_EXIT_CODE
    runner = environment.runner
    if runner is not None:
        headless = bool(getattr(environment.parsed_options, "headless", False))
        gevent.spawn_later(0, runner.quit if headless else runner.stop)


@events.request.add_listener
def on_request(context=None, **_kw) -> None:
    """Every request our clients report becomes one record row and updates the client metrics."""
    record = context.get("loadtest_record") if context else None
    if record is None:
        return
    writer = STATE.writer
    if writer is None or writer.closed:
        STATE.unrecorded += 1
        warn_once("unrecorded", "loadtest: a request finished after the test stopped and was not recorded")
        return
    writer.append(record)
    STATE.metrics.observe(record.model, record.protocol, record.success, record.latency_s, record.tokens)
    if record.output_tokens is not None and record.success:
        from loadtest.generative.timing import itl_s

        STATE.metrics.observe_generation(record.model, record.protocol, record.ttft_s,
                                         itl_s(record.latency_s, record.ttft_s, record.output_tokens),
                                         record.output_tokens)  # fmt: skip
    if record.late:
        STATE.late[(record.model, record.stage)] += 1
        STATE.metrics.late_sends.labels(record.model).inc()


def set_offered_rate(driver: int, models: list[str], rate: float | None) -> None:
    """This process's offered rate per model = the sum over its open-loop drivers (None: driver gone)."""
    if rate is None:
        STATE.offered.pop(driver, None)
    else:
        STATE.offered[driver] = rate
    total = sum(STATE.offered.values())
    for model in models:
        STATE.metrics.offered_rate.labels(model).set(total)


def count_backoff(delay_s: float, error: str | None) -> None:
    """A closed-loop user waits ``delay_s`` after a connection error: counted, said once, never hidden."""
    STATE.backoff_events += 1
    STATE.backoff_seconds += delay_s
    STATE.metrics.backoff_seconds.inc(delay_s)
    warn_once("backoff", "loadtest: connection errors (%s): users back off (up to %.0f s) between attempts; "
              "counted in the manifest's 'backoff'", (error or "")[:160], CAP_S)  # fmt: skip


def count_dropped(model: str, stage: str) -> None:
    STATE.dropped[(model, stage)] += 1
    STATE.metrics.dropped_sends.labels(model).inc()


def _nested(counter: Counter) -> dict:
    out: dict = {}
    for (model, stage), n in sorted(counter.items()):
        out.setdefault(model, {})[stage] = n
    return out


def _merge(into: dict, add: dict) -> dict:
    for model, stages in add.items():
        for stage, n in stages.items():
            into.setdefault(model, {})[stage] = into.get(model, {}).get(stage, 0) + n
    return into


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
    _ENV["environment"] = environment
    hide_host_credentials(environment)
    STATE.role = _role(runner)
    STATE.worker = worker_id()  # after --processes forked: each worker has its own pid
    parsed = environment.parsed_options
    if parsed is None:
        return
    STATE.user_spawn_rate = getattr(parsed, "spawn_rate", None)
    if getattr(parsed, "reset_stats", False) and STATE.role != "worker":
        log.warning("loadtest: --reset-stats makes Locust forget the ramp-up; the records keep every request")
    try:
        _select_workload(environment)
    except LoadtestError as exc:
        log.error("loadtest: %s", exc)
        raise SystemExit(2) from None
    if STATE.role != "worker":
        try:
            _select_shape(environment)
        except LoadtestError as exc:
            log.error("loadtest: %s", exc)
            raise SystemExit(2) from None
        STATE.board.listeners.append(_on_board_change)
    if STATE.role == "worker":
        runner.register_message(STAGE_MESSAGE, _on_stage_message)
        runner.register_message(DRIVERS_MESSAGE, _on_drivers_message)
    if STATE.role == "master":
        _wait_for_workers_on_quit(runner)
    base_port = int(getattr(parsed, "metrics_port", 0) or 0)
    if base_port:
        # Forked --processes workers share one host, so each takes base + 1 + index; a worker on its own
        # machine or container (--worker) keeps the base port, where Prometheus' discovery expects it.
        forked = bool(getattr(parsed, "processes", None))
        index = runner.worker_index if STATE.role == "worker" and forked else None
        address = str(getattr(parsed, "metrics_address", "") or "127.0.0.1")
        start_metrics_server(metrics_port_for(base_port, index), "127.0.0.1" if address == "localhost" else address)
    _prepare_early(environment)


def _prepare_early(environment) -> None:
    """Build payloads before the test (and -t's clock) starts; headless, a bad option ends the run here."""
    parsed = environment.parsed_options
    headless = bool(getattr(parsed, "headless", False)) or STATE.role == "worker"
    if not environment.host and not headless:
        return  # the web UI asks for the host when the test starts
    try:
        _prepare_context(environment, load_options(environment))
    except LoadtestError as exc:
        if STATE.role in ("worker", "master") or not headless:
            log.warning("loadtest: %s (checked again when the test starts)", exc)
            return
        log.error("loadtest: %s", exc)
        raise SystemExit(2) from None


@events.spawning_complete.add_listener
def on_spawning_complete(user_count=0, **_kw) -> None:
    """Local/master: tell open-loop drivers how many of them share the arrival rate."""
    environment = _ENV.get("environment")
    if environment is None or environment.runner is None or STATE.role == "worker":
        return
    from loadtest.load.users import OpenLoopUser

    runner = environment.runner
    counts = runner.target_user_classes_count if STATE.role == "master" else runner.user_classes_count
    classes = runner.user_classes_by_name
    drivers = sum(n for name, n in counts.items() if name in classes and issubclass(classes[name], OpenLoopUser))
    STATE.board.drivers = drivers
    if STATE.role == "master":
        runner.send_message(DRIVERS_MESSAGE, {"drivers": drivers})


_ENV: dict = {}


def _fail(environment, message: str) -> None:
    """A user-caused problem at test start: one line, exit status 2; headless quits, the web UI stops."""
    STATE.error = message
    log.error("loadtest: %s", message)
    environment.process_exit_code = 2
    runner = environment.runner
    if runner is not None:
        headless = bool(getattr(environment.parsed_options, "headless", False))
        gevent.spawn_later(0, runner.quit if headless else runner.stop)


def _run_kind(environment) -> str:
    shape = environment.shape_class
    if shape is not None and getattr(shape, "kind", None):
        return str(shape.kind)
    files = list(getattr(environment, "parsed_locustfiles", None) or [])
    if len(files) == 1:
        return Path(files[0]).stem
    return "scenarios"


def _models_for_manifest() -> dict | None:
    """``{"teacher", "student", "names"}``: which loaded model plays which role (the analyzer pairs them)."""
    context = STATE.context
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
            for m in context.served
        ],
    }  # fmt: skip


def _base_manifest(environment, options: LoadOptions) -> dict:
    parsed = environment.parsed_options
    shape = environment.shape_class
    return {
        "run_id": STATE.run.run_id,
        "kind": _run_kind(environment),
        "scenario": {
            "locustfiles": list(getattr(environment, "parsed_locustfiles", None) or []),
            "user_classes": [c.__name__ for c in environment.user_classes],
            "shape": type(shape).__name__ if shape is not None else None,
        },
        "host": environment.host,
        "protocol": STATE.context.endpoint.protocol if STATE.context else None,
        "credentials": STATE.context.credentials.describe() if STATE.context else None,
        "models": _models_for_manifest(),
        "payloads": STATE.context.payload_description if STATE.context else None,
        "settings": options.settings(),
        "workload": "generative" if getattr(STATE.context, "generative", False) else "classifier",
        "generation": STATE.context.generation.settings() if getattr(STATE.context, "generative", False) else None,
        "locust": {
            "users": getattr(parsed, "num_users", None),
            "spawn_rate": getattr(parsed, "spawn_rate", None),
            "run_time": getattr(parsed, "run_time", None),
            "processes": getattr(parsed, "processes", None),
            "expect_workers": getattr(parsed, "expect_workers", None) if STATE.role == "master" else None,
            "headless": getattr(parsed, "headless", None),
            "stop_timeout": environment.stop_timeout,
        },
        "role": STATE.role,
        "versions": versions(),
        "client_host": client_host(),
        "start": STATE.started,
        "end": None,
        "stages": STATE.board.stages_for_manifest(),
    }


@events.test_start.add_listener
def on_test_start(environment, **_kw) -> None:
    _ENV["environment"] = environment
    hide_host_credentials(environment)  # the web UI sets the host at start
    STATE.error = None
    STATE.run, STATE.writer = None, None
    STATE.started = time.time()
    STATE.dropped, STATE.late, STATE.unrecorded = Counter(), Counter(), 0
    STATE.backoff_events, STATE.backoff_seconds = 0, 0.0
    STATE.records_failure, STATE.workers_lost, STATE.worker_clients = None, {}, {}
    STATE.worker_reports = {}
    try:
        options = load_options(environment)
        STATE.options = options
        if STATE.role in ("local", "worker"):
            _prepare_context(environment, options)
        else:  # the master sends nothing; its context only names models and protocol in the manifest
            try:
                _prepare_context(environment, options)
            except LoadtestError as exc:
                warn_once("master-context", "loadtest: %s (the workers check it again)", exc)
        if STATE.role in ("local", "master"):
            given = options.run_dir
            path = claim_run_dir(given) if given else create_run_dir(options.records_dir, _run_kind(environment))
            setattr(environment.parsed_options, RUN_DIR_KEY, str(path))
        else:
            path = Path(getattr(environment.parsed_options, RUN_DIR_KEY, "") or options.run_dir or "")
            if not str(path) or str(path) == ".":
                raise LoadtestError("worker got no run directory from the master (is the master a loadtest scenario?)")
            path.mkdir(parents=True, exist_ok=True)
        STATE.run = RunDir(Path(path))
    except LoadtestError as exc:
        _fail(environment, str(exc))
        return
    if STATE.role in ("local", "worker"):
        STATE.writer = RecordWriter(STATE.run.path, worker=STATE.worker)
        STATE.flusher_stop = Event()
        STATE.flusher = gevent.spawn(_flush_loop, STATE.writer, STATE.flusher_stop)
    if STATE.role == "master" and STATE.watcher is None:
        STATE.watcher = gevent.spawn(_watch_workers, environment)
    if STATE.role in ("local", "master"):
        if not STATE.board.history:  # no shape: the whole run is one stage
            STATE.board.publish(STATE.board.label, notify=False)
        STATE.run.write_manifest(_base_manifest(environment, options))
        snapshot_metrics("start")
        log.info("loadtest: run directory %s", STATE.run.path)


def _prepare_context(environment, options: LoadOptions) -> None:
    generation = load_generation_options(environment)
    key = (options, generation, environment.host)
    if STATE.context is None or STATE.context_key != key:
        if generation.enabled:
            from loadtest.generative.context import build_generative_context

            STATE.context = build_generative_context(options, generation, environment.host)
        else:
            STATE.context = build_context(options, environment.host, tokenizer=generation.tokenizer)
        STATE.context_key = key
        STATE.prepared = {}
        if STATE.role != "master":  # serialise every request once, before the first user needs it
            prepared_requests(STATE.context.endpoint.protocol)
        # Building blocks the event loop for a moment: refresh its cached clock, or timers set next
        # (Locust's -t among them) would count the blocked time as already elapsed.
        gevent.get_hub().loop.update_now()


def _close_writer() -> None:
    if STATE.flusher is not None:
        STATE.flusher_stop.set()
        STATE.flusher.join()
        STATE.flusher = None
    if STATE.writer is not None and not STATE.writer.closed:
        STATE.writer.close()


@events.test_stop.add_listener
def on_test_stop(environment, **_kw) -> None:
    if STATE.run is None:
        return
    STATE.board.close()
    if STATE.role in ("local", "worker"):
        _close_writer()
    if STATE.role == "worker":
        STATE.board.reset()  # the master sends the next test's stages and driver count afresh
    if STATE.role == "local":
        _finalize(environment)
    elif STATE.role == "master":
        STATE.finalizer = gevent.spawn(_finalize_master, environment)


def _report(final: bool) -> dict:
    writer = STATE.writer
    return {
        "worker": STATE.worker,
        "run_dir": str(STATE.run.path) if STATE.run else None,
        "rows": (writer.rows_written + (0 if writer.failure else writer.pending)) if writer else 0,
        "dropped": _nested(STATE.dropped),
        "late": _nested(STATE.late),
        "unrecorded": STATE.unrecorded,
        "backoff": {"events": STATE.backoff_events, "seconds": STATE.backoff_seconds},
        "written": writer.rows_written if writer else 0,
        "not_recorded": (writer.rows_lost + (writer.pending if writer.failure else 0)) if writer else 0,
        "records_failure": writer.failure if writer else None,
        "final": final,
    }


@events.report_to_master.add_listener
def on_report_to_master(client_id=None, data=None, **_kw) -> None:
    if data is not None and STATE.run is not None:
        data["loadtest"] = _report(final=STATE.writer is not None and STATE.writer.closed)


@events.worker_report.add_listener
def on_worker_report(client_id=None, data=None, **_kw) -> None:
    report = (data or {}).get("loadtest")
    if report and STATE.run is not None and report.get("run_dir") == str(STATE.run.path):
        STATE.worker_reports[report["worker"]] = report
        STATE.worker_clients[client_id] = report["worker"]
        failure = report.get("records_failure")
        if failure and STATE.records_failure is None:
            STATE.records_failure = failure
            log.error("loadtest: worker %s cannot write records (%s): stopping the test; the manifest marks the "
                      "run incomplete", report["worker"], failure)  # fmt: skip
            _stop_incomplete(_ENV["environment"])


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
            if client.id in STATE.workers_lost:
                continue
            worker = STATE.worker_clients.get(client.id, client.id)
            last = STATE.worker_reports.get(worker, {})
            index = getattr(client, "index", None)
            STATE.workers_lost[client.id] = {"worker": worker, "locust_id": client.id, "index": index,
                                             "lost_at": time.time(), "rows_reported": last.get("rows", 0)}  # fmt: skip
            log.error("loadtest: worker %s (index %s) stopped answering mid-run (killed or crashed): its share of "
                      "the load is lost; stopping the run, which is marked incomplete (exit status %d)",
                      worker, index, INCOMPLETE_EXIT_CODE)  # fmt: skip
            _stop_incomplete(environment)


def _rows_on_disk(worker: str) -> int:
    """Rows in a worker's completed shards (what survives of a worker that vanished)."""
    import pyarrow.parquet as pq

    from loadtest.load.records import shard_paths

    total = 0
    for path in shard_paths(STATE.run.path):
        if path.name.startswith(f"{worker}-"):
            try:
                total += pq.read_metadata(path).num_rows
            except Exception:  # a torn shard: the analyzer reports it
                pass
    return total


def _locust_totals(environment) -> dict:
    total = environment.runner.stats.total
    return {"requests": total.num_requests, "failures": total.num_failures}


def _serving_memory() -> dict:
    """Peak RSS of each model's serving processes when Triton runs on this machine (the footprint table)."""
    from loadtest.load.serving_memory import serving_memory

    endpoint = STATE.context.endpoint if STATE.context else None
    if endpoint is None:
        return {}
    try:
        return serving_memory(endpoint.host, endpoint.port)
    except OSError:  # /proc unreadable (another OS, a container without it): no figure, never a failed test
        return {}


def _finalize(environment) -> None:
    """Local: final snapshot and manifest (every row is written by now)."""
    snapshot_metrics("stop")
    writer = STATE.writer
    rows = writer.rows_written if writer else 0
    records = {"rows": rows, "workers": {STATE.worker: rows}}
    if writer is not None and writer.failure:
        records.update(not_recorded=writer.rows_lost + STATE.unrecorded, incomplete_reason=writer.failure)
    STATE.run.update_manifest(
        end=time.time(),
        complete=not (writer is not None and writer.failure),
        serving_footprint=_serving_memory(),
        stages=STATE.board.stages_for_manifest(),
        records=records,
        dropped=_nested(STATE.dropped),
        late=_nested(STATE.late),
        unrecorded=STATE.unrecorded,
        backoff={"events": STATE.backoff_events, "seconds": round(STATE.backoff_seconds, 3)},
        locust=dict(STATE.run.read_manifest().get("locust", {}), **_locust_totals(environment)),
    )
    _end_test()


FINAL_REPORT_WAIT_S = 30.0


def _finalize_master(environment, wait_s: float = FINAL_REPORT_WAIT_S) -> None:
    """Master: wait for every worker's final report, then snapshot and write the manifest.

    Workers stopped by a signal (SIGTERM to ``loadtest run``) can take seconds on a busy machine to finish
    their in-flight requests; their final report carries their last rows and Locust's last stats, so the
    manifest waits for it (up to ``wait_s`` beyond the stop timeout) rather than record stale counts.
    """
    deadline = time.monotonic() + wait_s + (environment.stop_timeout or 0)
    while time.monotonic() < deadline:
        lost = {w["worker"] for w in STATE.workers_lost.values()}
        reports = [r for worker, r in STATE.worker_reports.items() if worker not in lost]
        alive = len(environment.runner.clients) - len(environment.runner.clients.missing)
        if reports and all(r.get("final") for r in reports) and len(reports) >= alive:
            break
        gevent.sleep(0.05)
    if STATE.watcher is not None:
        STATE.watcher.kill(block=False)
        STATE.watcher = None
    snapshot_metrics("stop")
    reports = dict(STATE.worker_reports)
    lost_workers = list(STATE.workers_lost.values())
    for info in lost_workers:  # its last report is stale: count what reached the disk
        info["rows_on_disk"] = _rows_on_disk(info["worker"])
        if info["worker"] in reports:
            reports[info["worker"]] = dict(reports[info["worker"]], rows=info["rows_on_disk"])
    failures = [r.get("records_failure") for r in reports.values() if r.get("records_failure")]
    not_recorded = sum(r.get("not_recorded", 0) for r in reports.values())
    dropped: dict = {}
    late: dict = {}
    for report in reports.values():
        _merge(dropped, report.get("dropped", {}))
        _merge(late, report.get("late", {}))
    STATE.run.update_manifest(
        end=time.time(),
        serving_footprint=_serving_memory(),
        stages=STATE.board.stages_for_manifest(),
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
        locust=dict(STATE.run.read_manifest().get("locust", {}), **_locust_totals(environment)),
    )  # fmt: skip
    _end_test()


def _end_test() -> None:
    log.info("loadtest: records and manifest in %s", STATE.run.path)
    STATE.board.reset()


@events.quitting.add_listener
def on_quitting(environment, **_kw) -> None:
    if STATE.finalizer is not None:
        STATE.finalizer.join(timeout=FINAL_REPORT_WAIT_S + (environment.stop_timeout or 0) + 10)
        STATE.finalizer = None
