"""Request payloads: token arrays built once per process, from a dataset or synthetic lengths.

Why here and not in the users: tokenising or serialising per request would make the load generator,
not the server, the bottleneck and would put the tokenizer's time into the latency. Every payload is
a ready batch of padded token arrays that knows its token count (the sum of its attention mask, the
unit of tokens/s and cost per 1M tokens). Sources:

* a dataset file (JSONL, CSV, Parquet) with a ``text`` column, tokenised with the repository's own
  tokenizer, or pre-tokenised ``input_ids`` (lists of ints, optional ``attention_mask``);
* synthetic token ids whose lengths follow ``fixed:N``, ``uniform:MIN:MAX``, ``lognormal:MEDIAN:SIGMA``
  or ``dataset`` (the token lengths of ``--dataset``, resampled).

Never imports Locust or gevent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from loadtest.errors import LoadtestError

LengthKind = Literal["fixed", "uniform", "lognormal", "dataset"]
DATASET_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet"}
TOKENIZER_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
DEFAULT_LENGTHS = "fixed:128"


@dataclass(frozen=True)
class LengthDistribution:
    """How long synthetic sequences are, in tokens including special tokens."""

    kind: LengthKind
    a: float = 0.0  # fixed: N; uniform: min; lognormal: median
    b: float = 0.0  # uniform: max; lognormal: sigma of log-length

    @classmethod
    def parse(cls, text: str) -> LengthDistribution:
        """Parse ``fixed:128``, ``uniform:16:256``, ``lognormal:64:0.6`` or ``dataset``."""
        parts = [p.strip() for p in str(text).strip().lower().split(":")]
        kind, args = parts[0], parts[1:]
        usage = "use fixed:N, uniform:MIN:MAX, lognormal:MEDIAN:SIGMA or dataset"
        try:
            values = [float(a) for a in args]
        except ValueError:
            raise LoadtestError(f"length distribution '{text}': numbers expected; {usage}") from None
        if kind == "fixed" and len(values) == 1 and values[0] >= 1:
            return cls("fixed", values[0])
        if kind == "uniform" and len(values) == 2 and 1 <= values[0] <= values[1]:
            return cls("uniform", values[0], values[1])
        if kind == "lognormal" and len(values) == 2 and values[0] >= 1 and values[1] >= 0:
            return cls("lognormal", values[0], values[1])
        if kind == "dataset" and not values:
            return cls("dataset")
        raise LoadtestError(f"length distribution '{text}' is not valid: {usage}")

    def sample(
        self, rng: np.random.Generator, n: int, max_length: int, dataset_lengths: np.ndarray | None = None
    ) -> np.ndarray:
        """``n`` lengths in [min_length, max_length] (int64); ``dataset`` resamples ``dataset_lengths``."""
        if self.kind == "fixed":
            lengths = np.full(n, self.a)
        elif self.kind == "uniform":
            lengths = rng.integers(int(self.a), int(self.b) + 1, size=n)
        elif self.kind == "lognormal":
            lengths = np.rint(rng.lognormal(mean=math.log(self.a), sigma=self.b, size=n))
        else:
            if dataset_lengths is None or len(dataset_lengths) == 0:
                raise LoadtestError("--lengths dataset needs --dataset (the lengths are resampled from it)")
            lengths = rng.choice(np.asarray(dataset_lengths), size=n, replace=True)
        return np.clip(lengths, 1, max_length).astype(np.int64)

    def __str__(self) -> str:
        if self.kind == "fixed":
            return f"fixed:{self.a:g}"
        if self.kind == "uniform":
            return f"uniform:{self.a:g}:{self.b:g}"
        if self.kind == "lognormal":
            return f"lognormal:{self.a:g}:{self.b:g}"
        return "dataset"


@dataclass(frozen=True)
class Payload:
    """One request: ``batch_size`` rows padded to the longest row; arrays are int64 ``[batch, seq]``."""

    arrays: dict[str, np.ndarray]
    batch_size: int
    tokens: int  # sum of the attention mask over the request

    @property
    def sequence_length(self) -> int:
        return int(self.arrays["input_ids"].shape[1])


@dataclass(frozen=True)
class PayloadSpec:
    """What the user asked for (the load options), independent of Locust."""

    repository: Path
    dataset: Path | None = None
    text_column: str = "text"
    lengths: str | None = None  # None: the dataset's rows as they are, or DEFAULT_LENGTHS without a dataset
    batch_size: int = 1
    pool_size: int = 1024  # distinct requests prepared per process
    seed: int = 0

    @property
    def source(self) -> Literal["dataset", "synthetic"]:
        return "dataset" if self.dataset is not None and self.lengths is None else "synthetic"

    def describe(self) -> str:
        if self.source == "dataset":
            return f"dataset {self.dataset} (column {self.text_column}), batch {self.batch_size}"
        return f"synthetic lengths {self.lengths or DEFAULT_LENGTHS}, batch {self.batch_size}"


@dataclass
class Sequences:
    """Unpadded token sequences (one per dataset row or synthetic row)."""

    input_ids: list[np.ndarray]
    token_type_ids: list[np.ndarray] | None = None
    attention_mask: list[np.ndarray] | None = None
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.input_ids)

    def lengths(self) -> np.ndarray:
        return np.array([len(x) for x in self.input_ids], dtype=np.int64)


# ---- datasets ---------------------------------------------------------------------------------
def read_dataset(path: Path | str):
    """A dataset file as a pandas DataFrame (JSONL, CSV or Parquet, chosen by the file's suffix)."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise LoadtestError(f"dataset {path} does not exist")
    kind = DATASET_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise LoadtestError(f"dataset {path}: unknown format '{path.suffix}' (use .jsonl, .csv or .parquet)")
    try:
        if kind == "jsonl":
            frame = pd.read_json(path, lines=True)
        elif kind == "csv":
            frame = pd.read_csv(path)
        else:
            frame = pd.read_parquet(path)
    except Exception as exc:  # a malformed file is the user's to fix
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LoadtestError(f"dataset {path} could not be read as {kind}: {first}") from None
    if frame.empty:
        raise LoadtestError(f"dataset {path} has no rows")
    return frame


def _as_id_list(value, column: str, path: Path) -> np.ndarray:
    if isinstance(value, str):  # CSV stores lists as text: "[101, 2023, 102]"
        import json

        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise LoadtestError(f"dataset {path}: column {column} must hold lists of token ids") from None
    array = np.asarray(value, dtype=np.int64).reshape(-1)
    if array.size == 0:
        raise LoadtestError(f"dataset {path}: column {column} has an empty row")
    return array


def dataset_sequences(path: Path | str, tokenizer, text_column: str, max_length: int) -> Sequences:
    """Token sequences of a dataset: pre-tokenised ``input_ids`` if present, else ``text_column`` tokenised."""
    path = Path(path)
    frame = read_dataset(path)
    if "input_ids" in frame.columns:
        ids = [_as_id_list(v, "input_ids", path)[:max_length] for v in frame["input_ids"]]
        masks = None
        if "attention_mask" in frame.columns:
            masks = [_as_id_list(v, "attention_mask", path)[:max_length] for v in frame["attention_mask"]]
            if any(len(m) != len(i) for m, i in zip(masks, ids)):
                raise LoadtestError(f"dataset {path}: attention_mask and input_ids differ in length")
        types = None
        if "token_type_ids" in frame.columns:
            types = [_as_id_list(v, "token_type_ids", path)[:max_length] for v in frame["token_type_ids"]]
        return Sequences(ids, types, masks, meta={"source": "input_ids"})
    if text_column not in frame.columns:
        raise LoadtestError(
            f"dataset {path} has neither a '{text_column}' column nor 'input_ids' "
            f"(columns: {', '.join(map(str, frame.columns))}); choose one with --text-column"
        )
    texts = frame[text_column].astype(str).tolist()
    encoded = tokenizer(texts, truncation=True, max_length=max_length, padding=False)
    ids = [np.asarray(x, dtype=np.int64) for x in encoded["input_ids"]]
    types = [np.asarray(x, dtype=np.int64) for x in encoded["token_type_ids"]] if "token_type_ids" in encoded else None
    masks = [np.asarray(x, dtype=np.int64) for x in encoded["attention_mask"]]
    return Sequences(ids, types, masks, meta={"source": text_column})


# ---- synthetic --------------------------------------------------------------------------------
def synthetic_sequences(tokenizer, lengths: np.ndarray, rng: np.random.Generator) -> Sequences:
    """Random non-special token ids framed by the tokenizer's special tokens, one row per length."""
    special = set(int(i) for i in tokenizer.all_special_ids)
    vocab = np.array([i for i in range(len(tokenizer)) if i not in special], dtype=np.int64)
    if vocab.size == 0:
        raise LoadtestError("the repository's tokenizer has no ordinary tokens to build synthetic inputs from")
    first = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    last = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    prefix = [first] if first is not None else []
    suffix = [last] if last is not None else []
    rows = []
    for length in lengths:
        body = max(int(length) - len(prefix) - len(suffix), 1)
        middle = rng.choice(vocab, size=body)
        rows.append(np.concatenate([np.array(prefix, np.int64), middle, np.array(suffix, np.int64)]))
    return Sequences(rows, meta={"source": "synthetic"})


# ---- batching ---------------------------------------------------------------------------------
def batch_payloads(sequences: Sequences, batch_size: int, pad_id: int, order: np.ndarray) -> list[Payload]:
    """Group rows (in ``order``) into padded batches; a request's tokens = the sum of its attention mask."""
    if batch_size < 1:
        raise LoadtestError(f"batch size must be >= 1, got {batch_size}")
    payloads = []
    for start in range(0, len(order) - batch_size + 1, batch_size):
        rows = order[start : start + batch_size]
        width = max(len(sequences.input_ids[r]) for r in rows)
        ids = np.full((batch_size, width), pad_id, dtype=np.int64)
        mask = np.zeros((batch_size, width), dtype=np.int64)
        types = np.zeros((batch_size, width), dtype=np.int64)
        for k, r in enumerate(rows):
            seq = sequences.input_ids[r]
            ids[k, : len(seq)] = seq
            mask[k, : len(seq)] = sequences.attention_mask[r] if sequences.attention_mask is not None else 1
            if sequences.token_type_ids is not None:
                types[k, : len(seq)] = sequences.token_type_ids[r]
        payloads.append(
            Payload({"input_ids": ids, "attention_mask": mask, "token_type_ids": types}, batch_size, int(mask.sum()))
        )
    return payloads


def build_payloads(spec: PayloadSpec, tokenizer=None, max_length: int | None = None) -> list[Payload]:
    """The pool of ready requests for ``spec`` (``spec.pool_size`` of them, fewer for a small dataset).

    ``tokenizer``/``max_length`` default to the repository's (``loadtest.json``); passing them avoids
    loading it twice. The pool is deterministic for a given seed, so every process sends the same mix.
    """
    from loadtest.repository import ModelRepository

    if spec.batch_size < 1:
        raise LoadtestError(f"--batch-size must be >= 1, got {spec.batch_size}")
    if spec.pool_size < 1:
        raise LoadtestError(f"--payload-pool must be >= 1, got {spec.pool_size}")
    repository = ModelRepository(spec.repository)
    if tokenizer is None or max_length is None:
        metadata = repository.read_metadata()
        max_length = max_length or metadata.max_sequence_length
        tokenizer = tokenizer or repository.load_tokenizer()
    rng = np.random.default_rng(spec.seed)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    dataset = None
    if spec.dataset is not None:
        dataset = dataset_sequences(spec.dataset, tokenizer, spec.text_column, max_length)
    if spec.source == "dataset":
        sequences = dataset
        rows_needed = spec.pool_size * spec.batch_size
        if len(sequences) < spec.batch_size:
            raise LoadtestError(
                f"dataset {spec.dataset} has {len(sequences)} rows, fewer than --batch-size {spec.batch_size}"
            )
        if len(sequences) <= rows_needed:
            order = rng.permutation(len(sequences))
        else:
            order = rng.choice(len(sequences), size=rows_needed, replace=False)
    else:
        distribution = LengthDistribution.parse(spec.lengths or DEFAULT_LENGTHS)
        n = spec.pool_size * spec.batch_size
        lengths = distribution.sample(rng, n, max_length, dataset.lengths() if dataset is not None else None)
        sequences = synthetic_sequences(tokenizer, lengths, rng)
        order = np.arange(n)
    return batch_payloads(sequences, spec.batch_size, pad_id, order)


def model_arrays(payload: Payload, inputs: list[tuple[str, str]]) -> dict[str, np.ndarray]:
    """The arrays one model takes: ``inputs`` is [(name, numpy dtype)] from its config.pbtxt."""
    arrays = {}
    for name, dtype in inputs:
        if name not in payload.arrays:
            raise LoadtestError(
                f"model input '{name}' is not a tokenizer output ({', '.join(TOKENIZER_INPUTS)}): "
                "loadtest drives text classifiers exported by `loadtest export`"
            )
        arrays[name] = payload.arrays[name].astype(dtype, copy=False)
    return arrays
