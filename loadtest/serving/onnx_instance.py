"""One model instance: an ONNX Runtime session behind Triton's Python backend.

Triton's dynamic batcher hands an instance a list of requests. Requests can differ in sequence length,
so the instance pads them to the longest (pad id 0, attention mask 0: masked positions do not change
a BERT-style classifier's output), runs one ONNX Runtime call for the whole batch, and splits the result
back per request. That single call per batch is what makes server-side batching pay off.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from loadtest.repository import TensorSpec


def ort_providers(kind: str, tensorrt: bool) -> list[str]:
    """Execution providers for an instance kind, falling back to CPU where a provider is missing."""
    import onnxruntime as ort

    available = set(ort.get_available_providers())
    wanted = []
    if kind == "gpu":
        if tensorrt:
            wanted.append("TensorrtExecutionProvider")
        wanted.append("CUDAExecutionProvider")
    wanted.append("CPUExecutionProvider")
    return [p for p in wanted if p in available]


class OnnxInstance:
    """A callable PyTriton binds as one Triton model instance."""

    def __init__(
        self,
        model_path: Path,
        inputs: list[TensorSpec],
        outputs: list[TensorSpec],
        providers: list[str],
        intra_op_threads: int,
    ):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(os.fspath(model_path), sess_options=options, providers=providers)
        graph_inputs = {i.name for i in self.session.get_inputs()}
        self.inputs = [spec for spec in inputs if spec.name in graph_inputs]
        self.output_names = [spec.name for spec in outputs]

    def __call__(self, requests):
        sizes = [len(next(iter(r.data.values()))) for r in requests]
        feed = {spec.name: _pad_and_stack([r[spec.name] for r in requests], spec.dtype) for spec in self.inputs}
        results = self.session.run(self.output_names, feed)
        bounds = np.cumsum([0, *sizes])
        return [
            {name: result[bounds[i] : bounds[i + 1]] for name, result in zip(self.output_names, results)}
            for i in range(len(requests))
        ]


def _pad_and_stack(arrays: list[np.ndarray], dtype: str) -> np.ndarray:
    """Concatenate request tensors along the batch axis, right-padding the sequence axis with zeros."""
    if len(arrays) == 1:
        return np.ascontiguousarray(arrays[0], dtype=dtype)
    if arrays[0].ndim < 2 or len({a.shape[1:] for a in arrays}) == 1:
        return np.concatenate(arrays).astype(dtype, copy=False)
    longest = max(a.shape[1] for a in arrays)
    rows = sum(a.shape[0] for a in arrays)
    out = np.zeros((rows, longest, *arrays[0].shape[2:]), dtype=dtype)
    row = 0
    for a in arrays:
        out[row : row + a.shape[0], : a.shape[1]] = a
        row += a.shape[0]
    return out
