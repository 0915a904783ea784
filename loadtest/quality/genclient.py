"""Clients of the served generative models for the evaluation: answers, teacher-forced log-probs, a judge.

Two kinds of server, one interface:

- **Triton** (the generative contract: ``text_input``/``max_tokens``/``sampling_parameters`` in,
  ``text_output``/``num_output_tokens`` out): answers from ``POST /v2/models/NAME/generate`` with
  ``stream: false``; teacher-forced log-probs from the scoring model ``NAME_score`` (see
  docs/architecture.md, "Scoring model"): token ids in, the full next-token log-probabilities at every
  reference position out.
- **OpenAI-compatible** (vLLM, TensorRT-LLM, SGLang, ``transformers serve``): answers from
  ``/v1/completions`` (or ``/v1/chat/completions`` with ``--chat``); log-probs from ``/v1/completions`` with
  ``echo`` and ``logprobs`` on prompt + reference, *when the server gives them*: only the chosen tokens'
  log-probs and the top-1 token come back, so perplexity and top-1 agreement are measured there but not
  KL (which needs whole distributions).

Greedy decoding (temperature 0) with a fixed seed, the same max_tokens for both models. Requests run a
few at a time (servers batch concurrent requests); a failed request is recorded with the server's text.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from loadtest.errors import LoadtestError
from loadtest.quality.genassemble import Generated

SCORE_SUFFIX = "_score"


@dataclass
class GenerationSettings:
    max_tokens: int = 64
    seed: int = 0
    concurrency: int = 4
    timeout_s: float = 120.0
    chat: bool = False  # OpenAI: /v1/chat/completions instead of /v1/completions


def _session():
    import requests

    return requests.Session()


def _first(value):
    """Triton's generate endpoint returns a [1] tensor as a scalar or a one-element list."""
    return value[0] if isinstance(value, list) and value else value


class TritonGenerative:
    """Triton's HTTP generate endpoint and the ``<model>_score`` scoring models."""

    kind = "triton"

    def __init__(self, url: str, timeout_s: float = 120.0):
        if url.startswith("grpc://"):
            raise LoadtestError("generative evaluation talks to Triton's HTTP endpoint: give --host http://HOST:PORT (the HTTP port)")
        self.url = url.rstrip("/") if "://" in url else f"http://{url.rstrip('/')}"
        self.timeout_s = timeout_s
        self.http = _session()

    def _get(self, path: str):
        import requests

        try:
            return self.http.get(f"{self.url}{path}", timeout=10)
        except requests.RequestException as exc:
            raise LoadtestError(f"cannot reach Triton at {self.url}: {exc.__class__.__name__}") from None

    def ready(self, model: str) -> bool:
        return self._get(f"/v2/models/{model}/ready").status_code == 200

    def check_ready(self, models: list[str]) -> None:
        if self._get("/v2/health/live").status_code != 200:
            raise LoadtestError(f"Triton at {self.url} is not live")
        for model in models:
            if not self.ready(model):
                raise LoadtestError(f"model '{model}' is not ready on Triton at {self.url} (check the name and `loadtest serve`'s log)")

    def generate(self, model: str, prompt: str, settings: GenerationSettings) -> Generated:
        body = {
            "text_input": prompt,
            "max_tokens": settings.max_tokens,
            "stream": False,
            "sampling_parameters": json.dumps({"temperature": 0.0, "seed": settings.seed, "max_tokens": settings.max_tokens}),
        }
        response, failed = _post_answer(self.http, f"{self.url}/v2/models/{model}/generate", body, settings.timeout_s)
        if failed is not None:
            return failed
        data = response.json()
        text = _first(data.get("text_output"))
        if not isinstance(text, str):
            return Generated("", 0, f"no text_output in the answer: {str(data)[:200]}")
        tokens = _first(data.get("num_output_tokens"))
        return Generated(text, int(tokens) if tokens is not None else -1)

    def score(self, model: str, input_ids: list[int], prompt_length: int) -> np.ndarray:
        """Log-probs (reference positions × vocabulary) from ``<model>_score``."""
        import tritonclient.http as httpclient
        from tritonclient.utils import InferenceServerException

        client = getattr(self, "_triton", None)
        if client is None:
            client = self._triton = httpclient.InferenceServerClient(self.url.split("://", 1)[1], network_timeout=self.timeout_s, connection_timeout=self.timeout_s)
        ids = httpclient.InferInput("input_ids", [len(input_ids)], "INT64")
        ids.set_data_from_numpy(np.asarray(input_ids, dtype=np.int64))
        length = httpclient.InferInput("prompt_length", [1], "INT32")
        length.set_data_from_numpy(np.asarray([prompt_length], dtype=np.int32))
        try:
            result = client.infer(model + SCORE_SUFFIX, [ids, length], outputs=[httpclient.InferRequestedOutput("logprobs", binary_data=True)])
        except InferenceServerException as exc:
            raise LoadtestError(f"scoring model '{model}{SCORE_SUFFIX}' failed: {exc.message() or exc}") from None
        return result.as_numpy("logprobs")


