"""The load-generator process's state for the current test: one explicit object, passed to who needs it.

Why an object and not module globals: users, shapes and the lifecycle listeners all need the same
few things (the test's context, the stage board, the record writer, the client metrics, the counts
of late and dropped sends). ``lifecycle`` creates one ``LoadProcess`` per process and hands it to
Locust's ``Environment`` (``environment.loadtest``); users and shapes take it from the environment
Locust gives them (``process_of``) once, in ``on_start``, and keep what they use on the hot path.
Roles: a *local* process does everything; a *master* owns the manifest, stage plan and snapshots; a
*worker* writes its own record shards. Never imports Locust or gevent.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

from loadtest.errors import LoadtestError
from loadtest.generative.settings import GenerationOptions
from loadtest.generative.timing import itl_s
from loadtest.load.backoff import CAP_S
from loadtest.load.client_metrics import ClientMetrics
from loadtest.load.context import LoadContext, build_context
from loadtest.load.records import RECORD_KEY, RecordWriter, worker_id
from loadtest.load.settings import LoadOptions
from loadtest.load.stages import StageBoard
from loadtest.rundir import RunDir

log = logging.getLogger("loadtest")

ENVIRONMENT_ATTRIBUTE = "loadtest"  # environment.loadtest -> the process's LoadProcess
STAGE_MESSAGE = "loadtest_stage"  # master -> workers: a new stage was published
DRIVERS_MESSAGE = "loadtest_drivers"  # master -> workers: open-loop drivers in the whole test


@dataclass
class LoadProcess:
    """Everything this process keeps for the current test (one test at a time per process)."""

    board: StageBoard = field(default_factory=StageBoard)
    metrics: ClientMetrics = field(default_factory=ClientMetrics)
    role: str = "local"  # local | master | worker
    worker: str = field(default_factory=worker_id)
    host: str | None = None  # the environment's --host (snapshots derive Triton's metrics URL from it)
    options: LoadOptions | None = None
    context: LoadContext | None = None
    context_key: tuple | None = None
    error: str | None = None  # set when the test could not start: users stop at once
    run: RunDir | None = None
    writer: RecordWriter | None = None
    prepared: dict = field(default_factory=dict)  # protocol -> model -> [PreparedRequest]
    dropped: Counter = field(default_factory=Counter)  # (model, stage) -> sends that never left
    late: Counter = field(default_factory=Counter)  # (model, stage) -> sends that left late
    offered: dict = field(default_factory=dict)  # open-loop driver number -> its requests/s per model
    unrecorded: int = 0  # requests completed after the writer closed (should stay 0)
    records_failure: str | None = None  # why this process's rows could not be written (None: they were)
    workers_lost: dict = field(default_factory=dict)  # master: Locust client id -> what is known of it when lost
    worker_clients: dict = field(default_factory=dict)  # master: Locust client id -> our worker id
    backoff_events: int = 0  # closed-loop waits after connection errors (loadtest.load.backoff)
    backoff_seconds: float = 0.0
    worker_reports: dict = field(default_factory=dict)  # master: worker id -> latest loadtest report
    warned: set = field(default_factory=set)
    user_spawn_rate: float | None = None  # -r as given (None: shapes ramp each stage within a second)
    started: float | None = None

    # ---- the test's context -------------------------------------------------------------------
    @property
    def generative(self) -> bool:
        """The test drives an LLM API (``--api``) rather than a classifier."""
        return bool(getattr(self.context, "generative", False))

    @property
    def ready(self) -> bool:
        """Users may start: the context is built and the test did not fail to start."""
        return self.context is not None and self.error is None

    def prepare(self, options: LoadOptions, generation: GenerationOptions, host: str | None) -> bool:
        """Build the context for the options and ``host`` (once per distinct set); True if it was rebuilt.

        ``generation.enabled`` (``--api``): a generative context (prompts, the LLM API), else a classifier's.
        """
        key = (options, generation, host)
        if self.context is not None and self.context_key == key:
            return False
        if generation.enabled:
            from loadtest.generative.context import build_generative_context

            self.context = build_generative_context(options, generation, host)
        else:
            self.context = build_context(options, host, tokenizer=generation.tokenizer)
        self.context_key = key
        self.prepared = {}
        if self.role != "master":  # serialise every request once, before the first user needs it
            self.prepared_requests(self.context.endpoint.protocol)
        return True

    def prepared_requests(self, protocol: str) -> dict:
        """``{model: [PreparedRequest]}`` for this test, built once per process and protocol."""
        from loadtest.load.triton_client import prepare_request

        if protocol not in self.prepared:
            if self.context is None:
                raise LoadtestError("the test's context is not built yet")
            if self.generative:
                from loadtest.load.stream_clients import prepare_requests as prepare_streaming

                self.prepared[protocol] = prepare_streaming(self.context)
                return self.prepared[protocol]
            self.prepared[protocol] = {
                spec.name: [prepare_request(protocol, spec, payload, self.context.options.model_version)
                        for payload in self.context.payloads_for(spec.name)]
                for spec in self.context.models
            }
        return self.prepared[protocol]

    def start_test(self, when: float) -> None:
        """Forget the previous test's run and counts."""
        self.error = None
        self.run, self.writer = None, None
        self.started = when
        self.dropped, self.late, self.unrecorded = Counter(), Counter(), 0
        self.backoff_events, self.backoff_seconds = 0, 0.0
        self.records_failure, self.workers_lost, self.worker_clients = None, {}, {}
        self.worker_reports = {}

    def warn_once(self, key: str, message: str, *args) -> None:
        if key not in self.warned:
            self.warned.add(key)
            log.warning(message, *args)

    # ---- stages -------------------------------------------------------------------------------
    def publish_stage(self, runner, label: str, *, value: float | None = None, rate: float | None = None,
                      kind: str = "steady") -> None:  # fmt: skip
        """Make ``label`` the stage of every request from now on, in this process and (master) all workers."""
        history = self.board.history
        if history and history[-1].end is None and (history[-1].label, history[-1].value, history[-1].rate) == (
            label, value, rate
        ):
            return  # already current (Locust resets a shape's clock when a distributed test starts)
        self.board.publish(label, rate=rate, value=value, kind=kind)
        if self.role == "master" and runner is not None:
            runner.send_message(STAGE_MESSAGE, {"label": label, "value": value, "rate": rate, "kind": kind})

    # ---- per request (hot path) ---------------------------------------------------------------
    def on_request(self, context=None, **_kw) -> None:
        """Locust request listener: every request our clients report becomes one row and metric update."""
        record = context.get(RECORD_KEY) if context else None
        if record is None:
            return
        writer = self.writer
        if writer is None or writer.closed:
            self.unrecorded += 1
            self.warn_once("unrecorded", "loadtest: a request finished after the test stopped and was not recorded")
            return
        writer.append(record)
        self.metrics.observe(record.model, record.protocol, record.success, record.latency_s, record.tokens)
        if record.output_tokens is not None and record.success:
            self.metrics.observe_generation(record.model, record.protocol, record.ttft_s,
                                            itl_s(record.latency_s, record.ttft_s, record.output_tokens),
                                            record.output_tokens)  # fmt: skip
        if record.late:
            self.late[(record.model, record.stage)] += 1
            self.metrics.late_sends.labels(record.model).inc()

    def set_offered_rate(self, driver: int, models: list[str], rate: float | None) -> None:
        """This process's offered rate per model = the sum over its open-loop drivers (None: driver gone)."""
        if rate is None:
            self.offered.pop(driver, None)
        else:
            self.offered[driver] = rate
        total = sum(self.offered.values())
        for model in models:
            self.metrics.offered_rate.labels(model).set(total)

    def count_backoff(self, delay_s: float, error: str | None) -> None:
        """A closed-loop user waits ``delay_s`` after a connection error: counted, said once, never hidden."""
        self.backoff_events += 1
        self.backoff_seconds += delay_s
        self.metrics.backoff_seconds.inc(delay_s)
        self.warn_once("backoff", "loadtest: connection errors (%s): users back off (up to %.0f s) between attempts; "
                       "counted in the manifest's 'backoff'", (error or "")[:160], CAP_S)  # fmt: skip

    def count_dropped(self, model: str, stage: str) -> None:
        self.dropped[(model, stage)] += 1
        self.metrics.dropped_sends.labels(model).inc()

    # ---- reports (worker -> master) -----------------------------------------------------------
    def report(self, final: bool) -> dict:
        """What a worker tells the master with each stats report: rows, dropped and late sends."""
        writer = self.writer
        return {
            "worker": self.worker,
            "run_dir": str(self.run.path) if self.run else None,
            "rows": (writer.rows_written + (0 if writer.failure else writer.pending)) if writer else 0,
            "dropped": nested_counts(self.dropped),
            "late": nested_counts(self.late),
            "unrecorded": self.unrecorded,
            "backoff": {"events": self.backoff_events, "seconds": self.backoff_seconds},
            "written": writer.rows_written if writer else 0,
            "not_recorded": (writer.rows_lost + (writer.pending if writer.failure else 0)) if writer else 0,
            "records_failure": writer.failure if writer else None,
            "final": final,
        }


def nested_counts(counter: Counter) -> dict:
    """``{(model, stage): n}`` -> ``{model: {stage: n}}`` (the manifest's shape)."""
    out: dict = {}
    for (model, stage), n in sorted(counter.items()):
        out.setdefault(model, {})[stage] = n
    return out


def merge_counts(into: dict, add: dict) -> dict:
    """Add one ``{model: {stage: n}}`` into another."""
    for model, stages in add.items():
        for stage, n in stages.items():
            into.setdefault(model, {})[stage] = into.get(model, {}).get(stage, 0) + n
    return into


def process_of(environment) -> LoadProcess | None:
    """The LoadProcess that lifecycle attached to a Locust environment (None before its init)."""
    return getattr(environment, ENVIRONMENT_ATTRIBUTE, None)
