"""Prometheus scrape configuration: one definition of the scrape jobs, rendered for any set of targets.

Why generated: the compose stack (service names, DNS discovery of scaled Locust workers), a remote
staging server (``loadtest prometheus-config``) and the integration tests (loopback ports) must scrape
the same jobs with the same intervals and paths. ``prometheus/prometheus.yml`` is this module's output
for the compose stack; a test keeps the committed file equal to it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from loadtest.errors import LoadtestError

SCRAPE_INTERVAL = "1s"  # Triton polls GPU metrics every 2 s; 1 s keeps client rates smooth on short tests
_DURATION = re.compile(r"^[1-9][0-9]*(ms|s|m)$")
DNS_REFRESH = "10s"  # how soon a scaled-up Locust worker is scraped

TRITON_METRICS_PORT = 8002
CLIENT_METRICS_PORT = 9646
GPU_EXPORTER_PORT = 9645
DCGM_EXPORTER_PORT = 9400


@dataclass(frozen=True)
class JobTargets:
    """Where one job's endpoints are: fixed ``host:port`` targets and/or DNS names (A records)."""

    static: tuple[str, ...] = ()
    dns_names: tuple[str, ...] = ()
    dns_port: int | None = None

    def __post_init__(self) -> None:
        for target in self.static:
            host, sep, port = target.rpartition(":")
            if not sep or not host or not port.isdigit():
                raise LoadtestError(f"scrape target {target!r} is not HOST:PORT")
        if self.dns_names and self.dns_port is None:
            raise LoadtestError("DNS-discovered targets need a port")

    @property
    def empty(self) -> bool:
        return not self.static and not self.dns_names


@dataclass(frozen=True)
class ScrapeJob:
    """A scrape job's fixed part: name, what it scrapes, and the path."""

    name: str
    description: str
    metrics_path: str = "/metrics"


# The jobs, in the order they appear in the file. Dashboards select by metric name, not by job.
JOBS: tuple[ScrapeJob, ...] = (
    ScrapeJob("triton", "Triton Inference Server metrics (nv_*), port 8002"),
    ScrapeJob("loadtest", "client metrics of every load-generator process (loadtest_*), ports 9646 and up"),
    ScrapeJob("gpu", "loadtest gpu-exporter: GPU power, energy, utilisation, memory (loadtest_gpu_*), port 9645"),
    ScrapeJob("dcgm", "NVIDIA DCGM exporter (DCGM_FI_*), port 9400, when present"),
)
JOB_NAMES = tuple(job.name for job in JOBS)


@dataclass(frozen=True)
class PrometheusTargets:
    """Targets for each job; a job without targets is left out of the configuration."""

    jobs: Mapping[str, JobTargets] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = set(self.jobs) - set(JOB_NAMES)
        if unknown:
            raise LoadtestError(f"unknown scrape job(s) {sorted(unknown)}; jobs are {list(JOB_NAMES)}")


def compose_targets() -> PrometheusTargets:
    """Targets inside the compose stack: service names; DNS discovery for scaled or optional services.

    DNS discovery finds every replica of ``locust-worker`` (``--scale``) and resolves the GPU-profile
    services to nothing when that profile is off, instead of a permanently down target.
    """
    return PrometheusTargets(
        {
            "triton": JobTargets(static=(f"triton:{TRITON_METRICS_PORT}",)),
            "loadtest": JobTargets(dns_names=("locust-master", "locust-worker"), dns_port=CLIENT_METRICS_PORT),
            "gpu": JobTargets(dns_names=("gpu-exporter",), dns_port=GPU_EXPORTER_PORT),
            "dcgm": JobTargets(dns_names=("dcgm-exporter",), dns_port=DCGM_EXPORTER_PORT),
        }
    )


def static_targets(
    triton: Sequence[str] = (),
    clients: Sequence[str] = (),
    gpu_exporters: Sequence[str] = (),
    dcgm: Sequence[str] = (),
) -> PrometheusTargets:
    """Targets given as ``host:port`` lists (a remote staging server, or loopback ports in tests)."""
    pairs = {"triton": triton, "loadtest": clients, "gpu": gpu_exporters, "dcgm": dcgm}
    return PrometheusTargets({name: JobTargets(static=tuple(t)) for name, t in pairs.items() if t})


