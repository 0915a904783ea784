"""Exporters: HF directory / ONNX file -> parity-checked Triton repository, and the refusals that matter."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from _model_fixtures import (
    make_constant_batch_classifier,
    make_tiny_classifier,
    make_tiny_pair,
    make_transformer_encoder_onnx,
    export_torchscript_onnx,
)
from loadtest.errors import LoadtestError
from loadtest.repository import (
    ModelRepository,
    TritonModelSettings,
    settings_from_config,
    tensor_specs,
)

from exporters.parity import ParityError

SETTINGS = TritonModelSettings(max_batch_size=8, preferred_batch_sizes=[4, 8], max_queue_delay_us=500, instance_count=2)


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[Path, Path]:
    return make_tiny_pair(tmp_path_factory.mktemp("hf"))


@pytest.fixture(scope="module")
def exported(pair, tmp_path_factory):
    from exporters.pipeline import export_pair

    repository = tmp_path_factory.mktemp("export") / "model_repository"
    steps: list[str] = []
    report = export_pair(pair[0], pair[1], repository, SETTINGS, progress=steps.append)
    return report, steps


def _feed(tokenizer, texts, length, names):
    enc = tokenizer(
        texts, padding="max_length", truncation=True, max_length=length, return_tensors="np", return_token_type_ids=True
    )
    return {n: np.asarray(enc[n], dtype=np.int64) for n in names}


# ---- the happy path ------------------------------------------------------------------------------


def test_export_pair_writes_the_standard_layout(exported):
    report, steps = exported
    root = report.repository
    repo = ModelRepository(root)
    assert repo.validate() == ["student", "teacher"]
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["student", "teacher"]  # no helper folders
    for name in ("teacher", "student"):
        assert (root / name / "config.pbtxt").is_file()
        assert (root / name / "1" / "model.onnx").is_file()
    for name in ("tokenizer.json", "tokenizer_config.json", "loadtest.json", "export_manifest.json"):
        assert (root / name).is_file(), name
    assert any("parity at batch 8" in s for s in steps) and any("exporting" in s for s in steps)


def test_config_reads_back_as_the_requested_settings(exported):
    report, _ = exported
    repo = ModelRepository(report.repository)
    for name, inputs in (
        ("teacher", ["input_ids", "attention_mask", "token_type_ids"]),
        ("student", ["input_ids", "attention_mask", "token_type_ids"]),
    ):
        config = repo.read_config(name)
        assert config.platform == "onnxruntime_onnx"
        assert settings_from_config(config) == SETTINGS
        assert [(s.name, s.dtype, s.dims) for s in tensor_specs(config.input)] == [(n, "int64", (-1,)) for n in inputs]
        assert [(s.name, s.dtype, s.dims) for s in tensor_specs(config.output)] == [("logits", "float32", (4,))]


def test_metadata_lets_clients_work_from_the_repository_alone(exported, pair):
    from transformers import AutoTokenizer

    report, _ = exported
    repo = ModelRepository(report.repository)
    metadata = repo.read_metadata()
    assert (metadata.teacher, metadata.student) == ("teacher", "student")
    assert metadata.labels == ["negative", "neutral", "positive", "mixed"]
    assert metadata.max_sequence_length == 128  # min(tokenizer 128, max_position_embeddings 128)
    shipped = repo.load_tokenizer()
    source = AutoTokenizer.from_pretrained(pair[0])
    text = ["latency went up during the rollout", "great product"]
    assert shipped(text)["input_ids"] == source(text)["input_ids"]


def test_served_onnx_matches_pytorch_on_fresh_text(exported, pair):
    """Independent of the exporter's own check: run the written ONNX and the source model on new text."""
    import onnxruntime as ort
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    report, _ = exported
    tokenizer = AutoTokenizer.from_pretrained(pair[0])
    texts = ["the refund never arrived", "throughput doubled", "please reset my password now", "ok", "the team"]
    for name, source in zip(("teacher", "student"), pair):
        session = ort.InferenceSession(str(report.repository / name / "1" / "model.onnx"))
        names = [i.name for i in session.get_inputs()]
        feed = _feed(tokenizer, texts, 23, names)
        got = session.run(["logits"], feed)[0]
        model = AutoModelForSequenceClassification.from_pretrained(source).eval()
        with torch.no_grad():
            expected = model(**{k: torch.from_numpy(v) for k, v in feed.items()}).logits.numpy()
        assert got.shape == (5, 4)
        np.testing.assert_allclose(got, expected, atol=1e-4)


