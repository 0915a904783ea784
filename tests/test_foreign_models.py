"""Models loadtest did not export, loaded with no repository: everything is read from the server.

The embedded Triton serves standard Python-backend models and an ensemble (tests/_foreign_models.py):
FP32 and BYTES inputs, other input names, max_batch_size 0, a variable dim. The load generator reads
their metadata and config over HTTP and gRPC, builds payloads by datatype (or from perf_analyzer data,
or from a text dataset), and its records reconcile with Triton's success counters (an ensemble request
also counts once on each of its steps). Bad input is refused in one line before any load.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from _foreign_models import ENSEMBLE_STEPS, labelled_features, labelled_texts, write_foreign_repository
from _load_helpers import success_delta, triton_success

from loadtest.load.runner import run_locust

TIMEOUT_S = 150


@pytest.fixture(scope="module")
def foreign_server(tmp_path_factory):
    from loadtest.serving import EmbeddedTriton, ServerPorts

    root = tmp_path_factory.mktemp("foreign")
    repository = write_foreign_repository(root / "models")
    server = EmbeddedTriton(repository, ServerPorts(0, 0, 0), log_file=root / "triton.log")
    server.start()
    yield server
    server.stop()


def _expected_server_counts(records) -> dict[str, int]:
    """Triton's success count per model for our records: own requests plus those an ensemble sent to it."""
    own = records[records["success"]].groupby("model").size().to_dict()
    expected = dict(own)
    for ensemble, steps in ENSEMBLE_STEPS.items():
        for step in steps:
            expected[step] = expected.get(step, 0) + own.get(ensemble, 0)
    return {model: n for model, n in expected.items() if n}


def _reconcile(run, before: dict, metrics_url: str) -> "object":
    delta = success_delta(before, triton_success(metrics_url))
    records = run.records().to_pandas()
    assert len(records) == run.manifest()["locust"]["requests"] > 0
    expected = _expected_server_counts(records)
    assert {m: n for m, n in delta.items() if n} == expected
    return records


def test_every_ready_model_is_read_from_the_server_and_loaded_over_http(foreign_server, tmp_path):
    before = triton_success(foreign_server.metrics_url)
    run = run_locust(
        "steady", foreign_server.http_url, users=3, run_time=3, repository=tmp_path / "no-repository",
        results_dir=tmp_path / "results", metrics_port=0, triton_metrics_url=foreign_server.metrics_url,
        timeout_s=TIMEOUT_S,
    )  # fmt: skip
    assert run.exit_code == 0, "\n".join(run.output_tail[-20:])
    records = _reconcile(run, before, foreign_server.metrics_url)
    assert set(records["model"]) == {"fp32_mlp", "text_length", "sum_no_batch", "text_to_codes", "char_classifier",
                                     "text_classifier"}  # fmt: skip
    assert records["success"].all()
    served = {m["name"] for m in run.manifest()["models"]["served"]}
    assert served == set(records["model"])


def test_grpc_with_perf_analyzer_data_input_shape_and_batches(foreign_server, tmp_path):
    data = tmp_path / "sum.json"
    data.write_text(json.dumps({"data": [
        {"INPUT0": {"content": list(range(6)), "shape": [6]}, "INPUT1": [1.0, 2.0, 3.0, 4.0]},
        {"INPUT0": [7, 8, 9], "INPUT1": [0.0, 0.0, 0.0, 0.5]},
    ]}))  # fmt: skip
    before = triton_success(foreign_server.metrics_url)
    run = run_locust(
        "ab", foreign_server.grpc_url, users=2, run_time=3, models=["sum_no_batch"], input_data=data,
        repository=tmp_path / "none", results_dir=tmp_path / "results", metrics_port=0,
        triton_metrics_url=foreign_server.metrics_url, timeout_s=TIMEOUT_S,
    )  # fmt: skip
    assert run.exit_code == 0, "\n".join(run.output_tail[-20:])
    records = _reconcile(run, before, foreign_server.metrics_url)
    assert set(records["model"]) == {"sum_no_batch"} and (records["batch_size"] == 1).all()

    before = triton_success(foreign_server.metrics_url)
    run = run_locust(
        "steady", foreign_server.grpc_url, users=2, run_time=3, models=["fp32_mlp", "text_classifier"], batch_size=4,
        repository=tmp_path / "none", results_dir=tmp_path / "results2", metrics_port=0,
        triton_metrics_url=foreign_server.metrics_url, timeout_s=TIMEOUT_S,
    )  # fmt: skip
    assert run.exit_code == 0, "\n".join(run.output_tail[-20:])
    records = _reconcile(run, before, foreign_server.metrics_url)
    assert (records["batch_size"] == 4).all() and records["success"].all()


