"""Teacher-forced fidelity on the references: perplexity, top-1 agreement and KL(T‖S), per example.

Both models read the same tokens (prompt + reference); at every *reference* position t each gives a
next-token distribution. Per example we keep sums, not means, so a slice's figure is token-weighted:

- ``nll`` = Σ_t −log p(r_t | x, r_<t) for each model; **perplexity** of a set = exp(Σ nll / Σ tokens);
- ``agree`` = Σ_t [argmax p_T = argmax p_S]; **top-1 agreement** = Σ agree / Σ tokens;
- ``kl`` = Σ_t Σ_v p_T log(p_T / p_S), probabilities clipped at 1e-12 as for classifiers;
  **KL(T‖S)** = Σ kl / Σ tokens (nats per token).

Prompt positions never count. Log-probabilities come from the served scoring models (or an
OpenAI-compatible server's ``logprobs``), in float64 here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from loadtest.quality.metrics import PROBABILITY_FLOOR


@dataclass
class TeacherForced:
    """One example's teacher-forced sums over its reference tokens."""

    tokens: int
    teacher_nll: float
    student_nll: float
    agree: int  # positions where both models' argmax is the same token
    kl: float  # Σ over positions of KL(T‖S), nats
    nonfinite: dict[str, bool]


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float64 (for a scoring model that returns logits)."""
    logits = np.asarray(logits, dtype=np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def target_nll(log_probs: np.ndarray, targets: np.ndarray) -> float:
    """Σ −log p(target) over positions; ``log_probs`` is (T, V), ``targets`` (T,)."""
    log_probs = np.asarray(log_probs, dtype=np.float64)
    return float(-log_probs[np.arange(len(targets)), np.asarray(targets, dtype=np.int64)].sum())


def per_position_kl(teacher_log_probs: np.ndarray, student_log_probs: np.ndarray) -> np.ndarray:
    """KL(T‖S) at each position from log-probabilities, both clipped at 1e-12 (METHOD: as for classifiers)."""
    pt = np.clip(np.exp(np.asarray(teacher_log_probs, dtype=np.float64)), PROBABILITY_FLOOR, 1.0)
    ps = np.clip(np.exp(np.asarray(student_log_probs, dtype=np.float64)), PROBABILITY_FLOOR, 1.0)
    return np.sum(pt * (np.log(pt) - np.log(ps)), axis=-1)


def teacher_forced(teacher_log_probs: np.ndarray, student_log_probs: np.ndarray, targets: np.ndarray) -> TeacherForced:
    """Sums of one example from both models' (T, V) log-probabilities at the reference positions."""
    lt = np.asarray(teacher_log_probs, dtype=np.float64)
    ls = np.asarray(student_log_probs, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.int64)
    if lt.shape != ls.shape or lt.ndim != 2 or lt.shape[0] != len(targets):
        raise ValueError(f"log-prob shapes {lt.shape} / {ls.shape} do not match {len(targets)} reference tokens")
    nonfinite = {"teacher": not np.isfinite(lt).all(), "student": not np.isfinite(ls).all()}
    if any(nonfinite.values()):
        nan = float("nan")
        return TeacherForced(len(targets), nan, nan, 0, nan, nonfinite)
    agree = int((lt.argmax(axis=-1) == ls.argmax(axis=-1)).sum())
    return TeacherForced(
        tokens=len(targets),
        teacher_nll=target_nll(lt, targets),
        student_nll=target_nll(ls, targets),
        agree=agree,
        kl=float(per_position_kl(lt, ls).sum()),
        nonfinite=nonfinite,
    )


def perplexity(nll_sums, token_counts) -> float:
    """exp(Σ NLL / Σ tokens), token-weighted across examples; NaN without tokens or with a non-finite NLL."""
    nll = np.asarray(nll_sums, dtype=np.float64)
    tokens = np.asarray(token_counts, dtype=np.float64)
    total = tokens.sum()
    if total <= 0 or not np.isfinite(nll).all():
        return float("nan")
    return float(math.exp(nll.sum() / total))


def rate_per_token(sums, token_counts) -> float:
    """Σ sums / Σ tokens (top-1 agreement, KL per token); NaN without tokens."""
    tokens = np.asarray(token_counts, dtype=np.float64).sum()
    return float(np.asarray(sums, dtype=np.float64).sum() / tokens) if tokens > 0 else float("nan")
