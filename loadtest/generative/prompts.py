"""Prompts for a generative load test: from a dataset (text or chat messages) or synthetic lengths.

Why built once per process: tokenising per request would load the generator, and every request must
know, before it leaves, how many tokens it asks for (``max_tokens`` from ``--output-lengths``) and how
many its prompt holds (the tokenizer's count when one is given; the server's count wins when it sends
one). Synthetic prompts are random vocabulary words cut to the drawn token length with the tokenizer,
so input-length distributions mean tokens, not words. Never imports Locust or gevent.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from loadtest.errors import LoadtestError
from loadtest.load.payloads import LengthDistribution, read_dataset

MAX_PROMPT_TOKENS = 1 << 20


@dataclass(frozen=True)
class Prompt:
    """One request's prompt: text (completions, Triton) or chat messages, and the tokens asked for."""

    text: str | None
    messages: tuple[dict, ...] | None
    input_tokens: int | None  # the tokenizer's count of what is sent (None without a tokenizer)
    max_tokens: int

    def as_text(self, tokenizer=None) -> str:
        """The prompt as one string (chat messages through the tokenizer's chat template)."""
        if self.text is not None:
            return self.text
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise LoadtestError("chat-message prompts need --tokenizer with a chat template for this --api")
        return tokenizer.apply_chat_template(list(self.messages), tokenize=False, add_generation_prompt=True)


