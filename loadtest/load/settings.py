"""The load generator's settings: the option table and their typed view.

Why separate from ``options`` (which registers them with Locust): the runner, the CLI and the tests
read the same table without importing Locust. ``LoadOptions.from_namespace`` turns Locust's parsed
namespace into one typed object the rest of the package reads. Never imports Locust or gevent.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

from loadtest.endpoint import parse_endpoint
from loadtest.errors import LoadtestError
from loadtest.load.client_metrics import DEFAULT_METRICS_PORT
from loadtest.rundir import DEFAULT_RESULTS_DIR

# (flag, env var, default, type, help); order = order in `locust --help` and in the web UI.
OPTIONS: list[tuple[str, str, object, type, str]] = [
    ("--repository", "LOADTEST_REPOSITORY", "model_repository", str,
     "Optional local copy of a loadtest-exported repository: teacher/student names, tokenizer, sequence limit. "
     "Without it, models and their inputs are read from the server."),
    ("--models", "LOADTEST_MODELS", "", str,
     "Comma-separated Triton model names to load (default: teacher and student from the repository's "
     "loadtest.json, else every READY model the server lists)."),
    ("--protocol", "LOADTEST_PROTOCOL", "auto", str,
     "auto, http or grpc. auto follows the host scheme: grpc://HOST:PORT means gRPC, anything else HTTP."),
    ("--dataset", "LOADTEST_DATASET", "", str,
     "Payload rows from a JSONL/CSV/Parquet file: a text column, or pre-tokenised input_ids. Default: synthetic."),
    ("--text-column", "LOADTEST_TEXT_COLUMN", "text", str, "Column of --dataset holding the text."),
    ("--lengths", "LOADTEST_LENGTHS", "", str,
     "Synthetic sequence lengths in tokens: fixed:N, uniform:MIN:MAX, lognormal:MEDIAN:SIGMA, or dataset "
     "(resample --dataset's lengths). Default: --dataset's rows as they are, else fixed:128."),
    ("--batch-size", "LOADTEST_BATCH_SIZE", 1, int, "Rows per request (client-side batch)."),
    ("--payload-pool", "LOADTEST_PAYLOAD_POOL", 1024, int, "Distinct requests prepared per process, cycled."),
    ("--seed", "LOADTEST_SEED", 0, int, "Seed of the payloads and of Poisson arrivals."),
    ("--arrival-rate", "LOADTEST_ARRIVAL_RATE", 10.0, float,
     "Open loop: requests/s per model for the whole test (split over open-loop users and workers)."),
    ("--arrival", "LOADTEST_ARRIVAL", "constant", str, "Open loop: constant or poisson inter-arrival times."),
    ("--late-tolerance", "LOADTEST_LATE_TOLERANCE", 0.010, float,
     "Open loop: a send leaving more than this many seconds after its intended time counts as late."),
    ("--max-in-flight", "LOADTEST_MAX_IN_FLIGHT", 64, int,
     "Open loop: most requests in flight per model per open-loop user; beyond it sends wait (late)."),
    ("--stages", "LOADTEST_STAGES", "", str,
     "Stage plan for the step/spike/soak/rate shapes: DURATION:VALUE[:LABEL],... e.g. 30s:4,30s:8,1m:16 "
     "(VALUE = users; for the open-loop rate plan, requests/s per model). Default: derived from -u and -t."),
    ("--shape", "LOADTEST_SHAPE", "", str,
     "Pick a load shape by class or kind (step, spike, soak, rate) when several are loaded; 'none' for "
     "plain -u/-r/-t. With several loaded and none picked, no shape runs."),
    ("--records-dir", "LOADTEST_RECORDS_DIR", DEFAULT_RESULTS_DIR, str,
     "Where run directories (records, manifest, metrics snapshots) are created."),
    ("--run-dir", "LOADTEST_RUN_DIR", "", str, "Exact run directory to write (must not hold a run yet)."),
    ("--metrics-port", "LOADTEST_METRICS_PORT", DEFAULT_METRICS_PORT, int,
     "Prometheus endpoint of this process (worker i of --processes/--worker: PORT+1+i); 0 disables."),
    ("--metrics-address", "LOADTEST_METRICS_ADDRESS", "127.0.0.1", str,
     "Address the metrics endpoint binds: 127.0.0.1 (this machine only, the default) or 0.0.0.0 for a remote "
     "Prometheus."),
    ("--triton-metrics-url", "LOADTEST_TRITON_METRICS_URL", "", str,
     "Triton /metrics to snapshot at test start, stage changes and stop (default: host's port 8002; none: off)."),
    ("--gpu-metrics-url", "LOADTEST_GPU_METRICS_URL", "", str, "GPU exporter /metrics to snapshot likewise."),
    ("--request-timeout", "LOADTEST_REQUEST_TIMEOUT", 60.0, float, "Network timeout of one request, seconds."),
    ("--headers-file", "LOADTEST_HEADERS_FILE", "", str,
     "File of 'Name: value' lines sent as HTTP headers / gRPC metadata with every request (tokens stay out of "
     "the command line and out of every output; LOADTEST_HTTP_HEADERS works too)."),
    ("--ssl-ca-file", "LOADTEST_SSL_CA_FILE", "", str, "https:// or grpcs:// host: CA bundle (PEM) to verify it."),
    ("--ssl-cert-file", "LOADTEST_SSL_CERT_FILE", "", str, "TLS client certificate (PEM), with --ssl-key-file."),
    ("--ssl-key-file", "LOADTEST_SSL_KEY_FILE", "", str, "TLS client key (PEM); only its path is ever recorded."),
    ("--model-version", "LOADTEST_MODEL_VERSION", "", str,
     "Model version every request targets and that must be READY (default: the server's version policy)."),
    ("--wait-ready", "LOADTEST_WAIT_READY", 0.0, float,
     "Before the clock: wait up to this many seconds for the server and every model to be READY (0: check once)."),
    ("--input-shape", "LOADTEST_INPUT_SHAPE", "", str,
     "Shapes for variable (-1) input dims, perf_analyzer's --shape: NAME:d1,d2 [NAME2:...] (batch dim excluded)."),
    ("--input-data", "LOADTEST_INPUT_DATA", "", str,
     "Input values from a perf_analyzer --input-data JSON file ({\"data\": [{\"INPUT\": [...]}, ...]})."),
    ("--int-range", "LOADTEST_INT_RANGE", "", str,
     "Synthetic integer inputs drawn from LO:HI (HI excluded; default 0:100)."),
]  # fmt: skip


@dataclass(frozen=True)
class LoadOptions:
    """Typed view of the ``--...`` options above (names = argparse dests)."""

    repository: str
    models: str
    protocol: str
    dataset: str
    text_column: str
    lengths: str
    batch_size: int
    payload_pool: int
    seed: int
    arrival_rate: float
    arrival: str
    late_tolerance: float
    max_in_flight: int
    stages: str
    shape: str
    records_dir: str
    run_dir: str
    metrics_port: int
    metrics_address: str
    triton_metrics_url: str
    gpu_metrics_url: str
    request_timeout: float
    headers_file: str
    ssl_ca_file: str
    ssl_cert_file: str
    ssl_key_file: str
    model_version: str = ""
    wait_ready: float = 0.0
    input_shape: str = ""
    input_data: str = ""
    int_range: str = ""

    @classmethod
    def from_namespace(cls, namespace) -> LoadOptions:
        values = {}
        for f, (_flag, _env, default, kind, _help) in zip(fields(cls), OPTIONS):
            raw = getattr(namespace, f.name, None) if namespace is not None else None
            values[f.name] = kind(default if raw is None else raw)
        options = cls(**values)
        options.validate()
        return options

    def validate(self) -> None:
        """Every knob within its bounds (``loadtest.bounds``): one line naming the option and the range."""
        from loadtest import bounds

        bounds.check_number("--batch-size", self.batch_size, 1, bounds.MAX_BATCH_SIZE)
        bounds.check_number("--payload-pool", self.payload_pool, 1, bounds.MAX_PAYLOAD_POOL)
        bounds.check_arrival_rate("--arrival-rate", self.arrival_rate)
        if self.arrival not in ("constant", "poisson"):
            raise LoadtestError(f"--arrival must be constant or poisson, got '{self.arrival}'")
        bounds.check_number("--late-tolerance", self.late_tolerance, 0, 60, unit="s")
        bounds.check_number("--max-in-flight", self.max_in_flight, 1, bounds.MAX_IN_FLIGHT)
        bounds.check_port("--metrics-port", self.metrics_port)
        bounds.check_bind_address("--metrics-address", self.metrics_address)
        bounds.check_number("--request-timeout", self.request_timeout, 0, bounds.MAX_TIMEOUT_S, low_open=True, unit="s")
        if self.protocol.lower() not in ("auto", "http", "grpc"):
            raise LoadtestError(f"--protocol must be auto, http or grpc, got '{self.protocol}'")
        bounds.check_number("--wait-ready", self.wait_ready, 0, bounds.MAX_TIMEOUT_S, unit="s")
        if self.model_version and not self.model_version.isdigit():
            raise LoadtestError(f"--model-version must be a version number, got '{self.model_version}'")

    def model_names(self, metadata=None) -> list[str]:
        """``--models``, or the repository's teacher and student; [] = every READY model of the server."""
        names = [m.strip() for m in self.models.split(",") if m.strip()]
        if names:
            return list(dict.fromkeys(names))
        if metadata is None:
            return []
        return list(dict.fromkeys([metadata.teacher, metadata.student]))

    def triton_metrics(self, host: str | None) -> str | None:
        """--triton-metrics-url, else Triton's metrics port on the load's host (None: no snapshots)."""
        if self.triton_metrics_url.lower() == "none":
            return None
        if self.triton_metrics_url:
            return self.triton_metrics_url
        try:
            return parse_endpoint(host, self.protocol).metrics_url
        except LoadtestError:
            return None

    def gpu_metrics(self) -> str | None:
        return None if self.gpu_metrics_url.lower() in ("", "none") else self.gpu_metrics_url

    def settings(self) -> dict:
        """What goes into the manifest."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @property
    def repository_path(self) -> Path:
        return Path(self.repository)

    @property
    def dataset_path(self) -> Path | None:
        return Path(self.dataset) if self.dataset else None

    @property
    def input_data_path(self) -> Path | None:
        return Path(self.input_data) if self.input_data else None


assert [f.name for f in fields(LoadOptions)] == [o[0][2:].replace("-", "_") for o in OPTIONS], "keep in step"
