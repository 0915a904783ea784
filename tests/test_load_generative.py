"""Generative load against real servers: ``transformers serve`` (OpenAI-compatible) and a decoupled model
on the embedded Triton (a standard Python-backend ``model.py``) over gRPC streaming and HTTP generate_stream.

Every run is a real headless ``locust`` child for a few seconds. Checks (issue #10): records reconcile
with the server's own counts (``transformers serve``'s request log; Triton's
``nv_inference_request_success``), TTFT <= E2E on every record, output tokens are the server's counts
(never the chunk count: ``echo2`` sends two tokens per chunk), warm-up requests are labelled, and bad
input is a recorded failure with the server's text or a one-line error before the test.
"""

from __future__ import annotations

import json

import pyarrow.compute as pc
import pytest
from _llm_fixtures import make_tiny_causal_lm
from _llm_server import TransformersServe
from _load_helpers import success_delta, triton_success
from _triton_llm import CONTEXT_TOKENS, TritonLLM

from loadtest.load.runner import SCENARIOS_DIR, run_locust

TIMEOUT_S = 150
OUT_TOKENS = 8


@pytest.fixture(scope="module")
def llm_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("llm")
    return make_tiny_causal_lm(root / "teacher", layers=2, seed=0), make_tiny_causal_lm(root / "student", layers=1, seed=1)


@pytest.fixture(scope="module")
def openai_server(llm_models, tmp_path_factory):
    server = TransformersServe(tmp_path_factory.mktemp("serve"))
    for model in llm_models:
        server.load(model)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def triton_llm(tmp_path_factory):
    server = TritonLLM(tmp_path_factory.mktemp("triton-llm"))
    yield server
    server.stop()


def _llm_args(api: str, *models: str, tokenizer=None, extra: tuple[str, ...] = ()) -> list[str]:
    args = ["--api", api, "--models", ",".join(models), "--output-lengths", f"fixed:{OUT_TOKENS}"]
    if tokenizer is not None:
        args += ["--tokenizer", str(tokenizer), "--lengths", "uniform:6:20"]
    return args + list(extra)


def _run(tmp_path, scenario: str, host: str, args: list[str], **kw):
    return run_locust(SCENARIOS_DIR / scenario, host, results_dir=tmp_path / "results", metrics_port=0,
                      triton_metrics_url="none", timeout_s=TIMEOUT_S, extra_args=args, **kw)  # fmt: skip


def _frame(run):
    return run.records().to_pandas()


def _check_common(frame, run):
    assert len(frame) == run.manifest()["locust"]["requests"] == run.manifest()["records"]["rows"]
    assert (frame["ttft_s"].dropna() <= frame["latency_s"][frame["ttft_s"].notna()]).all()
    assert (frame["latency_s"] > 0).all()
    manifest = run.manifest()
    assert manifest["workload"] == "generative" and manifest["generation"]["api"]


def test_openai_chat_streaming_reconciles_with_the_server(openai_server, llm_models, tmp_path):
    """Closed loop, chat, streaming: every record is the server's request, with its usage counts."""
    teacher, student = map(str, llm_models)
    before = openai_server.received()
    args = _llm_args("openai-chat", teacher, student, tokenizer=teacher,
                     extra=("--teacher", teacher, "--student", student, "--warmup-requests", "1"))  # fmt: skip
    run = _run(tmp_path, "llm.py", openai_server.url, args, users=2, run_time=3)
    frame = _frame(run)
    assert run.exit_code == 0, "\n".join(run.output_tail[-30:])
    _check_common(frame, run)
    received = success_delta(before, openai_server.received())
    assert {m.split("@")[0]: n for m, n in received.items() if n} == frame.groupby("model").size().to_dict()
    assert frame["success"].all() and set(frame["protocol"]) == {"openai-chat"}
    assert (frame["output_tokens"] == OUT_TOKENS).all() and set(frame["token_count_source"]) == {"server"}
    assert (frame["chunks"] >= 1).all() and frame["ttft_s"].notna().all()
    assert (frame["input_tokens"] > 0).all()
    assert set(frame["stage"]) == {"warmup", "steady"}
    assert (frame[frame["stage"] == "warmup"].groupby("model").size() <= 2).all()  # one per user and model
    assert run.manifest()["models"]["teacher"] == teacher and run.manifest()["models"]["student"] == student
    _check_analysis(run.run_dir, frame, teacher)


