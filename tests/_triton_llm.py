"""Decoupled generative models on the real embedded Triton, as standard Python-backend ``model.py`` files.

The models follow the generative contract (docs/architecture.md): ``text_input`` BYTES [1], optional
``max_tokens`` INT32 [1], ``stream`` BOOL [1] and ``sampling_parameters`` BYTES [1] in; ``text_output``,
``num_output_tokens`` and ``num_input_tokens`` out; ``max_batch_size 0``. They are test fixtures, not
LLMs: ``echo`` streams the prompt's words back one per response, ``echo2`` two per response (so tokens
and chunks differ), ``DELAY_S`` apart; a prompt longer than ``CONTEXT_TOKENS`` words is refused with an
error response, as a server refuses a prompt longer than its context. ``plain`` answers whole and is
not decoupled. What serves them is real: the wheel's ``tritonserver`` with the Python backend (gRPC
``ModelStreamInfer``, HTTP ``generate_stream``, the final-response flag, error responses, and Triton's
own ``nv_inference_request_success`` counter).
"""

from __future__ import annotations

from pathlib import Path

CONTEXT_TOKENS = 48

MODEL_PY = '''
import json
import time

import numpy as np
import triton_python_backend_utils as pb_utils

CONTEXT_TOKENS = %(context)d


def _scalar(request, name, default):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return default
    value = tensor.as_numpy().reshape(-1)
    return value[0] if value.size else default


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = config.get("parameters", {})
        self.per_chunk = int(params["tokens_per_chunk"]["string_value"])
        self.delay_s = float(params["delay_s"]["string_value"])
        self.decoupled = pb_utils.using_decoupled_model_transaction_policy(config)

    def _outputs(self, text, n, n_in):
        return [
            pb_utils.Tensor("text_output", np.array([text.encode()], dtype=np.object_)),
            pb_utils.Tensor("num_output_tokens", np.array([n], dtype=np.int32)),
            pb_utils.Tensor("num_input_tokens", np.array([n_in], dtype=np.int32)),
        ]

    def execute(self, requests):
        answers = []
        for request in requests:
            prompt = _scalar(request, "text_input", b"")
            words = (prompt.decode() if isinstance(prompt, bytes) else str(prompt)).split() or ["empty"]
            max_tokens = int(_scalar(request, "max_tokens", 16))
            if not self.decoupled:
                text = "".join(" " + words[i %% len(words)] for i in range(max_tokens))
                answers.append(pb_utils.InferenceResponse(output_tensors=self._outputs(text, max_tokens, len(words))))
                continue
            sender = request.get_response_sender()
            if len(words) > CONTEXT_TOKENS:
                error = pb_utils.TritonError(
                    f"prompt of {len(words)} tokens exceeds the context of {CONTEXT_TOKENS} tokens")
                sender.send(pb_utils.InferenceResponse(error=error),
                            flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                continue
            sent = 0
            while sent < max_tokens:
                n = min(self.per_chunk, max_tokens - sent)
                text = "".join(" " + words[(sent + i) %% len(words)] for i in range(n))
                sent += n
                time.sleep(self.delay_s)
                sender.send(pb_utils.InferenceResponse(output_tensors=self._outputs(text, n, len(words))))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return answers if not self.decoupled else None
'''

CONFIG = '''name: "%(name)s"
backend: "python"
max_batch_size: 0
%(policy)sinput [
  { name: "text_input" data_type: TYPE_STRING dims: [ 1 ] },
  { name: "max_tokens" data_type: TYPE_INT32 dims: [ 1 ] optional: true },
  { name: "stream" data_type: TYPE_BOOL dims: [ 1 ] optional: true },
  { name: "sampling_parameters" data_type: TYPE_STRING dims: [ 1 ] optional: true }
]
output [
  { name: "text_output" data_type: TYPE_STRING dims: [ 1 ] },
  { name: "num_output_tokens" data_type: TYPE_INT32 dims: [ 1 ] },
  { name: "num_input_tokens" data_type: TYPE_INT32 dims: [ 1 ] }
]
instance_group [ { count: %(instances)d kind: KIND_CPU } ]
parameters { key: "tokens_per_chunk" value: { string_value: "%(per_chunk)d" } }
parameters { key: "delay_s" value: { string_value: "%(delay)g" } }
'''


def write_repository(root: Path, delay_s: float = 0.002) -> Path:
    """A Triton repository with ``echo``, ``echo2`` (decoupled) and ``plain`` (not decoupled)."""
    for name, per_chunk, decoupled in (("echo", 1, True), ("echo2", 2, True), ("plain", 1, False)):
        version = root / name / "1"
        version.mkdir(parents=True, exist_ok=True)
        (version / "model.py").write_text(MODEL_PY % {"context": CONTEXT_TOKENS})
        policy = "model_transaction_policy { decoupled: true }\n" if decoupled else ""
        (root / name / "config.pbtxt").write_text(CONFIG % {"name": name, "policy": policy, "instances": 2,
                                                            "per_chunk": per_chunk, "delay": delay_s})  # fmt: skip
    return root


class TritonLLM:
    """The embedded Triton serving :func:`write_repository` on free loopback ports."""

    def __init__(self, root: Path, delay_s: float = 0.002):
        from loadtest.serving.embedded import EmbeddedTriton

        self.server = EmbeddedTriton(write_repository(root / "llm_repository", delay_s), pick_free_ports=True,
                                     log_file=root / "triton.log")  # fmt: skip
        self.server.start()

    @property
    def http_url(self) -> str:
        return self.server.http_url

    @property
    def grpc_url(self) -> str:
        return self.server.grpc_url

    @property
    def metrics_url(self) -> str:
        return self.server.metrics_url

    @property
    def metrics_port(self) -> int:
        return self.server.metrics_port

    def stop(self) -> None:
        self.server.stop()
