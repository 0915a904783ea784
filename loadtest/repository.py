"""The Triton model repository: the one artefact exporters write and every other part reads.

Configuration goes through Triton's own protobuf schema (``model_config_pb2`` + text format), never
string templates, so what we write is exactly what Triton parses. Everything the load generator and
the evaluator need beside the models (tokenizer, label names, sequence limit) lives in files at the
repository root: Triton treats every *folder* there as a model, so no helper folders may appear.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from google.protobuf import text_format
from pydantic import BaseModel, Field, ValidationError
from tritonclient.grpc import model_config_pb2 as mc

from loadtest.errors import LoadtestError

METADATA_FILE = "loadtest.json"
MANIFEST_FILE = "export_manifest.json"
CONFIG_FILE = "config.pbtxt"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
MODEL_FILES = {"onnxruntime_onnx": "model.onnx", "tensorrt_plan": "model.plan"}
BACKEND_FILES = {"onnxruntime": "model.onnx", "tensorrt": "model.plan", "python": "model.py"}

# numpy dtype name <-> Triton data type, for the types our models use.
NUMPY_TO_TRITON = {
    "int64": mc.TYPE_INT64,
    "int32": mc.TYPE_INT32,
    "float32": mc.TYPE_FP32,
    "float16": mc.TYPE_FP16,
    "bool": mc.TYPE_BOOL,
}
TRITON_TO_NUMPY = {v: k for k, v in NUMPY_TO_TRITON.items()}


class RepositoryMetadata(BaseModel):
    """``loadtest.json``: which models are teacher and student, and how to build their inputs."""

    teacher: str = "teacher"
    student: str = "student"
    labels: list[str]
    max_sequence_length: int = Field(256, gt=0)
    tokenizer: str = "tokenizer.json"
    task: str = "sequence-classification"
    # `loadtest export --with-tokenizer`: model -> its ensemble taking BYTES text (tokenized inside Triton)
    text_models: dict[str, str] = Field(default_factory=dict)


class TritonModelSettings(BaseModel):
    """The serving knobs a user sets from the CLI; they end up in config.pbtxt."""

    max_batch_size: int = Field(32, ge=1, description="largest batch Triton may form")
    preferred_batch_sizes: list[int] = Field(default_factory=list)
    max_queue_delay_us: int = Field(1000, ge=0, description="dynamic batcher's wait for a fuller batch")
    dynamic_batching: bool = True
    instance_kind: Literal["cpu", "gpu"] = "cpu"
    instance_count: int = Field(1, ge=1)
    tensorrt_accelerator: bool = Field(False, description="ORT's TensorRT execution accelerator (GPU only)")
    tensorrt_precision: Literal["FP32", "FP16"] = "FP16"


@dataclass(frozen=True)
class TensorSpec:
    """One input or output as Triton sees it (dims exclude the batch dimension)."""

    name: str
    dtype: str  # numpy dtype name
    dims: tuple[int, ...]


def build_config(
    name: str,
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
    settings: TritonModelSettings,
    platform: str = "onnxruntime_onnx",
) -> mc.ModelConfig:
    """Build a ModelConfig for a batched model from its signature and the serving settings."""
    if settings.preferred_batch_sizes and max(settings.preferred_batch_sizes) > settings.max_batch_size:
        raise LoadtestError(
            f"preferred batch sizes {settings.preferred_batch_sizes} exceed max batch size {settings.max_batch_size}"
        )
    config = mc.ModelConfig(name=name, platform=platform, max_batch_size=settings.max_batch_size)
    for spec, field in [(s, config.input) for s in inputs] + [(s, config.output) for s in outputs]:
        tensor = field.add()
        tensor.name = spec.name
        tensor.data_type = NUMPY_TO_TRITON[spec.dtype]
        tensor.dims.extend(spec.dims)
    if settings.dynamic_batching:
        config.dynamic_batching.max_queue_delay_microseconds = settings.max_queue_delay_us
        config.dynamic_batching.preferred_batch_size.extend(settings.preferred_batch_sizes)
    group = config.instance_group.add()
    group.count = settings.instance_count
    group.kind = mc.ModelInstanceGroup.KIND_GPU if settings.instance_kind == "gpu" else mc.ModelInstanceGroup.KIND_CPU
    if settings.tensorrt_accelerator and platform == "onnxruntime_onnx":
        accelerator = config.optimization.execution_accelerators.gpu_execution_accelerator.add()
        accelerator.name = "tensorrt"
        accelerator.parameters["precision_mode"] = settings.tensorrt_precision
    return config


GENERATIVE_INPUTS = (("text_input", mc.TYPE_STRING, False), ("max_tokens", mc.TYPE_INT32, True),
                     ("stream", mc.TYPE_BOOL, True), ("sampling_parameters", mc.TYPE_STRING, True))
GENERATIVE_OUTPUTS = (("text_output", mc.TYPE_STRING), ("num_output_tokens", mc.TYPE_INT32),
                      ("num_input_tokens", mc.TYPE_INT32))


def build_generative_config(
    name: str,
    *,
    max_inflight: int = 16,
    instance_count: int = 1,
    instance_kind: Literal["cpu", "gpu"] = "cpu",
    intra_op_threads: int = 0,
) -> mc.ModelConfig:
    """A decoupled Python-backend model following the generative contract (the vLLM Triton backend's tensors).

    ``max_batch_size`` 0: the model batches itself, interleaving decode steps of up to ``max_inflight``
    requests per instance; Triton hands it requests as they arrive.
    """
    config = mc.ModelConfig(name=name, backend="python", max_batch_size=0)
    config.model_transaction_policy.decoupled = True
    for tensor_name, data_type, optional in GENERATIVE_INPUTS:
        tensor = config.input.add(name=tensor_name, data_type=data_type, optional=optional)
        tensor.dims.append(1)
    for tensor_name, data_type in GENERATIVE_OUTPUTS:
        config.output.add(name=tensor_name, data_type=data_type).dims.append(1)
    group = config.instance_group.add()
    group.count = instance_count
    group.kind = mc.ModelInstanceGroup.KIND_GPU if instance_kind == "gpu" else mc.ModelInstanceGroup.KIND_CPU
    config.parameters["max_inflight_requests"].string_value = str(max_inflight)
    config.parameters["intra_op_threads"].string_value = str(intra_op_threads)
    return config


def settings_from_config(config: mc.ModelConfig) -> TritonModelSettings:
    """Read the serving knobs back from a config (what the embedded server applies)."""
    group = config.instance_group[0] if config.instance_group else None
    accelerators = config.optimization.execution_accelerators.gpu_execution_accelerator
    trt = next((a for a in accelerators if a.name == "tensorrt"), None)
    return TritonModelSettings(
        max_batch_size=max(config.max_batch_size, 1),
        preferred_batch_sizes=list(config.dynamic_batching.preferred_batch_size),
        max_queue_delay_us=config.dynamic_batching.max_queue_delay_microseconds,
        dynamic_batching=config.HasField("dynamic_batching"),
        instance_kind="gpu" if group is not None and group.kind == mc.ModelInstanceGroup.KIND_GPU else "cpu",
        instance_count=group.count if group is not None and group.count > 0 else 1,
        tensorrt_accelerator=trt is not None,
        tensorrt_precision=(trt.parameters.get("precision_mode", "FP16") if trt else "FP16"),
    )


def tensor_specs(tensors) -> list[TensorSpec]:
    """Inputs or outputs of a ModelConfig as TensorSpecs."""
    return [TensorSpec(t.name, TRITON_TO_NUMPY[t.data_type], tuple(t.dims)) for t in tensors]


def read_text(path: Path, what: str) -> str:
    """A repository file as UTF-8 text, or one line saying it is not (a binary file copied by mistake)."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise LoadtestError(f"{path} ({what}) is not UTF-8 text: replace it with the text file") from None


def read_json(path: Path, what: str):
    try:
        return json.loads(read_text(path, what))
    except json.JSONDecodeError as exc:
        raise LoadtestError(f"{path} ({what}) is not valid JSON: {exc}") from None


class ModelRepository:
    """A Triton model repository on disk, with loadtest's metadata beside the models."""

    def __init__(self, path: Path | str):
        self.path = Path(path)

    # ---- models -------------------------------------------------------------------------------
    def model_dir(self, name: str) -> Path:
        return self.path / name

    def config_path(self, name: str) -> Path:
        return self.model_dir(name) / CONFIG_FILE

    def model_file(self, name: str, version: int = 1) -> Path:
        config = self.read_config(name)
        default = MODEL_FILES.get(config.platform) or BACKEND_FILES.get(config.backend, "model")
        return self.model_dir(name) / str(version) / (config.default_model_filename or default)

    def models(self) -> list[str]:
        """Names of the model folders (every folder at the root is a model to Triton)."""
        if not self.path.is_dir():
            return []
        return sorted(p.name for p in self.path.iterdir() if p.is_dir() and not p.name.startswith("."))

    def read_config(self, name: str) -> mc.ModelConfig:
        path = self.config_path(name)
        if not path.is_file():
            raise LoadtestError(f"model '{name}' in {self.path} has no {CONFIG_FILE}")
        config = mc.ModelConfig()
        try:
            text_format.Parse(read_text(path, "Triton model config"), config)
        except text_format.ParseError as exc:
            raise LoadtestError(f"{path} is not a valid Triton model config: {exc}") from None
        if not config.name:
            config.name = name
        return config

    def write_config(self, config: mc.ModelConfig) -> Path:
        path = self.config_path(config.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text_format.MessageToString(config))
        return path

    def version_dir(self, name: str, version: int = 1) -> Path:
        path = self.model_dir(name) / str(version)
        path.mkdir(parents=True, exist_ok=True)
        return path

    # ---- metadata -----------------------------------------------------------------------------
    def read_metadata(self) -> RepositoryMetadata:
        path = self.path / METADATA_FILE
        if not path.is_file():
            raise LoadtestError(f"{self.path} has no {METADATA_FILE}: export models into it with `loadtest export`")
        try:
            return RepositoryMetadata.model_validate_json(read_text(path, "repository metadata"))
        except ValidationError as exc:
            first = exc.errors()[0]
            raise LoadtestError(f"{path}: {'.'.join(map(str, first['loc']))}: {first['msg']}") from None

    def write_metadata(self, metadata: RepositoryMetadata) -> Path:
        self.path.mkdir(parents=True, exist_ok=True)
        path = self.path / METADATA_FILE
        path.write_text(metadata.model_dump_json(indent=2) + "\n")
        return path

    def tokenizer_path(self) -> Path:
        return self.path / self.read_metadata().tokenizer

    def load_tokenizer(self):
        """The fast tokenizer shipped with the repository (so clients need only the repository).

        A ``loadtest.tokenizer.FastTokenizer``: the ``tokenizers`` package alone, no transformers.
        """
        from loadtest.tokenizer import FastTokenizer

        metadata = self.read_metadata()
        if not (self.path / metadata.tokenizer).is_file():
            raise LoadtestError(f"{self.path} has no tokenizer file {metadata.tokenizer}")
        try:
            return FastTokenizer.from_directory(self.path, metadata.tokenizer, metadata.max_sequence_length)
        except LoadtestError:
            raise
        except Exception as exc:  # the tokenizers library's own error type is not exported
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise LoadtestError(f"{self.path / metadata.tokenizer} is not a valid tokenizer file ({first[:160]}); "
                                "re-export the repository "
                                "with `loadtest export`") from None  # fmt: skip

    def read_manifest(self) -> dict:
        path = self.path / MANIFEST_FILE
        return read_json(path, "export manifest") if path.is_file() else {}

    def write_manifest(self, manifest: dict) -> Path:
        self.path.mkdir(parents=True, exist_ok=True)
        path = self.path / MANIFEST_FILE
        path.write_text(json.dumps(manifest, indent=2, default=str) + "\n")
        return path

    # ---- checks -------------------------------------------------------------------------------
    def validate(self) -> list[str]:
        """Check the repository is servable; returns model names or raises a one-line LoadtestError."""
        if not self.path.exists():
            raise LoadtestError(f"model repository {self.path} does not exist")
        if not self.path.is_dir():
            raise LoadtestError(f"model repository {self.path} is not a directory")
        names = self.models()
        if not names:
            raise LoadtestError(f"model repository {self.path} holds no model folders")
        for name in names:
            config = self.read_config(name)
            if config.platform == "ensemble":
                continue  # its steps are the other models; Triton checks the wiring at load
            if config.platform not in MODEL_FILES and config.backend not in BACKEND_FILES:
                kind = f"platform '{config.platform}'" if config.platform else f"backend '{config.backend}'"
                raise LoadtestError(f"model '{name}': {kind} is not supported here")
            model_file = self.model_file(name, _first_version(self.model_dir(name)))
            if not model_file.is_file():
                raise LoadtestError(f"model '{name}' has no model file {model_file.relative_to(self.path)}")
        return names


def _first_version(model_dir: Path) -> int:
    """The lowest numeric version folder (1 when there is none yet, so the error names 1/)."""
    versions = sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())
    return versions[0] if versions else 1
