"""`loadtest export --with-tokenizer`: text in, tokenised inside Triton, the same logits as token ids in."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from _load_helpers import success_delta, triton_success

from exporters.text_ensemble import write_text_ensembles
from loadtest.repository import ModelRepository

TEXTS = ["a short one", "this sentence is quite a bit longer than the first and keeps going " * 3, "x"]


@pytest.fixture(scope="module")
def text_repository(tiny_repository, tmp_path_factory):
    repository = tmp_path_factory.mktemp("text") / "model_repository"
    shutil.copytree(tiny_repository, repository)
    write_text_ensembles(repository, ["teacher", "student"])
    return repository


def test_ensemble_configs_chain_tokenizer_and_model(text_repository):
    repo = ModelRepository(text_repository)
    assert repo.read_metadata().text_models == {"teacher": "teacher_text", "student": "student_text"}
    ensemble = repo.read_config("teacher_text")
    model = repo.read_config("teacher")
    assert ensemble.platform == "ensemble" and [s.model_name for s in ensemble.ensemble_scheduling.step] == [
        "teacher_tokenizer", "teacher"]  # fmt: skip
    assert [t.name for t in ensemble.output] == [t.name for t in model.output]
    step = repo.read_config("teacher_tokenizer")
    assert step.backend == "python" and {t.name for t in step.output} == {t.name for t in model.input}
    assert (text_repository / "teacher_tokenizer" / "1" / "tokenizer.json").is_file()


@pytest.fixture(scope="module")
def text_server(text_repository, tmp_path_factory):
    from loadtest.serving import EmbeddedTriton, ServerPorts

    server = EmbeddedTriton(text_repository, ServerPorts(0, 0, 0), log_file=tmp_path_factory.mktemp("log") / "t.log")
    server.start()
    yield server
    server.stop()


def test_text_through_the_ensemble_equals_token_ids_through_the_model(text_server, text_repository):
    import tritonclient.http as http

    repo = ModelRepository(text_repository)
    tokenizer = repo.load_tokenizer()
    model_inputs = [t.name for t in repo.read_config("teacher").input]
    client = http.InferenceServerClient(text_server.http_url.removeprefix("http://"))
    for text in TEXTS:
        raw = http.InferInput("text", [1, 1], "BYTES")
        raw.set_data_from_numpy(np.array([[text.encode()]], dtype=object))
        via_ensemble = client.infer("teacher_text", [raw]).as_numpy("logits")
        encoded = tokenizer([text], truncation=True, max_length=repo.read_metadata().max_sequence_length)
        arrays = {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"],
                  "token_type_ids": encoded["token_type_ids"]}  # fmt: skip
        inputs = []
        for name in model_inputs:
            tensor = http.InferInput(name, [1, len(arrays[name][0])], "INT64")
            tensor.set_data_from_numpy(np.asarray(arrays[name], dtype=np.int64))
            inputs.append(tensor)
        via_ids = client.infer("teacher", inputs).as_numpy("logits")
        np.testing.assert_allclose(via_ensemble, via_ids, rtol=1e-5, atol=1e-5)
    client.close()


def test_scenarios_target_the_text_ensembles_and_records_reconcile(text_server, text_repository, tmp_path):
    from loadtest.load.runner import run_locust

    before = triton_success(text_server.metrics_url)
    run = run_locust(
        "ab", text_server.http_url, users=2, run_time=3, models=["teacher_text", "student_text"],
        repository=text_repository, results_dir=tmp_path / "results", metrics_port=0,
        triton_metrics_url=text_server.metrics_url, timeout_s=150,
    )  # fmt: skip
    assert run.exit_code == 0, "\n".join(run.output_tail[-20:])
    records = run.records().to_pandas()
    delta = success_delta(before, triton_success(text_server.metrics_url))
    for role in ("teacher", "student"):
        own = int((records["model"] == f"{role}_text").sum())
        assert own > 0 and delta[f"{role}_text"] == delta[f"{role}_tokenizer"] == delta[role] == own
        assert records.loc[records["model"] == f"{role}_text", "tokens"].gt(0).all()  # counted by the tokenizer
    models = run.manifest()["models"]
    assert models["teacher"] == "teacher_text" and models["student"] == "student_text"


def test_export_cli_writes_the_text_ensemble(tiny_repository, tmp_path):
    """`loadtest export --with-tokenizer` (one model): the model, its tokenizer step and its ensemble."""
    import subprocess
    import sys

    hf = tiny_repository.parent / "hf"
    student = next(p for p in sorted(hf.iterdir()) if "student" in p.name)
    repo = tmp_path / "repo"
    result = subprocess.run(
        [sys.executable, "-m", "loadtest.cli", "export", "--teacher", str(student), "--teacher-name", "clf",
         "--repo", str(repo), "--with-tokenizer"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    written = ModelRepository(repo)
    assert written.read_metadata().text_models == {"clf": "clf_text"}
    assert set(written.models()) == {"clf", "clf_tokenizer", "clf_text"}
    written.validate()
