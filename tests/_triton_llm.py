"""A decoupled generative model on a real embedded Triton (PyTriton), following the generative contract.

The model is a test fixture, not an LLM: it streams the prompt's words back, ``tokens_per_chunk`` words
per response, ``delay_s`` apart, and says how many tokens each response holds (``num_output_tokens``)
and how many the prompt held (``num_input_tokens``). What it serves is real Triton: gRPC
``ModelStreamInfer`` and HTTP ``generate_stream`` with Triton's own framing, final-response flag and
error responses, and Triton's own ``nv_inference_request_success`` counter. A prompt longer than
``CONTEXT_TOKENS`` words is refused with an error, as a server refuses a prompt longer than its context.
A second, non-decoupled model lets the tests check the one-line error for streaming from one.
"""

from __future__ import annotations

import os
import sysconfig
import time

import numpy as np

from loadtest.serving.ports import free_port

CONTEXT_TOKENS = 48


def _ld_path() -> None:
    """The Python-backend stub must load this interpreter's libpython (see the serving notes)."""
    libdir = sysconfig.get_config_var("LIBDIR")
    current = os.environ.get("LD_LIBRARY_PATH", "")
    if libdir and libdir not in current.split(":"):
        os.environ["LD_LIBRARY_PATH"] = f"{libdir}:{current}" if current else libdir


def _scalar(request, name, default):
    if name not in request or request[name] is None:
        return default
    value = np.ravel(request[name])
    return value[0] if value.size else default


def echo_generator(delay_s: float, tokens_per_chunk: int):
    def infer(requests):
        for request in requests:
            prompt = _scalar(request, "text_input", b"")
            prompt = prompt.decode() if isinstance(prompt, bytes) else str(prompt)
            words = prompt.split() or ["empty"]
            if len(words) > CONTEXT_TOKENS:
                raise ValueError(f"prompt of {len(words)} tokens exceeds the context of {CONTEXT_TOKENS} tokens")
            max_tokens = int(_scalar(request, "max_tokens", 16))
            sent = 0
            while sent < max_tokens:
                n = min(tokens_per_chunk, max_tokens - sent)
                text = "".join(" " + words[(sent + i) % len(words)] for i in range(n))
                sent += n
                time.sleep(delay_s)
                yield [{
                    "text_output": np.array([text.encode()], dtype=np.object_),
                    "num_output_tokens": np.array([n], dtype=np.int32),
                    "num_input_tokens": np.array([len(words)], dtype=np.int32),
                }]  # fmt: skip

    return infer


def whole_answer(requests):
    out = []
    for request in requests:
        prompt = _scalar(request, "text_input", b"").decode()
        n = int(_scalar(request, "max_tokens", 16))
        words = prompt.split() or ["empty"]
        text = "".join(" " + words[i % len(words)] for i in range(n))
        out.append({
            "text_output": np.array([text.encode()], dtype=np.object_),
            "num_output_tokens": np.array([n], dtype=np.int32),
            "num_input_tokens": np.array([len(words)], dtype=np.int32),
        })  # fmt: skip
    return out


class TritonLLM:
    """Triton on free loopback ports serving ``echo`` (1 token per response), ``echo2`` (2 per response)
    and ``plain`` (not decoupled)."""

    def __init__(self, delay_s: float = 0.002):
        _ld_path()
        from pytriton.model_config import ModelConfig, Tensor
        from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig

        self.http_port = free_port()
        self.grpc_port = free_port(exclude={self.http_port})
        self.metrics_port = free_port(exclude={self.http_port, self.grpc_port})
        config = TritonConfig(http_address="127.0.0.1", grpc_address="127.0.0.1", metrics_address="127.0.0.1",
                              http_port=self.http_port, grpc_port=self.grpc_port, metrics_port=self.metrics_port,
                              allow_cpu_metrics=True, exit_timeout_secs=5)  # fmt: skip
        self.triton = Triton(config=config, security_config=TritonSecurityConfig(restricted_endpoints=[]))
        inputs = [
            Tensor(name="text_input", dtype=np.bytes_, shape=(1,)),
            Tensor(name="max_tokens", dtype=np.int32, shape=(1,), optional=True),
            Tensor(name="stream", dtype=np.bool_, shape=(1,), optional=True),
            Tensor(name="sampling_parameters", dtype=np.bytes_, shape=(1,), optional=True),
        ]
        outputs = [
            Tensor(name="text_output", dtype=np.bytes_, shape=(1,)),
            Tensor(name="num_output_tokens", dtype=np.int32, shape=(1,)),
            Tensor(name="num_input_tokens", dtype=np.int32, shape=(1,)),
        ]
        try:
            for name, per_chunk in (("echo", 1), ("echo2", 2)):
                self.triton.bind(model_name=name, infer_func=echo_generator(delay_s, per_chunk), inputs=inputs,
                                 outputs=outputs, config=ModelConfig(batching=False, decoupled=True),
                                 strict=False)  # fmt: skip
            self.triton.bind(model_name="plain", infer_func=whole_answer, inputs=inputs, outputs=outputs,
                             config=ModelConfig(batching=False), strict=False)  # fmt: skip
            self.triton.run()
        except Exception:
            self.triton.stop()
            raise

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"grpc://127.0.0.1:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def stop(self) -> None:
        self.triton.stop()
