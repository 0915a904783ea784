"""The embedded Triton: real server, real models, configured from config.pbtxt."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from prometheus_client.parser import text_string_to_metric_families

from loadtest.errors import LoadtestError
from loadtest.repository import ModelRepository, settings_from_config
from loadtest.serving import EmbeddedTriton, ServerPorts
from loadtest.serving.embedded import ensure_python_libdir_on_ld_path
from loadtest.serving.onnx_model import pad_and_stack, split_rows

LOADTEST = str(Path(sys.executable).parent / "loadtest")


def _arrays(repository: Path, model: str, batch: int, seq: int) -> dict[str, np.ndarray]:
    config = ModelRepository(repository).read_config(model)
    rng = np.random.default_rng(0)
    fill = {"input_ids": lambda: rng.integers(5, 50, size=(batch, seq), dtype=np.int64),
            "attention_mask": lambda: np.ones((batch, seq), dtype=np.int64)}
    return {t.name: fill.get(t.name, lambda: np.zeros((batch, seq), dtype=np.int64))() for t in config.input}


def _inputs(module, repository: Path, model: str, batch: int, seq: int, arrays=None):
    tensors = []
    for name, data in (arrays or _arrays(repository, model, batch, seq)).items():
        tensor = module.InferInput(name, list(data.shape), "INT64")
        tensor.set_data_from_numpy(data)
        tensors.append(tensor)
    return tensors


def _metric(metrics_url: str, name: str, model: str) -> float:
    """A model's counter; Triton publishes a model's series only once it has served a request (0 before)."""
    for family in text_string_to_metric_families(requests.get(metrics_url, timeout=5).text):
        for sample in family.samples:  # the parser renames counter samples to <name>_total
            if family.name == name and sample.labels.get("model") == model:
                return sample.value
    return 0.0


def test_server_is_triton_and_models_ready(triton_server):
    client = httpclient.InferenceServerClient(triton_server.http_url.removeprefix("http://"))
    try:
        assert client.get_server_metadata()["name"] == "triton"
        assert client.is_server_ready()
        for model in ("teacher", "student"):
            assert client.is_model_ready(model)
    finally:
        client.close()


def test_server_reports_config_pbtxt_settings(triton_server):
    repository = ModelRepository(triton_server.repository)
    client = httpclient.InferenceServerClient(triton_server.http_url.removeprefix("http://"))
    try:
        for model in ("teacher", "student"):
            config = repository.read_config(model)
            ours = settings_from_config(config)
            served = client.get_model_config(model)
            assert served["max_batch_size"] == ours.max_batch_size
            assert served["dynamic_batching"]["max_queue_delay_microseconds"] == ours.max_queue_delay_us
            assert sum(g["count"] for g in served["instance_group"]) == ours.instance_count
            assert [(t["name"], t["data_type"], [int(d) for d in t["dims"]]) for t in served["input"]] == [
                (t.name, "TYPE_INT64", list(t.dims)) for t in config.input
            ]
            assert [o["name"] for o in served["output"]] == [o.name for o in config.output]
    finally:
        client.close()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_inference_counts_show_in_metrics(triton_server, protocol):
    module = httpclient if protocol == "http" else grpcclient
    url = (triton_server.http_url if protocol == "http" else triton_server.grpc_url).split("://")[1]
    client = module.InferenceServerClient(url)
    before = _metric(triton_server.metrics_url, "nv_inference_count", "student")
    try:
        for batch, seq in [(1, 5), (3, 17), (8, 40)]:
            result = client.infer("student", _inputs(module, triton_server.repository, "student", batch, seq))
            logits = result.as_numpy("logits")
            assert logits.shape[0] == batch and np.isfinite(logits).all()
    finally:
        client.close()
    deadline = time.time() + 5
    while time.time() < deadline:
        after = _metric(triton_server.metrics_url, "nv_inference_count", "student")
        if after >= before + 12:
            break
        time.sleep(0.2)
    assert after - before == 12


def test_served_logits_match_onnxruntime(triton_server):
    """The server computes exactly what the repository's ONNX file computes."""
    import onnxruntime as ort

    repository = ModelRepository(triton_server.repository)
    session = ort.InferenceSession(str(repository.model_file("teacher")), providers=["CPUExecutionProvider"])
    client = httpclient.InferenceServerClient(triton_server.http_url.removeprefix("http://"))
    try:
        feed = _arrays(triton_server.repository, "teacher", 4, 11)
        served = client.infer("teacher", _inputs(httpclient, None, "teacher", 4, 11, feed)).as_numpy("logits")
    finally:
        client.close()
    expected = session.run(["logits"], feed)[0]
    np.testing.assert_allclose(served, expected, atol=1e-5)


