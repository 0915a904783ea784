"""A tiny causal LM and its ONNX decoder as the generative repository holds it (ONNX Runtime GenAI's builder).

Random Llama weights over a word-level vocabulary; exported by ``onnxruntime_genai.models.builder`` (the
exporter the generative repository uses) into ``<dir>/onnx``: model.onnx, genai_config.json, tokenizer.json.
Nothing is downloaded; about 20 s on two cores.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

WORDS = (
    "your card is blocked and a new one arrives in five days the transfer was sent today balance shown in the app "
    "please confirm the amount we opened a dispute for that payment rates are fixed for one hour intent amount"
).split()


def make_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<unk>", "<s>", "</s>"]
    vocab = {w: i for i, w in enumerate(specials + sorted(set(WORDS)) + ["{", "}", ":", ",", '"'])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def build_tiny_decoder(directory: Path, seed: int = 0, layers: int = 2) -> tuple[Path, Path]:
    """(Hugging Face model dir, builder output dir) of a tiny random Llama."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    tokenizer = make_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,  # GroupQueryAttention: head size a multiple of 16
        num_hidden_layers=layers, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config).eval()
    hf_dir, onnx_dir = directory / "hf", directory / "onnx"
    model.save_pretrained(hf_dir)
    tokenizer.save_pretrained(hf_dir)
    command = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf_dir), "-o", str(onnx_dir),
               "-p", "fp32", "-e", "cpu", "-c", str(directory / "cache")]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"builder failed: {result.stderr[-2000:]}")
    return hf_dir, onnx_dir
