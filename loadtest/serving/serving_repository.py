"""The repository the embedded Triton actually loads, derived from the user's repository in a temp dir.

The Triton in the nvidia-pytriton wheel has the Python backend only (no ONNX Runtime backend). So each
ONNX model of the user's repository becomes a standard Python-backend model: ``1/model.py`` (ONNX
Runtime inside, see ``onnx_model.py``), ``1/model.onnx`` linked to the user's file, and a config.pbtxt
derived from the user's own (same name, tensors, max batch size, dynamic batcher, instance group;
``backend: "python"``). Models that already are Python-backend models, and ensembles, are linked in as
they are. The user's repository is never written to.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from loadtest.errors import LoadtestError
from loadtest.repository import ModelRepository

ONNX_MODEL_SOURCE = Path(__file__).with_name("onnx_model.py")

# How a model is served; shown by `loadtest serve`.
ONNX_IN_PYTHON = "onnx (ONNX Runtime in Python backend)"
PYTHON_AS_IS = "python backend (as is)"
ENSEMBLE_AS_IS = "ensemble (as is)"


@dataclass(frozen=True)
class ServingOptions:
    """What we tune for ONNX models; ``None`` keeps the repository's value or ONNX Runtime's default."""

    intra_op_threads: int | None = None  # ORT threads per instance (default: cores / instance count)
    # ORT worker threads busy-wait between runs (ORT's default). Off by default here: the ORT threads share the
    # cores with tritonserver's HTTP/gRPC threads (and often the load generator), and spinning threads then
    # take CPU from them; measured on 2 busy cores it doubled ORT's CPU per sample. None: ORT's default.
    allow_spinning: bool | None = False
    gpu_available: bool = False  # KIND_GPU instances stay GPU only where a GPU is visible


@dataclass(frozen=True)
class ServedModel:
    name: str
    served_as: str
    config: mc.ModelConfig  # the config Triton is given


def is_onnx(config: mc.ModelConfig) -> bool:
    return config.platform == "onnxruntime_onnx" or config.backend == "onnxruntime"


def is_python(config: mc.ModelConfig) -> bool:
    return config.backend == "python"


def is_ensemble(config: mc.ModelConfig) -> bool:
    return config.platform == "ensemble"


def prepare_serving_repository(source: ModelRepository, target: Path, options: ServingOptions) -> list[ServedModel]:
    """Write the serving repository for every model of ``source`` into ``target``."""
    target.mkdir(parents=True, exist_ok=True)
    served = []
    for name in source.models():
        config = source.read_config(name)
        if is_onnx(config):
            served.append(_serve_onnx(source, name, config, target / name, options))
        elif is_python(config) or is_ensemble(config):
            _link_or_copy(source.model_dir(name).resolve(), target / name)
            served.append(ServedModel(name, PYTHON_AS_IS if is_python(config) else ENSEMBLE_AS_IS, config))
        else:
            kind = config.platform or config.backend or "unknown"
            raise LoadtestError(
                f"model '{name}' is {kind}: the embedded server runs ONNX, Python-backend and ensemble models; "
                "serve TensorRT plans with a real Triton (docker compose up)"
            )
    return served


def python_backend_config(config: mc.ModelConfig, options: ServingOptions, onnx_file: str) -> mc.ModelConfig:
    """The user's ONNX config turned into the equivalent Python-backend config."""
    served = mc.ModelConfig()
    served.CopyFrom(config)
    served.platform = ""
    served.backend = "python"
    served.default_model_filename = ""
    served.ClearField("optimization")  # ONNX Runtime's accelerators become our parameters below
    parameters = {"onnx_model": onnx_file}
    instance_count = sum(max(g.count, 1) for g in served.instance_group) or 1
    threads = options.intra_op_threads or _config_parameter(config, "intra_op_thread_count")
    parameters["intra_op_thread_count"] = str(threads or max(1, (os.cpu_count() or 1) // instance_count))
    if options.allow_spinning is not None:
        parameters["allow_spinning"] = "1" if options.allow_spinning else "0"
    for accelerator in config.optimization.execution_accelerators.gpu_execution_accelerator:
        if accelerator.name == "tensorrt":
            parameters["tensorrt_precision"] = accelerator.parameters.get("precision_mode", "FP32")
    for key, value in parameters.items():
        served.parameters[key].string_value = value
    if not options.gpu_available:
        for group in served.instance_group:
            if group.kind == mc.ModelInstanceGroup.KIND_GPU:
                group.kind = mc.ModelInstanceGroup.KIND_CPU
                del group.gpus[:]
    return served


def _serve_onnx(source: ModelRepository, name: str, config: mc.ModelConfig, folder: Path, options: ServingOptions):
    onnx_path = source.model_file(name)
    if not onnx_path.is_file():
        raise LoadtestError(f"model '{name}' has no model file {onnx_path}")
    version = folder / "1"
    version.mkdir(parents=True, exist_ok=True)
    shutil.copy2(ONNX_MODEL_SOURCE, version / "model.py")
    _link_or_copy(onnx_path.resolve(), version / onnx_path.name)
    for extra in onnx_path.parent.iterdir():  # external-data files an ONNX model may reference
        if extra != onnx_path and not (version / extra.name).exists():
            _link_or_copy(extra.resolve(), version / extra.name)
    served = python_backend_config(config, options, onnx_path.name)
    ModelRepository(folder.parent).write_config(served)
    return ServedModel(name, ONNX_IN_PYTHON, served)


def _config_parameter(config: mc.ModelConfig, key: str) -> int | None:
    value = config.parameters[key].string_value if key in config.parameters else ""
    return int(value) if value.strip().isdigit() and int(value) > 0 else None


def _link_or_copy(source: Path, destination: Path) -> None:
    try:
        destination.symlink_to(source, target_is_directory=source.is_dir())
    except OSError:
        if source.is_dir():
            shutil.copytree(source, destination)
        else:
            shutil.copy2(source, destination)