class OpenAIGenerative:
    """An OpenAI-compatible server (``/v1/models``, ``/v1/completions``, ``/v1/chat/completions``)."""

    kind = "openai"

    def __init__(self, url: str, timeout_s: float = 120.0, api_key: str | None = None):
        self.url = url.rstrip("/")
        if self.url.endswith("/v1"):
            self.url = self.url[:-3]
        self.timeout_s = timeout_s
        self.http = _session()
        if api_key:
            self.http.headers["Authorization"] = f"Bearer {api_key}"

    def check_ready(self, models: list[str]) -> None:
        """Reachable and healthy; model names are checked by the first answers (servers load by name on demand)."""
        import requests

        answers, unreachable = [], []
        # /health first (vLLM, SGLang, trtllm-serve, transformers serve), then /v1/models (OpenAI itself). A server
        # may fail one probe and close the connection (transformers serve answers /v1/models with a 500 when its hub
        # cache folder does not exist): try the next probe before calling the server unreachable.
        for path in ("/health", "/v1/models"):
            try:
                response = self.http.get(f"{self.url}{path}", timeout=10)
            except requests.RequestException as exc:
                unreachable.append(exc.__class__.__name__)
                continue
            if response.status_code == 200:
                return
            answers.append(f"{path}: HTTP {response.status_code}")
        if not answers:
            raise LoadtestError(f"cannot reach the OpenAI-compatible server at {self.url}: {unreachable[0]}")
        raise LoadtestError(f"the OpenAI-compatible server at {self.url} is not ready ({'; '.join(answers)})")

    def generate(self, model: str, prompt: str, settings: GenerationSettings) -> Generated:
        common = {"model": model, "max_tokens": settings.max_tokens, "temperature": 0.0, "seed": settings.seed, "stream": False}
        if settings.chat:
            path, body = "/v1/chat/completions", {**common, "messages": [{"role": "user", "content": prompt}]}
        else:
            path, body = "/v1/completions", {**common, "prompt": prompt}
        response, failed = _post_answer(self.http, f"{self.url}{path}", body, settings.timeout_s)
        if failed is not None:
            return failed
        try:
            data = response.json()
            choice = data["choices"][0]
            text = choice["message"]["content"] if settings.chat else choice["text"]
        except (ValueError, KeyError, IndexError, TypeError):
            return Generated("", 0, f"unexpected answer: {response.text[:300]}")
        usage = data.get("usage") or {}
        tokens = usage.get("completion_tokens")
        return Generated(text or "", int(tokens) if tokens is not None else -1)

    def prompt_logprobs(self, model: str, prompt: str, continuation: str, timeout_s: float) -> tuple[list[float], list[str | None]] | None:
        """Log-probs of the continuation's tokens given the prompt (and each position's top-1 token), or None.

        ``/v1/completions`` with ``echo: true, logprobs: 1``; tokens whose text offset falls in the
        continuation are the reference tokens. None when the server does not return prompt log-probs.
        """
        import requests

        body = {"model": model, "prompt": prompt + continuation, "max_tokens": 1, "temperature": 0.0, "echo": True, "logprobs": 1}
        try:
            response = self.http.post(f"{self.url}/v1/completions", json=body, timeout=timeout_s)
            data = response.json() if response.status_code == 200 else None
            logprobs = data["choices"][0]["logprobs"] if data else None
        except (requests.RequestException, ValueError, KeyError, IndexError, TypeError):
            return None
        if not logprobs or not logprobs.get("token_logprobs") or not logprobs.get("text_offset"):
            return None
        offsets, values = logprobs["text_offset"], logprobs["token_logprobs"]
        tops = logprobs.get("top_logprobs") or [None] * len(values)
        shift = _special_prefix_length(data["choices"][0].get("text") or "", logprobs.get("tokens") or [], offsets)
        end = len(prompt) + len(continuation)
        chosen, top1 = [], []
        for offset, value, top in zip(offsets, values, tops):
            if len(prompt) <= offset - shift < end and value is not None:
                chosen.append(float(value))
                top1.append(max(top, key=top.get) if top else None)
        return (chosen, top1) if chosen else None


def _post_answer(http, url: str, body: dict, timeout_s: float):
    """POST one generation request; returns ``(response, None)`` on HTTP 200, else ``(None, failed Generated)``.

    Both servers' clients record a transport error or a non-200 answer the same way (the server's text,
    cut to 300 characters), so a failed request reads alike in the per-example log whatever the server.
    """
    import requests

    try:
        response = http.post(url, json=body, timeout=timeout_s)
    except requests.RequestException as exc:
        return None, Generated("", 0, f"{exc.__class__.__name__}: {exc}")
    if response.status_code != 200:
        return None, Generated("", 0, f"HTTP {response.status_code}: {response.text[:300]}")
    return response, None


def _special_prefix_length(text: str, tokens: list[str], offsets: list[int]) -> int:
    """Characters the server's ``text_offset`` counts before the echoed text begins (0 for most servers).

    vLLM counts a BOS token's text (``<s>``: 3) in the offsets but not in the echoed text, which would shift
    every token by that much. The last token (the one generated) ends where the text ends: the difference
    is the shift; failing that, the first token the text starts with begins the text.
    """
    if not tokens or len(tokens) != len(offsets):
        return 0
    last = tokens[-1]
    if last and text.endswith(last):
        shift = offsets[-1] + len(last) - len(text)
        if shift >= 0:
            return shift
    for token, offset in zip(tokens, offsets):
        if token and text.startswith(token):
            return offset
    return 0


def connect(host: str, openai: bool, timeout_s: float, api_key: str | None = None):
    return OpenAIGenerative(host, timeout_s, api_key) if openai else TritonGenerative(host, timeout_s)


def generate_all(client, model: str, prompts: list[str], settings: GenerationSettings, on_done: Callable[[int], None] | None = None) -> list[Generated]:
    """Every prompt's answer, a few requests in flight at once, in dataset order."""
    results: list[Generated | None] = [None] * len(prompts)

    def one(i: int) -> None:
        results[i] = client.generate(model, prompts[i], settings)
        if on_done:
            on_done(1)

    with ThreadPoolExecutor(max_workers=max(1, settings.concurrency)) as pool:
        list(pool.map(one, range(len(prompts))))
    return [r for r in results if r is not None]
