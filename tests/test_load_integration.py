"""The load generator against a real embedded Triton: counts that add up, a stall that shows, workers.

Every run is a real ``locust`` child process (``loadtest.load.runner``) for a few seconds. The checks
are the issue's: records == Locust's request count == the change in Triton's
``nv_inference_request_success``; a 2 s SIGSTOP of tritonserver during an open-loop run shows as a
P99 >= 1 s with late sends counted; ``--processes 2`` yields records from both workers that add up;
what the tools print equals numpy's percentiles on the records.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pyarrow.compute as pc
from _load_helpers import Staller, success_delta, triton_success

from loadtest.load.runner import SCENARIOS_DIR, run_locust
from loadtest.load.summary import latency_percentiles
from loadtest.rundir import read_records

TIMEOUT_S = 150


def _run(server, tmp_path, scenario, url, **kwargs):
    before = triton_success(server.metrics_url)
    run = run_locust(
        scenario, url, repository=server.repository, results_dir=tmp_path / "results", metrics_port=0,
        triton_metrics_url=server.metrics_url, timeout_s=TIMEOUT_S, **kwargs,
    )  # fmt: skip
    after = triton_success(server.metrics_url)
    return run, success_delta(before, after)


def _check_counts(run, delta, protocol):
    """records == Locust's count == Triton's successes, both models, no failure."""
    assert run.exit_code == 0, "\n".join(run.output_tail[-40:])
    table = run.records()
    manifest = run.manifest()
    by_model = {m: int(pc.sum(pc.equal(table["model"], m)).as_py()) for m in ("teacher", "student")}
    assert by_model["teacher"] > 0 and by_model["student"] > 0
    assert table.num_rows == manifest["locust"]["requests"] == manifest["records"]["rows"]
    assert manifest["locust"]["failures"] == 0 and pc.all(table["success"]).as_py()
    assert {m: n for m, n in delta.items() if n} == by_model
    assert set(table["protocol"].to_pylist()) == {protocol}
    return table, manifest


def test_http_all_scenarios_via_cli(triton_server, tmp_path):
    """``loadtest run scenarios/`` over HTTP: counts add up and the printed percentiles are numpy's."""
    import typer
    from typer.testing import CliRunner

    from loadtest.load.commands import register

    app = typer.Typer()
    register(app)
    app.command("noop")(lambda: None)  # a second command keeps typer from folding `run` into the app
    before = triton_success(triton_server.metrics_url)
    result = CliRunner().invoke(app, [
        "run", str(SCENARIOS_DIR), "--host", triton_server.http_url, "--repository", str(triton_server.repository),
        "-u", "6", "-r", "6", "-t", "5s", "--results-dir", str(tmp_path / "results"), "--metrics-port", "0",
        "--triton-metrics-url", triton_server.metrics_url, "--quiet",
    ])  # fmt: skip
    delta = success_delta(before, triton_success(triton_server.metrics_url))
    assert result.exit_code == 0, result.output
    run_dir = next((tmp_path / "results").iterdir())
    assert str(run_dir) in result.output
    table = read_records(run_dir)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert table.num_rows == manifest["locust"]["requests"] == sum(delta.values())
    assert set(table["scenario"].to_pylist()) == {"SteadyUser", "StepUser", "SpikeUser", "SoakUser", "OpenLoopDriver",
                                                  "ABUser"}  # fmt: skip
    for model in ("teacher", "student"):
        rows = table.filter(pc.equal(table["model"], model))
        ok = rows.filter(rows["success"])["latency_s"].to_numpy()  # the analyzer's rule: successful requests
        expected = latency_percentiles(ok)
        numpy_direct = np.percentile(ok, [50, 95, 99], method="linear")
        assert [expected[50.0], expected[95.0], expected[99.0]] == list(numpy_direct)
        line = next(line for line in result.output.splitlines() if line.strip().startswith(model))
        printed = [float(x) for x in re.findall(r"(\d+\.\d{3}) \[", line)]  # p50, p95, p99 in ms, each with its CI
        assert printed == [round(v * 1e3, 3) for v in numpy_direct]
        assert int(line.split()[1]) == rows.num_rows == delta[model]


