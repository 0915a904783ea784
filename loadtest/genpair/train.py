"""Training the generative pair: a Llama-style teacher on the references, then a smaller student distilled
from it token by token.

Both models see ``<s> prompt answer </s>`` and learn only the answer (prompt and padding positions carry no
loss). The student's loss at every answer position is
``alpha * T^2 * KL(softmax(teacher/T) || softmax(student/T)) + (1 - alpha) * CE(student, reference)``
(Hinton et al. 2015 applied per token, as in MiniLLM's and DistilGPT-2's word-level distillation). The teacher's
logits at the answer positions are computed once, in eval mode, and kept in memory (float16, ~100 MB for the
default corpus) rather than recomputed every epoch: distillation then costs about the student's own training,
which is what lets the teacher be several times the student's size within the build budget. A corpus whose
logits would not fit the cap runs the teacher alongside instead, as the same loss.
Batches group examples of similar length (the classifier pair's ``length_batches``) so padding stays small.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM, get_linear_schedule_with_warmup

from loadtest.demopair.train import length_batches

if TYPE_CHECKING:
    import pandas as pd
    from transformers import PreTrainedTokenizerFast

    from loadtest.genpair.build import LmArch

StepProgress = Callable[[str, float], None]
IGNORE = -100


@dataclass
class Encoded:
    """Sequences ``<s> prompt answer </s>`` as id lists, with where each answer starts."""

    ids: list[list[int]]
    answer_start: list[int]

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(x) for x in self.ids), dtype=np.int64, count=len(self.ids))


@dataclass
class TrainResult:
    steps: int
    epochs: int
    train_seconds: float
    final_loss: float


@dataclass
class TeacherForced:
    """Teacher-forced figures on the references: perplexity, and against another model agreement and KL."""

    perplexity: float
    tokens: int
    top1_agreement: float | None = None
    kl_teacher_student: float | None = None


def prompt_ids(tokenizer: PreTrainedTokenizerFast, prompt: str) -> list[int]:
    """What a server feeds the model for a prompt: BOS and the prompt's tokens (no EOS)."""
    return [tokenizer.bos_token_id, *tokenizer(prompt)["input_ids"]]


def answer_ids(tokenizer: PreTrainedTokenizerFast, reference: str) -> list[int]:
    """The answer the model learns: a space, the reference, EOS."""
    return [*tokenizer(" " + reference)["input_ids"], tokenizer.eos_token_id]


def encode(tokenizer: PreTrainedTokenizerFast, prompts: Sequence[str], references: Sequence[str],
           max_length: int) -> Encoded:
    ids, starts = [], []
    for prompt, reference in zip(prompts, references):
        head = prompt_ids(tokenizer, prompt)
        tail = answer_ids(tokenizer, reference)
        head = head[: max(1, max_length - len(tail))]
        ids.append(head + tail)
        starts.append(len(head))
    return Encoded(ids, starts)


def llama_config(arch: LmArch, tokenizer: PreTrainedTokenizerFast) -> LlamaConfig:
    """A small LlamaConfig (RMSNorm, rotary positions, SwiGLU) that ONNX Runtime GenAI's builder knows."""
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=arch.hidden_size,
        intermediate_size=arch.intermediate_size,
        num_hidden_layers=arch.num_layers,
        num_attention_heads=arch.num_heads,
        num_key_value_heads=arch.num_heads,
        max_position_embeddings=arch.max_position_embeddings,
        rms_norm_eps=1e-5,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        attention_dropout=0.0,
        attn_implementation="eager",  # faster than SDPA for these small shapes on CPU (measured)
    )


