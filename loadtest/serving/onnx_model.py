"""Triton Python-backend model serving an ONNX classifier with ONNX Runtime (copied as ``1/model.py``).

This file is standard Triton Python-backend code: the embedded server copies it into each ONNX model's
folder of the *serving* repository, beside a link to the user's ``model.onnx``. It imports only numpy,
onnxruntime and Triton's ``triton_python_backend_utils``, so the same folder serves on any Triton that
has the Python backend.

Triton's dynamic batcher hands ``execute`` a list of requests. They may differ in sequence length, so the
model pads them to the longest (zeros: pad id 0 with attention mask 0 does not change a BERT-style
classifier's output), runs ONE ONNX Runtime call for the whole batch, and splits the result back per
request. That single call per batch is what makes server-side batching pay off. Input tensors are read as
views of Triton's shared memory; only the concatenation copies.

Config parameters (all optional; ``parameters { key: ... value { string_value: ... } }``):
``onnx_model`` file name in the version folder (default model.onnx), ``intra_op_thread_count``,
``inter_op_thread_count`` (the names Triton's own ONNX Runtime backend uses), ``allow_spinning``
("0"/"1": ORT worker threads busy-wait between runs), ``tensorrt_precision`` (FP16/FP32: use ORT's
TensorRT provider on GPU instances).
"""

from __future__ import annotations

import json
import os

import numpy as np

try:
    import triton_python_backend_utils as pb_utils
except ImportError:  # imported outside Triton (unit tests of the batching helpers below)
    pb_utils = None


def pad_and_stack(arrays: list[np.ndarray], dtype=None) -> np.ndarray:
    """Concatenate request tensors along the batch axis, right-padding the sequence axis with zeros."""
    if len(arrays) == 1:
        return np.ascontiguousarray(arrays[0], dtype=dtype)
    if arrays[0].ndim < 2 or len({a.shape[1:] for a in arrays}) == 1:
        return np.concatenate(arrays).astype(dtype or arrays[0].dtype, copy=False)
    longest = max(a.shape[1] for a in arrays)
    rows = sum(a.shape[0] for a in arrays)
    out = np.zeros((rows, longest, *arrays[0].shape[2:]), dtype=dtype or arrays[0].dtype)
    row = 0
    for a in arrays:
        out[row : row + a.shape[0], : a.shape[1]] = a
        row += a.shape[0]
    return out


def split_rows(result: np.ndarray, sizes: list[int], lengths: list[int] | None, padded: int | None) -> list[np.ndarray]:
    """Cut a batched output back into per-request pieces (and per-token outputs back to each request's length)."""
    pieces = np.split(result, np.cumsum(sizes)[:-1])
    if lengths is None or result.ndim < 2 or result.shape[1] != padded:
        return pieces
    return [piece[:, :length] for piece, length in zip(pieces, lengths)]


class TritonPythonModel:
    """One model instance: an ONNX Runtime session."""

    def initialize(self, args):
        import onnxruntime as ort

        config = json.loads(args["model_config"])
        parameters = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        model_path = os.path.join(version_dir, parameters.get("onnx_model") or "model.onnx")

        options = ort.SessionOptions()
        intra = int(parameters.get("intra_op_thread_count") or 0)
        if intra > 0:
            options.intra_op_num_threads = intra
        options.inter_op_num_threads = max(1, int(parameters.get("inter_op_thread_count") or 1))
        if parameters.get("allow_spinning") in ("0", "1"):
            options.add_session_config_entry("session.intra_op.allow_spinning", parameters["allow_spinning"])

        self.session = ort.InferenceSession(model_path, sess_options=options, providers=self._providers(args, parameters))
        graph_inputs = {i.name for i in self.session.get_inputs()}
        # Feed the graph the configured inputs it accepts (a tokenizer may send token_type_ids a graph ignores).
        self.inputs = [t["name"] for t in config["input"] if t["name"] in graph_inputs]
        missing = graph_inputs - {t["name"] for t in config["input"]}
        if missing:
            raise pb_utils.TritonModelException(f"{model_path} needs inputs missing from config.pbtxt: {sorted(missing)}")
        self.outputs = [t["name"] for t in config["output"]]
        self.batched = config.get("max_batch_size", 0) > 0

    @staticmethod
    def _providers(args, parameters) -> list:
        import onnxruntime as ort

        available = set(ort.get_available_providers())
        wanted: list = []
        if args.get("model_instance_kind") == "GPU":
            device = {"device_id": int(args.get("model_instance_device_id") or 0)}
            precision = parameters.get("tensorrt_precision")
            if precision:
                wanted.append(("TensorrtExecutionProvider", {**device, "trt_fp16_enable": precision == "FP16"}))
            wanted.append(("CUDAExecutionProvider", device))
        wanted.append("CPUExecutionProvider")
        return [p for p in wanted if (p[0] if isinstance(p, tuple) else p) in available]

    def execute(self, requests):
        if self.batched and len(requests) > 1:
            try:
                return [self._response(outputs) for outputs in self._infer(requests)]
            except Exception:  # one bad request must not fail its batch-mates: answer them one by one
                pass
        answers = [self._answer_one(request) for request in requests]
        errors = [a for a in answers if isinstance(a, str)]
        if len(errors) == len(answers):
            # Raised, the failure reaches Triton's statistics (nv_inference_request_failure); an error
            # *response* would be counted as a success. Hence per-request errors only beside good requests.
            raise pb_utils.TritonModelException(errors[0])
        return [pb_utils.InferenceResponse(error=pb_utils.TritonError(a)) if isinstance(a, str) else a for a in answers]

    def _answer_one(self, request):
        """The response for ``request`` alone, or the error's text."""
        try:
            return self._response(self._infer([request])[0])
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"

    def _infer(self, requests) -> list[list[np.ndarray]]:
        """One ONNX Runtime call for all ``requests``; the outputs of each request, in config order."""
        tensors = [[pb_utils.get_input_tensor_by_name(r, name).as_numpy() for name in self.inputs] for r in requests]
        if len(requests) == 1:
            return [self.session.run(self.outputs, dict(zip(self.inputs, tensors[0])))]
        sizes = [len(t[0]) for t in tensors]
        lengths = [t[0].shape[1] for t in tensors] if tensors[0][0].ndim >= 2 else None
        feed = {name: pad_and_stack([t[i] for t in tensors]) for i, name in enumerate(self.inputs)}
        padded = None
        if lengths is not None and len(set(lengths)) > 1:
            padded = max(lengths)
        else:
            lengths = None
        per_output = [split_rows(result, sizes, lengths, padded) for result in self.session.run(self.outputs, feed)]
        return [[pieces[i] for pieces in per_output] for i in range(len(requests))]

    def _response(self, arrays):
        return pb_utils.InferenceResponse(
            output_tensors=[pb_utils.Tensor(name, np.ascontiguousarray(a)) for name, a in zip(self.outputs, arrays)]
        )
