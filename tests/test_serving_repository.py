"""The serving repository: ONNX models become Python-backend models; Python models and ensembles serve as they are."""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.http as httpclient
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from loadtest.errors import LoadtestError
from loadtest.repository import ModelRepository
from loadtest.serving import EmbeddedTriton, ServerPorts
from loadtest.serving.serving_repository import (
    ENSEMBLE_AS_IS,
    ONNX_IN_PYTHON,
    PYTHON_AS_IS,
    ServingOptions,
    prepare_serving_repository,
    python_backend_config,
)

# A Python-backend step an ensemble puts before the classifier (like a tokenizer would): it derives the
# attention mask and token type ids from the ids.
PREPARE_MODEL = '''
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            ids = pb_utils.get_input_tensor_by_name(request, "ids").as_numpy()
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("input_ids", ids),
                pb_utils.Tensor("attention_mask", np.ones_like(ids)),
                pb_utils.Tensor("token_type_ids", np.zeros_like(ids)),
            ]))
        return responses
'''

# A decoupled Python-backend model (the generative contract's shape): one response per step, then final.
COUNTER_MODEL = '''
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            n = int(pb_utils.get_input_tensor_by_name(request, "max_tokens").as_numpy().ravel()[0])
            for i in range(n):
                sender.send(pb_utils.InferenceResponse(output_tensors=[
                    pb_utils.Tensor("text_output", np.array([f"t{i}".encode()], dtype=np.object_)),
                ]))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
'''

PREPARE_CONFIG = """
name: "prepare"
backend: "python"
max_batch_size: 16
input { name: "ids" data_type: TYPE_INT64 dims: [-1] }
output { name: "input_ids" data_type: TYPE_INT64 dims: [-1] }
output { name: "attention_mask" data_type: TYPE_INT64 dims: [-1] }
output { name: "token_type_ids" data_type: TYPE_INT64 dims: [-1] }
instance_group { count: 1 kind: KIND_CPU }
"""

PIPELINE_CONFIG = """
name: "pipeline"
platform: "ensemble"
max_batch_size: 16
input { name: "ids" data_type: TYPE_INT64 dims: [-1] }
output { name: "logits" data_type: TYPE_FP32 dims: [4] }
ensemble_scheduling {
  step {
    model_name: "prepare" model_version: -1
    input_map { key: "ids" value: "ids" }
    output_map { key: "input_ids" value: "i" }
    output_map { key: "attention_mask" value: "m" }
    output_map { key: "token_type_ids" value: "t" }
  }
  step {
    model_name: "student" model_version: -1
    input_map { key: "input_ids" value: "i" }
    input_map { key: "attention_mask" value: "m" }
    input_map { key: "token_type_ids" value: "t" }
    output_map { key: "logits" value: "logits" }
  }
}
"""

COUNTER_CONFIG = """
name: "counter"
backend: "python"
max_batch_size: 0
model_transaction_policy { decoupled: true }
input { name: "max_tokens" data_type: TYPE_INT32 dims: [1] }
output { name: "text_output" data_type: TYPE_STRING dims: [1] }
instance_group { count: 1 kind: KIND_CPU }
"""


def _add_model(repository: Path, name: str, config: str, model_py: str | None) -> None:
    (repository / name / "1").mkdir(parents=True)
    (repository / name / "config.pbtxt").write_text(textwrap.dedent(config))
    if model_py is not None:
        (repository / name / "1" / "model.py").write_text(model_py)


@pytest.fixture(scope="module")
def mixed_repository(tmp_path_factory, tiny_repository) -> Path:
    """The tiny pair's student plus a Python model, an ensemble over both, and a decoupled Python model."""
    repository = tmp_path_factory.mktemp("mixed") / "model_repository"
    shutil.copytree(tiny_repository, repository, ignore=shutil.ignore_patterns("teacher"))
    _add_model(repository, "prepare", PREPARE_CONFIG, PREPARE_MODEL)
    _add_model(repository, "pipeline", PIPELINE_CONFIG, None)
    _add_model(repository, "counter", COUNTER_CONFIG, COUNTER_MODEL)
    return repository


def _config(text: str) -> mc.ModelConfig:
    return text_format.Parse(text, mc.ModelConfig())