def test_manifest_records_sizes_signature_and_parity(exported, pair):
    from transformers import AutoModelForSequenceClassification

    report, _ = exported
    manifest = json.loads((report.repository / "export_manifest.json").read_text())
    assert {"torch", "onnx", "onnxruntime", "transformers"} <= set(manifest["versions"])
    assert manifest["settings"]["max_batch_size"] == 8
    for name, source in zip(("teacher", "student"), pair):
        entry = manifest["models"][name]
        model = AutoModelForSequenceClassification.from_pretrained(source)
        assert entry["parameter_count"] == sum(p.numel() for p in model.parameters())
        assert entry["file_size_bytes"] == (report.repository / name / "1" / "model.onnx").stat().st_size
        assert entry["opset"] == 18 and entry["source_format"] == "huggingface"
        assert entry["inputs"][0] == {"name": "input_ids", "dtype": "int64", "shape": ["batch", "sequence"]}
        assert entry["outputs"] == [{"name": "logits", "dtype": "float32", "shape": ["batch", 4]}]
        parity = entry["parity"]
        assert parity["method"] == "pytorch-reference" and parity["passed"]
        shapes = [(s["batch"], s["sequence"]) for s in parity["shapes"]]
        assert len(shapes) >= 3
        batches = {b for b, _ in shapes}
        assert 1 in batches and 8 in batches and any(b % 2 == 1 and b > 1 for b in batches)
        assert min(s for _, s in shapes) <= 8 and max(s for _, s in shapes) == 128
        assert any(s["padding_fraction"] > 0 for s in parity["shapes"])  # masks with real padding
        for shape in parity["shapes"]:
            assert shape["max_abs_diff"] <= 1e-4 and shape["argmax_agreement"] == 1.0
        assert entry["export_seconds"] > 0


@pytest.mark.parametrize("arch", ["distilbert", "roberta"])
def test_other_architectures_without_segment_ids(tmp_path, pair, arch):
    from exporters.pipeline import export_model

    student = make_tiny_classifier(tmp_path / arch, arch, vocab_from=pair[0], seed=3)
    repository = tmp_path / "repo"
    entry = export_model(student, repository, "student", TritonModelSettings(max_batch_size=5))
    assert [s.name for s in entry.inputs] == ["input_ids", "attention_mask"]
    assert entry.architecture.lower().startswith(arch)
    assert entry.parity.passed and entry.parity.worst_max_abs_diff <= 1e-4
    assert [(s.batch, s.sequence) for s in entry.parity.shapes] == [(1, 8), (3, 65), (5, 128)]
    config = ModelRepository(repository).read_config("student")
    assert [t.name for t in config.input] == ["input_ids", "attention_mask"]


# ---- exports that are wrong away from the example shape must be refused --------------------------


def test_traced_constant_batch_is_refused_by_the_hf_flow(tmp_path, pair):
    from exporters.pipeline import export_model

    broken = make_constant_batch_classifier(tmp_path / "constant_batch", vocab_from=pair[0])
    repository = tmp_path / "repo"
    with pytest.raises(ParityError, match=r"batch 1 × sequence 8: ONNX Runtime returned shape \(2, 2\)"):
        export_model(broken, repository, "broken", SETTINGS, exporter="torchscript")
    # The dynamo exporter specialises the batch axis instead; that graph is refused before it is served.
    with pytest.raises(ParityError, match="fixed batch dimension 2"):
        export_model(broken, repository, "broken", SETTINGS)
    assert not repository.exists()  # a refused export writes nothing


def test_traced_constant_batch_is_refused_by_the_plain_onnx_flow(tmp_path, pair):
    from transformers import AutoModelForSequenceClassification

    from exporters.pipeline import export_model

    broken = make_constant_batch_classifier(tmp_path / "constant_batch", vocab_from=pair[0])
    onnx_file = export_torchscript_onnx(
        AutoModelForSequenceClassification.from_pretrained(broken).eval(),
        ["input_ids", "attention_mask"],
        tmp_path / "constant_batch.onnx",
    )
    with pytest.raises(ParityError, match=r"batch 1 × sequence 8: ONNX Runtime \(batched\) returned shape"):
        export_model(onnx_file, tmp_path / "repo", "broken", SETTINGS, tokenizer=pair[0], labels=["a", "b", "c", "d"])
    assert not (tmp_path / "repo").exists()


def test_traced_sequence_length_is_refused_by_the_plain_onnx_flow(tmp_path, pair):
    from exporters.pipeline import export_model

    onnx_file = make_transformer_encoder_onnx(tmp_path / "encoder.onnx", vocab_size=400)
    with pytest.raises(ParityError, match=r"batch 5 × sequence 65: ONNX Runtime \(batched\) cannot run this shape"):
        export_model(onnx_file, tmp_path / "repo", "encoder", SETTINGS, tokenizer=pair[0], labels="a b c d".split())