def new_model(config: LlamaConfig, seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def collate(data: Encoded, idx: np.ndarray, pad_id: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Right-padded batch and its next-token targets (IGNORE on the prompt, padding and the last position)."""
    width = max(len(data.ids[i]) for i in idx)
    input_ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(idx), width), dtype=torch.long)
    targets = torch.full((len(idx), width), IGNORE, dtype=torch.long)
    for row, i in enumerate(idx):
        seq = torch.tensor(data.ids[i], dtype=torch.long)
        input_ids[row, : len(seq)] = seq
        attention[row, : len(seq)] = 1
        start = data.answer_start[i]
        # position p predicts token p + 1: answer tokens are predicted from positions start-1 .. len-2
        targets[row, start - 1 : len(seq) - 1] = seq[start:]
    return {"input_ids": input_ids, "attention_mask": attention}, targets


def token_distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor | None,
                            targets: torch.Tensor, temperature: float, alpha: float) -> torch.Tensor:
    """Cross-entropy on answer tokens, mixed with the per-token KL to the teacher when one is given.

    ``teacher_logits`` is either the teacher's whole output ([batch, length, vocab]) or already its answer
    positions in the batch's row-major order ([answer tokens, vocab], as ``TeacherAnswerLogits`` gives).
    """
    mask = targets != IGNORE
    s = student_logits[mask]
    hard = F.cross_entropy(s, targets[mask])
    if teacher_logits is None:
        return hard
    t = temperature
    answers = teacher_logits if teacher_logits.dim() == 2 else teacher_logits[mask]
    soft = F.kl_div(F.log_softmax(s / t, dim=-1), F.log_softmax(answers.float() / t, dim=-1),
                    reduction="batchmean", log_target=True)
    return alpha * t * t * soft + (1.0 - alpha) * hard


CACHE_LIMIT_BYTES = 1 << 30


class TeacherAnswerLogits:
    """The teacher's logits at every example's answer positions, computed once (float16)."""

    def __init__(self, teacher: LlamaForCausalLM, data: Encoded, batch_size: int = 64):
        pad_id = teacher.config.pad_token_id or 0
        self.per_example: list[torch.Tensor | None] = [None] * len(data.ids)
        teacher.eval()
        with torch.inference_mode():
            for idx in length_batches(data.lengths, batch_size, None):
                batch, _ = collate(data, idx, pad_id)
                logits = teacher(**batch).logits
                for row, i in enumerate(idx):
                    start, end = data.answer_start[i] - 1, len(data.ids[i]) - 1
                    self.per_example[i] = logits[row, start:end].to(torch.float16).clone()

    @staticmethod
    def fits(data: Encoded, vocab_size: int) -> bool:
        answer_tokens = sum(len(ids) - start for ids, start in zip(data.ids, data.answer_start))
        return answer_tokens * vocab_size * 2 <= CACHE_LIMIT_BYTES

    def batch(self, idx: np.ndarray) -> torch.Tensor:
        return torch.cat([self.per_example[i] for i in idx])


def fit(model: LlamaForCausalLM, data: Encoded, *, epochs: int, lr: float, batch_size: int, seed: int,
        teacher: LlamaForCausalLM | None = None, temperature: float = 2.0, alpha: float = 0.5,
        warmup_ratio: float = 0.05, weight_decay: float = 0.01, progress: StepProgress | None = None,
        name: str = "model") -> TrainResult:
    """AdamW with warm-up and linear decay; cross-entropy alone, or token-level distillation from ``teacher``."""
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    lengths = data.lengths
    total = math.ceil(len(lengths) / batch_size) * epochs
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=lr)
    scheduler = get_linear_schedule_with_warmup(optimizer, max(1, int(warmup_ratio * total)), total)
    pad_id = model.config.pad_token_id or 0
    cached = None
    if teacher is not None:
        teacher.eval()
        if TeacherAnswerLogits.fits(data, teacher.config.vocab_size):
            if progress is not None:
                progress(f"{name}: the teacher's answer logits, once", 0.0)
            cached = TeacherAnswerLogits(teacher, data)
    torch.manual_seed(seed)
    model.train()
    step, running = 0, float("nan")
    for epoch in range(epochs):
        for idx in length_batches(lengths, batch_size, rng):
            batch, targets = collate(data, idx, pad_id)
            logits = model(**batch).logits
            teacher_logits = None
            if cached is not None:
                teacher_logits = cached.batch(idx)
            elif teacher is not None:
                with torch.no_grad():
                    teacher_logits = teacher(**batch).logits
            loss = token_distillation_loss(logits, teacher_logits, targets, temperature, alpha)
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


@torch.inference_mode()
def teacher_forced(model: LlamaForCausalLM, data: Encoded, other: LlamaForCausalLM | None = None,
                   batch_size: int = 64) -> TeacherForced:
    """Perplexity of ``model`` on the answer tokens; with ``other`` (the teacher), agreement and KL(other || model)."""
    model.eval()
    pad_id = model.config.pad_token_id or 0
    nll, tokens, agree, kl = 0.0, 0, 0, 0.0
    for idx in length_batches(data.lengths, batch_size, None):
        batch, targets = collate(data, idx, pad_id)
        mask = targets != IGNORE
        logits = model(**batch).logits[mask].float()
        nll += float(F.cross_entropy(logits, targets[mask], reduction="sum"))
        tokens += int(mask.sum())
        if other is not None:
            ref = other(**batch).logits[mask].float()
            agree += int((ref.argmax(-1) == logits.argmax(-1)).sum())
            log_p, log_q = F.log_softmax(ref, -1), F.log_softmax(logits, -1)
            kl += float((log_p.exp() * (log_p - log_q)).sum())
    result = TeacherForced(perplexity=math.exp(nll / max(tokens, 1)), tokens=tokens)
    if other is not None:
        result.top1_agreement = agree / max(tokens, 1)
        result.kl_teacher_student = kl / max(tokens, 1)
    return result


@torch.inference_mode()
def greedy_answers(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, prompts: Sequence[str],
                   max_new_tokens: int) -> list[list[int]]:
    """Greedy answer token ids per prompt (PyTorch with its KV cache, one prompt at a time), EOS excluded."""
    out = []
    for prompt in prompts:
        ids = torch.tensor([prompt_ids(tokenizer, prompt)])
        generated = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                   do_sample=False, eos_token_id=tokenizer.eos_token_id,
                                   pad_token_id=tokenizer.pad_token_id)[0, ids.shape[1]:].tolist()
        if tokenizer.eos_token_id in generated:
            generated = generated[: generated.index(tokenizer.eos_token_id)]
        out.append(generated)
    return out


def answer_quality(answers: Sequence[str], eval_rows: pd.DataFrame) -> dict[str, float]:
    """Exact match against the references (whitespace-normalised) and JSON adherence on structured prompts."""
    from loadtest.genpair.corpus import parses_as_reply

    norm = lambda s: " ".join(s.split())  # noqa: E731
    exact = [norm(a) == norm(r) for a, r in zip(answers, eval_rows["reference"])]
    structured = eval_rows["structured"].to_numpy(bool)
    adherent = [parses_as_reply(a) for a, s in zip(answers, structured) if s]
    return {"n": len(exact), "exact_match": float(np.mean(exact)) if exact else float("nan"),
            "n_structured": len(adherent),
            "format_adherence": float(np.mean(adherent)) if adherent else float("nan")}