class TokenCounter:
    """Counts tokens with a Hugging Face tokenizer (no special tokens, as servers count completions)."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    def count(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else 0

    def count_messages(self, messages) -> int:
        ids = self.tokenizer.apply_chat_template(list(messages), tokenize=True, add_generation_prompt=True)
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
        return len(ids)


def load_tokenizer(path: str):
    """A tokenizer from a folder (``save_pretrained``) or a ``tokenizer.json``; never downloads.

    With transformers installed, its tokenizer (chat templates included); in the light install (the
    load-generator image has no transformers), ``tokenizers`` alone, for text prompts and token counts.
    """
    source = Path(path)
    if not source.exists():
        raise LoadtestError(f"--tokenizer {path} does not exist (a tokenizer folder or tokenizer.json)")
    try:
        import transformers  # noqa: F401
    except ImportError:
        return light_tokenizer(source)
    try:
        if source.is_dir():
            from transformers import AutoTokenizer

            return AutoTokenizer.from_pretrained(source, local_files_only=True)
        from transformers import PreTrainedTokenizerFast

        return PreTrainedTokenizerFast(tokenizer_file=str(source))
    except Exception as exc:  # a broken tokenizer is the user's to fix
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise LoadtestError(f"--tokenizer {path} could not be loaded: {first}") from None


class _LightTokenizer:
    """``loadtest.tokenizer.FastTokenizer`` with the two calls prompts need besides encoding: decode, no chat template."""

    chat_template = None

    def __init__(self, fast) -> None:
        self.fast = fast

    def __call__(self, text, add_special_tokens: bool = True):
        return self.fast(text, add_special_tokens=add_special_tokens, return_token_type_ids=False)

    def get_vocab(self) -> dict[str, int]:
        return self.fast.get_vocab()

    @property
    def all_special_ids(self) -> list[int]:
        return self.fast.all_special_ids

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return self.fast._tokenizer.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)


def light_tokenizer(source: Path):
    from loadtest.tokenizer import FastTokenizer

    try:
        return _LightTokenizer(FastTokenizer.from_path(source))
    except Exception as exc:  # a broken tokenizer is the user's to fix
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise LoadtestError(f"--tokenizer {source} could not be loaded: {first}") from None


def _messages(value, path: Path) -> tuple[dict, ...]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise LoadtestError(f"dataset {path}: a messages cell is not JSON: {value[:80]!r}") from None
    value = list(value) if isinstance(value, (list, tuple, np.ndarray)) else value
    ok = isinstance(value, list) and value and all(isinstance(m, dict) and "role" in m and "content" in m
                                                   for m in value)  # fmt: skip
    if not ok:
        raise LoadtestError(f"dataset {path}: messages must be a list of {{role, content}} objects")
    return tuple({"role": str(m["role"]), "content": str(m["content"])} for m in value)


def dataset_prompts(path: Path, text_column: str, messages_column: str) -> list[tuple[str | None, tuple | None]]:
    """(text, messages) per dataset row: the messages column when present, else the text column."""
    frame = read_dataset(path)
    if messages_column in frame.columns:
        return [(None, _messages(v, path)) for v in frame[messages_column]]
    if text_column in frame.columns:
        return [(str(v), None) for v in frame[text_column] if isinstance(v, str) and v.strip()]
    raise LoadtestError(
        f"dataset {path} has neither a '{messages_column}' nor a '{text_column}' column "
        f"(columns: {', '.join(map(str, frame.columns))}); see --text-column / --messages-column"
    )


def synthetic_text(tokenizer, n_tokens: int, rng: np.random.Generator) -> tuple[str, int]:
    """Random vocabulary words cut to ``n_tokens`` tokens; returns the text and its exact token count."""
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    vocab = [i for t, i in sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
             if i not in special and t.strip() and t.isprintable()]  # fmt: skip
    if not vocab:
        raise LoadtestError("--tokenizer has no ordinary tokens to build synthetic prompts from")
    ids = rng.choice(np.asarray(vocab), size=n_tokens + 8).tolist()
    text = tokenizer.decode(ids, skip_special_tokens=True)
    again = tokenizer(text, add_special_tokens=False)["input_ids"][:n_tokens]
    text = tokenizer.decode(again, skip_special_tokens=True)
    return text, len(tokenizer(text, add_special_tokens=False)["input_ids"])


@dataclass(frozen=True)
class PromptSpec:
    dataset: Path | None
    text_column: str
    messages_column: str
    input_lengths: str  # "" = the dataset's rows as they are, else synthetic
    output_lengths: LengthDistribution
    pool_size: int
    seed: int
    chat: bool  # the API takes chat messages

    def describe(self) -> str:
        source = f"dataset {self.dataset.name}" if self.dataset else f"synthetic {self.input_lengths or 'fixed:128'}"
        return f"{source}; output {self.output_lengths}; pool {self.pool_size}"


def build_prompts(spec: PromptSpec, tokenizer=None) -> list[Prompt]:
    """The process's prompt pool (raises LoadtestError on a bad dataset or missing tokenizer)."""
    rng = np.random.default_rng(spec.seed)
    counter = TokenCounter(tokenizer) if tokenizer is not None else None
    if spec.dataset is not None and not spec.input_lengths:
        rows = dataset_prompts(spec.dataset, spec.text_column, spec.messages_column)
        if not rows:
            raise LoadtestError(f"dataset {spec.dataset} has no non-empty prompts")
        order = rng.permutation(len(rows))[: spec.pool_size]
        picked = [rows[i] for i in order]
    else:
        if tokenizer is None:
            raise LoadtestError("synthetic prompts need --tokenizer (or give --dataset with prompts)")
        lengths = LengthDistribution.parse(spec.input_lengths or "fixed:128")
        if lengths.kind == "dataset":
            raise LoadtestError("--lengths dataset is not supported for generative prompts: give the dataset itself")
        drawn = lengths.sample(rng, spec.pool_size, MAX_PROMPT_TOKENS)
        picked = [(synthetic_text(tokenizer, int(n), rng)[0], None) for n in drawn]
    max_tokens = spec.output_lengths.sample(rng, len(picked), MAX_PROMPT_TOKENS)
    prompts = []
    for (text, messages), n_out in zip(picked, max_tokens):
        if spec.chat and messages is None:
            messages = ({"role": "user", "content": text},)
            text = None
        elif not spec.chat and messages is not None:
            text = Prompt(None, messages, None, 1).as_text(tokenizer)
            messages = None
        n_in = None
        if counter is not None:
            n_in = counter.count(text) if text is not None else counter.count_messages(messages)
        prompts.append(Prompt(text, messages, n_in, int(n_out)))
    return prompts
