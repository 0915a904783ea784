"""Payloads for any model as the server describes it: by datatype, from a dataset, or from perf_analyzer data.

Why: a staging server holds models loadtest never exported. Given a ``ServerModel`` (names, datatypes,
dims, max_batch_size from the server), every request is built once per process, before the clock:

* ``--input-data FILE`` (perf_analyzer's JSON): each step is one batch element, stacked ``--batch-size``
  at a time, cycled;
* ``--dataset`` with a text column: BYTES inputs receive the text itself (models that tokenise inside
  Triton, such as ``loadtest export --with-tokenizer`` ensembles);
* otherwise synthetic values by datatype: integers uniform in ``--int-range`` (``attention_mask`` all
  ones, ``token_type_ids`` zeros), floats uniform in [0, 1), booleans, and BYTES strings of random words
  (with a tokenizer at hand: text decoded from random tokens, about ``--lengths`` tokens long).
  Variable dims take ``--input-shape NAME:d1,d2`` (perf_analyzer's ``--shape``) or, without one, a length
  drawn from ``--lengths`` per request (words per string for BYTES).

A request's ``tokens`` is the sum of its ``attention_mask`` input, else the tokenizer's count of its
text (when a tokenizer is at hand), else the size of its ``input_ids``, else 0 (not counted).
Never imports Locust or gevent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from loadtest.errors import LoadtestError
from loadtest.load.payloads import DEFAULT_LENGTHS, LengthDistribution, Payload, read_dataset
from loadtest.load.server_models import TRITON_DATATYPES

WORDS = (
    "the quick brown fox jumps over lazy dog model server request latency batch queue token text value "
    "student teacher label stream answer number signal window staging load test"
).split()
DEFAULT_INT_RANGE = (0, 100)
MAX_SYNTHETIC_LENGTH = 4096


@dataclass(frozen=True)
class InputSettings:
    """What the user asked for, for models read from the server."""

    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # --input-shape
    input_data: Path | None = None  # --input-data
    dataset: Path | None = None
    text_column: str = "text"
    lengths: str | None = None
    batch_size: int = 1
    pool_size: int = 1024
    seed: int = 0
    int_range: tuple[int, int] = DEFAULT_INT_RANGE


def parse_input_shapes(text: str) -> dict[str, tuple[int, ...]]:
    """``"IMAGE:3,224,224 INPUT0:16"`` (space- or semicolon-separated) -> {name: dims}."""
    shapes: dict[str, tuple[int, ...]] = {}
    for item in str(text or "").replace(";", " ").split():
        name, sep, dims = item.rpartition(":")
        try:
            values = tuple(int(d) for d in dims.split(",") if d.strip())
        except ValueError:
            values = ()
        if not sep or not name or not values or any(v < 1 for v in values):
            raise LoadtestError(f"--input-shape '{item}': use NAME:d1,d2 with positive dims (e.g. IMAGE:3,224,224)")
        shapes[name] = values
    return shapes


def parse_int_range(text: str) -> tuple[int, int]:
    """``"LO:HI"`` -> (LO, HI), integers drawn from [LO, HI)."""
    if not str(text or "").strip():
        return DEFAULT_INT_RANGE
    parts = str(text).split(":")
    try:
        low, high = int(parts[0]), int(parts[1])
    except (ValueError, IndexError):
        raise LoadtestError(f"--int-range '{text}': use LO:HI (integers drawn from LO to HI-1)") from None
    if len(parts) != 2 or high <= low:
        raise LoadtestError(f"--int-range '{text}': use LO:HI with HI > LO")
    return low, high


# ---- checks (one line each, before any load) ---------------------------------------------------
def check_shapes_known(models, settings: InputSettings) -> None:
    """Every ``--input-shape`` names an input of at least one loaded model."""
    known = {t.name for m in models for t in m.inputs}
    for name in settings.shapes:
        if name not in known:
            listing = "; ".join(f"{m.name}: {', '.join(t.name for t in m.inputs)}" for m in models)
            raise LoadtestError(f"--input-shape {name}: no loaded model has an input '{name}' (inputs: {listing})")


def check_inputs(model, settings: InputSettings) -> None:
    """Datatypes loadtest can fill and ``--input-shape`` entries that fit the model."""
    for tensor in model.inputs:
        if tensor.numpy_dtype is None and not tensor.optional:
            raise LoadtestError(
                f"model '{model.name}' input '{tensor.name}' is {tensor.datatype}, a datatype loadtest cannot send "
                f"(it sends {', '.join(sorted(TRITON_DATATYPES))}): leave the model out of --models"
            )
    for name, dims in settings.shapes.items():
        tensor = model.input(name)
        if tensor is None:
            continue  # --input-shape may name inputs of another model of the same test
        if len(dims) != len(tensor.dims):
            raise LoadtestError(
                f"--input-shape {name}:{','.join(map(str, dims))} has {len(dims)} dims; model '{model.name}' input "
                f"'{name}' has dims {list(tensor.dims)} (batch dimension excluded): give {len(tensor.dims)} dims"
            )
        for given, declared in zip(dims, tensor.dims):
            if declared >= 0 and given != declared:
                raise LoadtestError(
                    f"--input-shape {name}:{','.join(map(str, dims))}: model '{model.name}' input '{name}' has static "
                    f"dims {list(tensor.dims)}; --input-shape may only set its variable (-1) dims"
                )
    if model.max_batch_size == 0 and settings.batch_size > 1:
        raise LoadtestError(
            f"--batch-size {settings.batch_size}: model '{model.name}' has max_batch_size 0 (no batch dimension); "
            "use --batch-size 1 for it"
        )
    if model.max_batch_size and settings.batch_size > model.max_batch_size:
        raise LoadtestError(
            f"--batch-size {settings.batch_size} exceeds model '{model.name}' max_batch_size {model.max_batch_size}"
        )


# ---- building ----------------------------------------------------------------------------------
def _concrete_shape(tensor, settings: InputSettings, length: int) -> list[int]:
    override = settings.shapes.get(tensor.name)
    if override is not None:
        return list(override)
    fill = 1 if tensor.datatype == "BYTES" else length
    return [fill if d < 0 else d for d in tensor.dims]


def _synthetic(tensor, shape: list[int], rng: np.random.Generator, settings: InputSettings, words: int,
               tokenizer=None) -> np.ndarray:  # fmt: skip
    dtype = tensor.numpy_dtype
    name = tensor.name.lower()
    if tensor.datatype == "BYTES":
        count = int(np.prod(shape)) if shape else 1
        if tokenizer is not None:  # text of about ``words`` tokens, from the model's own vocabulary
            texts = [tokenizer.random_text(rng, max(words - 2, 1)).encode() for _ in range(count)]
        else:
            texts = [" ".join(rng.choice(WORDS, size=max(words, 1))).encode() for _ in range(count)]
        return np.array(texts, dtype=object).reshape(shape)
    if tensor.datatype == "BOOL":
        return rng.integers(0, 2, size=shape).astype(bool)
    if np.issubdtype(np.dtype(dtype), np.integer):
        if name == "attention_mask":
            return np.ones(shape, dtype=dtype)
        if name == "token_type_ids":
            return np.zeros(shape, dtype=dtype)
        info = np.iinfo(np.dtype(dtype))
        low, high = max(settings.int_range[0], int(info.min)), min(settings.int_range[1], int(info.max) + 1)
        return rng.integers(low, high, size=shape).astype(dtype)
    return rng.random(size=shape).astype(dtype)


def _tokens(arrays: dict[str, np.ndarray], tokenizer) -> int:
    if "attention_mask" in arrays:
        return int(np.asarray(arrays["attention_mask"]).astype(np.int64).sum())
    texts = [v for a in arrays.values() if a.dtype == object for v in np.ravel(a)]
    if texts and tokenizer is not None:
        decoded = [t.decode("utf-8", errors="replace") if isinstance(t, bytes) else str(t) for t in texts]
        return int(sum(tokenizer.count_tokens(decoded, tokenizer.model_max_length)))
    if "input_ids" in arrays:
        return int(np.asarray(arrays["input_ids"]).size)
    return 0


def _stack(rows: list[np.ndarray], batches: bool) -> np.ndarray:
    return np.stack(rows) if batches else rows[0]


def _from_input_data(model, settings: InputSettings, tokenizer) -> list[Payload]:
    from loadtest.load.input_data import read_steps, step_array

    steps = read_steps(settings.input_data)
    names = {t.name for t in model.inputs}
    for i, step in enumerate(steps):
        extra = sorted(set(step) - names)
        if extra:
            raise LoadtestError(
                f"--input-data {settings.input_data}: step {i} names {extra}, not inputs of model '{model.name}' "
                f"(its inputs: {', '.join(sorted(names))}); fix the names or load the model the file was written for"
            )
        missing = [t.name for t in model.inputs if not t.optional and t.name not in step]
        if missing:
            raise LoadtestError(
                f"--input-data {settings.input_data}: step {i} lacks model '{model.name}' input '{missing[0]}'; "
                "every step must give every required input"
            )
    batch = settings.batch_size if model.batches else 1
    if len(steps) < batch:
        raise LoadtestError(f"--input-data {settings.input_data} has {len(steps)} steps, fewer than --batch-size {batch}")
    payloads = []
    for start in range(0, len(steps) - batch + 1, batch):
        group = steps[start : start + batch]
        arrays = {}
        for tensor in model.inputs:
            if tensor.name not in group[0]:
                continue
            rows = [step_array(s, tensor, model.name, settings.shapes.get(tensor.name)) for s in group]
            if len({r.shape for r in rows}) > 1:
                raise LoadtestError(
                    f"--input-data: model '{model.name}' input '{tensor.name}': steps {start}-{start + batch - 1} differ in "
                    "shape and cannot share one request; use --batch-size 1 or give them equal shapes"
                )
            arrays[tensor.name] = _stack(rows, model.batches)
        payloads.append(Payload(arrays, batch, _tokens(arrays, tokenizer)))
    return payloads


def _dataset_texts(settings: InputSettings) -> list[str]:
    frame = read_dataset(settings.dataset)
    if settings.text_column not in frame.columns:
        raise LoadtestError(
            f"dataset {settings.dataset} has no '{settings.text_column}' column (columns: "
            f"{', '.join(map(str, frame.columns))}); choose one with --text-column"
        )
    return frame[settings.text_column].astype(str).tolist()


def build_model_payloads(model, settings: InputSettings, tokenizer=None) -> list[Payload]:
    """The pool of ready requests for one model (``settings.pool_size`` of them unless data limits it)."""
    check_inputs(model, settings)
    if settings.input_data is not None:
        return _from_input_data(model, settings, tokenizer)
    rng = np.random.default_rng(settings.seed)
    batch = settings.batch_size if model.batches else 1
    distribution = LengthDistribution.parse(settings.lengths or DEFAULT_LENGTHS)
    if distribution.kind == "dataset":
        raise LoadtestError(f"--lengths dataset is for tokenised payloads; model '{model.name}' reads its inputs from the server")
    lengths = distribution.sample(rng, settings.pool_size, MAX_SYNTHETIC_LENGTH)
    texts = _dataset_texts(settings) if settings.dataset is not None else None
    text_inputs = [t for t in model.inputs if t.datatype == "BYTES" and not t.optional]
    if texts is not None and not text_inputs:
        raise LoadtestError(
            f"--dataset: model '{model.name}' takes no BYTES input to send text to (inputs: "
            f"{', '.join(f'{t.name} {t.datatype}' for t in model.inputs)}); load it with synthetic values or --input-data"
        )
    order = rng.permutation(len(texts)) if texts is not None else None
    payloads = []
    for i in range(settings.pool_size):
        arrays = {}
        for tensor in model.inputs:
            if tensor.optional:
                continue
            shape = _concrete_shape(tensor, settings, int(lengths[i]))
            if texts is not None and tensor.datatype == "BYTES":
                count = batch * (int(np.prod(shape)) if shape else 1)
                picked = [texts[order[(i * count + k) % len(texts)]].encode() for k in range(count)]
                value = np.array(picked, dtype=object).reshape(([batch] if model.batches else []) + shape)
            else:
                rows = [_synthetic(tensor, shape, rng, settings, int(lengths[i]), tokenizer) for _ in range(batch)]
                value = _stack(rows, model.batches)
            arrays[tensor.name] = value
        payloads.append(Payload(arrays, batch, _tokens(arrays, tokenizer)))
    return payloads


def describe(settings: InputSettings) -> str:
    """One line for the manifest: where the values come from."""
    if settings.input_data is not None:
        source = f"input data {settings.input_data}"
    elif settings.dataset is not None:
        source = f"dataset {settings.dataset} (column {settings.text_column}) into BYTES inputs"
    else:
        source = f"synthetic by datatype, variable dims {settings.lengths or DEFAULT_LENGTHS}"
    shapes = " ".join(f"{n}:{','.join(map(str, d))}" for n, d in settings.shapes.items())
    return f"{source}{', input shapes ' + shapes if shapes else ''}, batch {settings.batch_size}"