def test_text_dataset_goes_to_the_ensemble_and_eval_scores_it(foreign_server, tmp_path):
    dataset = tmp_path / "labelled.jsonl"
    dataset.write_text("\n".join(json.dumps(row) for row in labelled_texts()))
    before = triton_success(foreign_server.metrics_url)
    run = run_locust(
        "open_loop", foreign_server.http_url, run_time=3, arrival_rate=40, models=["text_classifier"], dataset=dataset,
        repository=tmp_path / "none", results_dir=tmp_path / "results", metrics_port=0,
        triton_metrics_url=foreign_server.metrics_url, timeout_s=TIMEOUT_S,
    )  # fmt: skip
    assert run.exit_code == 0, "\n".join(run.output_tail[-20:])
    _reconcile(run, before, foreign_server.metrics_url)

    result = subprocess.run(
        [sys.executable, "-m", "loadtest.cli", "eval", "--dataset", str(dataset), "--host", foreign_server.grpc_url,
         "--repo", str(tmp_path / "none"), "--teacher", "text_classifier", "--student", "text_classifier",
         "--labels", "consonants,vowels", "--results", str(tmp_path / "eval"), "--bootstrap-resamples", "100"],
        capture_output=True, text=True, timeout=TIMEOUT_S,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(next((tmp_path / "eval").rglob("quality/summary.json")).read_text())
    assert summary["headline"]["teacher_accuracy"] == 1.0 and summary["headline"]["student_agreement"] == 1.0


def test_eval_sends_a_dataset_in_the_models_own_input_format(foreign_server, tmp_path):
    """A classifier taking FP32 features (output 'scores'): the set holds a 'features' column, sent as it is."""
    dataset = tmp_path / "features.jsonl"
    dataset.write_text("\n".join(json.dumps(row) for row in labelled_features()))
    result = subprocess.run(
        [sys.executable, "-m", "loadtest.cli", "eval", "--dataset", str(dataset), "--host", foreign_server.http_url,
         "--repo", str(tmp_path / "none"), "--teacher", "fp32_mlp", "--student", "fp32_mlp", "--labels", "a,b,c",
         "--results", str(tmp_path / "eval"), "--bootstrap-resamples", "100", "--batch-size", "8"],
        capture_output=True, text=True, timeout=TIMEOUT_S,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(next((tmp_path / "eval").rglob("quality/summary.json")).read_text())
    assert summary["headline"]["teacher_accuracy"] == 1.0 and summary["dataset"]["input"] == ["features"]


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--models", "no_such_model"], "model 'no_such_model' is not on Triton at"),
        (["--models", "fp32_mlp", "--model-version", "2"], "model 'fp32_mlp' has no version 2 on Triton"),
        (["--models", "fp32_mlp", "--input-shape", "features:8"], "model 'fp32_mlp' input 'features' has static dims [16]"),
        (["--models", "sum_no_batch", "--batch-size", "4"], "model 'sum_no_batch' has max_batch_size 0"),
        (["--models", "sum_no_batch", "--input-data", "{wrong}"], "lacks model 'sum_no_batch' input 'INPUT1'"),
        (["--models", "fp32_mlp", "--host-grpc-port-over-http"], "answers GRPC, not HTTP: use --host grpc://"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_and_sends_nothing(foreign_server, tmp_path, args, expected):
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"data": [{"INPUT0": [1, 2]}]}))
    host = foreign_server.http_url
    if "--host-grpc-port-over-http" in args:
        args = [a for a in args if a != "--host-grpc-port-over-http"]
        host = f"http://127.0.0.1:{foreign_server.grpc_port}"
    args = [str(wrong) if a == "{wrong}" else a for a in args]
    before = triton_success(foreign_server.metrics_url)
    result = subprocess.run(
        [sys.executable, "-m", "loadtest.cli", "run", "steady", "--host", host, "--repository", str(tmp_path / "none"),
         "-u", "1", "-t", "2s", "--results-dir", str(tmp_path / "results"), "--metrics-port", "0", *args],
        capture_output=True, text=True, timeout=TIMEOUT_S,
    )  # fmt: skip
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and expected in lines[0] and "Traceback" not in result.stderr
    assert not any(success_delta(before, triton_success(foreign_server.metrics_url)).values())


def test_load_right_after_serve_starts_sees_no_unloaded_model(tmp_path):
    """`loadtest serve` just started, models still loading: --wait-ready holds the clock until all are READY."""
    from loadtest.serving.ports import free_port

    repository = write_foreign_repository(tmp_path / "models")
    ports = [free_port()]
    ports.append(free_port(exclude=set(ports)))
    ports.append(free_port(exclude=set(ports)))
    server = subprocess.Popen(
        [sys.executable, "-m", "loadtest.cli", "serve", "--repo", str(repository), "--http-port", str(ports[0]),
         "--grpc-port", str(ports[1]), "--metrics-port", str(ports[2]), "--log-file", str(tmp_path / "triton.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        started = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-m", "loadtest.cli", "run", "steady", "--host", f"http://127.0.0.1:{ports[0]}",
             "--repository", str(tmp_path / "none"), "--wait-ready", "120", "-u", "4", "-t", "3s",
             "--results-dir", str(tmp_path / "results"), "--metrics-port", "0", "--quiet"],
            capture_output=True, text=True, timeout=TIMEOUT_S + 120,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert time.monotonic() - started > 0
        from loadtest.rundir import read_records

        records = read_records(next((tmp_path / "results").iterdir())).to_pandas()
        assert len(records) > 0 and records["success"].all(), records[~records["success"]]["error"].head()
        assert set(records["model"]) == {"fp32_mlp", "text_length", "sum_no_batch", "text_to_codes",
                                         "char_classifier", "text_classifier"}  # fmt: skip
    finally:
        server.terminate()
        server.wait(timeout=60)


def test_compose_healthcheck_probes_each_model(foreign_server):
    """docker-compose.yml's Triton healthcheck, run as compose would render it, fails while a model is missing."""
    from pathlib import Path

    import yaml

    compose = yaml.safe_load((Path(__file__).resolve().parents[1] / "docker-compose.yml").read_text())
    command = compose["x-triton"]["healthcheck"]["test"][3]
    for models, healthy in (("fp32_mlp text_classifier", True), ("fp32_mlp not_loaded", False)):
        rendered = (command.replace("${LOADTEST_HEALTH_MODELS:-teacher student}", models).replace("$$", "$")
                    .replace("127.0.0.1/8000", f"127.0.0.1/{foreign_server.http_port}"))  # fmt: skip
        assert (subprocess.run(["bash", "-c", rendered], timeout=30).returncode == 0) is healthy
