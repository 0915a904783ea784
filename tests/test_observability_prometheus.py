"""Prometheus configuration: generated = committed, valid for promtool, and scraping for real.

The live test runs the Debian ``prometheus`` binary on loopback against the GPU exporter (which
serves on any machine): it proves the rendered configuration scrapes and the query helpers read it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from _obs_prometheus import PROMETHEUS, PROMTOOL, PrometheusProcess
from loadtest.errors import LoadtestError
from loadtest.observability import prometheus as prom
from loadtest.observability.exporter import GPUExporter

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "prometheus" / "prometheus.yml"

needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (apt-get install prometheus)")
needs_prometheus = pytest.mark.skipif(
    PROMETHEUS is None, reason="prometheus not installed (apt-get install prometheus)"
)


def test_committed_config_is_the_generated_one():
    expected = prom.dump_config(prom.render_config(prom.compose_targets()))
    assert CONFIG.read_text() == expected, "regenerate with: python -m loadtest.observability"


def test_config_scrapes_every_job_at_one_to_two_seconds():
    config = yaml.safe_load(CONFIG.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"triton", "loadtest", "gpu", "dcgm"}
    assert jobs["triton"]["static_configs"][0]["targets"] == ["triton:8002"]
    assert jobs["loadtest"]["dns_sd_configs"][0]["port"] == 9646
    assert jobs["gpu"]["dns_sd_configs"][0]["port"] == 9645
    for job in jobs.values():
        assert job["scrape_interval"] in ("1s", "2s")
        assert job["metrics_path"] == "/metrics"


@needs_promtool
def test_promtool_accepts_committed_config():
    output = prom.check_config(CONFIG)
    assert "SUCCESS" in output


@needs_promtool
def test_promtool_rejects_a_broken_config(tmp_path):
    broken = tmp_path / "prometheus.yml"
    broken.write_text("scrape_configs:\n  - job_name: x\n    scrape_interval: soon\n")
    with pytest.raises(LoadtestError, match="promtool rejects"):
        prom.check_config(broken)


def test_static_targets_render_only_given_jobs():
    targets = prom.static_targets(triton=["10.0.0.5:8002"], clients=["10.0.0.9:9646", "10.0.0.9:9647"])
    config = prom.render_config(targets)
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"triton", "loadtest"}
    assert jobs["loadtest"]["static_configs"] == [{"targets": ["10.0.0.9:9646", "10.0.0.9:9647"]}]


@pytest.mark.parametrize("bad", ["triton", "triton:", ":8002", "host:port"])
def test_bad_target_is_a_user_error(bad):
    with pytest.raises(LoadtestError, match="HOST:PORT"):
        prom.static_targets(triton=[bad])


def test_bad_interval_and_no_targets_are_user_errors():
    with pytest.raises(LoadtestError, match="duration"):
        prom.render_config(prom.compose_targets(), scrape_interval="1 second")
    with pytest.raises(LoadtestError, match="no scrape targets"):
        prom.render_config(prom.static_targets())


@needs_promtool
def test_prometheus_config_command_writes_a_valid_file(tmp_path):
    out = tmp_path / "staging.yml"
    code = (
        "import typer\n"
        "from loadtest.observability.commands import register\n"
        "app = typer.Typer()\n"
        "app.callback()(lambda: None)\n"
        "register(app)\n"
        "app()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, "prometheus-config", "--triton", "staging.example:8002",
         "--client", "127.0.0.1:9646", "--scrape-interval", "2s", "-o", str(out), "--check"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "valid" in result.stderr
    config = yaml.safe_load(out.read_text())
    assert config["global"]["scrape_interval"] == "2s"
    assert config["scrape_configs"][0]["static_configs"] == [{"targets": ["staging.example:8002"]}]


@needs_prometheus
def test_real_prometheus_scrapes_the_gpu_exporter(tmp_path):
    with GPUExporter(port=0) as exporter:
        targets = prom.static_targets(gpu_exporters=[f"127.0.0.1:{exporter.port}"])
        with PrometheusProcess(tmp_path / "prom", targets) as server:
            server.wait_until_up({"gpu"})
            (up,) = prom.query(server.url, 'up{job="gpu"}')
            assert up.points[0][1] == 1.0
            series = prom.query(server.url, "loadtest_gpu_nvml_available")
            assert [s.points[0][1] for s in series] == [0.0 if exporter.nvml_reason else 1.0]
            cpu = prom.query(server.url, 'process_cpu_seconds_total{job="gpu"}')
            assert cpu and cpu[0].points[0][1] >= 0
            with pytest.raises(LoadtestError, match="rejected"):
                prom.query(server.url, "sum(")
