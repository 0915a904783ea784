"""The dashboard's generative panels (TTFT, ITL, output tokens/s per model) return data from a real
Prometheus scraping a real streaming run.

A real Prometheus on loopback scrapes the Locust process's client metrics and a real embedded Triton
serving decoupled generative models (``echo``, ``echo2``), during a ~15 s headless open-loop run of
``scenarios/llm_open_loop.py`` over gRPC streaming. Then every generative panel query of the committed
dashboard, variables substituted as Grafana would, must return finite values for each model of its
repeated panel.
"""

from __future__ import annotations

import math
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from _obs_dashboards import PanelQuery, all_queries, rate_interval, substitute
from _obs_prometheus import PROMETHEUS, PrometheusProcess
from _triton_llm import TritonLLM

from loadtest.observability import prometheus as prom
from loadtest.serving.ports import free_port

REPO = Path(__file__).resolve().parents[1]
SCENARIO = REPO / "scenarios" / "llm_open_loop.py"
RUN_SECONDS = 15
MODELS = ("echo", "echo2")

pytestmark = pytest.mark.skipif(PROMETHEUS is None, reason="prometheus not installed (apt-get install prometheus)")


@dataclass(frozen=True)
class LiveRun:
    url: str
    start: float
    end: float


@pytest.fixture(scope="module")
def live_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("dashboards-generative")
    triton = TritonLLM(workdir, delay_s=0.005)
    client_port = free_port()
    try:
        targets = prom.static_targets(triton=[f"127.0.0.1:{triton.metrics_port}"], clients=[f"127.0.0.1:{client_port}"])
        with PrometheusProcess(workdir / "prometheus", targets) as server:
            server.wait_until_up({"triton"})
            start = time.time()
            log_path = workdir / "locust.log"
            with open(log_path, "wb") as log:
                locust = subprocess.run(
                    [sys.executable, "-m", "locust", "-f", str(SCENARIO), "--headless", "-u", "1",
                     "-t", f"{RUN_SECONDS}s", "--stop-timeout", "5", "--host", triton.grpc_url,
                     "--api", "triton-grpc", "--models", ",".join(MODELS), "--dataset", str(_prompts(workdir)),
                     "--output-lengths", "uniform:4:12", "--arrival-rate", "8", "--metrics-port", str(client_port),
                     "--records-dir", str(workdir / "results"), "--triton-metrics-url", triton.metrics_url],
                    stdout=log, stderr=subprocess.STDOUT, timeout=RUN_SECONDS + 120, cwd=REPO,
                )  # fmt: skip
            log_text = log_path.read_text(errors="replace")
            assert locust.returncode == 0, log_text[-4000:]
            time.sleep(2)
            end = time.time()
            was_up = prom.query(server.url, f"max by (job) (max_over_time(up[{int(end - start)}s])) == 1")
            assert {"triton", "loadtest"} <= {s.labels["job"] for s in was_up}, log_text[-2000:]
            yield LiveRun(server.url, start, end)
    finally:
        triton.stop()


def _prompts(workdir: Path) -> Path:
    path = workdir / "prompts.jsonl"
    path.write_text("\n".join(f'{{"text": "the student model answered question {i} quickly"}}' for i in range(20)))
    return path


def _generative_queries() -> list[PanelQuery]:
    return [q for q in all_queries() if q.generative]


def test_the_dashboard_has_generative_panels():
    panels = {q.panel for q in _generative_queries()}
    assert {"Time to first token P50 / P95", "Inter-token latency P50 / P95", "Output tokens/s"} <= panels
    assert all(q.repeat == "model" for q in _generative_queries())


@pytest.mark.parametrize("query", _generative_queries(), ids=lambda q: q.name)
def test_generative_panel_query_returns_data_per_model(live_run: LiveRun, query: PanelQuery):
    for model in MODELS:
        values = {"model": model, "budget": "100", "__rate_interval": rate_interval(scrape_interval_s=1.0),
                  "__range": f"{int(live_run.end - live_run.start)}s"}  # fmt: skip
        series = prom.query_range(live_run.url, substitute(query.expr, values), live_run.start, live_run.end, step_s=1.0)
        finite = [s for s in series if any(math.isfinite(v) for _, v in s.points)]
        assert finite, f"{query.name} returned no data for {model}:\n{query.expr}"
        labelled = {s.labels["model"] for s in finite if "model" in s.labels}
        assert labelled <= {model}
