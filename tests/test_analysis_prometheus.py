"""Server-side figures from a real Prometheus that scraped the real Triton, instead of saved snapshots."""

from __future__ import annotations

import shutil
import time

import pytest
from _obs_prometheus import PROMETHEUS, PrometheusProcess

from loadtest.analysis.analyze import compute
from loadtest.analysis.records import ALL_STAGES
from loadtest.errors import LoadtestError
from loadtest.load.runner import run_locust
from loadtest.observability import prometheus as prom

needs_prometheus = pytest.mark.skipif(PROMETHEUS is None, reason="needs the prometheus binary (apt-get install prometheus)")


# Prometheus scrapes are periodic: the analyzer takes the scrapes enclosing the window (bracket()), so a late
# scrape cannot cut requests off the count (it did, 116 vs 125, when it took the nearest scrape instead).
@needs_prometheus
def test_server_split_from_prometheus_matches_the_snapshots(triton_server, tmp_path):
    targets = prom.static_targets(triton=[f"127.0.0.1:{triton_server.metrics_port}"])
    with PrometheusProcess(tmp_path / "prom", targets, scrape_interval="1s") as server:
        server.wait_until_up({"triton"})
        time.sleep(1.5)  # at least one scrape before the load starts
        run = run_locust(
            "open_loop", triton_server.http_url, stages="5s:25:load", repository=triton_server.repository,
            results_dir=tmp_path / "results", metrics_port=0, triton_metrics_url=triton_server.metrics_url,
            timeout_s=120,
        ).check()  # fmt: skip
        time.sleep(2.5)  # and one after it ended
        without = tmp_path / "no-snapshots"
        shutil.copytree(run.run_dir, without)
        shutil.rmtree(without / "metrics")
        from_prometheus = compute(without, prometheus_url=server.url, bootstrap_resamples=100)
    from_snapshots = compute(run.run_dir, bootstrap_resamples=100)
    a = from_prometheus.latency.set_index(["model", "stage"])
    b = from_snapshots.latency.set_index(["model", "stage"])
    for model in ("teacher", "student"):
        row = (model, ALL_STAGES)
        # Triton counted exactly the requests we recorded, whichever way its counters were read
        assert a.at[row, "server_requests"] == b.at[row, "server_requests"] == b.at[row, "successes"]
        for column in ("server_queue_ms", "server_compute_infer_ms", "mean_batch_size"):
            assert a.at[row, column] == pytest.approx(b.at[row, column], rel=1e-6)


def test_unreachable_prometheus_is_one_line(tmp_path):
    from _analysis_synth import default_pair, write_run

    write_run(tmp_path / "run", default_pair())
    with pytest.raises(LoadtestError, match="not reachable"):
        compute(tmp_path / "run", prometheus_url="http://127.0.0.1:9", bootstrap_resamples=50)
