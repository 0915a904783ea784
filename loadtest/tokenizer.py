"""A fast tokenizer from ``tokenizer.json`` on the ``tokenizers`` package alone (no transformers, no torch).

Why not ``transformers.PreTrainedTokenizerFast``: the load generator and the evaluator only need to
turn text into ids the way the exported model expects, and the light install (and the load-generator
image) must not pull transformers in. ``FastTokenizer`` offers the small part of the Hugging Face API
that loadtest calls (``tokenizer(texts, truncation=..., max_length=...)``, the special-token ids,
``len()``), on the same Rust tokenizer that transformers wraps, so the ids are identical.
"""

from __future__ import annotations

import json
from pathlib import Path

from loadtest.errors import LoadtestError

SPECIAL_NAMES = ("pad_token", "cls_token", "sep_token", "bos_token", "eos_token", "unk_token", "mask_token")


def _special_strings(config: dict) -> dict[str, str]:
    """``{"pad_token": "[PAD]", ...}`` from tokenizer_config.json / special_tokens_map.json content."""
    out = {}
    for name in SPECIAL_NAMES:
        value = config.get(name)
        if isinstance(value, dict):  # {"content": "[PAD]", ...}
            value = value.get("content")
        if isinstance(value, str):
            out[name] = value
    return out


class FastTokenizer:
    """The subset of a Hugging Face fast tokenizer that loadtest uses."""

    def __init__(self, tokenizer_file: Path | str, specials: dict[str, str] | None = None, model_max_length: int = 512):
        from tokenizers import Tokenizer

        path = Path(tokenizer_file)
        try:
            self._tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # a corrupt or foreign file
            raise LoadtestError(f"{path} is not a Hugging Face tokenizer.json: {str(exc).splitlines()[0]}") from None
        self.path = path
        self.model_max_length = model_max_length
        self._specials = dict(specials or {})
        for name in SPECIAL_NAMES:
            token = self._specials.get(name)
            setattr(self, f"{name}_id", self._tokenizer.token_to_id(token) if token else None)

    @classmethod
    def from_directory(cls, folder: Path | str, tokenizer_file: str = "tokenizer.json", model_max_length: int = 512):
        """``tokenizer.json`` plus the special tokens named by ``tokenizer_config.json``/``special_tokens_map.json``."""
        folder = Path(folder)
        path = folder / tokenizer_file
        if not path.is_file():
            raise LoadtestError(f"no tokenizer file {path}")
        specials: dict[str, str] = {}
        for name in ("special_tokens_map.json", "tokenizer_config.json"):
            extra = folder / name
            if extra.is_file():
                try:
                    specials.update(_special_strings(json.loads(extra.read_text())))
                except json.JSONDecodeError:
                    raise LoadtestError(f"{extra} is not valid JSON") from None
        return cls(path, specials, model_max_length)

    @classmethod
    def from_path(cls, path: Path | str, model_max_length: int = 512) -> FastTokenizer:
        """A tokenizer.json file, or a folder holding one (``--tokenizer``)."""
        path = Path(path)
        if path.is_dir():
            return cls.from_directory(path, model_max_length=model_max_length)
        if not path.is_file():
            raise LoadtestError(f"--tokenizer {path}: no such file or folder (give a tokenizer.json or its folder)")
        return cls.from_directory(path.parent, path.name, model_max_length)

    # ---- what the HF API offers and loadtest calls ---------------------------------------------
    def get_vocab(self) -> dict[str, int]:
        return self._tokenizer.get_vocab(with_added_tokens=True)

    def __len__(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    @property
    def all_special_ids(self) -> list[int]:
        ids = {getattr(self, f"{name}_id") for name in SPECIAL_NAMES}
        ids |= {token_id for token_id, token in self._tokenizer.get_added_tokens_decoder().items() if token.special}
        return sorted(i for i in ids if i is not None)

    def __call__(
        self,
        texts: list[str] | str,
        truncation: bool = False,
        max_length: int | None = None,
        padding: bool = False,
        add_special_tokens: bool = True,
        return_attention_mask: bool = True,
        return_token_type_ids: bool = True,
        return_tensors: str | None = None,
    ) -> dict[str, list[list[int]]]:
        """Ids (and masks, type ids) per text, unpadded: what ``PreTrainedTokenizerFast.__call__`` returns."""
        if padding:
            raise ValueError("FastTokenizer does not pad: loadtest pads its own batches")
        single = isinstance(texts, str)
        batch = [texts] if single else list(texts)
        limit = max_length or self.model_max_length
        if truncation:
            self._tokenizer.enable_truncation(limit)
        else:
            self._tokenizer.no_truncation()
        try:
            encodings = self._tokenizer.encode_batch(batch, add_special_tokens=add_special_tokens)
        finally:
            self._tokenizer.no_truncation()
        out: dict[str, list] = {"input_ids": [e.ids for e in encodings]}
        if return_token_type_ids:
            out["token_type_ids"] = [e.type_ids for e in encodings]
        if return_attention_mask:
            out["attention_mask"] = [e.attention_mask for e in encodings]
        if single:
            out = {k: v[0] for k, v in out.items()}
        if return_tensors == "np":  # rows of one length only (no padding here), as with the HF API
            import numpy as np

            out = {k: np.asarray(v, dtype=np.int64) for k, v in out.items()}
        elif return_tensors is not None:
            raise ValueError(f"FastTokenizer returns lists or numpy arrays, not '{return_tensors}'")
        return out

    def count_tokens(self, texts: list[str], max_length: int | None = None) -> list[int]:
        """Tokens per text as the model sees them: special tokens included, truncated at ``max_length``."""
        counts = [len(e.ids) for e in self._tokenizer.encode_batch(list(texts), add_special_tokens=True)]
        return [min(c, max_length) for c in counts] if max_length else counts

    def random_text(self, rng, n_tokens: int) -> str:
        """Text decoded from ``n_tokens`` random ordinary tokens (synthetic text of a known token length)."""
        if not hasattr(self, "_ordinary"):
            import numpy as np

            special = set(self.all_special_ids)
            self._ordinary = np.array([i for i in range(len(self)) if i not in special], dtype=np.int64)
        ids = rng.choice(self._ordinary, size=max(int(n_tokens), 1))
        return self._tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)
