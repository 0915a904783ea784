"""A tiny causal LM built in seconds, saved the way ``save_pretrained`` saves one, for serving tests.

Random weights over a word-level vocabulary trained on a few sentences, a chat template, and no
end-of-sequence token in its generation config, so a server generates exactly ``max_tokens`` tokens:
the records can then be checked against the server's own counts. Nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

WORDS = (
    "the service answered quickly and team was happy latency went up during rollout users complained "
    "student model is smaller than teacher throughput doubled after dynamic batching enabled a refund "
    "requested because order never arrived great product fast shipping would buy again terrible support "
    "experience nobody replied for days weather in mountains cold but beautiful please reset my password"
).split()
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }} : {{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant :{% endif %}"
)


def make_tokenizer():
    """A word-level fast tokenizer: every word of WORDS is one token, so counts are easy to check."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<unk>", "<s>", "</s>"]
    vocab = {w: i for i, w in enumerate(specials + sorted(set(WORDS)) + [":", "user", "assistant", "system"])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins tokens with spaces
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.model_max_length = 256
    return tokenizer


def make_tiny_causal_lm(directory: Path, *, layers: int = 2, hidden: int = 64, seed: int = 0) -> Path:
    """Save a tiny random GPT-2 with its tokenizer under ``directory`` and return it."""
    import torch
    from transformers import GenerationConfig, GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    tokenizer = make_tokenizer()
    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=256, n_embd=hidden, n_layer=layers, n_head=2,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    model = GPT2LMHeadModel(config).eval()
    specials = [tokenizer.pad_token_id, tokenizer.unk_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id]
    model.generation_config = GenerationConfig(
        eos_token_id=None, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        do_sample=False, suppress_tokens=specials,  # every generated token is a word: text and counts agree
    )
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