def test_padding_merges_requests_of_different_lengths():
    a = np.array([[1, 2, 3]], dtype=np.int64)
    b = np.array([[4, 5], [6, 7]], dtype=np.int64)
    merged = pad_and_stack([a, b])
    assert merged.tolist() == [[1, 2, 3], [4, 5, 0], [6, 7, 0]] and merged.dtype == np.int64


def test_split_rows_gives_each_request_its_rows_and_length():
    batched = np.arange(3 * 3).reshape(3, 3)  # 3 rows, padded to length 3
    per_row = split_rows(batched, [1, 2], lengths=None, padded=None)
    assert [p.tolist() for p in per_row] == [[[0, 1, 2]], [[3, 4, 5], [6, 7, 8]]]
    per_token = split_rows(batched, [1, 2], lengths=[3, 2], padded=3)  # token outputs cut back to each length
    assert [p.tolist() for p in per_token] == [[[0, 1, 2]], [[3, 4], [6, 7]]]


def test_served_batch_of_mixed_lengths_matches_each_alone(triton_server):
    """Concurrent requests of different lengths batched into one padded call answer as if sent alone."""
    client = httpclient.InferenceServerClient(triton_server.http_url.removeprefix("http://"), concurrency=8)
    try:
        payloads = [_arrays(triton_server.repository, "student", 1 + i % 3, 4 + 5 * i) for i in range(8)]
        alone = [client.infer("student", _inputs(httpclient, None, "student", 0, 0, p)).as_numpy("logits") for p in payloads]
        # Pause the server while they arrive so the batcher finds them queued together (padding path).
        os.kill(triton_server.tritonserver_pid, signal.SIGSTOP)
        try:
            pending = [client.async_infer("student", _inputs(httpclient, None, "student", 0, 0, p)) for p in payloads]
            time.sleep(0.3)
        finally:
            os.kill(triton_server.tritonserver_pid, signal.SIGCONT)
        together = [r.get_result().as_numpy("logits") for r in pending]
    finally:
        client.close()
    for a, b in zip(alone, together):
        np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_repository_load_and_unload_are_refused(triton_server, protocol):
    """Models are fixed while the server runs: a load test cannot lose a model to an unload request."""
    module = httpclient if protocol == "http" else grpcclient
    url = (triton_server.http_url if protocol == "http" else triton_server.grpc_url).split("://")[1]
    client = module.InferenceServerClient(url)
    try:
        with pytest.raises(Exception, match="not allowed"):
            client.unload_model("student")
        with pytest.raises(Exception, match="not allowed"):
            client.load_model("student")
        assert client.is_model_ready("student") and client.is_model_ready("teacher")
    finally:
        client.close()


def test_model_that_fails_to_load_is_a_one_line_error(tmp_path, tiny_repository):
    broken = tmp_path / "repo"
    shutil.copytree(tiny_repository, broken)
    (broken / "student" / "1" / "model.onnx").write_bytes(b"not an onnx file")
    server = EmbeddedTriton(broken, ServerPorts(0, 0, 0), log_file=tmp_path / "triton.log")
    with pytest.raises(LoadtestError, match="failed to load 'student'") as error:
        server.start()
    assert "\n" not in str(error.value) and "\\n" not in str(error.value)
    assert server.tritonserver_pid is None and not server.is_alive()


def test_busy_port_is_a_clear_error(tiny_repository):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        busy = sock.getsockname()[1]
        with pytest.raises(LoadtestError, match=f"http port {busy} .* busy"):
            EmbeddedTriton(tiny_repository, ServerPorts(busy, 0, 0))
        picked = EmbeddedTriton(tiny_repository, ServerPorts(busy, 0, 0), pick_free_ports=True)
        assert picked.ports.http != busy


def test_repository_errors(tmp_path, tiny_repository):
    with pytest.raises(LoadtestError, match="does not exist"):
        EmbeddedTriton(tmp_path / "nope")
    broken = tmp_path / "repo"
    shutil.copytree(tiny_repository, broken)
    (broken / "student" / "config.pbtxt").unlink()
    with pytest.raises(LoadtestError, match="no config.pbtxt"):
        EmbeddedTriton(broken)


def test_libdir_is_put_on_ld_library_path(monkeypatch):
    monkeypatch.setenv("LD_LIBRARY_PATH", "/somewhere")
    ensure_python_libdir_on_ld_path()
    assert os.environ["LD_LIBRARY_PATH"].split(":")[0] == sysconfig.get_config_var("LIBDIR")


