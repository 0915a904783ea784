"""Parity: does the exported artefact compute what the source model computes, at every shape we serve?

Exporters fail silently: a traced constant (the example's batch or sequence length) still yields a valid
graph that is right at the example shape and wrong, or unrunnable, at every other. So each export is run
at several shapes (batch 1 short, an odd batch mid-length, the maximum batch at the longest sequence) on
real tokenized text padded to length, and compared with a reference: PyTorch for a Hugging Face source,
ONNX Runtime for a TensorRT engine, and, for a plain ONNX file with no reference at all, the same rows run
one at a time (a batched graph must not mix or miscount rows). A failure is an error, never a warning.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, computed_field

from loadtest.errors import LoadtestError

Feed = dict[str, np.ndarray]
Runner = Callable[[Feed], np.ndarray]
Method = Literal["pytorch-reference", "batch-invariance", "onnxruntime-reference"]

# Plain text of varied length and vocabulary, so padded rows and full rows both occur.
SAMPLE_TEXTS = (
    "The new release cut our checkout latency in half and customers noticed within a day.",
    "Terrible experience: the package arrived broken and support never answered my three emails.",
    "Is the student model good enough to replace the teacher in production?",
    "Quarterly revenue grew in every region except the north, where two large contracts ended.",
    "ok",
    "I would like to change the delivery address on order 4417 before it ships tomorrow morning.",
    "The weather was cold but the mountains were beautiful, and the trains ran on time for once.",
    "Please reset my password; I cannot log in since the update and the reset link has expired.",
    "Dynamic batching doubled throughput at the same p95 latency on the staging cluster.",
    "Great product, fast shipping, would buy again!",
    "The meeting moved to Thursday at 3 pm; bring the capacity numbers and the cost estimate.",
    "Nothing works. Refund me now.",
)
_LONG_TEXT = " ".join(SAMPLE_TEXTS)
# Fraction of the sequence each row's text fills (>1 truncates to a full row, so every batch mixes both).
_ROW_FILL = (1.6, 0.35, 0.8, 0.15, 0.55, 1.2, 0.25, 0.95, 0.45, 0.65)


class ParityError(LoadtestError):
    """An export that does not reproduce its reference at some shape (refused, never warned about)."""

    def __init__(self, message: str, report: ParityReport | None = None):
        super().__init__(message)
        self.report = report


class ShapeParity(BaseModel):
    """The comparison at one input shape."""

    batch: int
    sequence: int
    max_abs_diff: float | None  # None: the candidate could not run this shape or returned another shape
    argmax_agreement: float | None
    padding_fraction: float  # share of input positions that are padding
    passed: bool
    error: str | None = None


class ParityReport(BaseModel):
    """Parity figures of one artefact against its reference, per shape."""

    method: Method
    candidate: str
    reference: str
    atol: float
    min_agreement: float
    shapes: list[ShapeParity]
    passed: bool

    @computed_field
    @property
    def worst_max_abs_diff(self) -> float | None:
        diffs = [s.max_abs_diff for s in self.shapes if s.max_abs_diff is not None]
        return max(diffs) if diffs else None

    @computed_field
    @property
    def min_argmax_agreement(self) -> float | None:
        values = [s.argmax_agreement for s in self.shapes if s.argmax_agreement is not None]
        return min(values) if values else None


def parity_shapes(max_batch_size: int, max_sequence_length: int) -> list[tuple[int, int]]:
    """(batch, sequence) pairs: batch 1 short, an odd batch at mid length, the maximum batch at full length."""
    if max_batch_size < 1 or max_sequence_length < 2:
        raise LoadtestError(
            f"cannot check parity with max batch {max_batch_size} and max sequence {max_sequence_length}"
        )
    short = min(8, max_sequence_length)
    mid = min(max_sequence_length, max_sequence_length // 2 + 1)
    odd = max(1, (max_batch_size // 2) | 1) if max_batch_size >= 3 else 1
    odd = min(odd, max_batch_size)
    shapes = [(1, short), (odd, mid), (max_batch_size, max_sequence_length)]
    return list(dict.fromkeys(shapes))


def sample_feed(tokenizer, batch: int, sequence: int, input_names: Sequence[str]) -> Feed:
    """Real tokenized text pairs, padded to exactly ``sequence`` tokens, as int64 arrays.

    Row lengths vary (one full row, the others padded) and each row holds two segments, so attention masks
    carry padding and ``token_type_ids`` carry real 1s where the model has segment embeddings.
    """
    if tokenizer.pad_token is None:
        raise LoadtestError("the tokenizer has no padding token, so batches of unequal texts cannot be formed")
    words = _LONG_TEXT.split()
    while len(words) < 2 * sequence + 20:
        words = words + words
    pairs = sequence >= 8  # shorter rows leave no room for two segments and their special tokens
    rows = []
    for row in range(batch):
        fill = _ROW_FILL[row % len(_ROW_FILL)] if batch > 1 else 1.6
        length = min(sequence, max(min(sequence, 6), int(sequence * fill)))
        start = (row * 7) % len(SAMPLE_TEXTS)
        first = " ".join(words[start : start + sequence])
        second = " ".join(words[start + sequence : start + 2 * sequence]) if pairs else None
        rows.append(
            tokenizer(
                first,
                second,
                truncation=True,
                max_length=length,
                return_attention_mask=True,
                return_token_type_ids=True,
            )
        )
    encoded = tokenizer.pad(rows, padding="max_length", max_length=sequence, return_tensors="np")
    feed: Feed = {}
    for name in input_names:
        if name in encoded:
            feed[name] = np.asarray(encoded[name], dtype=np.int64)
        elif name == "token_type_ids":
            feed[name] = np.zeros((batch, sequence), dtype=np.int64)
        else:
            raise LoadtestError(f"the tokenizer does not produce the model input '{name}'")
    if feed["input_ids"].shape != (batch, sequence):
        raise LoadtestError(f"the tokenizer produced shape {feed['input_ids'].shape}, expected {(batch, sequence)}")
    return feed


def onnxruntime_runner(path: Path, output: str, providers: Sequence[str] = ("CPUExecutionProvider",)) -> Runner:
    """Run an ONNX file with ONNX Runtime (its own error logging silenced: failures come back as exceptions)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4
    try:
        session = ort.InferenceSession(str(path), options, providers=list(providers))
    except Exception as exc:  # ORT raises its own exception types (Fail, InvalidGraph, ...)
        raise LoadtestError(f"ONNX Runtime cannot load {path}: {_error_text(exc)}") from None
    wanted = {i.name for i in session.get_inputs()}

    def run(feed: Feed) -> np.ndarray:
        return np.asarray(session.run([output], {k: v for k, v in feed.items() if k in wanted})[0])

    return run


