"""The wire formats of the serving APIs a generative load test speaks: request bodies and chunk parsing.

APIs (``--api``):

* ``openai-chat`` / ``openai-completions``: ``POST /v1/chat/completions`` or ``/v1/completions`` with
  ``stream: true`` (vLLM, TensorRT-LLM's trtllm-serve, SGLang, Triton's OpenAI frontend, ``transformers
  serve``); chunks are Server-Sent Events ending with ``data: [DONE]``; usage (token counts) is asked for
  with ``stream_options.include_usage`` and read from the chunk that carries it.
* ``triton-generate``: Triton's ``POST /v2/models/NAME/generate_stream`` (SSE) or ``/generate``.
* ``triton-grpc``: Triton's ``ModelStreamInfer`` (built in ``loadtest.load.stream_clients``).

Both Triton APIs follow the generative model contract of docs/architecture.md: ``text_input``,
``max_tokens``, ``stream``, ``sampling_parameters`` (JSON) in; ``text_output``, ``num_output_tokens``,
``num_input_tokens`` out. Parsing never raises: a chunk that is not what the API promises becomes a
``Chunk`` with an ``error`` carrying the server's own text, so the request is a recorded failure.
Never imports Locust or gevent.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

OPENAI_CHAT = "openai-chat"
OPENAI_COMPLETIONS = "openai-completions"
TRITON_GENERATE = "triton-generate"
TRITON_GRPC = "triton-grpc"
APIS = (OPENAI_CHAT, OPENAI_COMPLETIONS, TRITON_GENERATE, TRITON_GRPC)
SSE_DONE = "[DONE]"
ERROR_TEXT_LIMIT = 500


@dataclass(frozen=True)
class Chunk:
    """What one streamed chunk (or a whole non-streamed answer) says."""

    text: str = ""
    output_tokens: int | None = None  # tokens in this chunk (Triton's num_output_tokens)
    usage_output_tokens: int | None = None  # the whole answer's count (OpenAI usage.completion_tokens)
    input_tokens: int | None = None  # prompt tokens as the server counted them
    finish_reason: str | None = None
    error: str | None = None
    done: bool = False  # end of stream marker ([DONE], or Triton's final response)


def clip(text: str, limit: int = ERROR_TEXT_LIMIT) -> str:
    """At most ``limit`` characters, keeping the head and the tail (where a traceback says what failed)."""
    text = text.strip()
    if len(text) <= limit:
        return text
    head = limit * 2 // 5
    return text[:head] + " … " + text[-(limit - head):]


def _int(value) -> int | None:
    if isinstance(value, list) and len(value) == 1:  # Triton's JSON may wrap scalars of shape [1]
        value = value[0]
    try:
        return None if value is None or isinstance(value, bool) else int(value)
    except (TypeError, ValueError):
        return None


def _error_of(data: dict) -> str | None:
    err = data.get("error")
    if err is None:
        return None
    if isinstance(err, dict):
        message = err.get("message") or json.dumps(err)
        code = err.get("code") or err.get("type")
        return clip(f"{code}: {message}" if code else str(message))
    return clip(str(err))


def _load(payload: str) -> dict | str:
    """The chunk's JSON object, or an error text naming the chunk."""
    try:
        data = json.loads(payload)
    except ValueError:
        return f"chunk is not valid JSON: {clip(payload, 200)!r}"
    if not isinstance(data, dict):
        return f"chunk is not a JSON object: {clip(payload, 200)!r}"
    return data


# ---- OpenAI-compatible ------------------------------------------------------------------------
def openai_path(api: str) -> str:
    return "/v1/chat/completions" if api == OPENAI_CHAT else "/v1/completions"


def openai_body(api: str, model: str, prompt: str | None, messages: list | None, max_tokens: int, *,
                stream: bool, ignore_eos: bool, extra: dict | None = None) -> dict:  # fmt: skip
    """An OpenAI request body. ``ignore_eos`` asks for exactly ``max_tokens`` (vLLM/SGLang's extensions)."""
    body: dict = {"model": model, "max_tokens": int(max_tokens), "stream": bool(stream)}
    if api == OPENAI_CHAT:
        body["messages"] = messages if messages is not None else [{"role": "user", "content": prompt or ""}]
    else:
        body["prompt"] = prompt or ""
    if stream:
        body["stream_options"] = {"include_usage": True}
    if ignore_eos:
        body["ignore_eos"] = True
        body["min_tokens"] = int(max_tokens)
    body.update(extra or {})
    return body


