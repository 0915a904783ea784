"""Triton Python-backend model serving a generation engine as a decoupled, streaming model.

Written into the model repository as ``<name>/1/model.py`` beside ``generation_engine.py`` (a copy of
``loadtest.generation.engine``), the ONNX decoder and its tokenizer, so any Triton with the Python backend
serves it: the embedded server here, or NGC's container (with ``pip install onnxruntime tokenizers``).

The contract is the vLLM Triton backend's: ``text_input`` BYTES [1], optional ``max_tokens`` INT32 [1],
``stream`` BOOL [1] and ``sampling_parameters`` BYTES [1] (a JSON object: temperature, top_p, seed, stop,
ignore_eos, max_tokens, min_tokens); outputs ``text_output`` BYTES [1], ``num_output_tokens`` INT32 [1]
(tokens in this response) and ``num_input_tokens`` INT32 [1] (first response only). Streaming sends one
response per piece of new text as the engine makes it; the last response carries the final flag. Errors
come back as a response carrying a TritonError.

``execute`` only parses and queues: the engine's thread makes every token, so requests arriving while others
generate join the running batch at the next decode step instead of waiting for them to end; a sender thread
(config parameter ``response_thread``, on unless "0") builds and sends the responses, in order, while the
engine goes on to the next step.
"""

import json
import os
import queue
import sys
import threading

import numpy as np
import triton_python_backend_utils as pb_utils

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from generation_engine import Chunk, GenerationEngine, GenerationError, SamplingParams  # noqa: E402


def _scalar(request, name):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return None
    value = np.ravel(tensor.as_numpy())
    if value.size == 0:
        return None
    value = value[0]
    return value.decode("utf-8") if isinstance(value, bytes) else value


def _response(text, tokens, input_tokens):
    outputs = [pb_utils.Tensor("text_output", np.array([text.encode("utf-8")], dtype=np.object_)),
               pb_utils.Tensor("num_output_tokens", np.array([tokens], dtype=np.int32))]
    if input_tokens is not None:
        outputs.append(pb_utils.Tensor("num_input_tokens", np.array([input_tokens], dtype=np.int32)))
    return pb_utils.InferenceResponse(output_tensors=outputs)


def _send(sender, text, tokens, input_tokens, final, error):
    flags = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL if final else 0
    if error is not None:
        response = pb_utils.InferenceResponse(error=pb_utils.TritonError(error))
    else:
        response = _response(text, tokens, input_tokens)
    try:
        sender.send(response, flags=flags)
    except Exception:  # a client gone away must not stop the others
        pass


class _Outbox:
    """Builds and sends responses on a thread of its own, in the order the engine made them.

    Each response is a round trip to the Triton server process; on the engine's thread those round trips
    add up with every token of every running request and lengthen every decode step. Here they overlap
    with the next step's ONNX Runtime call (which releases the GIL).
    """

    def __init__(self):
        self._queue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="response-sender", daemon=True)
        self._thread.start()

    def put(self, *job):
        self._queue.put(job)

    def _run(self):
        while True:
            job = self._queue.get()
            if job is None:
                return
            _send(*job)

    def stop(self):
        self._queue.put(None)
        self._thread.join(timeout=10)


class _Responder:
    """Turns engine chunks into Triton responses on one request's response sender."""

    def __init__(self, sender, stream, outbox=None):
        self.sender = sender
        self.stream = stream
        self.send = outbox.put if outbox is not None else _send
        self.text = []
        self.tokens = 0
        self.input_tokens = None

    def __call__(self, chunk: Chunk) -> None:
        if chunk.error:
            self.send(self.sender, "", 0, None, True, chunk.error)
            return
        if chunk.input_tokens is not None:
            self.input_tokens = chunk.input_tokens
        if self.stream:
            self.send(self.sender, chunk.text, chunk.tokens, chunk.input_tokens, chunk.final, None)
            return
        self.text.append(chunk.text)
        self.tokens += chunk.tokens
        if chunk.final:
            self.send(self.sender, "".join(self.text), self.tokens, self.input_tokens, True, None)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        if not pb_utils.using_decoupled_model_transaction_policy(config):
            raise pb_utils.TritonModelException("this model streams: set model_transaction_policy { decoupled: true }")
        parameters = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        here = os.path.dirname(os.path.abspath(__file__))
        kind = args.get("model_instance_kind", "CPU")
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if kind == "GPU" else ["CPUExecutionProvider"]
        self.engine = GenerationEngine(
            here,
            max_batch=int(parameters.get("max_inflight_requests", "16") or 16),
            intra_op_threads=int(parameters.get("intra_op_threads", "0") or 0),
            providers=providers,
        )
        threaded = parameters.get("response_thread", "1").strip().lower() not in ("0", "false", "no", "")
        self.outbox = _Outbox() if threaded else None

    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            try:
                prompt = _scalar(request, "text_input")
                if prompt is None:
                    raise GenerationError("text_input is required")
                stream = _scalar(request, "stream")
                max_tokens = _scalar(request, "max_tokens")
                raw = _scalar(request, "sampling_parameters")
                try:
                    sampling = json.loads(raw) if raw else None
                except ValueError as exc:
                    raise GenerationError(f"sampling_parameters is not JSON: {exc}") from None
                if sampling is not None and not isinstance(sampling, dict):
                    raise GenerationError("sampling_parameters must be a JSON object")
                params = SamplingParams.parse(sampling, None if max_tokens is None else int(max_tokens))
                self.engine.submit(str(prompt), params, _Responder(sender, bool(stream), self.outbox))
            except GenerationError as exc:
                sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))),
                            flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None

    def finalize(self):
        self.engine.stop()
        if self.outbox is not None:
            self.outbox.stop()
