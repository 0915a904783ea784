"""The pure part of a generative evaluation: served outputs in, per-example log + metrics + summary out.

Kept apart from the clients (``genclient``) and the command (``genrunner``) so every figure can be checked
without a server: the tests feed it known outputs and recompute the figures from the log it writes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from loadtest.errors import LoadtestError
from loadtest.quality.gendataset import GenDataset
from loadtest.quality.genfindings import derive_generative_findings
from loadtest.quality.genscoring import GenScoreSettings, add_teacher_forced, add_text_scores, generative_slices, score_generative
from loadtest.quality.dataset import frozen_set_hash
from loadtest.quality.runner import QualityResults
from loadtest.quality.teacherforced import TeacherForced

GENERATIVE_TASK = "text-generation"
SUMMARY_SCHEMA = 1


@dataclass
class Generated:
    """One served answer: its text, its output token count (server's, else the tokenizer's) and any error."""

    text: str
    output_tokens: int
    error: str | None = None


def assemble_generative(
    dataset: GenDataset,
    outputs: dict[str, list[Generated]],
    teacher_forced: list[TeacherForced] | None,
    settings: GenScoreSettings,
    group_column: str | None = None,
    judge_verdicts: list[bool | None] | None = None,
    prompt_tokens: list[int] | None = None,
    comparison: pd.DataFrame | None = None,
    progress=None,
) -> QualityResults:
    frame = dataset.frame
    per = pd.DataFrame({"id": frame["id"], "prompt": frame["prompt"], "reference": frame["reference"], "required_keys": frame["required_keys"]})
    if prompt_tokens is not None:
        per["prompt_tokens"] = np.asarray(prompt_tokens, dtype=np.int64)
    for role in ("teacher", "student"):
        answers = outputs[role]
        if len(answers) != len(per):
            raise LoadtestError(f"the {role} answered {len(answers)} of {len(per)} prompts")
        per[f"{role}_output"] = [a.text for a in answers]
        per[f"{role}_output_tokens"] = np.asarray([a.output_tokens for a in answers], dtype=np.int64)
        per[f"{role}_error"] = [a.error for a in answers]
    for column in dataset.slice_columns:
        per[column] = frame[column]
    if judge_verdicts is not None:
        per["judge_equivalent"] = pd.array(judge_verdicts, dtype="boolean")
    per = add_text_scores(per)
    if teacher_forced is not None:
        per = add_teacher_forced(per, teacher_forced)
    per, specs = generative_slices(per, dataset.slice_columns)
    table = score_generative(per, specs, settings, progress=progress)
    fairness = None
    if group_column is not None:
        from loadtest.quality.fairness import FairnessSettings, group_fairness, group_values

        if group_column not in dataset.slice_columns:
            known = ", ".join(dataset.slice_columns) or "none"
            why = dataset.ignored_columns.get(group_column)
            raise LoadtestError(f"--group-column '{group_column}' is not a usable group column" + (f" ({why})" if why else "") + f"; the set's group/slice columns: {known}")
        rows, fairness = group_fairness(
            group_values(per, group_column),
            {r: per[f"{r}_chrf"].to_numpy(float) for r in ("teacher", "student")},
            "chrf",
            FairnessSettings(settings.min_slice_n, settings.n_resamples, settings.seed),
        )
        fairness["column"] = group_column
        extra = pd.DataFrame(rows).assign(p_value=np.nan)
        table = pd.concat([table, extra[table.columns]], ignore_index=True)
    summary = {
        "schema": SUMMARY_SCHEMA,
        "task": GENERATIVE_TASK,
        "n_examples": int(len(per)),
        "structured_prompts": int(sum(bool(k) for k in per["required_keys"])),
        "required_keys_from": dataset.keys_from,
        "failed_requests": {r: int(per[f"{r}_error"].notna().sum()) for r in ("teacher", "student")},
        "empty_outputs": {r: int(per[f"{r}_empty"].sum()) for r in ("teacher", "student")},
        "teacher_forced": teacher_forced is not None,
        "slices": [s.to_dict() for s in specs],
        "ignored_columns": dataset.ignored_columns,
        "settings": {"min_slice_n": settings.min_slice_n, "bootstrap_resamples": settings.n_resamples, "seed": settings.seed},
        "frozen_set_sha256": frozen_set_hash(frame, ["id", "prompt", "reference"]),
    }
    if teacher_forced is not None:
        summary["nonfinite"] = {r: int(per[f"{r}_tf_nonfinite"].sum()) for r in ("teacher", "student")}
    if fairness is not None:
        summary["fairness"] = fairness
    overall = table[table.slice == "overall"]
    summary["headline"] = {
        f"{r.model}_{r.metric}": float(r.value) for r in overall.itertuples() if r.metric in
        ("perplexity", "tf_agreement", "tf_kl", "exact_match", "chrf", "rouge_l", "format_adherence", "chrf_vs_teacher", "chrf_drop", "length_ratio")
    }
    findings = derive_generative_findings(table, comparison, summary)
    summary["findings"] = [f.to_dict() for f in findings]
    return QualityResults(per_example=per, metrics=table, summary=summary, findings=findings)