def test_parity_fails_on_a_different_model(exported, pair):
    """The comparison itself can fail: the teacher's ONNX is not the student's PyTorch."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from exporters.parity import check_parity, onnxruntime_runner, pytorch_runner

    report, _ = exported
    student = AutoModelForSequenceClassification.from_pretrained(pair[1]).eval()
    with pytest.raises(ParityError, match=r"teacher: parity check failed at batch 1 × sequence 8: max abs diff"):
        check_parity(
            "teacher",
            onnxruntime_runner(report.repository / "teacher" / "1" / "model.onnx", "logits"),
            pytorch_runner(student),
            AutoTokenizer.from_pretrained(pair[0]),
            ["input_ids", "attention_mask", "token_type_ids"],
            [(1, 8), (3, 17)],
            method="pytorch-reference",
            candidate_label="ONNX Runtime",
            reference_label="another model",
            atol=1e-4,
        )


# ---- plain ONNX files ------------------------------------------------------------------------------


def test_plain_onnx_file_is_checked_for_batch_invariance(exported, pair, tmp_path):
    from exporters.pipeline import export_model

    report, _ = exported
    labels_file = tmp_path / "labels.txt"
    labels_file.write_text("negative\nneutral\npositive\nmixed\n")
    from exporters.pipeline import parse_labels

    repository = tmp_path / "repo"
    entry = export_model(
        report.repository / "student" / "1" / "model.onnx",
        repository,
        "student",
        SETTINGS,
        tokenizer=pair[0],
        labels=parse_labels(str(labels_file)),
    )
    assert entry.source_format == "onnx" and entry.parity.method == "batch-invariance"
    assert entry.parity.passed and len(entry.parity.shapes) == 3
    assert entry.parameter_count > 0 and entry.opset == 18
    repo = ModelRepository(repository)
    assert repo.validate() == ["student"]
    assert repo.read_metadata().labels == ["negative", "neutral", "positive", "mixed"]
    assert (
        json.loads((repository / "export_manifest.json").read_text())["models"]["student"]["parity"]["method"]
        == "batch-invariance"
    )


def test_plain_onnx_needs_a_tokenizer_and_labels(exported, tmp_path, pair):
    from exporters.pipeline import export_model

    onnx_file = exported[0].repository / "teacher" / "1" / "model.onnx"
    with pytest.raises(LoadtestError, match="--tokenizer"):
        export_model(onnx_file, tmp_path / "r1", "teacher", SETTINGS, labels=["a", "b", "c", "d"])
    with pytest.raises(LoadtestError, match="--labels"):
        export_model(onnx_file, tmp_path / "r2", "teacher", SETTINGS, tokenizer=pair[0])
    with pytest.raises(LoadtestError, match="4 outputs but 3 labels"):
        export_model(onnx_file, tmp_path / "r3", "teacher", SETTINGS, tokenizer=pair[0], labels=["a", "b", "c"])


# ---- one-line errors -------------------------------------------------------------------------------


def test_user_errors_are_one_line_loadtest_errors(tmp_path, pair):
    from transformers import BertConfig, BertForMaskedLM

    from exporters.pipeline import export_pair

    def refused(teacher, student=pair[1], **kw) -> str:
        with pytest.raises(LoadtestError) as info:
            export_pair(teacher, student, tmp_path / "repo", SETTINGS, **kw)
        message = str(info.value)
        assert "\n" not in message
        return message

    assert "does not exist" in refused(tmp_path / "missing")
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "README.md").write_text("not a model")
    assert "not a Hugging Face model directory" in refused(plain)
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07garbage that is not a protobuf model")
    assert "not a valid ONNX model" in refused(corrupt, tokenizer=pair[0])
    masked = tmp_path / "masked_lm"
    BertForMaskedLM(
        BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    ).save_pretrained(masked)
    assert "unsupported task: BertForMaskedLM" in refused(masked)
    assert not (tmp_path / "repo").exists()


def test_tensorrt_format_needs_gpu_instances(tmp_path, pair):
    from exporters.pipeline import export_pair

    with pytest.raises(LoadtestError, match="TensorRT plans run on GPU instances only"):
        export_pair(pair[0], pair[1], tmp_path / "repo", SETTINGS, format="tensorrt")


def test_teacher_and_student_must_share_a_vocabulary(tmp_path, pair):
    from transformers import BertTokenizer

    from exporters.pipeline import export_pair

    student = make_tiny_classifier(tmp_path / "student", "bert", seed=2, layers=1, hidden=16)
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "other", "words", "here"])}
    BertTokenizer(vocab=vocab).save_pretrained(student)
    with pytest.raises(LoadtestError, match="must share one vocabulary"):
        export_pair(pair[0], student, tmp_path / "repo", SETTINGS)


def test_existing_models_are_not_overwritten_without_consent(exported, pair):
    from exporters.pipeline import export_model

    report, _ = exported
    before = (report.repository / "teacher" / "1" / "model.onnx").read_bytes()
    with pytest.raises(LoadtestError, match="already holds teacher: pass --overwrite"):
        export_model(
            report.repository / "teacher" / "1" / "model.onnx",
            report.repository,
            "teacher",
            SETTINGS,
            tokenizer=pair[0],
            labels=["negative", "neutral", "positive", "mixed"],
        )
    assert (report.repository / "teacher" / "1" / "model.onnx").read_bytes() == before


# ---- the command line ------------------------------------------------------------------------------


def _cli():
    import typer

    from exporters.commands import register

    app = typer.Typer(add_completion=False)

    @app.callback()
    def main() -> None:
        """loadtest (exporters only)."""

    register(app)
    return app


def test_cli_export_writes_settings_and_prints_the_table(tmp_path, pair):
    from typer.testing import CliRunner

    repository = tmp_path / "model_repository"
    args = [
        "export",
        "--teacher",
        str(pair[0]),
        "--student",
        str(pair[1]),
        "--repo",
        str(repository),
        "--max-batch-size",
        "4",
        "--preferred-batch-size",
        "2",
        "--preferred-batch-size",
        "4",
        "--max-queue-delay-us",
        "250",
        "--instance-kind",
        "gpu",
        "--instance-count",
        "3",
        "--tensorrt-accelerator",
        "--tensorrt-precision",
        "FP32",
        "--max-sequence-length",
        "40",
    ]
    result = CliRunner().invoke(_cli(), args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "teacher" in result.stdout and "passed" in result.stdout and "1×8, 3×21, 4×40" in result.stdout
    repo = ModelRepository(repository)
    expected = TritonModelSettings(
        max_batch_size=4,
        preferred_batch_sizes=[2, 4],
        max_queue_delay_us=250,
        instance_kind="gpu",
        instance_count=3,
        tensorrt_accelerator=True,
        tensorrt_precision="FP32",
    )
    for name in ("teacher", "student"):
        assert settings_from_config(repo.read_config(name)) == expected
    assert repo.read_metadata().max_sequence_length == 40

    again = CliRunner().invoke(_cli(), args)
    assert isinstance(again.exception, LoadtestError) and "--overwrite" in str(again.exception)
    nobatch = CliRunner().invoke(_cli(), args + ["--overwrite", "--no-dynamic-batching", "--instance-kind", "cpu"])
    assert isinstance(nobatch.exception, LoadtestError) and "needs GPU instances" in str(nobatch.exception)


def test_cli_help_and_missing_source(tmp_path):
    from typer.testing import CliRunner

    help_text = CliRunner().invoke(_cli(), ["export", "--help"], env={"COLUMNS": "200", "TERMINAL_WIDTH": "200"}).stdout
    assert "--max-batch-size" in help_text and "--preferred-batch-size" in help_text and "parity" in help_text
    result = CliRunner().invoke(_cli(), ["export", "--teacher", str(tmp_path / "nope"), "--student", str(tmp_path)])
    assert isinstance(result.exception, LoadtestError) and "does not exist" in str(result.exception)


# ---- specs -----------------------------------------------------------------------------------------


def test_spec_declares_inputs_and_named_axes():
    from exporters.parity import parity_shapes
    from exporters.spec import ExportSpec, inputs_for

    params = {"input_ids", "attention_mask", "token_type_ids", "labels"}
    assert inputs_for("bert", params, 2) == ("input_ids", "attention_mask", "token_type_ids")
    assert inputs_for("distilbert", {"input_ids", "attention_mask"}, None) == ("input_ids", "attention_mask")
    assert inputs_for("roberta", params, 1) == ("input_ids", "attention_mask")
    assert inputs_for("some-new-model", params, 1) == ("input_ids", "attention_mask")
    assert inputs_for("some-new-model", params, 2) == ("input_ids", "attention_mask", "token_type_ids")
    spec = ExportSpec("bert", ("input_ids", "attention_mask"))
    assert spec.dynamic_axes == {
        "input_ids": {0: "batch", 1: "sequence"},
        "attention_mask": {0: "batch", 1: "sequence"},
        "logits": {0: "batch"},
    }
    assert parity_shapes(32, 512) == [(1, 8), (17, 257), (32, 512)]
    assert parity_shapes(1, 64) == [(1, 8), (1, 33), (1, 64)]
    with pytest.raises(LoadtestError):
        ExportSpec("bert", ("pixel_values",))
