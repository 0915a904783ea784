"""The TensorRT path, on a real GPU: tiny model -> ONNX -> engine (model.plan), compared with ONNX Runtime.

Self-contained (builds its own tiny models); skipped without an NVIDIA GPU by the conftest hook.
"""

from __future__ import annotations

import numpy as np
import pytest

from _model_fixtures import make_tiny_pair
from loadtest.repository import ModelRepository, TritonModelSettings

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return make_tiny_pair(tmp_path_factory.mktemp("hf"))


def test_tensorrt_is_available_on_a_gpu_machine():
    from exporters.tensorrt import tensorrt_is_available

    assert tensorrt_is_available()


def test_tensorrt_plans_match_onnxruntime_and_pytorch(tmp_path, pair):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from exporters.parity import sample_feed
    from exporters.pipeline import export_pair
    from exporters.tensorrt import engine_runner

    settings = TritonModelSettings(max_batch_size=8, instance_kind="gpu")
    report = export_pair(pair[0], pair[1], tmp_path / "repo", settings, format="tensorrt")
    repo = ModelRepository(report.repository)
    assert repo.validate() == ["student", "teacher"]
    tokenizer = AutoTokenizer.from_pretrained(pair[0])
    for name, source in zip(("teacher", "student"), pair):
        config = repo.read_config(name)
        assert config.platform == "tensorrt_plan" and config.max_batch_size == 8
        assert config.instance_group[0].kind == config.instance_group[0].KIND_GPU
        plan = repo.model_file(name)
        assert plan.name == "model.plan" and plan.stat().st_size > 0
        assert not (plan.parent / "model.onnx").exists()
        entry = report.models[name]
        assert entry.format == "tensorrt_plan" and entry.parity.passed
        assert entry.engine_parity is not None and entry.engine_parity.passed
        assert entry.engine_parity.method == "onnxruntime-reference"
        assert [(s.batch, s.sequence) for s in entry.engine_parity.shapes] == [(1, 8), (5, 65), (8, 128)]
        # Independently of the exporter: the engine against PyTorch on a fresh shape inside the profile.
        names = [s.name for s in entry.inputs]
        feed = sample_feed(tokenizer, 6, 37, names)
        got = engine_runner(plan, "logits")(feed)
        model = AutoModelForSequenceClassification.from_pretrained(source).eval()
        with torch.no_grad():
            expected = model(**{k: torch.from_numpy(v) for k, v in feed.items()}).logits.numpy()
        assert got.shape == (6, 4)
        np.testing.assert_allclose(got, expected, atol=1e-3)


def test_fp16_engine_within_its_tolerance(tmp_path, pair):
    from exporters.pipeline import export_model

    entry = export_model(
        pair[1],
        tmp_path / "repo",
        "student",
        TritonModelSettings(max_batch_size=4, instance_kind="gpu"),
        format="tensorrt",
        fp16=True,
    )
    assert entry.engine_parity.passed and entry.engine_parity.atol == 2e-2
    assert entry.engine_parity.worst_max_abs_diff <= 2e-2
