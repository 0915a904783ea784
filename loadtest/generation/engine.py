"""A streaming generation engine over an ONNX decoder with a KV cache, with in-flight batching.

Self-contained on purpose (numpy, onnxruntime and tokenizers only; no Triton, no loadtest import): the exporter
copies this file beside the Triton Python-backend ``model.py`` so the repository serves on any Triton,
NGC's container included.

The graph is the one ONNX Runtime GenAI's model builder writes (inputs ``input_ids``, ``attention_mask``,
``past_key_values.N.key/value``; outputs ``logits``, ``present.N.key/value``; attention by the
GroupQueryAttention operator). That operator reads each row's own length from its attention mask, so rows
whose caches hold different numbers of tokens can share one batch: each row's cache is right-padded to the
longest, and a decode step appends every row's new token after its own last one. The engine therefore runs:

- a new request's prompt alone (prefill, batch 1), then merges its cache into the running batch;
- one decode step for all running requests together, so concurrent requests share every ONNX Runtime call
  instead of queueing behind one another (in-flight batching, as vLLM and TensorRT-LLM schedule);
- a finished request leaves the batch at once and its slot is free for the next step.

Every token is handed to the request's callback as soon as it is sampled (text that may still grow into a
stop string, or an incomplete UTF-8 character, is held back until it cannot).
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

DEFAULT_MAX_TOKENS = 64
SAMPLING_KEYS = ("temperature", "top_p", "seed", "stop", "ignore_eos", "max_tokens", "min_tokens")


class GenerationError(ValueError):
    """A request the engine refuses (bad parameters, prompt too long): sent back to the client as its error."""


@dataclass
class SamplingParams:
    """Per-request generation parameters (the vLLM names); temperature 0 means greedy, the default."""

    max_tokens: int = DEFAULT_MAX_TOKENS
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    min_tokens: int = 0

    @classmethod
    def parse(cls, values: dict | None, max_tokens: int | None = None) -> SamplingParams:
        """From a ``sampling_parameters`` JSON object (and the separate ``max_tokens`` input), checked."""
        values = dict(values or {})
        unknown = sorted(set(values) - set(SAMPLING_KEYS))
        if unknown:
            raise GenerationError(f"unknown sampling parameters {unknown}; known: {list(SAMPLING_KEYS)}")
        if max_tokens is not None and "max_tokens" not in values:
            values["max_tokens"] = max_tokens
        stop = values.get("stop") or ()
        if isinstance(stop, str):
            stop = (stop,)
        try:
            params = cls(
                max_tokens=int(values.get("max_tokens", DEFAULT_MAX_TOKENS)),
                temperature=float(values.get("temperature", 0.0)),
                top_p=float(values.get("top_p", 1.0)),
                seed=None if values.get("seed") is None else int(values["seed"]),
                stop=tuple(str(s) for s in stop),
                ignore_eos=bool(values.get("ignore_eos", False)),
                min_tokens=int(values.get("min_tokens", 0)),
            )
        except (TypeError, ValueError) as exc:
            raise GenerationError(f"bad sampling parameter: {exc}") from None
        if params.max_tokens < 1:
            raise GenerationError(f"max_tokens must be >= 1, got {params.max_tokens}")
        if params.temperature < 0:
            raise GenerationError(f"temperature must be >= 0, got {params.temperature}")
        if not 0 < params.top_p <= 1:
            raise GenerationError(f"top_p must be in (0, 1], got {params.top_p}")
        if not 0 <= params.min_tokens <= params.max_tokens:
            raise GenerationError(f"min_tokens must be in [0, max_tokens], got {params.min_tokens}")
        if any(not s for s in params.stop):
            raise GenerationError("stop strings must not be empty")
        return params


@dataclass
class Chunk:
    """What a request's callback receives: new text, how many tokens it holds, and whether this ends the stream."""

    text: str
    tokens: int
    final: bool
    input_tokens: int | None = None  # set on the first chunk
    finish_reason: str | None = None  # "stop" (EOS or a stop string) or "length", on the final chunk
    error: str | None = None


Callback = Callable[[Chunk], None]