def parse_openai_event(api: str, payload: str) -> Chunk:
    """One SSE ``data:`` payload of a streamed OpenAI answer."""
    if payload.strip() == SSE_DONE:
        return Chunk(done=True)
    data = _load(payload)
    if isinstance(data, str):
        return Chunk(error=data)
    return _openai_fields(api, data, streamed=True)


def parse_openai_response(api: str, body: str) -> Chunk:
    """A whole (non-streamed) OpenAI answer."""
    data = _load(body)
    if isinstance(data, str):
        return Chunk(error=data.replace("chunk", "answer", 1))
    chunk = _openai_fields(api, data, streamed=False)
    return Chunk(chunk.text, chunk.output_tokens, chunk.usage_output_tokens, chunk.input_tokens,
                 chunk.finish_reason, chunk.error, done=True)  # fmt: skip


def _openai_fields(api: str, data: dict, *, streamed: bool) -> Chunk:
    error = _error_of(data)
    if error is not None:
        return Chunk(error=error)
    usage = data.get("usage") or {}
    choices = data.get("choices")
    if choices is None and not usage:
        return Chunk(error=f"chunk has neither choices nor usage: {clip(json.dumps(data), 200)}")
    text, finish = "", None
    if choices:
        choice = choices[0] if isinstance(choices[0], dict) else {}
        finish = choice.get("finish_reason")
        if api == OPENAI_CHAT:
            part = choice.get("delta" if streamed else "message") or {}
            text = part.get("content") or ""
        else:
            text = choice.get("text") or ""
    return Chunk(
        text=text if isinstance(text, str) else str(text),
        usage_output_tokens=_int(usage.get("completion_tokens")),
        input_tokens=_int(usage.get("prompt_tokens")),
        finish_reason=finish,
    )


# ---- Triton generate (HTTP) -------------------------------------------------------------------
def triton_sampling_parameters(max_tokens: int, ignore_eos: bool, extra: dict | None) -> dict:
    params: dict = dict(extra or {})
    if ignore_eos:
        params.setdefault("ignore_eos", True)
        params.setdefault("min_tokens", int(max_tokens))
    return params


def triton_generate_path(model: str, stream: bool) -> str:
    return f"/v2/models/{model}/generate_stream" if stream else f"/v2/models/{model}/generate"


def triton_generate_body(prompt: str, max_tokens: int, *, stream: bool, ignore_eos: bool,
                         extra: dict | None = None) -> dict:  # fmt: skip
    """Triton's generate-extension body for the generative model contract."""
    body: dict = {"text_input": prompt, "max_tokens": int(max_tokens), "stream": bool(stream)}
    params = triton_sampling_parameters(max_tokens, ignore_eos, extra)
    if params:
        body["sampling_parameters"] = json.dumps(params)
    return body


def parse_triton_event(payload: str) -> Chunk:
    """One SSE ``data:`` payload of ``generate_stream`` (or the body of ``generate``)."""
    data = _load(payload)
    if isinstance(data, str):
        return Chunk(error=data)
    error = _error_of(data)
    if error is not None:
        return Chunk(error=error)
    if "text_output" not in data and "num_output_tokens" not in data:
        return Chunk(error=f"response has no text_output: {clip(json.dumps(data), 200)}")
    text = data.get("text_output") or ""
    if isinstance(text, list):
        text = "".join(str(t) for t in text)
    return Chunk(text=str(text), output_tokens=_int(data.get("num_output_tokens")),
                 input_tokens=_int(data.get("num_input_tokens")))  # fmt: skip


# ---- Server-Sent Events -----------------------------------------------------------------------
class SSEParser:
    """Turns the lines of an ``text/event-stream`` body into event payloads (the joined ``data:`` lines).

    An event ends at a blank line (or the end of the body); comments (``:``) and other fields are skipped.
    """

    def __init__(self) -> None:
        self._data: list[str] = []

    def feed_line(self, line: str) -> str | None:
        """Feed one line (without its newline); return an event's payload when one completes."""
        line = line.rstrip("\r")
        if not line:
            return self.flush()
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        if name == "data":
            self._data.append(value[1:] if value.startswith(" ") else value)
        return None

    def flush(self) -> str | None:
        if not self._data:
            return None
        payload, self._data = "\n".join(self._data), []
        return payload
