"""The frozen evaluation set: read, checked against the repository, tokenized the way the server expects.

Accepted files: Parquet (``.parquet``/``.pq``), JSON Lines (``.jsonl``/``.ndjson``, or ``.json`` holding
lines or an array of records) and CSV (``.csv``). Columns:

- ``text`` (str) — or ``input_ids`` (list of ints) already tokenized; ``text`` wins when both exist;
- ``label`` (str) — required: a name from the repository's ``labels`` (``loadtest.json``);
- ``id`` (optional, unique; ``row-<i>`` when absent), ``label_id`` (optional; when present it must agree
  with the repository's label order — a mismatch is the classic silent label-order bug);
- any other bool or string column is a slice column (at most ``MAX_SLICE_VALUES`` distinct values; more
  and it is listed as not used). Numeric columns (``n_tokens`` …) are kept out of slicing.

Inputs longer than the repository's ``max_sequence_length`` are **truncated** to it (what the served
model can take), counted per example (``truncated``, ``input_tokens``) and reported; never skipped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from loadtest.errors import LoadtestError

RESERVED_COLUMNS = {"id", "text", "input_ids", "label", "label_id", "attention_mask", "token_type_ids"}
MAX_SLICE_VALUES = 50
_EXAMPLES_SHOWN = 5


@dataclass
class EvalDataset:
    """A validated evaluation set, one row per example, in file order."""

    path: Path
    frame: pd.DataFrame  # id, label, label_id, text (or input_ids), slice columns
    slice_columns: list[str]
    ignored_columns: dict[str, str] = field(default_factory=dict)  # column -> why it is not a slice

    @property
    def tensor_columns(self) -> list[str]:
        """Input columns sent as they are (a model taking neither text nor token ids)."""
        return [c for c in self.frame.columns if c not in ("id", "label", "label_id", "text", "input_ids")
                and c not in self.slice_columns]  # fmt: skip

    @property
    def has_text(self) -> bool:
        return "text" in self.frame.columns

    def __len__(self) -> int:
        return len(self.frame)


def _shown(values) -> str:
    values = [str(v) for v in values]
    more = f" (+{len(values) - _EXAMPLES_SHOWN} more)" if len(values) > _EXAMPLES_SHOWN else ""
    return ", ".join(repr(v) for v in values[:_EXAMPLES_SHOWN]) + more


def read_table(path: Path) -> pd.DataFrame:
    """Read Parquet, JSON Lines/JSON or CSV into a DataFrame; user-caused problems become LoadtestError."""
    path = Path(path)
    if not path.exists():
        raise LoadtestError(f"evaluation dataset {path} does not exist")
    if path.is_dir():
        raise LoadtestError(f"evaluation dataset {path} is a directory, expected a .parquet, .jsonl or .csv file")
    if path.stat().st_size == 0:
        raise LoadtestError(f"evaluation dataset {path} is empty")
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            frame = pd.read_parquet(path)
        elif suffix in (".jsonl", ".ndjson"):
            frame = pd.read_json(path, lines=True, dtype=False)
        elif suffix == ".json":
            text = path.read_text().lstrip()
            frame = pd.DataFrame(json.loads(text)) if text.startswith("[") else pd.read_json(path, lines=True, dtype=False)
        elif suffix == ".csv":
            frame = pd.read_csv(path, dtype={"id": str, "label": str, "text": str}, keep_default_na=False, na_values=[""])
        else:
            raise LoadtestError(f"evaluation dataset {path}: unsupported format '{suffix}' (use .parquet, .jsonl or .csv)")
    except LoadtestError:
        raise
    except UnicodeDecodeError:
        raise LoadtestError(f"evaluation dataset {path} is not UTF-8 text: save it as UTF-8 {suffix}") from None
    except Exception as exc:  # pyarrow/pandas/json parse errors: the file is at fault, not us
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LoadtestError(f"cannot read evaluation dataset {path}: {first_line}") from None
    if len(frame) == 0:
        raise LoadtestError(f"evaluation dataset {path} has no rows")
    return frame


def _is_bool_column(series: pd.Series) -> bool:
    if pd.api.types.is_bool_dtype(series):
        return True
    if series.dtype == object:
        present = series.dropna()
        return len(present) > 0 and all(isinstance(v, (bool, np.bool_)) for v in present)
    return False


def _is_string_column(series: pd.Series) -> bool:
    if isinstance(series.dtype, pd.CategoricalDtype) or pd.api.types.is_string_dtype(series.dtype):
        present = series.dropna()
        return all(isinstance(v, str) for v in present)
    return False


def load_dataset(path: Path | str, labels: list[str], tensor_columns: tuple[str, ...] = ()) -> EvalDataset:
    """Read and validate an evaluation set against the labels.

    ``tensor_columns``: the inputs of a model that takes neither text nor token ids; a set holding a
    column per input (each cell the example's values, nested lists for several dims) is sent as it is.
    """
    path = Path(path)
    frame = read_table(path)
    columns = set(frame.columns)
    as_tensors = bool(tensor_columns) and set(tensor_columns) <= columns
    if "text" not in columns and "input_ids" not in columns and not as_tensors:
        wanted = f" (or the model's inputs: {', '.join(tensor_columns)})" if tensor_columns else ""
        raise LoadtestError(
            f"evaluation dataset {path} has no 'text' (or 'input_ids') column{wanted}; columns: "
            f"{', '.join(map(str, frame.columns))}"
        )
    if "label" not in columns:
        hint = " ('label_id' alone is not enough: name the classes so they can be checked)" if "label_id" in columns else ""
        raise LoadtestError(
            f"evaluation dataset {path} has no 'label' column{hint}; columns: {', '.join(map(str, frame.columns))}"
        )
    out = pd.DataFrame(index=range(len(frame)))

    ids = frame["id"] if "id" in columns else pd.Series([f"row-{i}" for i in range(len(frame))])
    if ids.isna().any():
        raise LoadtestError(f"evaluation dataset {path}: {int(ids.isna().sum())} rows have no id")
    ids = ids.astype(str).reset_index(drop=True)
    duplicated = ids[ids.duplicated()].unique()
    if len(duplicated):
        raise LoadtestError(f"evaluation dataset {path}: ids are not unique: {_shown(duplicated)}")
    out["id"] = ids.to_numpy(dtype=object)

    raw_labels = frame["label"].reset_index(drop=True)
    missing = raw_labels.isna()
    if missing.any():
        raise LoadtestError(f"evaluation dataset {path}: {int(missing.sum())} rows have no label (ids {_shown(out['id'][missing])})")
    label_text = raw_labels.map(str)
    unknown = sorted(set(label_text) - set(labels))
    if unknown:
        raise LoadtestError(
            f"evaluation dataset {path}: labels not in the repository's label list: {_shown(unknown)}"
            f" (loadtest.json labels: {_shown(labels)})"
        )
    index = {name: i for i, name in enumerate(labels)}
    out["label"] = label_text.to_numpy(dtype=object)
    out["label_id"] = label_text.map(index).astype("int64").to_numpy()
    if "label_id" in columns:
        given = pd.to_numeric(frame["label_id"].reset_index(drop=True), errors="coerce")
        mismatch = given.ne(out["label_id"])
        if mismatch.any():
            i = int(np.flatnonzero(mismatch.to_numpy())[0])
            raise LoadtestError(
                f"evaluation dataset {path}: label_id disagrees with the repository's label order in {int(mismatch.sum())} rows"
                f" (id {out['id'][i]!r}: label {out['label'][i]!r} is index {int(out['label_id'][i])} in loadtest.json,"
                f" label_id says {given[i]})"
            )

    if as_tensors:
        for name in tensor_columns:
            cells = frame[name].reset_index(drop=True)
            if cells.map(lambda v: v is None or (isinstance(v, float) and np.isnan(v))).any():
                raise LoadtestError(f"evaluation dataset {path}: column '{name}' has empty rows")
            out[name] = cells.to_numpy(dtype=object)
    elif "text" in columns:
        text = frame["text"].reset_index(drop=True)
        if text.isna().any():
            raise LoadtestError(f"evaluation dataset {path}: {int(text.isna().sum())} rows have no text (ids {_shown(out['id'][text.isna()])})")
        not_str = ~text.map(lambda v: isinstance(v, str))
        if not_str.any():
            raise LoadtestError(f"evaluation dataset {path}: 'text' must hold strings (ids {_shown(out['id'][not_str])})")
        out["text"] = text.to_numpy(dtype=object)
    else:
        ids_col = frame["input_ids"].reset_index(drop=True)
        bad = ~ids_col.map(lambda v: v is not None and hasattr(v, "__len__") and len(v) > 0 and all(isinstance(t, (int, np.integer)) for t in v))
        if bad.any():
            raise LoadtestError(f"evaluation dataset {path}: 'input_ids' must be non-empty lists of integers (ids {_shown(out['id'][bad])})")
        out["input_ids"] = ids_col.map(lambda v: [int(t) for t in v]).to_numpy(dtype=object)

    tensor_names = set(tensor_columns) if as_tensors else set()
    slice_columns, ignored = take_slice_columns(frame, out, RESERVED_COLUMNS | tensor_names)
    return EvalDataset(path=path, frame=out, slice_columns=slice_columns, ignored_columns=ignored)


def take_slice_columns(frame: pd.DataFrame, out: pd.DataFrame, reserved: set[str]) -> tuple[list[str], dict[str, str]]:
    """Copy every bool or string column of ``frame`` not in ``reserved`` into ``out`` as a slice column.

    Returns the slice columns and, per column left out, why. Shared by the classifier and the generative
    sets so both slice by the same rule (bool/string only, at most ``MAX_SLICE_VALUES`` distinct values).
    """
    slice_columns: list[str] = []
    ignored: dict[str, str] = {}
    for column in frame.columns:
        name = str(column)
        if name in reserved:
            continue
        series = frame[column].reset_index(drop=True)
        if _is_bool_column(series):
            out[name] = series.map(lambda v: None if v is None or v is pd.NA else bool(v)).to_numpy(dtype=object)
            slice_columns.append(name)
        elif _is_string_column(series):
            distinct = series.nunique(dropna=True)
            if distinct > MAX_SLICE_VALUES:
                ignored[name] = f"{distinct} distinct values (more than {MAX_SLICE_VALUES}) make no useful slice"
                continue
            out[name] = series.to_numpy(dtype=object)
            slice_columns.append(name)
        else:
            ignored[name] = f"{series.dtype} column (only bool and string columns are slices)"
    return slice_columns, ignored


@dataclass
class EncodedInputs:
    """Token ids per example (already truncated), plus what truncation did."""

    input_ids: list[list[int]]
    token_type_ids: list[list[int]] | None
    input_tokens: np.ndarray  # length before truncation (with special tokens)
    sent_tokens: np.ndarray  # length sent to the server
    truncated: np.ndarray  # bool


def tensors_only(dataset: EvalDataset) -> EncodedInputs:
    """For models fed the dataset's own input columns: 'length' = values of the first input, nothing cut."""
    first = dataset.tensor_columns[0]
    sizes = np.array([np.asarray(v).size for v in dataset.frame[first]], dtype=np.int64)
    return EncodedInputs([[] for _ in sizes], None, sizes, sizes, np.zeros(len(sizes), dtype=bool))


def text_only(dataset: EvalDataset) -> EncodedInputs:
    """For models that tokenise inside Triton and no tokenizer here: lengths in whitespace words, nothing cut."""
    words = np.array([len(str(t).split()) for t in dataset.frame["text"]], dtype=np.int64)
    return EncodedInputs([[] for _ in words], None, words, words, np.zeros(len(words), dtype=bool))


def encode(dataset: EvalDataset, tokenizer, max_length: int) -> EncodedInputs:
    """Tokenize (or take ``input_ids``) and truncate to ``max_length`` tokens."""
    if dataset.has_text:
        texts = dataset.frame["text"].tolist()
        full = tokenizer(texts, truncation=False, add_special_tokens=True, return_attention_mask=False, return_token_type_ids=False)
        encoded = tokenizer(texts, truncation=True, max_length=max_length, add_special_tokens=True, return_attention_mask=False, return_token_type_ids=True)
        input_tokens = np.array([len(ids) for ids in full["input_ids"]], dtype=np.int64)
        input_ids = [list(ids) for ids in encoded["input_ids"]]
        token_types = [list(t) for t in encoded["token_type_ids"]] if "token_type_ids" in encoded else None
    else:
        given = dataset.frame["input_ids"].tolist()
        input_tokens = np.array([len(ids) for ids in given], dtype=np.int64)
        input_ids = [ids[:max_length] for ids in given]
        token_types = None
    sent = np.array([len(ids) for ids in input_ids], dtype=np.int64)
    return EncodedInputs(input_ids, token_types, input_tokens, sent, input_tokens > sent)


def frozen_set_hash(frame: pd.DataFrame, columns: list[str]) -> str:
    """SHA-256 of the evaluation set's content (ids, inputs, labels or references, in order), whatever its file format.

    Version-over-version comparisons refuse two runs whose hashes differ: their figures are not paired.
    """
    import hashlib

    digest = hashlib.sha256()
    for column in columns:
        digest.update(column.encode() + b"\x00")
        for value in frame[column].tolist():
            if isinstance(value, (list, tuple, np.ndarray)):
                array = np.asarray(value)
                if array.ndim == 1 and np.issubdtype(array.dtype, np.integer):  # token ids, as hashed so far
                    value = " ".join(str(int(v)) for v in value)
                else:  # a model's own input values (floats, several dims)
                    value = json.dumps(array.tolist())
            digest.update(str(value).encode() + b"\x1f")
    return digest.hexdigest()
