"""Generative export and serving: parity of the exported graphs, the engine's request parameters and its
in-flight batching, and the decoupled model served by a real Triton over gRPC streaming and HTTP SSE."""

from __future__ import annotations

import json
import threading

import numpy as np
import pandas as pd
import pytest

from exporters.lm_parity import MIN_GREEDY_PROMPTS, check_lm_parity, ort_genai_greedy
from exporters.parity import ParityError
from loadtest.errors import LoadtestError
from loadtest.generation.engine import GenerationEngine, GenerationError, SamplingParams
from loadtest.repository import ModelRepository


@pytest.fixture(scope="module")
def repo(gen_repository):
    return gen_repository[0]


@pytest.fixture(scope="module")
def prompts(gen_pair):
    return pd.read_parquet(gen_pair.eval_path)["prompt"].tolist()


@pytest.fixture(scope="module")
def engine(repo):
    engine = GenerationEngine(repo / "teacher" / "1", max_batch=8)
    yield engine
    engine.stop()


# ---------------------------------------------------------------- export


def test_both_exports_pass_parity_at_every_shape_and_on_greedy_tokens(gen_repository):
    _, manifest = gen_repository
    assert set(manifest.models) == {"teacher", "student"}
    for model in manifest.models.values():
        parity = model.parity
        assert parity.passed and parity.worst_max_abs_diff <= parity.atol
        shapes = {(s.batch, s.sequence, s.past) for s in parity.logits}
        assert any(b > 1 for b, _, _ in shapes) and any(p > 0 for _, _, p in shapes) and any(s > 1 for _, s, _ in shapes)
        assert all(s.argmax_agreement == 1.0 for s in parity.logits)
        greedy = parity.greedy
        assert greedy.prompts >= MIN_GREEDY_PROMPTS and greedy.tokens_compared > greedy.prompts
        assert greedy.onnxruntime_genai_identical == greedy.engine_identical == greedy.prompts
    teacher, student = manifest.models["teacher"], manifest.models["student"]
    assert student.num_layers < teacher.num_layers and student.parameter_count < teacher.parameter_count
    assert teacher.opset and teacher.file_size_bytes > 0 and "onnxruntime-genai" in teacher.exporter


def test_the_repository_holds_decoupled_python_models_following_the_generative_contract(repo):
    repository = ModelRepository(repo)
    assert repository.validate() == ["student", "teacher"]
    assert repository.read_metadata().task == "text-generation"
    for name in ("teacher", "student"):
        config = repository.read_config(name)
        assert config.backend == "python" and config.max_batch_size == 0
        assert config.model_transaction_policy.decoupled
        assert [i.name for i in config.input] == ["text_input", "max_tokens", "stream", "sampling_parameters"]
        assert [i.optional for i in config.input] == [False, True, True, True]
        assert [o.name for o in config.output] == ["text_output", "num_output_tokens", "num_input_tokens"]
        files = {p.name for p in (repo / name / "1").iterdir()}
        assert {"model.py", "generation_engine.py", "model.onnx", "genai_config.json", "tokenizer.json"} <= files
        assert "import loadtest" not in (repo / name / "1" / "generation_engine.py").read_text()
    manifest = json.loads((repo / "export_manifest.json").read_text())
    assert manifest["task"] == "text-generation" and manifest["models"]["teacher"]["parity"]["passed"]


