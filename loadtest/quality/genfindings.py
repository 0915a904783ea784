"""Findings of a generative evaluation: what the numbers say, in plain words, only when they show it.

- ``numerical_health`` (from the classifier findings): NaN/Inf log-probabilities;
- ``format_drift``: on structured prompts the student breaks the format where the teacher keeps it — the
  adherence drop is at least ``format_drop`` and McNemar's exact test says it is not chance (p < 0.05);
- ``coverage_gap``: a stable slice's chrF drop (teacher − student against the reference) exceeds the overall
  drop by ``slice_gap_points`` or more and its paired interval excludes 0;
- ``teacher_ceiling``: the student reproduces the teacher (chrF against the teacher ≥ ``high_fidelity``) but
  the teacher itself is far from the references: distillation cannot do better than its teacher;
- ``empty_outputs``: the student returns empty answers the teacher does not;
- ``length_drift``: the student's answers are much longer or shorter than the teacher's;
- ``unvalidated_judge``: judged equivalence without ``--judge-labels`` (a reminder, not a verdict);
- ``judge_without_verdicts``: the judge answered yes/no on fewer than 80 % of the prompts.
Fairness (``fairness_gap_widened``) and the serving comparison reuse the classifier findings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from loadtest.quality.findings import (
    Finding,
    FindingThresholds,
    _faster_not_cheaper,
    _numerical_health,
    _value,
    fairness_gap_widened,
    most_severe_first,
)
from loadtest.quality.slices import OVERALL


@dataclass
class GenThresholds:
    format_drop: float = 0.05
    p_value: float = 0.05
    slice_gap_points: float = 2.0
    high_fidelity: float = 80.0  # chrF of the student against the teacher
    teacher_far: float = 60.0  # the teacher's chrF against the references below this
    length_low: float = 0.8
    length_high: float = 1.25
    max_listed: int = 8
    judge_silent_share: float = 0.2  # share of prompts without a yes/no verdict from the judge


def _label(row) -> str:
    return "overall" if row["slice"] == OVERALL else f"{row['slice']}={row['slice_value']}"


def _finite(x) -> bool:
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def _format_drift(table: pd.DataFrame, t: GenThresholds) -> list[Finding]:
    rows = table[(table.metric == "format_adherence_drop") & (table.model == "student") & (table.n > 0)]
    rows = rows[rows.value.map(_finite) & (rows.value >= t.format_drop) & (rows.p_value < t.p_value) & ~rows.unstable.astype(bool)]
    out = []
    for _, row in rows.sort_values("value", ascending=False).head(t.max_listed).iterrows():
        teacher = _value(table, "format_adherence", "teacher", row["slice"], row["slice_value"])
        student = _value(table, "format_adherence", "student", row["slice"], row["slice_value"])
        if teacher is None or student is None:
            continue
        out.append(
            Finding(
                "format_drift",
                "warning",
                f"format drift: {_label(row)}",
                f"On the {int(row['n'])} structured prompts of {_label(row)} the student's answers are valid JSON with the required keys "
                f"{100 * student['value']:.1f} % of the time against the teacher's {100 * teacher['value']:.1f} % "
                f"(McNemar exact p = {row['p_value']:.2g}). Whatever parses these answers downstream breaks that much more often: "
                "distil with more structured examples or constrain decoding to the format.",
                {"slice": row["slice"], "slice_value": row["slice_value"], "n": int(row["n"]), "teacher": float(teacher["value"]),
                 "student": float(student["value"]), "p_value": float(row["p_value"])},
            )
        )
    return out


def _coverage_gaps(table: pd.DataFrame, t: GenThresholds) -> list[Finding]:
    overall = _value(table, "chrf_drop", "student")
    if overall is None:
        return []
    drops = table[(table.metric == "chrf_drop") & (table.model == "student") & (table.slice != OVERALL) & (table.n > 0)]
    drops = drops[drops.value.map(_finite)]
    gaps = drops.assign(gap=drops.value - overall["value"])
    gaps = gaps[(gaps.gap >= t.slice_gap_points) & (gaps.ci_low > 0) & ~gaps.unstable.astype(bool)]
    out = []
    for _, row in gaps.sort_values("gap", ascending=False).head(t.max_listed).iterrows():
        teacher = _value(table, "chrf", "teacher", row["slice"], row["slice_value"])
        student = _value(table, "chrf", "student", row["slice"], row["slice_value"])
        out.append(
            Finding(
                "coverage_gap",
                "warning",
                f"coverage gap: {_label(row)}",
                f"In {_label(row)} (n={int(row['n'])}) the student's chrF against the references is {row['value']:.1f} points below the "
                f"teacher's (teacher {teacher['value']:.1f}, student {student['value']:.1f}; 95 % CI of the drop {row['ci_low']:.1f} to "
                f"{row['ci_high']:.1f}) against {overall['value']:.1f} points overall. The aggregate hides it: distil with more of these "
                "prompts or gate on this slice.",
                {"slice": row["slice"], "slice_value": row["slice_value"], "n": int(row["n"]), "slice_drop": float(row["value"]),
                 "overall_drop": float(overall["value"]), "ci_low": float(row["ci_low"]), "ci_high": float(row["ci_high"])},
            )
        )
    return out


def _teacher_ceiling(table: pd.DataFrame, t: GenThresholds) -> list[Finding]:
    fidelity = _value(table, "chrf_vs_teacher", "student")
    teacher = _value(table, "chrf", "teacher")
    student = _value(table, "chrf", "student")
    if fidelity is None or teacher is None or student is None:
        return []
    if fidelity["value"] < t.high_fidelity or teacher["value"] >= t.teacher_far:
        return []
    return [
        Finding(
            "teacher_ceiling",
            "warning",
            "the student matches its teacher, and the teacher is the ceiling",
            f"The student's answers reach chrF {fidelity['value']:.1f} against the teacher's answers, but the teacher itself only reaches "
            f"{teacher['value']:.1f} against the references (student {student['value']:.1f}). It copies the teacher, mistakes included: "
            "more distillation will not bring it closer to the references; a better teacher or supervised fine-tuning will.",
            {"chrf_vs_teacher": float(fidelity["value"]), "teacher_chrf": float(teacher["value"]), "student_chrf": float(student["value"])},
        )
    ]


def _empty_outputs(table: pd.DataFrame) -> list[Finding]:
    student = _value(table, "empty_outputs", "student")
    teacher = _value(table, "empty_outputs", "teacher")
    if student is None or student["value"] <= (teacher["value"] if teacher is not None else 0):
        return []
    return [
        Finding(
            "empty_outputs",
            "warning",
            "the student returns empty answers",
            f"{int(student['value'])} of {int(student['n'])} student answers are empty (teacher: {int(teacher['value']) if teacher is not None else '?'}). "
            "An empty answer scores 0 everywhere; check the stop strings, the end-of-sequence token and max_tokens.",
            {"student": int(student["value"]), "teacher": int(teacher["value"]) if teacher is not None else None},
        )
    ]


def _length_drift(table: pd.DataFrame, t: GenThresholds) -> list[Finding]:
    ratio = _value(table, "length_ratio", "student")
    if ratio is None or not (_finite(ratio["ci_low"]) and _finite(ratio["ci_high"])):
        return []
    if t.length_low <= ratio["value"] <= t.length_high or ratio["ci_low"] <= 1.0 <= ratio["ci_high"]:
        return []
    longer = ratio["value"] > 1
    return [
        Finding(
            "length_drift",
            "info",
            f"the student's answers are {'longer' if longer else 'shorter'} than the teacher's",
            f"The student writes {ratio['value']:.2f}× the teacher's output tokens (95 % CI {ratio['ci_low']:.2f}–{ratio['ci_high']:.2f}). "
            + ("Longer answers cost more per request than the per-token figures suggest." if longer else "Shorter answers may drop content the teacher gives."),
            {"length_ratio": float(ratio["value"])},
        )
    ]


def _judge_silent(judge: dict, t: GenThresholds) -> list[Finding]:
    """A judge that mostly does not answer yes/no: its figures rest on the few prompts it did answer."""
    verdicts, silent = int(judge.get("verdicts") or 0), int(judge.get("no_verdict") or 0)
    if verdicts + silent == 0 or silent / (verdicts + silent) < t.judge_silent_share:
        return []
    return [
        Finding(
            "judge_without_verdicts",
            "warning",
            "the judge mostly gives no verdict",
            f"The judge ({judge.get('model')}) answered yes or no on {verdicts} of {verdicts + silent} prompts; the rest of its replies "
            "(kept as judge_reply in the per-example log) are no verdict, so judged equivalence and its agreement with labels rest on "
            f"{verdicts} examples{' only' if verdicts else ' — none'}. A model trained for one task answers with that task: judge with an "
            "instruction-following model (--judge URL --judge-model NAME).",
            {"model": judge.get("model"), "verdicts": verdicts, "no_verdict": silent},
        )
    ]


def _judge(summary: dict | None, t: GenThresholds | None = None) -> list[Finding]:
    judge = (summary or {}).get("judge")
    if not judge:
        return []
    silent = _judge_silent(judge, t or GenThresholds())
    if judge.get("validated"):
        return silent
    return silent + [
        Finding(
            "unvalidated_judge",
            "info",
            "judged equivalence is unvalidated",
            f"The judge ({judge.get('model')}) was not checked against labels (--judge-labels FILE): its equivalence figures say what "
            "the judge thinks, not whether it is right. Label a sample and pass it before relying on them.",
            {"model": judge.get("model")},
        )
    ]


def derive_generative_findings(
    table: pd.DataFrame, comparison: pd.DataFrame | None = None, summary: dict | None = None, thresholds: GenThresholds | None = None
) -> list[Finding]:
    """Every finding a generative evaluation supports, most severe first."""
    t = thresholds or GenThresholds()
    findings = (
        _numerical_health(table)
        + _format_drift(table, t)
        + _coverage_gaps(table, t)
        + _teacher_ceiling(table, t)
        + _empty_outputs(table)
        + _length_drift(table, t)
        + fairness_gap_widened(table, (summary or {}).get("fairness"), FindingThresholds())
        + _faster_not_cheaper(comparison, FindingThresholds())
        + _judge(summary, t)
    )
    return most_severe_first(findings)