def test_grpc_all_scenarios(triton_server, tmp_path):
    run, delta = _run(triton_server, tmp_path, SCENARIOS_DIR, triton_server.grpc_url, users=6, spawn_rate=6, run_time=5)
    table, manifest = _check_counts(run, delta, "grpc")
    assert manifest["protocol"] == "grpc" and manifest["models"]["teacher"] == "teacher"
    snapshots = sorted(p.name for p in (run.run_dir / "metrics").glob("*.prom"))
    assert snapshots[0].endswith("-start.prom") and snapshots[-1].endswith("-stop.prom")
    ab = table.filter(pc.equal(table["scenario"], "ABUser")).to_pandas()
    counts = ab.groupby("model").size()
    assert counts["teacher"] == counts["student"]  # A/B: every payload went to both models


def test_open_loop_stall_shows_in_p99_and_late_sends(triton_server, tmp_path):
    """SIGSTOP tritonserver for 2 s at a fixed arrival rate: the stall is in P99, and late sends are counted."""
    pid = triton_server.tritonserver_pid
    assert pid, "the fixture exposes no tritonserver pid"
    staller = Staller(pid, delay_s=2.5, pause_s=2.0)

    def watch(line: str) -> None:
        if "run directory" in line:
            staller.trigger()

    try:
        run, delta = _run(
            triton_server, tmp_path, "open_loop", triton_server.http_url, run_time=9, arrival_rate=40.0,
            max_in_flight=8, on_output=watch,
        )  # fmt: skip
    finally:
        staller.join()
    assert staller.stopped_at is not None and staller.resumed_at is not None
    table, manifest = _check_counts(run, delta, "http")
    frame = table.to_pandas()
    assert (frame["loop"] == "open").all()
    assert (frame["latency_s"] >= frame["service_time_s"]).all()  # measured from the intended time
    for model, rows in frame.groupby("model"):
        p99 = latency_percentiles(rows["latency_s"].to_numpy())[99.0]
        assert p99 >= 1.0, f"{model}: P99 {p99:.3f}s hides a 2 s stall"
        assert rows["late"].sum() > 0
        assert manifest["late"][model]["rate-1-40rps"] == rows["late"].sum()
        # sends scheduled during the stall are there, with their intended times inside the pause
        during = rows[(rows["intended_start"] > staller.stopped_at) & (rows["intended_start"] < staller.resumed_at)]
        assert len(during) >= 40
    print(f"stall: P99 by model {frame.groupby('model')['latency_s'].quantile(0.99).round(3).to_dict()}, "
          f"late {frame.groupby('model')['late'].sum().to_dict()}, dropped {manifest['dropped']}")  # fmt: skip


def test_two_processes_write_records_that_add_up(triton_server, tmp_path):
    run, delta = _run(
        triton_server, tmp_path, "steady", triton_server.http_url, users=4, spawn_rate=4, run_time=5, processes=2,
        env={"LOADTEST_BATCH_SIZE": "2"},
    )  # fmt: skip
    table, manifest = _check_counts(run, delta, "http")
    workers = table.group_by("worker").aggregate([("latency_s", "count")]).to_pylist()
    assert len(workers) == 2
    assert {w["worker"]: w["latency_s_count"] for w in workers} == manifest["records"]["workers"]
    assert manifest["role"] == "master" and manifest["records"]["all_final"]
    assert set(table["batch_size"].to_pylist()) == {2}  # the option came from the environment variable


