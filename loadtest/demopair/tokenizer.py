"""The demo pair's WordPiece tokenizer, trained locally so nothing is downloaded.

It is a standard BERT-style fast tokenizer (BERT normalizer and pre-tokenizer, ``[CLS] text [SEP]``), wrapped as
``transformers.PreTrainedTokenizerFast`` so ``save_pretrained`` writes the same files (tokenizer.json,
tokenizer_config.json) a user's Hugging Face model directory has, and ``AutoTokenizer`` loads it back.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
MODEL_MAX_LENGTH = 256


def train_tokenizer(texts: Iterable[str], vocab_size: int = 4000) -> PreTrainedTokenizerFast:
    """Train WordPiece on ``texts`` and wrap it; [PAD] gets id 0 as in BERT, so padding with zeros is right."""
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors, trainers
    from tokenizers.models import WordPiece
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(WordPiece(unk_token="[UNK]", continuing_subword_prefix="##", max_input_chars_per_word=100))
    backend.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=list(SPECIAL_TOKENS),
        continuing_subword_prefix="##",
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    cls_id, sep_id = backend.token_to_id("[CLS]"), backend.token_to_id("[SEP]")
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    backend.decoder = decoders.WordPiece(prefix="##")
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=MODEL_MAX_LENGTH,
        padding_side="right",
        truncation_side="right",
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )


def count_tokens(tokenizer: PreTrainedTokenizerFast, texts: list[str]) -> list[int]:
    """Tokens per text as the model sees them ([CLS]/[SEP] included, no truncation, so overlong texts show)."""
    encodings = tokenizer(texts, add_special_tokens=True, truncation=False, padding=False)
    return [len(ids) for ids in encodings["input_ids"]]
