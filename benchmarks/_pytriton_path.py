"""The previous embedded path, kept for the serving-efficiency benchmark only: PyTriton's proxy in front of
the same ONNX Runtime sessions (tritonserver -> Python backend stub -> PyTriton proxy -> callable in this
process). Same repository config (max batch, dynamic batcher, instance count) as the new path.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import numpy as np

from loadtest.repository import ModelRepository, settings_from_config, tensor_specs
from loadtest.serving.distribution import ensure_python_libdir_on_ld_path
from loadtest.serving.onnx_model import pad_and_stack
from loadtest.serving.ports import free_port


class _OrtCallable:
    """One model instance for PyTriton: batches the requests it is handed into one ORT call."""

    def __init__(self, model_path: Path, inputs, outputs, threads: int):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(os.fspath(model_path), options, providers=["CPUExecutionProvider"])
        graph = {i.name for i in self.session.get_inputs()}
        self.inputs = [s.name for s in inputs if s.name in graph]
        self.outputs = [s.name for s in outputs]

    def __call__(self, requests):
        sizes = [len(next(iter(r.data.values()))) for r in requests]
        feed = {name: pad_and_stack([r[name] for r in requests]) for name in self.inputs}
        results = self.session.run(self.outputs, feed)
        bounds = np.cumsum([0, *sizes])
        return [{n: r[bounds[i] : bounds[i + 1]] for n, r in zip(self.outputs, results)} for i in range(len(requests))]


class PyTritonServer:
    """start()/stop() and the attributes the benchmark reads, like EmbeddedTriton."""

    def __init__(self, repository: Path, intra_op_threads: int | None = None):
        self.repository = ModelRepository(repository)
        self.threads = intra_op_threads
        self.http, self.grpc, self.metrics = (free_port() for _ in range(3))
        self._triton = None

    http_url = property(lambda self: f"http://127.0.0.1:{self.http}")
    metrics_url = property(lambda self: f"http://127.0.0.1:{self.metrics}/metrics")

    @property
    def tritonserver_pid(self) -> int:
        return self._triton._triton_server._tritonserver_running_cmd.pid

    def start(self):
        ensure_python_libdir_on_ld_path()
        from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
        from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig

        logging.getLogger("pytriton").setLevel(logging.WARNING)
        config = TritonConfig(http_port=self.http, grpc_port=self.grpc, metrics_port=self.metrics, allow_cpu_metrics=True,
                              metrics_interval_ms=1000, exit_timeout_secs=5,
                              log_file=Path(tempfile.gettempdir()) / f"pytriton-bench-{os.getpid()}.log")
        self._triton = Triton(config=config, security_config=TritonSecurityConfig(restricted_endpoints=[]))
        for name in self.repository.models():
            model_config = self.repository.read_config(name)
            settings = settings_from_config(model_config)
            inputs, outputs = tensor_specs(model_config.input), tensor_specs(model_config.output)
            threads = self.threads or max(1, (os.cpu_count() or 1) // settings.instance_count)
            path = self.repository.model_file(name)
            self._triton.bind(
                model_name=name,
                infer_func=[_OrtCallable(path, inputs, outputs, threads) for _ in range(settings.instance_count)],
                inputs=[Tensor(name=s.name, dtype=np.dtype(s.dtype), shape=s.dims) for s in inputs],
                outputs=[Tensor(name=s.name, dtype=np.dtype(s.dtype), shape=s.dims) for s in outputs],
                config=ModelConfig(batching=True, max_batch_size=settings.max_batch_size,
                                   batcher=DynamicBatcher(max_queue_delay_microseconds=settings.max_queue_delay_us)),
                strict=False,
            )
        self._triton.run()
        import time

        import requests

        deadline = time.monotonic() + 120  # PyTriton reports healthy before its models load
        while time.monotonic() < deadline and not all(
            requests.get(f"{self.http_url}/v2/models/{m}/ready", timeout=2).status_code == 200 for m in self.repository.models()
        ):
            time.sleep(0.2)
        return self

    def stop(self):
        if self._triton is not None:
            self._triton.stop()
            self._triton = None