def test_step_shape_labels_stages_and_snapshots_them(triton_server, tmp_path):
    run, delta = _run(triton_server, tmp_path, "step", triton_server.grpc_url, stages="2s:1,3s:2:peak")
    table, manifest = _check_counts(run, delta, "grpc")
    assert set(table["stage"].to_pylist()) == {"step-1-u1", "peak"}
    assert [(s["name"], s["users"]) for s in manifest["stages"]] == [("step-1-u1", 1), ("peak", 2)]
    labels = [p.stem.split("-", 1)[1] for p in sorted((run.run_dir / "metrics").glob("*.prom"))]
    assert labels[0] == "start" and "peak" in labels and labels[-1] == "stop"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_web_ui_shows_the_options_and_runs(triton_server, tmp_path):
    port = _free_port()
    command = [
        sys.executable, "-m", "locust", "-f", str(SCENARIOS_DIR / "steady.py"), "--web-host", "127.0.0.1",
        "--web-port", str(port), "--autostart", "-u", "2", "-r", "2", "-t", "4s", "--autoquit", "0",
        "--host", triton_server.http_url, "--repository", str(triton_server.repository),
        "--records-dir", str(tmp_path / "results"), "--metrics-port", "0",
        "--triton-metrics-url", triton_server.metrics_url,
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        page = None
        for _ in range(100):
            try:
                page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).read().decode()
                break
            except OSError:
                time.sleep(0.2)
        assert page is not None, "web UI never answered"
        for dest in ("arrival_rate", "batch_size", "records_dir", "metrics_port", "stages", "lengths"):
            assert dest in page
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, output[-3000:]
    run_dir = next((tmp_path / "results").iterdir())
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["records"]["rows"] == manifest["locust"]["requests"] > 0


def test_server_errors_are_counted_and_recorded_with_their_text(triton_server, tmp_path):
    """Token ids beyond the vocabulary (perf_analyzer input data): ONNX Runtime inside Triton refuses each request;
    each is a failed row carrying the server's text, and Triton saw exactly those requests."""
    ids = [10**6 + i for i in range(8)]
    tensors = {"input_ids": ids, "attention_mask": [1] * len(ids), "token_type_ids": [0] * len(ids)}
    data = tmp_path / "out_of_vocabulary.json"
    data.write_text(json.dumps({"data": [tensors]}))
    before = _triton_requests(triton_server.metrics_url)
    run = run_locust(
        "steady", triton_server.grpc_url, users=1, run_time=2, repository=triton_server.repository, input_data=data,
        results_dir=tmp_path / "results", metrics_port=0, triton_metrics_url=triton_server.metrics_url,
        timeout_s=TIMEOUT_S,
    )  # fmt: skip
    after = _triton_requests(triton_server.metrics_url)
    assert run.exit_code == 1  # Locust's own verdict on a run with failures
    table = run.records().to_pandas()
    manifest = run.manifest()
    assert len(table) == manifest["locust"]["requests"] == manifest["locust"]["failures"] > 0
    assert not table["success"].any() and table["error"].str.contains("out of data bounds").all()
    for model, rows in table.groupby("model"):
        assert after[model] - before.get(model, 0) == len(rows)  # success + failure counters: every request seen


def _triton_requests(metrics_url: str) -> dict[str, float]:
    """Requests Triton saw per model: nv_inference_request_success + nv_inference_request_failure.

    (A Python-backend model that answers with an error response counts as a success in Triton 2.51.)
    """
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(metrics_url, timeout=10) as response:
        text = response.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name in ("nv_inference_request_success", "nv_inference_request_failure"):
            for sample in family.samples:
                out[sample.labels["model"]] = out.get(sample.labels["model"], 0.0) + sample.value
    return out


def test_a_batch_above_the_servers_max_is_refused_before_any_load(triton_server, tmp_path):
    """The server, not a local config, says how large a batch may be: one line, exit 2, nothing sent."""
    before = triton_success(triton_server.metrics_url)
    run = run_locust(
        "steady", triton_server.http_url, users=1, run_time=2, repository=triton_server.repository, batch_size=1000,
        results_dir=tmp_path / "results", metrics_port=0, timeout_s=TIMEOUT_S,
    )  # fmt: skip
    assert run.exit_code == 2
    assert any("--batch-size 1000 exceeds model 'teacher' max_batch_size" in line for line in run.output_tail)
    assert not any(success_delta(before, triton_success(triton_server.metrics_url)).values())
