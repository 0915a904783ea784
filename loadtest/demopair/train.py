"""Training the demo pair: a BERT teacher on the labels, then a smaller BERT student distilled from it.

The student learns from the teacher's temperature-softened probabilities (Hinton et al. 2015):
``loss = alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y)``; the T^2 keeps the soft
term's gradient scale independent of T. Teacher logits are computed once on the training set (offline
distillation, no dropout), which is what a platform team's distillation job usually does too.

Batches group examples of similar length and are padded only to their longest member: on a 2-core CPU this
is what keeps the default build within its few minutes, since most texts are short and a few are 200 tokens.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import BertConfig, BertForSequenceClassification, get_linear_schedule_with_warmup

if TYPE_CHECKING:
    import pandas as pd
    from transformers import PreTrainedTokenizerFast

    from loadtest.demopair.build import ArchSettings

StepProgress = Callable[[str, float], None]
"""``(message, fraction of this training stage done)``."""


@dataclass
class Encoded:
    """A split as token id lists (no padding) with its labels; batches are padded when they are formed."""

    ids: list[list[int]]
    labels: torch.Tensor  # int64 [n]

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(x) for x in self.ids), dtype=np.int64, count=len(self.ids))


@dataclass
class SliceAccuracy:
    """Accuracy on one slice of the evaluation set, with its size (a small n means a noisy figure)."""

    n: int
    accuracy: float


@dataclass
class EvalResult:
    """PyTorch-measured accuracy overall and per slice (rare class, hard, length bucket)."""

    accuracy: float
    n: int
    slices: dict[str, SliceAccuracy] = field(default_factory=dict)


@dataclass
class TrainResult:
    """What training one model took."""

    steps: int
    epochs: int
    train_seconds: float
    final_loss: float


def encode(tokenizer: PreTrainedTokenizerFast, texts: Sequence[str], labels: Sequence[int]) -> Encoded:
    """Tokenize once up front (truncating at the model's 256 limit); padding happens per batch."""
    enc = tokenizer(list(texts), truncation=True, max_length=tokenizer.model_max_length, padding=False)
    return Encoded(ids=enc["input_ids"], labels=torch.tensor(list(labels), dtype=torch.long))


def bert_config(arch: ArchSettings, tokenizer: PreTrainedTokenizerFast, labels: Sequence[str]) -> BertConfig:
    """A BertConfig for sequence classification with the label names a user's fine-tuned model carries."""
    return BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=arch.hidden_size,
        num_hidden_layers=arch.num_layers,
        num_attention_heads=arch.num_heads,
        intermediate_size=arch.intermediate_size,
        max_position_embeddings=arch.max_position_embeddings,
        hidden_dropout_prob=arch.dropout,
        attention_probs_dropout_prob=arch.dropout,
        type_vocab_size=2,
        pad_token_id=tokenizer.pad_token_id,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
        problem_type="single_label_classification",
    )


def new_model(config: BertConfig, seed: int) -> BertForSequenceClassification:
    """Fresh weights, seeded, so the same settings give the same model."""
    torch.manual_seed(seed)
    return BertForSequenceClassification(config)


def length_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator | None) -> list[np.ndarray]:
    """Indices grouped by similar length; with ``rng``, shuffled in chunks and in batch order (each epoch).

    Sorting within chunks of 50 batches ("sortish") keeps batches tight in length while the content of a
    batch still changes from epoch to epoch.
    """
    n = len(lengths)
    order = rng.permutation(n) if rng is not None else np.arange(n)
    chunk = batch_size * 50 if rng is not None else n
    batches: list[np.ndarray] = []
    for start in range(0, n, chunk):
        part = order[start : start + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches.extend(part[i : i + batch_size] for i in range(0, len(part), batch_size))
    if rng is not None:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def collate(data: Encoded, idx: np.ndarray, pad_id: int) -> dict[str, torch.Tensor]:
    """Pad one batch to its longest sequence (dynamic padding)."""
    width = max(len(data.ids[i]) for i in idx)
    input_ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(idx), width), dtype=torch.long)
    for row, i in enumerate(idx):
        seq = data.ids[i]
        input_ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        attention[row, : len(seq)] = 1
    return {"input_ids": input_ids, "attention_mask": attention, "token_type_ids": torch.zeros_like(input_ids)}