def pytorch_runner(model) -> Runner:
    """Run a transformers model in eval mode without gradients; returns logits as float32 numpy."""
    import torch

    def run(feed: Feed) -> np.ndarray:
        model.eval()  # an exporter may have restored a training flag: dropout would make the reference random
        with torch.inference_mode():
            out = model(**{k: torch.from_numpy(v) for k, v in feed.items()})
        logits = out.logits if hasattr(out, "logits") else out[0]
        return logits.float().numpy()

    return run


def rows_one_at_a_time(runner: Runner) -> Runner:
    """The reference for a plain ONNX file: each row alone, at the same padded length, stacked."""

    def run(feed: Feed) -> np.ndarray:
        batch = next(iter(feed.values())).shape[0]
        rows = [runner({k: v[i : i + 1] for k, v in feed.items()}) for i in range(batch)]
        return np.concatenate(rows, axis=0)

    return run


def check_parity(
    name: str,
    candidate: Runner,
    reference: Runner,
    tokenizer,
    input_names: Sequence[str],
    shapes: Sequence[tuple[int, int]],
    *,
    method: Method,
    candidate_label: str,
    reference_label: str,
    atol: float,
    min_agreement: float = 1.0,
    progress: Callable[[str], None] | None = None,
) -> ParityReport:
    """Compare candidate and reference on every shape; raise ParityError naming the first failing shape."""
    results: list[ShapeParity] = []
    for batch, sequence in shapes:
        if progress:
            progress(f"{name}: parity at batch {batch} × sequence {sequence}")
        feed = sample_feed(tokenizer, batch, sequence, input_names)
        padding = float(1.0 - feed["attention_mask"].mean()) if "attention_mask" in feed else 0.0
        results.append(
            _compare(candidate, reference, feed, batch, sequence, padding, atol, min_agreement, candidate_label)
        )
    report = ParityReport(
        method=method,
        candidate=candidate_label,
        reference=reference_label,
        atol=atol,
        min_agreement=min_agreement,
        shapes=results,
        passed=all(r.passed for r in results),
    )
    failed = [r for r in results if not r.passed]
    if failed:
        first = failed[0]
        more = f" ({len(failed)} of {len(results)} shapes failed)" if len(failed) > 1 else ""
        raise ParityError(
            f"{name}: parity check failed at batch {first.batch} × sequence {first.sequence}: {first.error}{more}",
            report,
        )
    return report


def _compare(
    candidate: Runner,
    reference: Runner,
    feed: Feed,
    batch: int,
    sequence: int,
    padding: float,
    atol: float,
    min_agreement: float,
    candidate_label: str,
) -> ShapeParity:
    def outcome(error: str | None, diff: float | None = None, agreement: float | None = None) -> ShapeParity:
        return ShapeParity(
            batch=batch,
            sequence=sequence,
            max_abs_diff=diff,
            argmax_agreement=agreement,
            padding_fraction=padding,
            passed=error is None,
            error=error,
        )

    failed = outcome  # reads better at the early returns below

    try:
        got = candidate(feed)
    except Exception as exc:
        return failed(f"{candidate_label} cannot run this shape: {_error_text(exc)}")
    try:
        expected = reference(feed)
    except Exception as exc:
        return failed(f"the reference cannot run this shape: {_error_text(exc)}")
    if got.ndim != 2 or got.shape[0] != batch:
        return failed(f"{candidate_label} returned shape {tuple(got.shape)} for a batch of {batch}")
    if expected.ndim != 2 or expected.shape[0] != batch:
        return failed(f"the reference returned shape {tuple(expected.shape)} for a batch of {batch}")
    if got.shape != expected.shape:
        return failed(f"{candidate_label} returned shape {tuple(got.shape)}, expected {tuple(expected.shape)}")
    got = got.astype(np.float64)
    expected = expected.astype(np.float64)
    if not np.all(np.isfinite(got)):
        return failed(f"{candidate_label} returned non-finite values")
    diff = float(np.max(np.abs(got - expected))) if got.size else 0.0
    agreement = float(np.mean(np.argmax(got, axis=-1) == np.argmax(expected, axis=-1)))
    if not diff <= atol:
        return failed(f"max abs diff {diff:.3g} > atol {atol:g}", diff, agreement)
    if agreement < min_agreement:
        return failed(f"argmax agreement {agreement:.4f} < {min_agreement:g}", diff, agreement)
    return outcome(None, diff, agreement)


def _error_text(exc: BaseException) -> str:
    """One line from an exception, with ONNX Runtime's status prefix and C++ source location cut out."""
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__
    text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", text)
    text = re.sub(r"Status Message: \S+:\d+ .*? was false\. ", "", text)
    return text[:300]
