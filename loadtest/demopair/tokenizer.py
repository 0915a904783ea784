"""The demo pair's WordPiece tokenizer, built locally so nothing is downloaded.

It is a standard BERT-style fast tokenizer (``tokenizers`` WordPiece model, BERT normalizer and pre-tokenizer,
``[CLS] text [SEP]``), wrapped as ``transformers.PreTrainedTokenizerFast`` so ``save_pretrained`` writes the
files a user's Hugging Face model directory has (tokenizer.json, tokenizer_config.json) and ``AutoTokenizer``
loads it back.

The vocabulary is chosen from word counts rather than by ``tokenizers.trainers.WordPieceTrainer``: that
trainer breaks frequency ties in hash-map order, so two builds from the same text get different vocabularies
(measured: a different token set on every run), which would make the demo pair, and the figures a user
reproduces with it, change from build to build. Counting with the same normalizer and pre-tokenizer and
sorting ties by the token itself gives the same tokenizer every time. Every corpus word is one token; the rest
of the vocabulary is word-initial and ``##`` pieces ranked by frequency, down to single characters, so a word
never seen still splits into WordPiece pieces instead of [UNK].
"""

from __future__ import annotations

import string
from collections import Counter
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
MODEL_MAX_LENGTH = 256
_BASE_ALPHABET = string.ascii_lowercase + string.digits + string.punctuation


def build_vocab(texts: Iterable[str], vocab_size: int = 4000, lexicon: Iterable[str] = ()) -> dict[str, int]:
    """Deterministic WordPiece vocabulary: specials, characters, ``##`` characters, then words by frequency.

    ``lexicon`` holds domain words that must be whole tokens even if the training texts lack them (the
    corpus generator's slot values), so no evaluation text breaks into characters by chance of the draw.
    """
    from tokenizers import normalizers, pre_tokenizers

    normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, lowercase=True)
    pre = pre_tokenizers.BertPreTokenizer()

    def words(text: str) -> list[str]:
        return [w for w, _ in pre.pre_tokenize_str(normalizer.normalize_str(text))]

    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(words(text))
    for text in lexicon:
        for word in words(text):
            counts.setdefault(word, 0)
    alphabet = sorted(set(_BASE_ALPHABET) | {ch for word in counts for ch in word})
    pieces = list(SPECIAL_TOKENS) + alphabet + ["##" + ch for ch in alphabet]
    if vocab_size < len(pieces):
        raise ValueError(f"vocab_size {vocab_size} is smaller than the {len(pieces)} special and character tokens")
    vocab = {token: i for i, token in enumerate(pieces)}
    ranked_words = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    # Then word-initial pieces and ``##`` continuations, by how often they occur inside words: the pieces a
    # merge-based trainer would also have made, so unseen words split into meaningful parts.
    piece_counts: Counter[str] = Counter()
    for word, count in counts.items():
        for k in range(2, len(word)):
            piece_counts[word[:k]] += count + 1
            piece_counts["##" + word[k - len(word):]] += count + 1
    ranked_pieces = sorted(piece_counts.items(), key=lambda kv: (-kv[1], kv[0]))
    for token, _count in ranked_words + ranked_pieces:
        if len(vocab) >= vocab_size:
            break
        vocab.setdefault(token, len(vocab))
    return vocab


def train_tokenizer(
    texts: Iterable[str], vocab_size: int = 4000, lexicon: Iterable[str] = ()
) -> PreTrainedTokenizerFast:
    """Build the WordPiece tokenizer from ``texts`` and wrap it; [PAD] has id 0 as in BERT."""
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece
    from transformers import PreTrainedTokenizerFast

    vocab = build_vocab(texts, vocab_size, lexicon)
    backend = Tokenizer(WordPiece(vocab, unk_token="[UNK]", continuing_subword_prefix="##",
                                  max_input_chars_per_word=100))
    backend.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
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