@torch.inference_mode()
def predict_logits(model: BertForSequenceClassification, data: Encoded, batch_size: int = 128) -> torch.Tensor:
    """Logits for every example in order, in eval mode (no dropout)."""
    model.eval()
    pad_id = model.config.pad_token_id or 0
    out = torch.empty((len(data.ids), model.config.num_labels), dtype=torch.float32)
    for idx in length_batches(data.lengths, batch_size, None):
        out[torch.as_tensor(idx)] = model(**collate(data, idx, pad_id)).logits.float()
    return out


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    alpha: float,
) -> torch.Tensor:
    """alpha * T^2 * KL(p_teacher,T || p_student,T) + (1 - alpha) * CE(student, labels)."""
    t = temperature
    soft = F.kl_div(
        F.log_softmax(student_logits / t, dim=-1),
        F.log_softmax(teacher_logits / t, dim=-1),
        reduction="batchmean",
        log_target=True,
    )
    hard = F.cross_entropy(student_logits, labels)
    return alpha * t * t * soft + (1.0 - alpha) * hard


def fit(
    model: BertForSequenceClassification,
    data: Encoded,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    warmup_ratio: float = 0.1,
    weight_decay: float = 0.01,
    teacher_logits: torch.Tensor | None = None,
    temperature: float = 2.0,
    alpha: float = 0.7,
    progress: StepProgress | None = None,
    name: str = "model",
) -> TrainResult:
    """AdamW with linear warm-up and decay; cross-entropy alone, or the distillation loss given teacher logits."""
    rng = np.random.default_rng(seed)
    lengths = data.lengths
    steps_per_epoch = math.ceil(len(lengths) / batch_size)
    total = steps_per_epoch * epochs
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "LayerNorm" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "LayerNorm" not in n)]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=lr
    )
    scheduler = get_linear_schedule_with_warmup(optimizer, max(1, int(warmup_ratio * total)), total)
    pad_id = model.config.pad_token_id or 0
    torch.manual_seed(seed)
    model.train()
    start = time.perf_counter()
    step = 0
    running = float("nan")
    for epoch in range(epochs):
        for idx in length_batches(lengths, batch_size, rng):
            batch = collate(data, idx, pad_id)
            logits = model(**batch).logits
            labels = data.labels[torch.as_tensor(idx)]
            if teacher_logits is None:
                loss = F.cross_entropy(logits, labels)
            else:
                loss = distillation_loss(logits, teacher_logits[torch.as_tensor(idx)], labels, temperature, alpha)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            value = float(loss.detach())
            running = value if math.isnan(running) else 0.95 * running + 0.05 * value
            if progress is not None:
                progress(f"{name}: epoch {epoch + 1}/{epochs}, loss {running:.3f}", step / total)
    model.eval()
    return TrainResult(steps=step, epochs=epochs, train_seconds=time.perf_counter() - start, final_loss=running)


def evaluate(logits: torch.Tensor, eval_df: pd.DataFrame) -> EvalResult:
    """Accuracy overall and on the slices the quality review looks at (rare class, hard, length buckets)."""
    pred = logits.argmax(dim=-1).numpy()
    correct = pred == eval_df["label_id"].to_numpy()
    slices: dict[str, SliceAccuracy] = {}
    masks: dict[str, np.ndarray] = {
        "rare_class": eval_df["rare_class"].to_numpy(bool),
        "common_classes": ~eval_df["rare_class"].to_numpy(bool),
        "hard": eval_df["hard"].to_numpy(bool),
    }
    for bucket in sorted(eval_df["length_bucket"].unique(), key=lambda b: int(b.split("-")[0])):
        masks[f"length_{bucket}"] = (eval_df["length_bucket"] == bucket).to_numpy()
    for name, mask in masks.items():
        if mask.any():
            slices[name] = SliceAccuracy(n=int(mask.sum()), accuracy=float(correct[mask].mean()))
    return EvalResult(accuracy=float(correct.mean()), n=len(correct), slices=slices)


def save_model(
    model: BertForSequenceClassification,
    tokenizer: PreTrainedTokenizerFast,
    out_dir: Path,
    build_info: dict[str, Any],
) -> None:
    """A Hugging Face model directory (config, safetensors, tokenizer) plus ``build_info.json`` beside them."""
    from transformers.utils import logging as hf_logging

    out_dir.mkdir(parents=True, exist_ok=True)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # its tqdm bar would tear the caller's rich progress display
    try:
        model.save_pretrained(out_dir)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    tokenizer.save_pretrained(out_dir)
    (out_dir / "build_info.json").write_text(json.dumps(build_info, indent=2, default=_jsonable) + "\n")


def _jsonable(value: Any) -> Any:
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