def _check_analysis(run_dir, frame, teacher):
    """``loadtest analyze --slo`` on the real run: its P95 TTFT is numpy's on the records; report written."""
    import numpy as np
    from typer.testing import CliRunner

    from loadtest.cli import app

    result = CliRunner().invoke(app, ["analyze", str(run_dir), "--slo", "ttft_ms=2000,itl_ms=500"])
    assert result.exit_code == 0, result.output
    assert (run_dir / "report.html").exists() and "goodput" in result.output
    import pandas as pd

    table = pd.read_csv(run_dir / "tables" / "generative_summary.csv")
    row = table[(table["model"] == teacher) & (table["stage"] == "(all)")].iloc[0]
    steady = frame[(frame["model"] == teacher) & (frame["stage"] != "warmup")]
    assert row["ttft_p95_ms"] == pytest.approx(np.percentile(steady["ttft_s"], 95) * 1000)
    assert row["requests"] == len(steady)


def test_openai_completions_open_loop_and_whole_answers(openai_server, llm_models, tmp_path):
    """Open loop (TTFT/E2E from the intended time) streaming, then whole answers (no TTFT) with --no-stream."""
    teacher = str(llm_models[0])
    run = _run(tmp_path, "llm_open_loop.py", openai_server.url, _llm_args("openai-completions", teacher,
               tokenizer=teacher), users=1, run_time=3, arrival_rate=4)  # fmt: skip
    frame = _frame(run)
    assert run.exit_code == 0, "\n".join(run.output_tail[-30:])
    _check_common(frame, run)
    assert set(frame["loop"]) == {"open"} and frame["success"].all()
    assert (frame["latency_s"] >= frame["service_time_s"] - 1e-9).all()  # from the intended send time
    assert (frame["output_tokens"] == OUT_TOKENS).all()

    from typer.testing import CliRunner

    from loadtest.cli import app
    from loadtest.rundir import read_records

    result = CliRunner().invoke(app, ["run", "llm", "--host", openai_server.url, "--api", "openai-completions",
                                      "--models", teacher, "--tokenizer", teacher, "--lengths", "uniform:6:20",
                                      "--output-lengths", f"fixed:{OUT_TOKENS}", "--no-stream", "-u", "1", "-t", "2s",
                                      "--metrics-port", "0", "--results-dir", str(tmp_path / "cli"), "-q"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "TTFT P50" in result.output and "out tok/s" in result.output
    (run_dir,) = (tmp_path / "cli").iterdir()
    frame = read_records(run_dir).to_pandas()
    assert frame["ttft_s"].isna().all() and (frame["output_tokens"] == OUT_TOKENS).all()
    assert (frame["chunks"] == 1).all() and frame["success"].all()


@pytest.mark.parametrize("api", ["triton-grpc", "triton-generate"])
def test_triton_streaming_reconciles_with_triton(triton_llm, llm_models, tmp_path, api):
    """gRPC ModelStreamInfer and HTTP generate_stream: records == Triton's successes; tokens != chunks."""
    host = triton_llm.grpc_url if api == "triton-grpc" else triton_llm.http_url
    before = triton_success(triton_llm.metrics_url)
    run = _run(tmp_path, "llm.py", host, _llm_args(api, "echo", "echo2", tokenizer=llm_models[0]), users=2,
               run_time=3)  # fmt: skip
    delta = success_delta(before, triton_success(triton_llm.metrics_url))
    frame = _frame(run)
    assert run.exit_code == 0, "\n".join(run.output_tail[-30:])
    _check_common(frame, run)
    assert {m: n for m, n in delta.items() if n} == frame.groupby("model").size().to_dict()
    assert frame["success"].all() and (frame["output_tokens"] == OUT_TOKENS).all()
    assert set(frame["token_count_source"]) == {"server"}
    chunks = frame.groupby("model")["chunks"].unique().to_dict()
    assert list(chunks["echo"]) == [OUT_TOKENS] and list(chunks["echo2"]) == [OUT_TOKENS // 2]
    assert (frame["input_tokens"] == frame["tokens"]).all()


def test_bad_input_triton(triton_llm, tmp_path):
    """A prompt longer than the context is a recorded failure with the server's text; streaming from a
    model that is not decoupled is a one-line error before the test."""
    dataset = tmp_path / "long.jsonl"
    dataset.write_text(json.dumps({"text": " ".join(["word"] * (CONTEXT_TOKENS + 5))}) + "\n")
    run = _run(tmp_path, "llm.py", triton_llm.grpc_url, _llm_args("triton-grpc", "echo") + ["--dataset", str(dataset)],
               users=1, run_time=2)  # fmt: skip
    frame = _frame(run)
    assert len(frame) > 0 and not frame["success"].any()
    assert frame["error"].str.contains("exceeds the context").all()

    run = _run(tmp_path, "llm.py", triton_llm.http_url, _llm_args("triton-generate", "plain") +
               ["--dataset", str(dataset)], users=1, run_time=2)  # fmt: skip
    assert run.exit_code == 2
    errors = [line for line in run.output_tail if "not decoupled" in line]
    assert errors and "--no-stream" in errors[0]


def test_bad_input_openai(openai_server, llm_models, tmp_path):
    """An OpenAI endpoint answering 4xx is a recorded failure carrying the server's text."""
    teacher = str(llm_models[0])
    run = _run(tmp_path, "llm.py", openai_server.url, _llm_args("openai-completions", teacher, tokenizer=teacher,
               extra=("--ignore-eos",)), users=1, run_time=2)  # fmt: skip
    frame = _frame(run)
    assert len(frame) > 0 and not frame["success"].any()
    assert frame["error"].str.startswith("HTTP 422").all() and frame["error"].str.contains("ignore_eos").all()


BAD_STREAMS = {
    "cut": (200, "text/event-stream", 'data: {"choices": [{"text": " a"}]}\n\n'),
    "notjson": (200, "text/event-stream", 'data: {"choices": [{"text": " a"}]}\n\ndata: {not json\n\n'),
    "nostream": (200, "application/json", '{"choices": [{"text": " a b", "finish_reason": "length"}]}'),
    "empty": (200, "text/event-stream", 'data: {"choices": [{"text": "", "finish_reason": "stop"}], '
              '"usage": {"completion_tokens": 0, "prompt_tokens": 3}}\n\ndata: [DONE]\n\n'),
    "overloaded": (503, "application/json", '{"error": {"message": "server overloaded", "code": 503}}'),
}


@pytest.fixture()
def misbehaving_server():
    """A loopback HTTP server that answers /v1/completions with one kind of broken stream per model name
    (connection closed after the body, as a server that dies mid-answer)."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            status, content_type, text = BAD_STREAMS[body["model"]]
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.end_headers()
            self.wfile.write(text.encode())

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_bad_streams_are_recorded_failures_with_the_servers_text(misbehaving_server, llm_models, tmp_path):
    # the whole scenarios/ folder: with --api only the LLM users run (one closed-loop user, one open-loop driver)
    run = _run(tmp_path, "", misbehaving_server, _llm_args("openai-completions", *BAD_STREAMS,
               tokenizer=llm_models[0], extra=("--warmup-requests", "0", "--arrival-rate", "2")), users=2,
               spawn_rate=2, run_time=3)  # fmt: skip
    assert run.exit_code in (0, 1), "\n".join(run.output_tail[-30:])  # 1: Locust saw failed requests
    frame = _frame(run)
    assert set(frame["scenario"]) == {"LLMStreamUser", "LLMOpenLoopDriver"}
    assert set(frame["model"]) == set(BAD_STREAMS) and not frame["success"].any()
    errors = frame.groupby("model")["error"].first().to_dict()
    assert errors["cut"].startswith("stream cut off")
    assert "not valid JSON" in errors["notjson"] and "{not json" in errors["notjson"]
    assert errors["nostream"].startswith("server did not stream") and "a b" in errors["nostream"]
    assert errors["empty"].startswith("empty completion")
    assert errors["overloaded"].startswith("HTTP 503") and "server overloaded" in errors["overloaded"]


def test_sweep_under_a_ttft_itl_slo_finishes_with_a_bounded_interval(openai_server, llm_models, tmp_path):
    """``loadtest sweep --api ... --slo`` on transformers serve: a passing and a failing rate bound the capacity;
    ``loadtest plan`` sizes replicas from it."""
    from typer.testing import CliRunner

    from loadtest.cli import app

    student = str(llm_models[1])
    args = ["sweep", "--host", openai_server.url, "--api", "openai-completions", "--models", student,
            "--tokenizer", student, "--lengths", "uniform:6:20", "--output-lengths", "fixed:16",
            "--slo", "ttft_ms=1500,itl_ms=300", "--start", "1", "--growth", "8", "--tolerance", "0.8",
            "--step-duration", "3", "--warmup", "1", "--min-requests", "3", "--max-steps", "5",
            "--max-in-flight", "64", "--results-dir", str(tmp_path / "sweeps")]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    (sweep_dir,) = (tmp_path / "sweeps").iterdir()
    found = json.loads((sweep_dir / "manifest.json").read_text())["sweep"]["results"][student]
    assert found["rate_low"] is not None and found["rate_high"] is not None, found
    assert found["rate_low"] < found["rate_high"] and found["resolution_pct"] <= 80
    passed = [s for s in found["steps"] if s["passed"]]
    failed = [s for s in found["steps"] if not s["passed"]]
    assert max(s["rate"] for s in passed) == found["rate_low"] and all(s["reasons"] for s in failed)
    assert (sweep_dir / "report.html").exists()
    plan = CliRunner().invoke(app, ["plan", str(sweep_dir), "--peak-qps", "20"])
    assert plan.exit_code == 0, plan.output
    import pandas as pd

    row = pd.read_csv(sweep_dir / "tables" / "plan.csv").iloc[0]
    assert row["replicas"] >= 1 and row["qps_at_budget_per_replica"] <= found["rate_low"] + 1e-9
