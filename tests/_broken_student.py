"""A deliberately broken student for the gate: its served decoder can no longer write a JSON brace.

The decoder's ``logits`` output gets a bias of -10 000 on every vocabulary token containing "{" (an edit of
the ONNX graph: the final logits pass through one more Add). Everything else — weights, cache, serving —
is the real exported student, so the evaluation measures a real served model that drops the JSON format,
as a bad vocabulary mapping or an over-eager logit processor would.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

MASK = -10_000.0


def brace_token_ids(tokenizer_file: Path) -> list[int]:
    from tokenizers import Tokenizer

    vocab = Tokenizer.from_file(str(tokenizer_file)).get_vocab()
    return sorted(i for token, i in vocab.items() if "{" in token)


def break_json_braces(model_dir: Path) -> list[int]:
    """Rewrite ``model_dir/model.onnx`` so the logits of brace tokens are masked; returns the masked ids."""
    import onnx
    from onnx import helper, numpy_helper

    path = Path(model_dir) / "model.onnx"
    model = onnx.load(str(path))
    graph = model.graph
    logits = next(o for o in graph.output if o.name == "logits")
    vocab = logits.type.tensor_type.shape.dim[-1].dim_value
    ids = brace_token_ids(Path(model_dir) / "tokenizer.json")
    bias = np.zeros(vocab, dtype=np.float32)
    bias[ids] = MASK
    for node in graph.node:
        node.output[:] = ["logits_unmasked" if o == "logits" else o for o in node.output]
    graph.initializer.append(numpy_helper.from_array(bias, "brace_mask"))
    graph.node.append(helper.make_node("Add", ["logits_unmasked", "brace_mask"], ["logits"], name="brace_mask_add"))
    data = [p for p in Path(model_dir).glob("model.onnx.data")]
    for p in data:
        p.unlink()
    onnx.save(model, str(path), save_as_external_data=bool(data), location="model.onnx.data" if data else None)
    return ids


def copy_model(repository: Path, source: str, target: str) -> Path:
    """``repository/source`` copied to ``repository/target`` with the config's name changed."""
    shutil.copytree(repository / source, repository / target)
    config = repository / target / "config.pbtxt"
    text = config.read_text()
    config.write_text(text.replace(f'name: "{source}"', f'name: "{target}"', 1))
    return repository / target
