"""The shared tokenizer of the generative pair: byte-level BPE trained on the training split.

Byte-level BPE decodes exactly what was encoded (JSON replies keep their quotes and spacing, streamed text
joins back into the whole), and ONNX Runtime GenAI reads its ``tokenizer.json`` as it reads GPT-2's or
Llama 3's. The vocabulary is small (1,024 by default) so the output projection does not hide the difference
that layers and width make between teacher and student. ``tokenizers``' BPE trainer is deterministic:
the same texts give the same vocabulary and merges.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS = "<pad>", "<s>", "</s>"
SPECIAL_TOKENS = (PAD, BOS, EOS)  # ids 0, 1, 2
MODEL_MAX_LENGTH = 512


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """Train the byte-level BPE and wrap it; ``tokenizer(text)`` adds no special tokens (we place BOS/EOS)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(sorted(texts), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token=PAD, bos_token=BOS, eos_token=EOS,
                                   model_max_length=MODEL_MAX_LENGTH, padding_side="right",
                                   model_input_names=["input_ids", "attention_mask"])
