"""Concurrent generation: loadtest's engine (in-flight batching) vs ONNX Runtime GenAI's own loop, in-process.

Both run the same exported graph (a model folder of a generative repository, ``<repo>/<name>/1``). N requests
of the same prompt length ask for exactly T tokens each (EOS ignored); figures of one run, printed as ratios:

- ``ort-genai sequential``: ONNX Runtime GenAI's ``Generator``, one request after another (how one
  instance serves requests when its loop is not shared);
- ``ort-genai threads``: N Generators on N threads over one ``og.Model`` (concurrent instances in one process);
- ``engine``: all N submitted at once to ``GenerationEngine`` (decode steps interleaved across requests);
- ``engine max_batch=1``: the same engine forced to serialise, to show what the interleaving buys.

Usage: python benchmarks/generation_engine.py --repo model_repository_gen --model teacher --requests 8 --tokens 32
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from pathlib import Path

import numpy as np


def prompts_for(tokenizer_file: Path, n: int) -> list[list[int]]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_file))
    texts = [f"customer (retail): my card number {i} was stolen at the station yesterday, please help.\nagent:"
             for i in range(n)]
    return [[1, *tok.encode(t, add_special_tokens=False).ids] for t in texts]


def og_one(model, ids: list[int], tokens: int, start: float | None = None) -> tuple[float, float]:
    """(time to first token, end) of one greedy request through ONNX Runtime GenAI, EOS ignored (min_length),
    measured from ``start`` (default: now)."""
    import onnxruntime_genai as og

    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=len(ids) + tokens, min_length=len(ids) + tokens)
    start = time.perf_counter() if start is None else start
    generator = og.Generator(model, params)
    generator.append_tokens(np.asarray(ids, dtype=np.int32))
    first = None
    made = 0
    while not generator.is_done() and made < tokens:
        generator.generate_next_token()
        made += 1
        if first is None:
            first = time.perf_counter() - start
    if made != tokens:
        raise RuntimeError(f"ONNX Runtime GenAI stopped after {made} of {tokens} tokens")
    return first or 0.0, time.perf_counter() - start


def run_og(model_dir: Path, prompts: list[list[int]], tokens: int, threads: bool) -> dict:
    import onnxruntime_genai as og

    model = og.Model(str(model_dir))
    og_one(model, prompts[0], 4)  # warm-up
    results: list[tuple[float, float]] = [(0.0, 0.0)] * len(prompts)
    start = time.perf_counter()
    if threads:
        def work(i: int) -> None:
            results[i] = og_one(model, prompts[i], tokens, start)

        pool = [threading.Thread(target=work, args=(i,)) for i in range(len(prompts))]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
    else:
        for i, ids in enumerate(prompts):  # all arrived at start: each waits for the ones before it
            results[i] = og_one(model, ids, tokens, start)
    return _summary(time.perf_counter() - start, results, tokens)


def run_engine(model_dir: Path, prompts: list[list[int]], tokens: int, max_batch: int) -> dict:
    from loadtest.generation.engine import GenerationEngine, SamplingParams

    engine = GenerationEngine(model_dir, max_batch=max_batch)
    params = SamplingParams(max_tokens=tokens, ignore_eos=True)
    engine.generate(prompts[0], SamplingParams(max_tokens=4))  # warm-up
    results: list[tuple[float, float]] = [(0.0, 0.0)] * len(prompts)
    left = [len(prompts)]
    all_done = threading.Event()
    lock = threading.Lock()
    start = time.perf_counter()
    engine.steps = engine.rows = 0

    def make(i: int):
        state = {"first": None}

        def callback(chunk) -> None:
            now = time.perf_counter() - start
            if state["first"] is None and chunk.tokens:
                state["first"] = now
            if chunk.final:  # runs on the engine's thread: record and return, never block it
                results[i] = (state["first"] or now, now)
                with lock:
                    left[0] -= 1
                    if not left[0]:
                        all_done.set()
        return callback

    for i, ids in enumerate(prompts):
        engine.submit(ids, params, make(i))
    all_done.wait()
    wall = time.perf_counter() - start
    summary = _summary(wall, results, tokens)
    summary["mean_batch"] = engine.rows / max(engine.steps, 1)
    engine.stop()
    return summary


def _summary(wall: float, results: list[tuple[float, float]], tokens: int) -> dict:
    return {"wall_s": wall, "tokens_per_s": len(results) * tokens / wall,
            "mean_ttft_ms": 1e3 * statistics.mean(r[0] for r in results),
            "mean_e2e_ms": 1e3 * statistics.mean(r[1] for r in results)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, required=True, help="a generative model repository")
    parser.add_argument("--model", default="teacher")
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=32)
    args = parser.parse_args()
    model_dir = args.repo / args.model / "1"
    prompts = prompts_for(model_dir / "tokenizer.json", args.requests)
    runs = {
        "ort-genai sequential": lambda: run_og(model_dir, prompts, args.tokens, threads=False),
        "ort-genai threads": lambda: run_og(model_dir, prompts, args.tokens, threads=True),
        "engine max_batch=1": lambda: run_engine(model_dir, prompts, args.tokens, max_batch=1),
        "engine": lambda: run_engine(model_dir, prompts, args.tokens, max_batch=args.requests),
    }
    print(f"{args.model}: {args.requests} concurrent requests x {args.tokens} tokens, prompt {len(prompts[0])} tokens")
    print(f"{'loop':24s} {'tokens/s':>9s} {'x seq':>6s} {'mean TTFT ms':>13s} {'mean E2E ms':>12s} {'batch':>6s}")
    base = None
    for name, run in runs.items():
        row = run()
        base = base or row["tokens_per_s"]
        print(f"{name:24s} {row['tokens_per_s']:9.0f} {row['tokens_per_s'] / base:6.2f} {row['mean_ttft_ms']:13.1f} "
              f"{row['mean_e2e_ms']:12.1f} {row.get('mean_batch', float('nan')):6.1f}", flush=True)


if __name__ == "__main__":
    main()