def _wait_for_line(process: subprocess.Popen, text: str, timeout: float) -> str:
    seen = []
    deadline = time.time() + timeout
    while time.time() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        seen.append(line)
        if text in line:
            return "".join(seen)
    raise AssertionError(f"{text!r} not printed; got:\n{''.join(seen)}")


def test_cli_serve_stops_cleanly_on_sigterm(tiny_repository, tmp_path):
    process = subprocess.Popen(
        [LOADTEST, "serve", "--repo", str(tiny_repository), "--pick-free-ports", "--http-port", "0",
         "--grpc-port", "0", "--metrics-port", "0", "--log-file", str(tmp_path / "triton.log")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "COLUMNS": "200"},
    )
    try:
        output = _wait_for_line(process, "metrics http://", 120)
        assert "all 2 model(s) READY" in output
        assert "NVML" not in output and "DCGM" not in output  # tritonserver's console goes to its log
        # Load right after READY: no request may find a model still loading.
        http_port = int(output.split("HTTP    http://127.0.0.1:")[1].split()[0])
        metrics_port = int(output.split("metrics http://127.0.0.1:")[1].split("/")[0])
        client = httpclient.InferenceServerClient(f"127.0.0.1:{http_port}", concurrency=16)
        try:
            for model in ("teacher", "student"):
                inputs = _inputs(httpclient, tiny_repository, model, 2, 12)
                pending = [client.async_infer(model, inputs) for _ in range(40)]
                assert all(r.get_result().as_numpy("logits").shape == (2, 4) for r in pending)
        finally:
            client.close()
        metrics = requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
        assert "nv_inference_request_failure{" not in metrics or all(
            line.endswith(" 0") for line in metrics.splitlines() if line.startswith("nv_inference_request_failure{")
        )
        children = [p for p in psutil.Process(process.pid).children(recursive=True) if p.name() == "tritonserver"]
        assert children, "no tritonserver child process"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
        time.sleep(0.5)
        assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in children)
    finally:
        if process.poll() is None:
            process.kill()


def test_cli_serve_busy_port_one_line_error(tiny_repository):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        busy = sock.getsockname()[1]
        result = subprocess.run(
            [LOADTEST, "serve", "--repo", str(tiny_repository), "--http-port", str(busy)],
            capture_output=True, text=True, timeout=120,
        )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"port {busy}" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_cli_serve_missing_repository_one_line_error(tmp_path):
    result = subprocess.run([LOADTEST, "serve", "--repo", str(tmp_path / "nope")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "does not exist" in result.stderr and "Traceback" not in result.stderr


def test_a_bad_request_fails_alone_and_is_counted(triton_server):
    """Out-of-vocabulary ids: that request gets ORT's error (counted as a Triton failure); batch-mates succeed."""
    client = httpclient.InferenceServerClient(triton_server.http_url.removeprefix("http://"), concurrency=4)
    good = _arrays(triton_server.repository, "student", 1, 6)
    bad = {**good, "input_ids": np.full((1, 6), 10**6, dtype=np.int64)}
    try:
        before = _failures(triton_server.metrics_url, "student")
        with pytest.raises(Exception, match="indices element out of data bounds|out of range|Gather"):
            client.infer("student", _inputs(httpclient, None, "student", 0, 0, bad))
        os.kill(triton_server.tritonserver_pid, signal.SIGSTOP)  # queue them together
        try:
            pending = [client.async_infer("student", _inputs(httpclient, None, "student", 0, 0, p)) for p in (good, bad, good)]
            time.sleep(0.3)
        finally:
            os.kill(triton_server.tritonserver_pid, signal.SIGCONT)
        assert pending[0].get_result().as_numpy("logits").shape == (1, 4)
        assert pending[2].get_result().as_numpy("logits").shape == (1, 4)
        with pytest.raises(Exception):
            pending[1].get_result()
    finally:
        client.close()
    deadline = time.time() + 5
    while _failures(triton_server.metrics_url, "student") < before + 1 and time.time() < deadline:
        time.sleep(0.2)
    assert _failures(triton_server.metrics_url, "student") >= before + 1


def _failures(metrics_url: str, model: str) -> float:
    total = 0.0
    for family in text_string_to_metric_families(requests.get(metrics_url, timeout=5).text):
        if family.name == "nv_inference_request_failure":
            total += sum(s.value for s in family.samples if s.labels.get("model") == model)
    return total