def test_an_export_that_does_not_reproduce_its_source_is_refused(gen_pair, repo, prompts):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    student = AutoModelForCausalLM.from_pretrained(gen_pair.student_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(gen_pair.student_dir)
    with pytest.raises(ParityError, match="logits differ"):  # the student's weights against the teacher's graph
        check_lm_parity(student, repo / "teacher" / "1", tokenizer, prompts[:MIN_GREEDY_PROMPTS])
    with pytest.raises(ParityError, match="at least"):
        check_lm_parity(student, repo / "student" / "1", tokenizer, prompts[:3])


def test_export_refuses_a_classifier_mixed_with_a_causal_lm(tmp_path, gen_pair):
    from exporters.causal_lm import export_causal_pair

    (tmp_path / "clf").mkdir()
    (tmp_path / "clf" / "config.json").write_text(json.dumps({"architectures": ["BertForSequenceClassification"]}))
    with pytest.raises(LoadtestError, match="not a causal LM"):
        export_causal_pair(gen_pair.teacher_dir, tmp_path / "clf", tmp_path / "repo")


# ---------------------------------------------------------------- engine


def test_engine_greedy_tokens_equal_onnxruntime_genai_with_requests_interleaved(engine, repo, prompts):
    chosen = prompts[:8]
    expected = [ort_genai_greedy(repo / "teacher" / "1", engine.encode_prompt(p), 40) for p in chosen]
    results: list = [None] * len(chosen)
    engine.steps = engine.rows = 0

    def run(i: int) -> None:
        results[i] = engine.generate(chosen[i], SamplingParams(max_tokens=40))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(chosen))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    eos = engine.model.eos_ids
    for (tokens, text), want in zip(results, expected):
        assert [t for t in tokens if t not in eos] == want
        assert text == engine.tokenizer.decode(want, skip_special_tokens=True)
    assert engine.rows > engine.steps  # decode steps carried several requests at once


def test_max_tokens_ignore_eos_min_tokens_and_stop(engine, prompts):
    tokens, _ = engine.generate(prompts[0], SamplingParams(max_tokens=5))
    assert len(tokens) <= 5
    tokens, _ = engine.generate(prompts[0], SamplingParams(max_tokens=60, ignore_eos=True))
    assert len(tokens) == 60
    greedy_tokens, greedy_text = engine.generate(prompts[0], SamplingParams(max_tokens=60))
    assert len(greedy_tokens) < 60 and greedy_tokens[-1] in engine.model.eos_ids  # the trained pair stops itself
    longer, _ = engine.generate(prompts[0], SamplingParams(max_tokens=60, min_tokens=len(greedy_tokens) + 3))
    assert len(longer) >= len(greedy_tokens) + 3
    stop = greedy_text.strip().split()[2]
    _, text = engine.generate(prompts[0], SamplingParams(max_tokens=60, stop=(stop,)))
    assert text == greedy_text[: greedy_text.index(stop)]


def test_sampling_is_seeded_and_top_p_narrows_it(engine, prompts):
    hot = SamplingParams(max_tokens=20, temperature=1.5, seed=7)
    a, _ = engine.generate(prompts[1], hot)
    b, _ = engine.generate(prompts[1], hot)
    assert a == b
    others = {tuple(engine.generate(prompts[1], SamplingParams(max_tokens=20, temperature=1.5, seed=s))[0])
              for s in range(8, 12)}
    assert len(others | {tuple(a)}) > 1
    greedy, _ = engine.generate(prompts[1], SamplingParams(max_tokens=20))
    nucleus, _ = engine.generate(prompts[1], SamplingParams(max_tokens=20, temperature=1.5, top_p=1e-6, seed=3))
    assert nucleus == greedy  # a vanishing nucleus keeps only the most likely token


def test_streamed_chunks_carry_text_as_it_is_made(engine, prompts):
    chunks = []
    done = threading.Event()

    def collect(chunk):
        chunks.append(chunk)
        if chunk.final:
            done.set()

    n_input = engine.submit(prompts[2], SamplingParams(max_tokens=30, ignore_eos=True), collect)
    assert done.wait(120)
    assert len(chunks) > 5 and chunks[-1].final and not any(c.final for c in chunks[:-1])
    assert chunks[0].input_tokens == n_input and all(c.input_tokens is None for c in chunks[1:])
    assert sum(c.tokens for c in chunks) == 30 and chunks[-1].finish_reason == "length"


def test_bad_requests_are_refused_with_a_reason(engine):
    with pytest.raises(GenerationError, match="unknown sampling parameters"):
        SamplingParams.parse({"temprature": 1.0})
    with pytest.raises(GenerationError, match="top_p"):
        SamplingParams.parse({"top_p": 0})
    with pytest.raises(GenerationError, match="context length"):
        engine.submit("word " * 400, SamplingParams(max_tokens=400), lambda chunk: None)
    assert SamplingParams.parse({"stop": "x"}, max_tokens=9) == SamplingParams(max_tokens=9, stop=("x",))