@dataclass
class _Request:
    prompt_ids: list[int]
    params: SamplingParams
    callback: Callback
    rng: np.random.Generator
    generated: list[int] = field(default_factory=list)
    sent_chars: int = 0
    unsent_tokens: int = 0
    first: bool = True
    length: int = 0  # tokens in this request's cache


class DecoderModel:
    """An ONNX Runtime session of a builder-exported decoder and its cache layout (from genai_config.json)."""

    def __init__(self, model_dir: Path | str, intra_op_threads: int = 0, providers: Sequence[str] | None = None):
        import onnxruntime as ort

        model_dir = Path(model_dir)
        config = json.loads((model_dir / "genai_config.json").read_text())["model"]
        decoder = config["decoder"]
        self.num_layers = int(decoder["num_hidden_layers"])
        self.kv_heads = int(decoder["num_key_value_heads"])
        self.head_size = int(decoder["head_size"])
        self.context_length = int(config["context_length"])
        self.vocab_size = int(config["vocab_size"])
        eos = config.get("eos_token_id")
        self.eos_ids = tuple(eos if isinstance(eos, list) else [eos]) if eos is not None else ()
        names = decoder["inputs"]
        outs = decoder["outputs"]
        self.past_names = [names[k] % i for i in range(self.num_layers)
                           for k in ("past_key_names", "past_value_names")]
        self.present_names = [outs[k] % i for i in range(self.num_layers)
                              for k in ("present_key_names", "present_value_names")]
        self.input_ids_name = names.get("input_ids", "input_ids")
        self.mask_name = names.get("attention_mask", "attention_mask")
        self.logits_name = outs.get("logits", "logits")
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        # Worker threads that busy-wait between the many small decode steps burn the cores the load generator
        # and the other instance need (the embedded server's ONNX models turn it off for the same reason).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(os.fspath(model_dir / decoder["filename"]), sess_options=options,
                                            providers=list(providers or ["CPUExecutionProvider"]))
        self._outputs = [self.logits_name, *self.present_names]

    def empty_cache(self, batch: int) -> list[np.ndarray]:
        shape = (batch, self.kv_heads, 0, self.head_size)
        return [np.zeros(shape, np.float32) for _ in self.past_names]

    def step(self, input_ids: np.ndarray, mask: np.ndarray, cache: list[np.ndarray]
             ) -> tuple[np.ndarray, list[np.ndarray]]:
        """One forward: logits of the last position per row ([batch, vocab]) and the grown cache."""
        feed = {self.input_ids_name: input_ids.astype(np.int64, copy=False),
                self.mask_name: mask.astype(np.int64, copy=False), **dict(zip(self.past_names, cache))}
        logits, *present = self.session.run(self._outputs, feed)
        return logits[:, -1, :], present


