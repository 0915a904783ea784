"""Every panel query of every dashboard returns data from a real Prometheus during a real run.

A real Prometheus (Debian package) on loopback, with the repository's scrape jobs pointed at the
session's embedded Triton, at a ~20 s headless open-loop Locust run of ``scenarios/open_loop.py``
(its client metrics endpoint), and at ``loadtest gpu-exporter``. Then each query of the committed
dashboard JSON, variables substituted as Grafana would, runs through ``/api/v1/query_range`` (or
``/api/v1/query`` for stat panels) and must return finite values — per model for the panels that
repeat over ``$model``. GPU queries are skipped, and say so, without a GPU; Triton's own GPU series
(``nv_gpu_*``) are checked where Triton reports them.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from _obs_dashboards import TRITON_GPU_METRIC, PanelQuery, all_queries, dashboard_files, load, rate_interval
from _obs_dashboards import substitute
from _obs_prometheus import PROMETHEUS, PrometheusProcess
from loadtest.observability import prometheus as prom
from loadtest.observability.exporter import GPUExporter
from loadtest.serving.ports import free_port

REPO = Path(__file__).resolve().parents[1]
SCENARIO = REPO / "scenarios" / "open_loop.py"
RUN_SECONDS = 20
ARRIVAL_RATE = 20  # requests/s per model: light for a 2-core machine, enough for every rate window
BUDGET_MS = "100"

pytestmark = pytest.mark.skipif(PROMETHEUS is None, reason="prometheus not installed (apt-get install prometheus)")


@dataclass(frozen=True)
class LiveRun:
    url: str
    start: float
    end: float
    models: tuple[str, ...]
    nvml_reason: str | None
    triton_metrics: frozenset[str]  # metric names Triton's /metrics exposes


@pytest.fixture(scope="module")
def live_run(triton_server, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("dashboards-live")
    metadata = json.loads((triton_server.repository / "loadtest.json").read_text())
    models = (metadata["teacher"], metadata["student"])
    client_port = free_port()
    with GPUExporter(port=0) as exporter:
        targets = prom.static_targets(
            triton=[f"127.0.0.1:{triton_server.metrics_port}"],
            clients=[f"127.0.0.1:{client_port}"],
            gpu_exporters=[f"127.0.0.1:{exporter.port}"],
        )
        with PrometheusProcess(workdir / "prometheus", targets) as server:
            server.wait_until_up({"triton", "gpu"})
            start = time.time()
            log_path = workdir / "locust.log"
            with open(log_path, "wb") as log:
                locust = subprocess.run(
                    [
                        sys.executable, "-m", "locust", "-f", str(SCENARIO), "--headless",
                        "-u", "1", "-t", f"{RUN_SECONDS}s", "--stop-timeout", "5",
                        "--host", triton_server.http_url,
                        "--repository", str(triton_server.repository),
                        "--arrival-rate", str(ARRIVAL_RATE), "--lengths", "fixed:16",
                        "--metrics-port", str(client_port),
                        "--records-dir", str(workdir / "results"),
                        "--triton-metrics-url", triton_server.metrics_url,
                    ],  # fmt: skip
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    timeout=RUN_SECONDS + 120,
                    cwd=REPO,
                )
            log_text = log_path.read_text(errors="replace")
            assert locust.returncode == 0, log_text[-4000:]
            time.sleep(2)  # Triton's and the exporter's last samples after the run
            end = time.time()
            window = f"{int(end - start)}s"
            was_up = prom.query(server.url, f"max by (job) (max_over_time(up[{window}])) == 1")
            scraped = {s.labels["job"] for s in was_up}
            assert {"triton", "loadtest", "gpu"} <= scraped, f"scraped: {scraped}\n{log_text[-2000:]}"
            triton_text = urllib.request.urlopen(triton_server.metrics_url, timeout=5).read().decode()
            yield LiveRun(
                url=server.url,
                start=start,
                end=end,
                models=models,
                nvml_reason=exporter.nvml_reason,
                triton_metrics=frozenset(re.findall(r"^(nv_\w+)", triton_text, flags=re.MULTILINE)),
            )


def _finite(series: list[prom.Series]) -> list[prom.Series]:
    return [s for s in series if any(math.isfinite(v) for _, v in s.points)]


def _run(run: LiveRun, query: PanelQuery, model_regex: str) -> list[prom.Series]:
    values = {
        "model": model_regex,
        "budget": BUDGET_MS,
        "__rate_interval": rate_interval(scrape_interval_s=1.0),
        "__range": f"{int(run.end - run.start)}s",
        "__range_s": str(int(run.end - run.start)),
    }
    expr = substitute(query.expr, values)
    if query.instant:
        return prom.query(run.url, expr, at=run.end)
    return prom.query_range(run.url, expr, run.start, run.end, step_s=1.0)


@pytest.mark.parametrize("query", all_queries(), ids=lambda q: q.name)
def test_panel_query_returns_data(live_run: LiveRun, query: PanelQuery):
    if query.generative:
        pytest.skip("generative panel: proven against a streaming run in test_dashboards_generative_live.py")
    if query.gpu and live_run.nvml_reason is not None:
        pytest.skip(f"GPU panel, no GPU here: {live_run.nvml_reason}")
    missing = set(TRITON_GPU_METRIC.findall(query.expr)) - live_run.triton_metrics
    if missing:
        pytest.skip(f"Triton reports no {sorted(missing)} here (its GPU metrics need a GPU build and a GPU)")
    # A panel repeated over $model is one panel per model: each must have its own data.
    model_sets = [(m,) for m in live_run.models] if query.repeat == "model" else [live_run.models]
    for models in model_sets:
        series = _finite(_run(live_run, query, "|".join(models)))
        assert series, f"{query.name} returned no data for {models}:\n{query.expr}"
        labelled = {s.labels["model"] for s in series if "model" in s.labels}
        if labelled:
            assert labelled == set(models), f"{query.name}: series for {labelled}, expected {models}"


def test_model_variable_lists_both_models(live_run: LiveRun):
    """The ``$model`` variable's ``label_values(METRIC, LABEL)`` query finds the teacher and the student."""
    for path in dashboard_files():
        variable = next(v for v in load(path)["templating"]["list"] if v["name"] == "model")
        metric, label = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", variable["definition"]).groups()
        response = requests.get(
            f"{live_run.url}/api/v1/label/{label}/values",
            params={"match[]": metric, "start": live_run.start, "end": live_run.end},
            timeout=10,
        ).json()
        assert set(live_run.models) <= set(response["data"]), response
