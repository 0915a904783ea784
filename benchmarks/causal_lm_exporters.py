"""ONNX Runtime GenAI's model builder vs torch.onnx.export (dynamo) for a causal LM with a KV cache.

Exports the same Hugging Face Llama directory both ways and prints, from one run: export time, graph nodes,
size, the logit difference to PyTorch on a decode step after a cache, and the decode-step time in ONNX
Runtime (batch 4, 100 cached tokens). Optimum's ``text-generation-with-past`` export is the third tool of the
field; its releases pin transformers below the version here, so pip refuses to install it beside us.

Usage: python benchmarks/causal_lm_exporters.py MODEL_DIR   (e.g. the generative pair's teacher directory)
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np


def torch_export(model, path: Path) -> float:
    """torch.onnx.export (dynamo) of a wrapper that takes the cache as flat tensors, the way Optimum does."""
    import torch
    from transformers import DynamicCache

    config = model.config
    layers, heads = config.num_hidden_layers, config.num_key_value_heads
    head_size = config.hidden_size // config.num_attention_heads

    class FlatCache(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask, position_ids, *past):
            cache = DynamicCache()
            for i in range(layers):
                cache.update(past[2 * i], past[2 * i + 1], i)
            out = self.inner(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             past_key_values=cache, use_cache=True)
            flat = []
            for layer in out.past_key_values.layers:
                flat += [layer.keys, layer.values]
            return (out.logits, *flat)

    b, s, p = 2, 3, 5
    ids = torch.randint(3, config.vocab_size, (b, s))
    past = tuple(torch.randn(b, heads, p, head_size) for _ in range(2 * layers))
    batch, seq, cached, total = (torch.export.Dim(n) for n in ("batch", "seq", "past", "total"))
    start = time.perf_counter()
    torch.onnx.export(FlatCache(model), (ids, torch.ones(b, p + s, dtype=torch.long),
                                         torch.arange(p, p + s).expand(b, s), *past), str(path), dynamo=True,
                      input_names=["input_ids", "attention_mask", "position_ids"] + [f"past.{i}" for i in range(2 * layers)],
                      dynamic_shapes=({0: batch, 1: seq}, {0: batch, 1: total}, {0: batch, 1: seq},
                                      tuple({0: batch, 2: cached} for _ in range(2 * layers))), opset_version=18)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    import onnx
    import onnxruntime as ort
    import torch
    from transformers import AutoModelForCausalLM

    from exporters.causal_lm import run_builder

    model = AutoModelForCausalLM.from_pretrained(args.model_dir).eval()
    config = model.config
    layers, heads = config.num_hidden_layers, config.num_key_value_heads
    head_size = config.hidden_size // config.num_attention_heads
    work = Path(tempfile.mkdtemp(prefix="lm-exporters-"))
    start = time.perf_counter()
    run_builder(args.model_dir, work / "builder", work / "cache")
    builder_s = time.perf_counter() - start
    torch_s = torch_export(model, work / "torch.onnx")

    rng = np.random.default_rng(0)
    b, p = 4, 100
    past = [rng.standard_normal((b, heads, p, head_size)).astype(np.float32) for _ in range(2 * layers)]
    ids = rng.integers(3, config.vocab_size, (b, 1))
    mask = np.ones((b, p + 1), np.int64)
    feeds = {
        "builder": {"input_ids": ids, "attention_mask": mask,
                    **{f"past_key_values.{i // 2}.{'key' if i % 2 == 0 else 'value'}": past[i] for i in range(2 * layers)}},
        "torch.onnx (dynamo)": {"input_ids": ids, "attention_mask": mask, "position_ids": np.full((b, 1), p),
                                **{f"past.{i}": past[i] for i in range(2 * layers)}},
    }
    files = {"builder": work / "builder" / "model.onnx", "torch.onnx (dynamo)": work / "torch.onnx"}
    seconds = {"builder": builder_s, "torch.onnx (dynamo)": torch_s}
    with torch.no_grad():
        from transformers import DynamicCache

        cache = DynamicCache()
        for i in range(layers):
            cache.update(torch.tensor(past[2 * i]), torch.tensor(past[2 * i + 1]), i)
        reference = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                          position_ids=torch.full((b, 1), p), past_key_values=cache).logits.numpy()
    print(f"{args.model_dir}: {layers} layers, hidden {config.hidden_size}; decode step at batch {b}, {p} cached tokens")
    print(f"{'exporter':22s} {'export s':>9s} {'nodes':>6s} {'MB':>6s} {'max|Δ| vs torch':>16s} {'step ms':>8s}")
    for name, path in files.items():
        proto = onnx.load(str(path), load_external_data=False)
        size = sum(f.stat().st_size for f in path.parent.glob(path.name + "*"))
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        feed = {k: v for k, v in feeds[name].items() if k in {i.name for i in session.get_inputs()}}
        logits = session.run(None, feed)[0]
        for _ in range(20):
            session.run(None, feed)
        start = time.perf_counter()
        for _ in range(200):
            session.run(None, feed)
        step_ms = (time.perf_counter() - start) / 200 * 1e3
        print(f"{name:22s} {seconds[name]:9.1f} {len(proto.graph.node):6d} {size / 1e6:6.2f} "
              f"{float(np.abs(logits - reference).max()):16.1e} {step_ms:8.2f}")
    print(f"(files in {work}; remove when done)" if os.environ.get("KEEP") else "")


if __name__ == "__main__":
    main()