def render_config(targets: PrometheusTargets, scrape_interval: str = SCRAPE_INTERVAL) -> dict:
    """The Prometheus configuration (as a dict) scraping ``targets`` with the common job definitions.

    The scrape timeout equals the interval: a slow endpoint is cut before the next scrape is due.
    """
    if not _DURATION.match(scrape_interval):
        raise LoadtestError(f"scrape interval {scrape_interval!r} is not a Prometheus duration like 1s, 2s or 500ms")
    scrape_configs = []
    for job in JOBS:
        where = targets.jobs.get(job.name)
        if where is None or where.empty:
            continue
        config: dict = {
            "job_name": job.name,
            "scrape_interval": scrape_interval,
            "scrape_timeout": scrape_interval,
            "metrics_path": job.metrics_path,
        }
        if where.static:
            config["static_configs"] = [{"targets": list(where.static)}]
        if where.dns_names:
            config["dns_sd_configs"] = [
                {
                    "names": list(where.dns_names),
                    "type": "A",
                    "port": where.dns_port,
                    "refresh_interval": DNS_REFRESH,
                }
            ]
            # Keep the service name (the IP alone says nothing on a dashboard).
            config["relabel_configs"] = [{"source_labels": ["__meta_dns_name"], "target_label": "service"}]
        scrape_configs.append(config)
    if not scrape_configs:
        raise LoadtestError("no scrape targets given: name at least one of Triton, clients, GPU exporter, DCGM")
    return {
        "global": {
            "scrape_interval": scrape_interval,
            "scrape_timeout": scrape_interval,
            "evaluation_interval": scrape_interval,
        },
        "scrape_configs": scrape_configs,
    }


HEADER = """\
# Prometheus configuration for loadtest's staging stack (docker-compose.yml).
# Generated by loadtest.observability.prometheus (render_config(compose_targets())); do not edit by
# hand: a test keeps this file equal to the generator. For a remote staging server run
#   loadtest prometheus-config --triton HOST:8002 --client HOST:9646 -o prometheus.yml
"""


STATIC_HEADER = """\
# Prometheus configuration written by `loadtest prometheus-config`: loadtest's scrape jobs
# (loadtest.observability.prometheus) pointed at the endpoints named on its command line.
"""


def dump_config(config: dict, header: str = HEADER) -> str:
    """YAML text of a configuration, with a header comment."""
    return header + yaml.safe_dump(config, sort_keys=False, default_flow_style=False)


def write_config(
    path: Path, targets: PrometheusTargets, scrape_interval: str = SCRAPE_INTERVAL, header: str | None = None
) -> Path:
    """Write the configuration for ``targets``; the compose header unless ``header`` is given."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dump_config(render_config(targets, scrape_interval), HEADER if header is None else header))
    return path


def check_config(path: Path, promtool: str | None = None) -> str:
    """Run ``promtool check config``; return its output, raise LoadtestError when the config is invalid."""
    exe = promtool or shutil.which("promtool")
    if exe is None:
        raise LoadtestError("promtool not found (Debian/Ubuntu: apt-get install prometheus)")
    proc = subprocess.run([exe, "check", "config", str(path)], capture_output=True, text=True, timeout=60)
    output = (proc.stdout + proc.stderr).strip()
    if proc.returncode != 0:
        raise LoadtestError(f"promtool rejects {path}: {output.splitlines()[-1] if output else proc.returncode}")
    return output


@dataclass(frozen=True)
class Series:
    """One series of a query result: its labels and (epoch seconds, value) points."""

    labels: dict[str, str]
    points: list[tuple[float, float]]


def _api(base_url: str, path: str, params: dict, timeout_s: float) -> dict:
    import requests

    url = base_url.rstrip("/") + path
    try:
        response = requests.post(url, data=params, timeout=timeout_s)
    except requests.RequestException as exc:
        raise LoadtestError(f"Prometheus at {base_url} is not reachable ({type(exc).__name__})") from None
    try:
        body = response.json()
    except ValueError:
        raise LoadtestError(f"Prometheus at {base_url} answered HTTP {response.status_code} without JSON") from None
    if body.get("status") != "success":
        raise LoadtestError(f"Prometheus rejected {params.get('query')!r}: {body.get('error', response.status_code)}")
    return body["data"]


def _series(data: dict) -> list[Series]:
    kind, result = data["resultType"], data["result"]
    if kind == "scalar":
        return [Series({}, [(float(result[0]), float(result[1]))])]
    if kind == "vector":
        return [Series(r["metric"], [(float(r["value"][0]), float(r["value"][1]))]) for r in result]
    if kind == "matrix":
        return [Series(r["metric"], [(float(t), float(v)) for t, v in r["values"]]) for r in result]
    raise LoadtestError(f"unexpected Prometheus result type {kind!r}")


def query(base_url: str, expr: str, at: float | None = None, timeout_s: float = 10.0) -> list[Series]:
    """Evaluate ``expr`` at one instant (``/api/v1/query``); raise LoadtestError on any error."""
    params = {"query": expr} | ({"time": f"{at:.3f}"} if at is not None else {})
    return _series(_api(base_url, "/api/v1/query", params, timeout_s))


def query_range(
    base_url: str, expr: str, start: float, end: float, step_s: float = 1.0, timeout_s: float = 30.0
) -> list[Series]:
    """Evaluate ``expr`` over ``[start, end]`` every ``step_s`` seconds (``/api/v1/query_range``)."""
    params = {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step_s:g}"}
    return _series(_api(base_url, "/api/v1/query_range", params, timeout_s))