# ---------------------------------------------------------------- served by Triton


@pytest.fixture(scope="module")
def gen_server(repo, tmp_path_factory):
    from loadtest.serving import EmbeddedTriton, ServerPorts

    server = EmbeddedTriton(repo, ServerPorts(0, 0, 0), log_file=tmp_path_factory.mktemp("gentriton") / "triton.log")
    server.start()
    yield server
    server.stop()


def _grpc_stream(server, model: str, prompt: str, params: dict | None = None, stream: bool = True):
    import queue

    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(server.grpc_url.removeprefix("grpc://"))
    inputs = [grpcclient.InferInput("text_input", [1], "BYTES"), grpcclient.InferInput("stream", [1], "BOOL")]
    inputs[0].set_data_from_numpy(np.array([prompt.encode()], dtype=np.object_))
    inputs[1].set_data_from_numpy(np.array([stream]))
    if params is not None:
        extra = grpcclient.InferInput("sampling_parameters", [1], "BYTES")
        extra.set_data_from_numpy(np.array([json.dumps(params).encode()], dtype=np.object_))
        inputs.append(extra)
    responses: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    try:
        client.async_stream_infer(model, inputs, enable_empty_final_response=True)
        out = []
        while True:
            result, error = responses.get(timeout=120)
            if error is not None:
                return out, str(error)
            out.append(result)
            if result.get_response().parameters["triton_final_response"].bool_param:
                return out, None
    finally:
        client.stop_stream()
        client.close()


def test_served_tokens_over_grpc_streaming_equal_onnxruntime_genai(gen_server, repo, prompts, engine):
    for model in ("teacher", "student"):
        for prompt in prompts[:3]:
            want = ort_genai_greedy(repo / model / "1", engine.encode_prompt(prompt), 40)
            responses, error = _grpc_stream(gen_server, model, prompt, {"max_tokens": 40})
            assert error is None
            texts = [r.as_numpy("text_output") for r in responses]
            text = "".join(t[0].decode() for t in texts if t is not None)
            assert text == engine.tokenizer.decode(want, skip_special_tokens=True)
            counts = [int(r.as_numpy("num_output_tokens")[0]) for r in responses if r.as_numpy("num_output_tokens") is not None]
            assert len(counts) > 3  # streamed, not sent whole
            first_input = responses[0].as_numpy("num_input_tokens")
            assert int(first_input[0]) == len(engine.encode_prompt(prompt))


def test_served_over_http_generate_stream_and_generate(gen_server, prompts):
    import requests

    body = {"text_input": prompts[0], "max_tokens": 24, "stream": True,
            "sampling_parameters": json.dumps({"ignore_eos": True})}
    with requests.post(f"{gen_server.http_url}/v2/models/student/generate_stream", json=body, stream=True, timeout=120) as r:
        assert r.status_code == 200
        events = [json.loads(line[5:]) for line in r.iter_lines(decode_unicode=True) if line.startswith("data:")]
    assert len(events) > 3 and sum(e["num_output_tokens"] for e in events) == 24
    whole = requests.post(f"{gen_server.http_url}/v2/models/student/generate",
                          json={**body, "stream": False}, timeout=120).json()
    assert whole["text_output"] == "".join(e["text_output"] for e in events) and whole["num_output_tokens"] == 24
    bad = requests.post(f"{gen_server.http_url}/v2/models/student/generate",
                        json={"text_input": "x", "sampling_parameters": json.dumps({"top_k": 3})}, timeout=60)
    assert bad.status_code >= 400 and "unknown sampling parameters" in bad.text


def test_concurrent_streams_are_served_together(gen_server, prompts):
    results: list = [None] * 6

    def run(i: int) -> None:
        results[i] = _grpc_stream(gen_server, "teacher", prompts[i], {"max_tokens": 30, "ignore_eos": True})

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(results))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    for responses, error in results:
        assert error is None
        assert sum(int(r.as_numpy("num_output_tokens")[0]) for r in responses
                   if r.as_numpy("num_output_tokens") is not None) == 30