class GenerationEngine:
    """Runs requests concurrently over one decoder session, streaming tokens to callbacks.

    ``submit`` never blocks; a background thread admits waiting requests (up to ``max_batch`` running at
    once), prefills them and steps all running requests together.
    """

    def __init__(self, model_dir: Path | str, tokenizer_file: Path | str | None = None, *, max_batch: int = 16,
                 intra_op_threads: int = 0, providers: Sequence[str] | None = None):
        from tokenizers import Tokenizer

        model_dir = Path(model_dir)
        self.model = DecoderModel(model_dir, intra_op_threads, providers)
        self.tokenizer = Tokenizer.from_file(os.fspath(tokenizer_file or model_dir / "tokenizer.json"))
        config = json.loads((model_dir / "genai_config.json").read_text())["model"]
        self.bos_id = config.get("bos_token_id")
        self.max_batch = max(1, int(max_batch))
        self._waiting: queue.Queue[_Request | None] = queue.Queue()
        self._running: list[_Request] = []
        self._cache: list[np.ndarray] | None = None
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="generation-engine", daemon=True)
        self._thread.start()
        self.steps = 0  # decode steps run, and rows they carried (mean running batch = rows / steps)
        self.rows = 0

    # ---- requests ----------------------------------------------------------------------------
    def encode_prompt(self, prompt: str) -> list[int]:
        """BOS and the prompt's tokens, as the pair was trained (the tokenizer adds no specials itself)."""
        ids = self.tokenizer.encode(prompt, add_special_tokens=False).ids
        return ([self.bos_id] if self.bos_id is not None else []) + list(ids)

    def submit(self, prompt: str | Sequence[int], params: SamplingParams, callback: Callback) -> int:
        """Queue a request; returns its prompt token count. Raises GenerationError for a request it cannot run."""
        return len(self._submit(prompt, params, callback).prompt_ids)

    def _submit(self, prompt: str | Sequence[int], params: SamplingParams, callback: Callback) -> _Request:
        if self._stopped.is_set():
            raise GenerationError("the generation engine is stopped")
        ids = self.encode_prompt(prompt) if isinstance(prompt, str) else [int(t) for t in prompt]
        if not ids:
            raise GenerationError("empty prompt")
        if len(ids) + params.max_tokens > self.model.context_length:
            raise GenerationError(f"prompt of {len(ids)} tokens + max_tokens {params.max_tokens} exceeds the "
                                  f"context length {self.model.context_length}")
        request = _Request(ids, params, callback, np.random.default_rng(params.seed))
        self._waiting.put(request)
        return request

    def generate(self, prompt: str | Sequence[int], params: SamplingParams) -> tuple[list[int], str]:
        """Blocking convenience: the completion's token ids (as sampled) and its streamed text joined."""
        done = threading.Event()
        parts: list[str] = []
        errors: list[str] = []

        def collect(chunk: Chunk) -> None:
            parts.append(chunk.text)
            if chunk.error:
                errors.append(chunk.error)
            if chunk.final:
                done.set()

        request = self._submit(prompt, params, collect)
        done.wait()
        if errors:
            raise GenerationError(errors[0])
        return list(request.generated), "".join(parts)

    def stop(self) -> None:
        """Stop the loop; requests still running end with an error chunk."""
        self._stopped.set()
        self._waiting.put(None)
        self._thread.join(timeout=10)

    # ---- the loop ----------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stopped.is_set():
            try:
                self._admit(block=not self._running)
                if self._running:
                    self._decode()
            except Exception as exc:  # a failed step fails the requests in it, never the engine
                for request in self._running:
                    self._fail(request, f"generation failed: {type(exc).__name__}: {exc}")
                self._running, self._cache = [], None
        for request in self._running:
            self._fail(request, "the server is shutting down")
        while not self._waiting.empty():
            request = self._waiting.get_nowait()
            if request is not None:
                self._fail(request, "the server is shutting down")

    def _admit(self, block: bool) -> None:
        """Prefill waiting requests (one at a time) until the batch is full or nobody waits."""
        while len(self._running) < self.max_batch:
            try:
                request = self._waiting.get(block=block, timeout=None if block else 0)
            except queue.Empty:
                return
            if request is None:
                return
            block = False
            try:
                ids = np.asarray([request.prompt_ids], dtype=np.int64)
                logits, cache = self.model.step(ids, np.ones_like(ids), self.model.empty_cache(1))
            except Exception as exc:
                self._fail(request, f"prefill failed: {type(exc).__name__}: {exc}")
                continue
            request.length = len(request.prompt_ids)
            if self._emit(request, self._sample(request, logits[0])):
                continue  # finished on its first token
            self._join(request, cache)

    def _join(self, request: _Request, cache: list[np.ndarray]) -> None:
        """Add a prefilled request's cache to the running batch, right-padding whichever is shorter."""
        if self._cache is None or not self._running:
            self._running, self._cache = [request], cache
            return
        width = max(self._cache[0].shape[2], cache[0].shape[2])
        self._cache = [np.concatenate([_pad_to(a, width), _pad_to(b, width)]) for a, b in zip(self._cache, cache)]
        self._running.append(request)

    def _decode(self) -> None:
        """One step for every running request: each feeds its last token; rows that finish leave the batch."""
        running, cache = self._running, self._cache
        width = cache[0].shape[2]
        lengths = np.array([r.length for r in running])
        mask = (np.arange(width + 1)[None, :] <= lengths[:, None]).astype(np.int64)
        ids = np.array([[r.generated[-1]] for r in running], dtype=np.int64)
        logits, cache = self.model.step(ids, mask, cache)
        self.steps += 1
        self.rows += len(running)
        keep = []
        for row, request in enumerate(running):
            request.length += 1
            if not self._emit(request, self._sample(request, logits[row])):
                keep.append(row)
        if len(keep) < len(running):
            if keep:
                longest = max(running[row].length for row in keep)
                cache = [np.ascontiguousarray(a[keep, :, :longest]) for a in cache]
            running = [running[row] for row in keep]
        self._running, self._cache = running, (cache if running else None)

    # ---- sampling and streaming ----------------------------------------------------------------
    def _sample(self, request: _Request, logits: np.ndarray) -> int:
        params = request.params
        logits = logits.astype(np.float64)
        if len(request.generated) < params.min_tokens and self.model.eos_ids:
            logits[list(self.model.eos_ids)] = -np.inf
        if params.temperature == 0.0:
            return int(np.argmax(logits))
        logits = logits / params.temperature
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        if params.top_p < 1.0:
            order = np.argsort(-probs, kind="stable")
            cumulative = np.cumsum(probs[order])
            cut = int(np.searchsorted(cumulative, params.top_p)) + 1
            kept = np.zeros_like(probs)
            kept[order[:cut]] = probs[order[:cut]]
            probs = kept / kept.sum()
        return int(request.rng.choice(len(probs), p=probs))

    def _emit(self, request: _Request, token: int) -> bool:
        """Record a sampled token and stream what text is safe to send; True when the request is finished."""
        params = request.params
        request.generated.append(token)
        request.unsent_tokens += 1
        finish = None
        if token in self.model.eos_ids and not params.ignore_eos:
            finish = "stop"
        elif len(request.generated) >= params.max_tokens:
            finish = "length"
        text = self.tokenizer.decode(request.generated, skip_special_tokens=True)
        safe = len(text)
        for stop in params.stop:
            at = text.find(stop, max(0, request.sent_chars - len(stop) + 1))
            if at >= 0:
                finish, safe = "stop", at
                break
        if finish is None:
            safe = _held_back(text, params.stop)
        new = text[request.sent_chars : max(safe, request.sent_chars)]
        if finish is None and not new:
            return False
        request.sent_chars += len(new)
        chunk = Chunk(text=new, tokens=request.unsent_tokens, final=finish is not None,
                      input_tokens=len(request.prompt_ids) if request.first else None, finish_reason=finish)
        request.first = False
        request.unsent_tokens = 0
        self._deliver(request, chunk)
        return finish is not None

    def _fail(self, request: _Request, message: str) -> None:
        self._deliver(request, Chunk(text="", tokens=0, final=True, error=message,
                                     input_tokens=len(request.prompt_ids) if request.first else None))

    @staticmethod
    def _deliver(request: _Request, chunk: Chunk) -> None:
        try:
            request.callback(chunk)
        except Exception:  # a client gone away must not stop the others
            pass


def _held_back(text: str, stops: Sequence[str]) -> int:
    """How much of ``text`` can be sent: not a trailing partial UTF-8 character nor a possible stop-string start."""
    safe = len(text)
    while safe and text[safe - 1] == "\ufffd":
        safe -= 1
    for stop in stops:
        for k in range(min(len(stop) - 1, safe), 0, -1):
            if text[:safe].endswith(stop[:k]):
                safe = min(safe, len(text[:safe]) - k)
                break
    return safe


def _pad_to(cache: np.ndarray, width: int) -> np.ndarray:
    extra = width - cache.shape[2]
    if extra <= 0:
        return cache
    return np.pad(cache, ((0, 0), (0, 0), (0, extra), (0, 0)))


def wait_idle(engine: GenerationEngine, timeout_s: float = 30.0) -> None:
    """Block until the engine has nothing running or waiting (tests and benchmarks)."""
    deadline = time.monotonic() + timeout_s
    while (engine._running or not engine._waiting.empty()) and time.monotonic() < deadline:
        time.sleep(0.01)
