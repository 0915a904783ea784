"""Scores of generated text, per example: exact match, chrF, ROUGE-L, format adherence, length ratio.

Each function scores one (hypothesis, reference) pair so the per-example log holds every score and any
figure can be recomputed from it. The field's libraries define the scores, on their own scales:

- **chrF** is sacrebleu's ``CHRF()`` with its defaults (character 6-grams, no word n-grams, β = 2: chrF2),
  sentence level, 0–100. A slice's chrF is the mean of its examples' sentence chrF (not sacrebleu's corpus
  chrF, which pools n-gram counts and cannot be bootstrapped per example).
- **ROUGE-L F** is rouge-score's ``RougeScorer(["rougeL"])`` F-measure, 0–1, with its default tokenizer
  (lower-cased, split on non-alphanumerics; no stemming).
- **Exact match** compares after whitespace normalisation (runs of whitespace become one space, ends
  stripped); case and punctuation count.
- **Format adherence**: the output, stripped of surrounding whitespace, parses as a JSON object carrying
  every required key.

Empty outputs (nothing but whitespace) score 0 on chrF and ROUGE-L and are counted separately.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from functools import lru_cache

_WHITESPACE = re.compile(r"\s+")


def normalize_whitespace(text: str | None) -> str:
    """Runs of whitespace to one space, ends stripped; None is the empty string."""
    return _WHITESPACE.sub(" ", text or "").strip()


def is_empty(text: str | None) -> bool:
    """An output with no visible character."""
    return normalize_whitespace(text) == ""


def exact_match(hypothesis: str | None, reference: str | None) -> bool:
    """Equal after whitespace normalisation."""
    return normalize_whitespace(hypothesis) == normalize_whitespace(reference)


def require_extra(module: str):
    """Import an optional dependency of the quality extra, or say in one line how to get it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        from loadtest.errors import LoadtestError

        raise LoadtestError(
            f"this needs {module.split('.')[0]} (the 'quality' extra): pip install 'loadtest[quality]'"
        ) from None


@lru_cache(maxsize=1)
def _chrf():
    return require_extra("sacrebleu.metrics").CHRF()  # char_order=6, word_order=0, beta=2: chrF2


@lru_cache(maxsize=1)
def _rouge():
    return require_extra("rouge_score.rouge_scorer").RougeScorer(["rougeL"], use_stemmer=False)


def chrf(hypothesis: str | None, reference: str | None) -> float:
    """Sentence chrF2 of a hypothesis against one reference, 0–100 (sacrebleu)."""
    return float(_chrf().sentence_score(hypothesis or "", [reference or ""]).score)


def rouge_l(hypothesis: str | None, reference: str | None) -> float:
    """ROUGE-L F-measure, 0–1 (rouge-score; its argument order is target first)."""
    return float(_rouge().score(reference or "", hypothesis or "")["rougeL"].fmeasure)


def parse_required_keys(value) -> list[str]:
    """Required keys as the dataset gives them: a list, a JSON list, or comma-separated text; none -> []."""
    if value is None:
        return []
    if isinstance(value, float) and value != value:  # NaN from a CSV cell
        return []
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return []
        if text.startswith("["):
            return [str(k) for k in json.loads(text)]
        return [part.strip() for part in text.split(",") if part.strip()]
    return [str(k) for k in value]


def format_adherence(output: str | None, required_keys: Iterable[str] = ()) -> bool:
    """The output is a JSON object (nothing around it but whitespace) holding every required key."""
    try:
        parsed = json.loads((output or "").strip())
    except (json.JSONDecodeError, ValueError):
        return False
    return isinstance(parsed, dict) and all(key in parsed for key in required_keys)


def length_ratio(student_tokens: Sequence[int], teacher_tokens: Sequence[int]) -> float:
    """Σ student output tokens / Σ teacher output tokens (NaN when the teacher wrote nothing)."""
    total = float(sum(teacher_tokens))
    return float(sum(student_tokens)) / total if total > 0 else float("nan")