def test_onnx_config_becomes_an_equivalent_python_backend_config(tiny_repository):
    source = ModelRepository(tiny_repository).read_config("student")
    source.instance_group[0].count = 2
    source.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt").parameters["precision_mode"] = "FP16"
    served = python_backend_config(source, ServingOptions(allow_spinning=False), "model.onnx")
    assert (served.backend, served.platform) == ("python", "")
    assert served.max_batch_size == source.max_batch_size
    assert served.dynamic_batching == source.dynamic_batching
    assert list(served.input) == list(source.input) and list(served.output) == list(source.output)
    assert served.instance_group[0].count == 2
    parameters = {k: v.string_value for k, v in served.parameters.items()}
    assert parameters["tensorrt_precision"] == "FP16" and parameters["allow_spinning"] == "0"
    assert int(parameters["intra_op_thread_count"]) >= 1
    assert not served.HasField("optimization")


def test_thread_count_comes_from_option_then_config():
    source = _config('name: "m" platform: "onnxruntime_onnx" max_batch_size: 4 '
                     'parameters { key: "intra_op_thread_count" value { string_value: "3" } }')
    assert python_backend_config(source, ServingOptions(), "model.onnx").parameters["intra_op_thread_count"].string_value == "3"
    assert python_backend_config(source, ServingOptions(intra_op_threads=1), "model.onnx").parameters[
        "intra_op_thread_count"].string_value == "1"


def test_gpu_instances_fall_back_to_cpu_without_a_gpu():
    source = _config('name: "m" platform: "onnxruntime_onnx" instance_group { count: 1 kind: KIND_GPU gpus: [0] }')
    cpu = python_backend_config(source, ServingOptions(gpu_available=False), "model.onnx")
    gpu = python_backend_config(source, ServingOptions(gpu_available=True), "model.onnx")
    assert cpu.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU and not cpu.instance_group[0].gpus
    assert gpu.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU


def test_serving_repository_layout(tmp_path, mixed_repository):
    before = sorted(str(p) for p in mixed_repository.rglob("*"))
    served = {m.name: m.served_as for m in prepare_serving_repository(ModelRepository(mixed_repository), tmp_path / "s", ServingOptions())}
    assert served == {"student": ONNX_IN_PYTHON, "prepare": PYTHON_AS_IS, "pipeline": ENSEMBLE_AS_IS, "counter": PYTHON_AS_IS}
    student = tmp_path / "s" / "student"
    assert (student / "1" / "model.py").is_file() and (student / "1" / "model.onnx").resolve() == (
        mixed_repository / "student" / "1" / "model.onnx").resolve()
    assert 'backend: "python"' in (student / "config.pbtxt").read_text()
    assert (tmp_path / "s" / "prepare" / "1" / "model.py").read_text() == PREPARE_MODEL
    assert sorted(str(p) for p in mixed_repository.rglob("*")) == before  # the user's repository is untouched


def test_tensorrt_plan_is_a_clear_error(tmp_path, tiny_repository):
    repository = tmp_path / "repo"
    shutil.copytree(tiny_repository, repository, ignore=shutil.ignore_patterns("teacher"))
    config = repository / "student" / "config.pbtxt"
    config.write_text(config.read_text().replace("onnxruntime_onnx", "tensorrt_plan"))
    (repository / "student" / "1" / "model.plan").write_bytes(b"plan")
    with pytest.raises(LoadtestError, match="tensorrt_plan.*real Triton"):
        prepare_serving_repository(ModelRepository(repository), tmp_path / "s", ServingOptions())


def test_python_models_and_ensembles_serve_as_they_are(mixed_repository, tmp_path):
    with EmbeddedTriton(mixed_repository, ServerPorts(0, 0, 0), log_file=tmp_path / "triton.log") as server:
        client = httpclient.InferenceServerClient(server.http_url.removeprefix("http://"))
        try:
            ids = np.random.default_rng(1).integers(5, 50, size=(3, 10), dtype=np.int64)
            ensemble_input = httpclient.InferInput("ids", list(ids.shape), "INT64")
            ensemble_input.set_data_from_numpy(ids)
            through_ensemble = client.infer("pipeline", [ensemble_input]).as_numpy("logits")
            direct = []
            for name, data in (("input_ids", ids), ("attention_mask", np.ones_like(ids)), ("token_type_ids", np.zeros_like(ids))):
                tensor = httpclient.InferInput(name, list(data.shape), "INT64")
                tensor.set_data_from_numpy(data)
                direct.append(tensor)
            np.testing.assert_allclose(through_ensemble, client.infer("student", direct).as_numpy("logits"), atol=1e-5)
        finally:
            client.close()
        # The decoupled model streams one Server-Sent Event per response.
        response = requests.post(f"{server.http_url}/v2/models/counter/generate_stream", json={"max_tokens": 3},
                                 stream=True, timeout=30)
        events = [json.loads(line[len(b"data: "):]) for line in response.iter_lines() if line.startswith(b"data: ")]
        assert [e["text_output"] for e in events if "text_output" in e] == ["t0", "t1", "t2"]
