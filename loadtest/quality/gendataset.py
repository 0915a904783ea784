"""The frozen evaluation set of a generative model: prompts, reference answers, formats, slices.

Same files as the classifier set (Parquet, JSON Lines, CSV; ``loadtest.quality.dataset.read_table``). Columns:

- ``prompt`` (str) and ``reference`` (str) — required;
- ``id`` (optional, unique; ``row-<i>`` when absent);
- ``required_keys`` (optional): the keys a structured answer must carry (a list, a JSON list or
  comma-separated text; empty for free-text prompts). Without the column, a prompt is structured when its
  reference is a JSON object, and the required keys are the reference's keys;
- any other bool or string column is a slice (and may be the ``--group-column``); numeric columns are kept
  out of slicing (``n_reference_tokens`` …).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from loadtest.errors import LoadtestError
from loadtest.quality.dataset import _shown, read_table, take_slice_columns
from loadtest.quality.textmetrics import parse_required_keys

GEN_RESERVED = {"id", "prompt", "reference", "required_keys", "messages"}


@dataclass
class GenDataset:
    path: Path
    frame: pd.DataFrame  # id, prompt, reference, required_keys, slice columns
    slice_columns: list[str]
    ignored_columns: dict[str, str] = field(default_factory=dict)
    keys_from: str = "reference"  # "column" or "reference": where the required keys came from

    def __len__(self) -> int:
        return len(self.frame)


def _keys_of_reference(reference: str) -> list[str]:
    try:
        value = json.loads(reference.strip())
    except ValueError:
        return []
    return [str(k) for k in value] if isinstance(value, dict) else []


def load_gen_dataset(path: Path | str) -> GenDataset:
    """Read and check a generative evaluation set; user mistakes are one-line errors."""
    path = Path(path)
    frame = read_table(path)
    columns = set(map(str, frame.columns))
    for required in ("prompt", "reference"):
        if required not in columns:
            raise LoadtestError(
                f"evaluation dataset {path} has no '{required}' column (a generative set needs 'prompt' and 'reference'); "
                f"columns: {', '.join(map(str, frame.columns))}"
            )
    frame = frame.reset_index(drop=True)
    out = pd.DataFrame(index=range(len(frame)))
    ids = frame["id"].astype(str) if "id" in columns else pd.Series([f"row-{i}" for i in range(len(frame))])
    duplicated = ids[ids.duplicated()].unique()
    if len(duplicated):
        raise LoadtestError(f"evaluation dataset {path}: ids are not unique: {_shown(duplicated)}")
    out["id"] = ids.to_numpy(dtype=object)
    for column in ("prompt", "reference"):
        values = frame[column]
        bad = ~values.map(lambda v: isinstance(v, str))
        if bad.any():
            raise LoadtestError(f"evaluation dataset {path}: '{column}' must hold text in every row (ids {_shown(out['id'][bad])})")
        out[column] = values.to_numpy(dtype=object)
    empty = out["prompt"].map(lambda v: not v.strip())
    if empty.any():
        raise LoadtestError(f"evaluation dataset {path}: empty prompts (ids {_shown(out['id'][empty])})")
    if "required_keys" in columns:
        try:
            out["required_keys"] = [parse_required_keys(v) for v in frame["required_keys"]]
        except (ValueError, TypeError) as exc:
            raise LoadtestError(f"evaluation dataset {path}: 'required_keys' must be lists of key names: {exc}") from None
        keys_from = "column"
    else:
        out["required_keys"] = [_keys_of_reference(r) for r in out["reference"]]
        keys_from = "reference"
    slice_columns, ignored = take_slice_columns(frame, out, GEN_RESERVED)
    return GenDataset(path, out, slice_columns, ignored, keys_from)
