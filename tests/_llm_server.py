"""A real OpenAI-compatible server for the tests: ``transformers serve`` on loopback, serving tiny local models.

It is the package index's own server (transformers' serving extra), started as a child process on a
free port with the hub switched off; the test's models are folders it loads by path. The server logs one
``[Request received]`` line per request, which is its own request count the records reconcile with.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from loadtest.serving.ports import free_port

START_TIMEOUT_S = 120
REQUEST_LINE = re.compile(r"\[Request received\] Model: (\S+),")


class TransformersServe:
    """``transformers serve`` on 127.0.0.1:PORT; ``url``, ``received()`` (requests per model so far), ``stop()``."""

    def __init__(self, workdir: Path, *, force_model: Path | None = None, extra: list[str] | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / f"transformers-serve-{self.port}.log"
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HOME=str(workdir / "hf-home"),
                   TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")  # fmt: skip
        command = [sys.executable, "-c", "from transformers.cli.transformers import main; main()", "serve"]
        if force_model is not None:
            command.append(str(force_model))
        command += ["--host", "127.0.0.1", "--port", str(self.port), "--device", "cpu", "--log-level", "warning"]
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen(command + list(extra or []), stdout=self._log, stderr=subprocess.STDOUT,
                                        env=env, start_new_session=True)  # fmt: skip
        self._wait_healthy()

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"transformers serve exited: {self.log_path.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"transformers serve not healthy within {START_TIMEOUT_S}s: {self.log_path}")

    def load(self, model: Path) -> None:
        """Make the server load ``model`` now (it loads models on their first request, which takes seconds)."""
        import json

        body = json.dumps({"model": str(model), "prompt": "the", "max_tokens": 1}).encode()
        request = urllib.request.Request(f"{self.url}/v1/completions", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=START_TIMEOUT_S) as response:
            response.read()

    def received(self) -> dict[str, int]:
        """Requests the server logged as received, per model name as it resolved them."""
        self._log.flush()
        counts: dict[str, int] = {}
        for match in REQUEST_LINE.finditer(self.log_path.read_text(errors="replace")):
            counts[match.group(1)] = counts.get(match.group(1), 0) + 1
        return counts

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)
        self._log.close()
