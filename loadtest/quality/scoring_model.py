"""Adds the teacher-forced scoring model ``<model>_score`` beside a generative model in a Triton repository.

The streaming generator answers prompts; quality also needs the log-probabilities the model gives the
*reference* tokens (perplexity, top-1 agreement, KL). The scoring model serves them from the same ONNX
file, so what is scored is exactly what is served. Its contract is in docs/architecture.md.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from loadtest.errors import LoadtestError

SCORE_SUFFIX = "_score"
MODEL_FILE = Path(__file__).with_name("triton_score_model.py")


def scoring_config(name: str, generator: str, instance_count: int = 1):
    """config.pbtxt of ``<generator>_score`` (model_config_pb2)."""
    from tritonclient.grpc import model_config_pb2 as mc

    config = mc.ModelConfig(name=name, backend="python", max_batch_size=0)
    ids = config.input.add(name="input_ids", data_type=mc.TYPE_INT64)
    ids.dims.append(-1)
    length = config.input.add(name="prompt_length", data_type=mc.TYPE_INT32)
    length.dims.append(1)
    out = config.output.add(name="logprobs", data_type=mc.TYPE_FP32)
    out.dims.extend([-1, -1])
    group = config.instance_group.add()
    group.count = instance_count
    group.kind = mc.ModelInstanceGroup.KIND_CPU
    config.parameters["generator"].string_value = generator
    config.parameters["generator_version"].string_value = "1"
    config.parameters["intra_op_threads"].string_value = "0"
    return config


def add_scoring_model(repository: Path | str, generator: str) -> str:
    """Write ``<generator>_score/`` (config.pbtxt + 1/model.py) into the repository; returns its name."""
    from google.protobuf import text_format

    repository = Path(repository)
    model_dir = repository / generator / "1"
    if not model_dir.is_dir() or not any(model_dir.glob("*.onnx")):
        raise LoadtestError(f"{repository / generator} holds no ONNX decoder (1/*.onnx) to score with")
    name = generator + SCORE_SUFFIX
    target = repository / name
    (target / "1").mkdir(parents=True, exist_ok=True)
    (target / "config.pbtxt").write_text(text_format.MessageToString(scoring_config(name, generator)))
    shutil.copyfile(MODEL_FILE, target / "1" / "model.py")
    return name
