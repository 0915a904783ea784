"""Parity of an exported causal LM (ONNX with a KV cache) against its PyTorch source.

Two checks, both refusing the export on failure:

- **logits** at several (batch, new tokens, past tokens) shapes: the ONNX graph first fills its cache with
  ``past`` tokens, then scores ``sequence`` more; PyTorch scores all of them at once without a cache. Every
  logit must agree within ``atol`` and every argmax must agree. Shapes include a one-token decode step after
  a long past (the step served most) and prompts with no past at all (prefill).
- **greedy tokens** on real prompts: PyTorch's ``generate`` (its own KV cache), ONNX Runtime GenAI's
  generation loop on the exported graph, and loadtest's generation engine running all prompts at once
  (in-flight batching, rows of different lengths sharing decode steps) must produce identical tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydantic import BaseModel

from exporters.parity import ParityError

# (batch, new tokens, cached tokens). GroupQueryAttention runs several new tokens after a cache only at batch 1
# (ONNX Runtime: "batch_size must be 1 when sequence_length > 1 and past context is given"), which is how the
# engine uses it: prompts are prefilled alone or without a cache, decode steps batch one token per row.
DEFAULT_LM_SHAPES: tuple[tuple[int, int, int], ...] = ((1, 7, 0), (3, 1, 40), (1, 16, 25), (4, 33, 0), (5, 1, 120))
MIN_GREEDY_PROMPTS = 20


class LogitsShapeParity(BaseModel):
    batch: int
    sequence: int
    past: int
    max_abs_diff: float | None
    argmax_agreement: float | None
    passed: bool
    error: str | None = None


class GreedyParity(BaseModel):
    prompts: int
    max_new_tokens: int
    tokens_compared: int
    onnxruntime_genai_identical: int  # prompts whose tokens equal PyTorch's
    engine_identical: int  # prompts whose engine tokens equal ONNX Runtime GenAI's
    passed: bool
    first_mismatch: str | None = None


class LmParityReport(BaseModel):
    method: str = "pytorch-reference"
    candidate: str = "onnxruntime"
    reference: str = "pytorch"
    atol: float
    logits: list[LogitsShapeParity]
    greedy: GreedyParity
    passed: bool

    @property
    def worst_max_abs_diff(self) -> float | None:
        diffs = [s.max_abs_diff for s in self.logits if s.max_abs_diff is not None]
        return max(diffs) if diffs else None


def check_lm_parity(model, onnx_dir: Path, tokenizer, prompts: Sequence[str], *, atol: float = 1e-4,
                    shapes: Sequence[tuple[int, int, int]] = DEFAULT_LM_SHAPES, max_new_tokens: int = 24,
                    seed: int = 0) -> LmParityReport:
    """Run both checks; raise ParityError (with the report) when either fails."""
    from loadtest.generation.engine import DecoderModel

    if len(prompts) < MIN_GREEDY_PROMPTS:
        raise ParityError(f"greedy parity needs at least {MIN_GREEDY_PROMPTS} prompts, got {len(prompts)}")
    decoder = DecoderModel(onnx_dir)
    logits = [_logits_at(model, decoder, b, s, p, atol, seed + i) for i, (b, s, p) in enumerate(shapes)]
    greedy = _greedy(model, onnx_dir, tokenizer, prompts, max_new_tokens)
    report = LmParityReport(atol=atol, logits=logits, greedy=greedy,
                            passed=all(s.passed for s in logits) and greedy.passed)
    if not report.passed:
        bad = next((s for s in logits if not s.passed), None)
        if bad is not None:
            what = bad.error or f"max |Δ| {bad.max_abs_diff:.2e} (atol {atol:g}), argmax agreement {bad.argmax_agreement:.3f}"
            raise ParityError(f"ONNX logits differ from PyTorch at batch {bad.batch}, {bad.sequence} new tokens after "
                              f"{bad.past} cached: {what}", None)
        raise ParityError(f"greedy tokens differ: {greedy.first_mismatch}", None)
    return report


def _logits_at(model, decoder, batch: int, sequence: int, past: int, atol: float, seed: int) -> LogitsShapeParity:
    import torch

    rng = np.random.default_rng(seed)
    vocab = decoder.vocab_size
    ids = rng.integers(3, vocab, size=(batch, past + sequence))  # ordinary tokens, no specials
    try:
        cache = decoder.empty_cache(batch)
        if past:
            _, cache = decoder.step(ids[:, :past], np.ones((batch, past)), cache)
        feed = {decoder.input_ids_name: ids[:, past:], decoder.mask_name: np.ones((batch, past + sequence), np.int64),
                **dict(zip(decoder.past_names, cache))}
        got = decoder.session.run([decoder.logits_name], feed)[0]
    except Exception as exc:  # an export that cannot run a shape fails parity at that shape
        return LogitsShapeParity(batch=batch, sequence=sequence, past=past, max_abs_diff=None, argmax_agreement=None,
                                 passed=False, error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
    with torch.inference_mode():
        want = model(input_ids=torch.as_tensor(ids)).logits[:, past:].float().numpy()
    if got.shape != want.shape:
        return LogitsShapeParity(batch=batch, sequence=sequence, past=past, max_abs_diff=None, argmax_agreement=None,
                                 passed=False, error=f"logits shape {got.shape}, expected {want.shape}")
    diff = float(np.abs(got - want).max())
    agreement = float((got.argmax(-1) == want.argmax(-1)).mean())
    return LogitsShapeParity(batch=batch, sequence=sequence, past=past, max_abs_diff=diff,
                             argmax_agreement=agreement, passed=diff <= atol and agreement == 1.0)


def _greedy(model, onnx_dir: Path, tokenizer, prompts: Sequence[str], max_new_tokens: int) -> GreedyParity:
    from loadtest.generation.engine import GenerationEngine, SamplingParams
    from loadtest.genpair.train import greedy_answers, prompt_ids

    torch_tokens = greedy_answers(model, tokenizer, prompts, max_new_tokens)
    og_tokens = [ort_genai_greedy(onnx_dir, prompt_ids(tokenizer, p), max_new_tokens) for p in prompts]
    engine = GenerationEngine(onnx_dir, max_batch=len(prompts))
    try:
        import threading

        results: list[list[int] | None] = [None] * len(prompts)

        def run(i: int) -> None:
            results[i] = engine.generate(prompt_ids(tokenizer, prompts[i]), SamplingParams(max_tokens=max_new_tokens))[0]

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    finally:
        engine.stop()
    eos = tokenizer.eos_token_id
    engine_tokens = [[t for t in (r or []) if t != eos] for r in results]
    same_og = sum(a == b for a, b in zip(torch_tokens, og_tokens))
    same_engine = sum(a == b for a, b in zip(og_tokens, engine_tokens))
    mismatch = None
    for i, (a, b, c) in enumerate(zip(torch_tokens, og_tokens, engine_tokens)):
        if a != b or b != c:
            mismatch = f"prompt {i}: pytorch {a[:12]}…, onnxruntime-genai {b[:12]}…, engine {c[:12]}…"
            break
    return GreedyParity(prompts=len(prompts), max_new_tokens=max_new_tokens,
                        tokens_compared=sum(len(t) for t in torch_tokens), onnxruntime_genai_identical=same_og,
                        engine_identical=same_engine, passed=mismatch is None, first_mismatch=mismatch)


_OG_MODELS: dict[str, object] = {}


def ort_genai_greedy(onnx_dir: Path, ids: Sequence[int], max_new_tokens: int) -> list[int]:
    """ONNX Runtime GenAI's own generation loop, greedy: the new token ids (EOS excluded)."""
    import onnxruntime_genai as og

    key = str(Path(onnx_dir).resolve())
    if key not in _OG_MODELS:
        _OG_MODELS[key] = og.Model(key)
    model = _OG_MODELS[key]
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=len(ids) + max_new_tokens)
    generator = og.Generator(model, params)
    generator.append_tokens(np.asarray(ids, dtype=np.int32))
    out: list[int] = []
    while not generator.is_done() and len(out) < max_new_tokens:
        generator.generate_next_token()
        out.append(int(generator.get_next_tokens()[0]))
    eos = _eos_ids(onnx_dir)
    return [t for t in out if t not in eos]


def _eos_ids(onnx_dir: Path) -> set[int]:
    import json

    eos = json.loads((Path(onnx_dir) / "genai_config.json").read_text())["model"].get("eos_token_id")
    return set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
