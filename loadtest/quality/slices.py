"""Slices: the sub-populations a student can fail on while the aggregate looks fine.

Automatic slices are derived from the evaluation set and the teacher's answers:

- ``length_quartile``: quartiles of the input length in tokens (before truncation), ``Q1`` … ``Q4``
  (fewer when lengths repeat so much that quartile edges coincide; the edges are recorded);
- ``rare_class``: the example's true class is rarer than ``rare_threshold`` (fraction of the set);
- ``hard_case``: the teacher's margin (top-1 minus top-2 probability) is below ``hard_margin``;
- ``class``: the true class, one value per repository label (a label with no example is listed with n = 0).

Any extra bool or string column of the dataset is a slice too, under its own name. When a dataset column
has the name of an automatic slice (the demo set ships its own ``rare_class``, defined on the *training*
frequencies), the dataset's definition wins and the automatic one is not computed.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

OVERALL = "overall"
OVERALL_VALUE = "all"
MISSING_VALUE = "<missing>"
AUTO_SLICES = ("length_quartile", "rare_class", "hard_case", "class")


@dataclass
class SliceSpec:
    """One slicing of the evaluation set: its name, the per-example column holding values, where it came from."""

    name: str
    column: str
    source: str  # "auto" or "dataset"
    description: str
    values: list[str] = field(default_factory=list)  # every value in display order (may include n = 0 ones)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SliceSettings:
    """Thresholds of the automatic slices (CLI: --rare-threshold, --hard-margin)."""

    rare_threshold: float = 0.10
    hard_margin: float = 0.20


def slice_value_strings(values: pd.Series) -> pd.Series:
    """Slice values as the strings metrics.csv and gate selectors use (bools as True/False)."""
    out = values.astype(object).map(lambda v: MISSING_VALUE if v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NA else str(v))
    return out.astype(object)


def _natural_key(text: str) -> list:
    """'5-15' < '16-40' < '101-200': numbers compare as numbers."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", text) if part]


def _ordered_values(values: pd.Series) -> list[str]:
    unique = [v for v in pd.unique(values) if v != MISSING_VALUE]
    if set(unique) <= {"True", "False"}:
        ordered = [v for v in ("False", "True") if v in unique]
    else:
        ordered = sorted(unique, key=_natural_key)
    if (values == MISSING_VALUE).any():
        ordered.append(MISSING_VALUE)
    return ordered


def assign_slices(
    frame: pd.DataFrame,
    labels: list[str],
    dataset_columns: list[str],
    settings: SliceSettings,
) -> tuple[pd.DataFrame, list[SliceSpec], dict]:
    """Add the automatic slice columns to the per-example frame and describe every slice.

    ``frame`` needs ``label``, ``input_tokens`` and ``teacher_margin``. Returns the frame (copied), the
    slice specs in display order, and details worth recording (quartile edges, rare classes).
    """
    frame = frame.copy()
    specs: list[SliceSpec] = []
    details: dict = {}
    taken = set(dataset_columns)

    if "length_quartile" not in taken:
        lengths = frame["input_tokens"].astype(float)
        if lengths.nunique() > 1:
            codes, edges = pd.qcut(lengths, 4, labels=False, retbins=True, duplicates="drop")
        else:  # every input equally long (e.g. a fixed-shape tensor model): one quartile, not NaN codes
            codes, edges = [0] * len(lengths), [float(lengths.min()), float(lengths.max())]
        frame["length_quartile"] = [f"Q{int(c) + 1}" for c in codes]
        details["length_quartile_edges"] = [float(e) for e in edges]
        spans = [f"Q{i + 1}: {edges[i]:g}–{edges[i + 1]:g}" for i in range(len(edges) - 1)]
        specs.append(
            SliceSpec(
                "length_quartile",
                "length_quartile",
                "auto",
                "input length in tokens before truncation, by quartile (" + ", ".join(spans) + ")",
            )
        )

    if "rare_class" not in taken:
        frequency = frame["label"].value_counts(normalize=True)
        rare = [label for label in labels if frequency.get(label, 0.0) < settings.rare_threshold]
        frame["rare_class"] = frame["label"].isin(rare)
        details["rare_classes"] = rare
        specs.append(
            SliceSpec(
                "rare_class",
                "rare_class",
                "auto",
                f"true class below {settings.rare_threshold:.0%} of the evaluation set"
                + (f" ({', '.join(rare)})" if rare else " (no class is that rare here)"),
            )
        )
    else:
        details["rare_classes"] = sorted(frame.loc[frame["rare_class"].astype(bool), "label"].unique().tolist()) if frame["rare_class"].notna().all() else None

    if "hard_case" not in taken:
        frame["hard_case"] = (frame["teacher_margin"] < settings.hard_margin).fillna(False).astype(bool)
        specs.append(
            SliceSpec(
                "hard_case",
                "hard_case",
                "auto",
                f"teacher margin (top-1 minus top-2 probability) below {settings.hard_margin:g}",
            )
        )

    if "class" not in taken:
        specs.append(SliceSpec("class", "label", "auto", "true class (every repository label)", values=list(labels)))

    for column in dataset_columns:
        specs.append(SliceSpec(column, column, "dataset", f"dataset column '{column}'"))

    for spec in specs:
        if not spec.values:
            spec.values = _ordered_values(slice_value_strings(frame[spec.column]))
    return frame, specs, details
