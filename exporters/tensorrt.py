"""The GPU path: an ONNX graph -> a TensorRT engine (``model.plan``) Triton serves as ``tensorrt_plan``.

A TensorRT engine is built for a range of shapes (an optimisation profile: min/opt/max over batch and
sequence), so Triton's ``max_batch_size`` must not exceed the profile's largest batch. The engine is then
run at the same parity shapes as the ONNX export and compared with ONNX Runtime. Needs the ``tensorrt``
package and an NVIDIA GPU; device buffers come from torch's CUDA allocator.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from loadtest.errors import LoadtestError

from exporters.manifest import TensorSignature


def tensorrt_is_available() -> bool:
    """True when the tensorrt package imports and a CUDA device is visible to torch."""
    try:
        import tensorrt  # noqa: F401
        import torch
    except Exception:
        return False
    try:
        return bool(torch.cuda.is_available())
    except Exception:
        return False


def require_tensorrt() -> None:
    """Raise a one-line error when the TensorRT path cannot run here."""
    if not tensorrt_is_available():
        raise LoadtestError(
            "--format tensorrt needs the tensorrt package and an NVIDIA GPU visible to torch "
            "(pip install tensorrt; install torch with CUDA); use --format onnx here, or ORT's "
            "TensorRT accelerator on a GPU server with --tensorrt-accelerator"
        )


@dataclass(frozen=True)
class Profile:
    """Shape range of one optimisation profile, the same for every [batch, sequence] input."""

    min_batch: int
    opt_batch: int
    max_batch: int
    min_sequence: int
    opt_sequence: int
    max_sequence: int

    @classmethod
    def for_serving(cls, max_batch: int, max_sequence: int) -> Profile:
        """min 1, optimum at half the maximum batch and a typical short sequence, max as served."""
        return cls(
            min_batch=1,
            opt_batch=max(1, max_batch // 2),
            max_batch=max_batch,
            min_sequence=1,
            opt_sequence=max(1, min(128, max_sequence // 2)),
            max_sequence=max_sequence,
        )


@dataclass(frozen=True)
class EngineBuild:
    """What building the engine produced."""

    path: Path
    seconds: float
    profile: Profile
    fp16: bool
    inputs: list[TensorSignature]
    outputs: list[TensorSignature]
    tensorrt_version: str


def _logger():
    import tensorrt as trt

    return trt.Logger(trt.Logger.ERROR)


def build_engine(
    onnx_path: Path, plan_path: Path, input_names: list[str], profile: Profile, fp16: bool = False
) -> EngineBuild:
    """Parse the ONNX file, build a serialized engine for ``profile`` and write it to ``plan_path``."""
    require_tensorrt()
    import tensorrt as trt

    start = time.perf_counter()
    logger = _logger()
    builder = trt.Builder(logger)
    major = int(trt.__version__.split(".")[0])
    flags = 0 if major >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors)) or "unknown error"
        raise LoadtestError(f"TensorRT cannot parse {onnx_path}: {errors[:400]}")
    config = builder.create_builder_config()
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    else:
        # FP32 engines otherwise use TF32 matmuls on Ampere+, which alone exceeds a tight parity tolerance.
        config.clear_flag(trt.BuilderFlag.TF32)
    optimization = builder.create_optimization_profile()
    for name in input_names:
        optimization.set_shape(
            name,
            (profile.min_batch, profile.min_sequence),
            (profile.opt_batch, profile.opt_sequence),
            (profile.max_batch, profile.max_sequence),
        )
    config.add_optimization_profile(optimization)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise LoadtestError(f"TensorRT could not build an engine from {onnx_path} (see the TensorRT log above)")
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    plan_path.write_bytes(bytes(serialized))
    inputs, outputs = engine_signature(plan_path)
    return EngineBuild(
        path=plan_path,
        seconds=time.perf_counter() - start,
        profile=profile,
        fp16=fp16,
        inputs=inputs,
        outputs=outputs,
        tensorrt_version=trt.__version__,
    )


def _deserialize(plan_path: Path):
    import tensorrt as trt

    runtime = trt.Runtime(_logger())
    engine = runtime.deserialize_cuda_engine(plan_path.read_bytes())
    if engine is None:
        raise LoadtestError(f"{plan_path} is not a TensorRT engine for this GPU and TensorRT version")
    return runtime, engine


def engine_signature(plan_path: Path) -> tuple[list[TensorSignature], list[TensorSignature]]:
    """The engine's I/O tensors (dtype as numpy name, -1 for dynamic axes)."""
    import tensorrt as trt

    _, engine = _deserialize(plan_path)
    inputs, outputs = [], []
    for index in range(engine.num_io_tensors):
        name = engine.get_tensor_name(index)
        dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name))).name
        shape = [
            int(d) if d >= 0 else ("batch" if i == 0 else "sequence")
            for i, d in enumerate(engine.get_tensor_shape(name))
        ]
        signature = TensorSignature(name=name, dtype=dtype, shape=shape)
        (inputs if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else outputs).append(signature)
    return inputs, outputs


def engine_runner(plan_path: Path, output: str):
    """A parity Runner executing the engine on the GPU (torch tensors as device buffers)."""
    require_tensorrt()
    import tensorrt as trt
    import torch

    runtime, engine = _deserialize(plan_path)
    context = engine.create_execution_context()
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    input_names = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    torch_dtype = {
        np.dtype(np.int64): torch.int64,
        np.dtype(np.int32): torch.int32,
        np.dtype(np.float32): torch.float32,
        np.dtype(np.float16): torch.float16,
    }

    def run(feed: dict[str, np.ndarray]) -> np.ndarray:
        keep = [runtime]  # the runtime must outlive the engine it deserialized
        buffers = {}
        for name in input_names:
            want = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            array = np.ascontiguousarray(feed[name].astype(want))
            buffers[name] = torch.from_numpy(array).cuda()
            if not context.set_input_shape(name, tuple(array.shape)):
                raise RuntimeError(f"shape {array.shape} of {name} is outside the engine's profile")
        for name in names:
            if name in buffers:
                continue
            shape = tuple(context.get_tensor_shape(name))
            want = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            buffers[name] = torch.empty(shape, dtype=torch_dtype[want], device="cuda")
        for name, tensor in buffers.items():
            context.set_tensor_address(name, tensor.data_ptr())
        stream = torch.cuda.current_stream()
        if not context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        stream.synchronize()
        del keep
        return buffers[output].float().cpu().numpy()

    return run
