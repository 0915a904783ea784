"""Findings: the report reads the signals for the user, and says each one only when the numbers show it.

- ``numerical_health``: any NaN/Inf output (a failure, whatever else looks fine);
- ``teacher_ceiling``: high agreement but low accuracy — the student copies the teacher, errors included;
  more distillation will not help, a better teacher (or labels) will. Said overall, and for any stable
  slice where the teacher is far weaker than on the whole set while the student agrees with it more
  than it is right;
- ``coverage_gap``: the student's accuracy drop versus the teacher in a slice exceeds the aggregate drop by
  ``gap`` or more, and the slice's own drop interval excludes 0 (stable slices; unstable ones are listed as a
  separate ``coverage_gap_unstable`` hint);
- ``recalibrate``: the student is about as accurate as the teacher but badly calibrated; temperature scaling
  (figure fitted on the evaluation set) says how much is recoverable;
- ``fairness_gap_widened``: with a group column, the student's gap between its best- and worst-served group
  exceeds the teacher's by ``fairness_widening_points`` or more and the widening's interval excludes 0;
- ``faster_not_cheaper``: the student's P95 is clearly lower than the teacher's but its cost per 1M tokens
  (or, without prices, its throughput at the latency budget) is not clearly better — batching or
  utilisation is the bottleneck, not the model. Needs the analyzer's ``tables/comparison.csv``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import pandas as pd

from loadtest.quality.slices import OVERALL


@dataclass
class FindingThresholds:
    """When a signal counts as shown. Defaults are deliberately conservative."""

    high_agreement: float = 0.90
    agreement_accuracy_gap: float = 0.10  # agreement − student accuracy
    weak_teacher_gap: float = 0.15  # slice teacher accuracy this far below its overall accuracy
    slice_gap: float = 0.05  # slice accuracy drop − overall accuracy drop
    good_accuracy_drop: float = 0.03  # student within this of the teacher counts as "good accuracy"
    bad_ece: float = 0.05
    faster_ratio: float = 0.90  # student P95 / teacher P95 at most this
    not_cheaper_ratio: float = 0.90  # student cost / teacher cost at least this
    not_more_throughput_ratio: float = 1.10  # student throughput at budget / teacher's at most this
    max_listed: int = 8
    fairness_widening_points: float = 2.0  # accuracy points (or chrF points) of gap widening worth saying


@dataclass
class Finding:
    kind: str
    severity: str  # "fail", "warning", "info"
    title: str
    message: str
    evidence: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def most_severe_first(findings: list[Finding]) -> list[Finding]:
    """Fails, then warnings, then infos (stable within each): the classifier and generative reports list
    findings in this one order, so a reader sees what blocks a rollout first whichever model kind it is."""
    order = {"fail": 0, "warning": 1, "info": 2}
    return sorted(findings, key=lambda f: order.get(f.severity, 3))


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def _pts(x: float) -> str:
    return f"{100 * x:+.1f} pts"


def _value(table: pd.DataFrame, metric: str, model: str, slice_name: str = OVERALL, slice_value: str | None = None) -> pd.Series | None:
    rows = table[(table["metric"] == metric) & (table["model"] == model) & (table["slice"] == slice_name)]
    if slice_value is not None:
        rows = rows[rows["slice_value"].astype(str) == str(slice_value)]
    if rows.empty or not math.isfinite(float(rows.iloc[0]["value"])):
        return None
    return rows.iloc[0]


def _numerical_health(table: pd.DataFrame) -> list[Finding]:
    out = []
    for model in ("teacher", "student"):
        row = _value(table, "nonfinite_outputs", model)
        if row is not None and row["value"] > 0:
            out.append(
                Finding(
                    "numerical_health",
                    "fail",
                    f"{model} returned NaN/Inf",
                    f"The {model} returned a NaN or infinite output for {int(row['value'])} of {int(row['n'])} examples: "
                    "an export or precision bug (FP16 overflow, a wrong input). These examples are left out of every other figure.",
                    {"model": model, "count": int(row["value"]), "n": int(row["n"])},
                )
            )
    return out


def _teacher_ceiling(table: pd.DataFrame, t: FindingThresholds) -> list[Finding]:
    agreement = _value(table, "agreement", "student")
    student_acc = _value(table, "accuracy", "student")
    teacher_acc = _value(table, "accuracy", "teacher")
    if agreement is None or student_acc is None or teacher_acc is None:
        return []
    if agreement["value"] >= t.high_agreement and agreement["value"] - student_acc["value"] >= t.agreement_accuracy_gap:
        return [
            Finding(
                "teacher_ceiling",
                "warning",
                "high agreement, low accuracy: the teacher is the ceiling",
                f"The student agrees with the teacher on {_pct(agreement['value'])} of examples but is right on only "
                f"{_pct(student_acc['value'])} (teacher: {_pct(teacher_acc['value'])}). It copies the teacher, mistakes included: "
                "more distillation will not raise accuracy; a better teacher or labelled fine-tuning will.",
                {
                    "agreement": float(agreement["value"]),
                    "student_accuracy": float(student_acc["value"]),
                    "teacher_accuracy": float(teacher_acc["value"]),
                    "n": int(agreement["n"]),
                },
            )
        ]
    return []


def _slice_teacher_ceilings(table: pd.DataFrame, t: FindingThresholds) -> list[Finding]:
    """Slices where the teacher itself fails and the student copies it: distillation cannot fix those."""
    teacher_overall = _value(table, "accuracy", "teacher")
    if teacher_overall is None:
        return []
    rows = table[(table["slice"] != OVERALL) & (table["metric"] == "accuracy") & (table["model"] == "teacher")]
    rows = rows.assign(per_class=rows["slice"] == "class").sort_values("per_class", kind="stable")  # named groupings first
    out: list[Finding] = []
    seen: dict[tuple, Finding] = {}
    for _, teacher in rows.iterrows():
        if bool(teacher["unstable"]) or not math.isfinite(float(teacher["value"])):
            continue
        student = _value(table, "accuracy", "student", teacher["slice"], teacher["slice_value"])
        agreement = _value(table, "agreement", "student", teacher["slice"], teacher["slice_value"])
        if student is None or agreement is None:
            continue
        weak = teacher["value"] <= teacher_overall["value"] - t.weak_teacher_gap and teacher["ci_high"] < teacher_overall["value"]
        copies = agreement["value"] - student["value"] >= t.agreement_accuracy_gap
        key = (int(teacher["n"]), float(teacher["value"]), float(agreement["value"]), float(student["value"]))
        label = f"{teacher['slice']}={teacher['slice_value']}"
        if not (weak and copies):
            continue
        if key in seen:  # the same examples under another slicing (rare_class=True and class=<it>)
            seen[key].message += f" The same examples form {label}."
            seen[key].evidence.setdefault("same_as", []).append(label)
            continue
        finding = Finding(
            "teacher_ceiling",
            "warning",
            f"the teacher is the ceiling on {label}",
            f"In slice {label} (n={int(teacher['n'])}) the teacher itself is right on only {_pct(teacher['value'])} "
            f"(overall {_pct(teacher_overall['value'])}) and the student agrees with it on {_pct(agreement['value'])} while right on "
            f"{_pct(student['value'])}: it learned the teacher's mistakes. Distillation cannot fix this slice; the teacher "
            "(or its training data for these examples) must.",
            {
                "slice": teacher["slice"],
                "slice_value": teacher["slice_value"],
                "n": int(teacher["n"]),
                "teacher_accuracy": float(teacher["value"]),
                "student_accuracy": float(student["value"]),
                "agreement": float(agreement["value"]),
            },
        )
        seen[key] = finding
        out.append(finding)
    return out[: t.max_listed]


def _coverage_gaps(table: pd.DataFrame, t: FindingThresholds) -> list[Finding]:
    overall = _value(table, "accuracy_drop", "student")
    if overall is None:
        return []
    drops = table[(table["metric"] == "accuracy_drop") & (table["model"] == "student") & (table["slice"] != OVERALL)]
    drops = drops[pd.to_numeric(drops["value"], errors="coerce").notna()]
    gaps = drops.assign(gap=drops["value"] - overall["value"])
    gaps = gaps[(gaps["gap"] >= t.slice_gap) & (gaps["ci_low"].fillna(-1.0) > 0)]
    gaps = gaps.assign(per_class=gaps["slice"] == "class").sort_values(["gap", "per_class"], ascending=[False, True], kind="stable")
    out = []
    stable = gaps[~gaps["unstable"].astype(bool)]
    # Two slicings can hold the same examples (one rare class: rare_class=True and class=<it>): say it once.
    # Identical n, drop and bootstrap interval (same seed, same members) identify them.
    same: dict[tuple, list[str]] = {}
    firsts = []
    for index, row in stable.iterrows():
        key = (int(row["n"]), float(row["value"]), float(row["ci_low"]), float(row["ci_high"]))
        if key in same:
            same[key].append(f"{row['slice']}={row['slice_value']}")
        else:
            same[key] = []
            firsts.append(index)
    stable = stable.loc[firsts]
    for _, row in stable.head(t.max_listed).iterrows():
        aliases = same[(int(row["n"]), float(row["value"]), float(row["ci_low"]), float(row["ci_high"]))]
        alias_text = f" The same examples form {', '.join(aliases)}." if aliases else ""
        student = _value(table, "accuracy", "student", row["slice"], row["slice_value"])
        teacher = _value(table, "accuracy", "teacher", row["slice"], row["slice_value"])
        accs = (
            f" (teacher {_pct(teacher['value'])}, student {_pct(student['value'])})" if student is not None and teacher is not None else ""
        )
        out.append(
            Finding(
                "coverage_gap",
                "warning",
                f"coverage gap: {row['slice']}={row['slice_value']}",
                f"In slice {row['slice']}={row['slice_value']} (n={int(row['n'])}) the student's accuracy is {100 * row['value']:.1f} points below"
                f" the teacher's{accs}, against {100 * overall['value']:.1f} points overall (a gap of {_pts(row['gap'])}; 95 % CI of the"
                f" slice drop {100 * row['ci_low']:.1f} to {100 * row['ci_high']:.1f} points). The aggregate hides it: distil with more of"
                " these examples or gate on this slice."
                + alias_text,
                {
                    "slice": row["slice"],
                    "same_as": aliases,
                    "slice_value": row["slice_value"],
                    "n": int(row["n"]),
                    "slice_drop": float(row["value"]),
                    "overall_drop": float(overall["value"]),
                    "ci_low": float(row["ci_low"]),
                    "ci_high": float(row["ci_high"]),
                },
            )
        )
    if len(stable) > t.max_listed:
        rest = ", ".join(f"{r['slice']}={r['slice_value']}" for _, r in stable.iloc[t.max_listed :].iterrows())
        out.append(Finding("coverage_gap", "warning", "more coverage gaps", f"Also larger drops than overall in: {rest}.", {}))
    unstable = gaps[gaps["unstable"].astype(bool)]
    if len(unstable):
        listed = ", ".join(f"{r['slice']}={r['slice_value']} (n={int(r['n'])}, drop {100 * r['value']:.1f} pts)" for _, r in unstable.iterrows())
        out.append(
            Finding(
                "coverage_gap_unstable",
                "info",
                "possible coverage gaps in small slices",
                f"Slices too small for a stable figure also show a larger drop than overall: {listed}. Add examples before concluding.",
                {"slices": [f"{r['slice']}={r['slice_value']}" for _, r in unstable.iterrows()]},
            )
        )
    return out


def _recalibrate(table: pd.DataFrame, t: FindingThresholds) -> list[Finding]:
    drop = _value(table, "accuracy_drop", "student")
    ece = _value(table, "ece", "student")
    if drop is None or ece is None:
        return []
    if drop["value"] > t.good_accuracy_drop or ece["value"] < t.bad_ece:
        return []
    after = _value(table, "ece_after_temperature", "student")
    temperature = _value(table, "temperature", "student")
    teacher_ece = _value(table, "ece", "teacher")
    fix = (
        f" Temperature scaling with T = {temperature['value']:.2f} brings it to {after['value']:.3f} on this set"
        " (fitted on the evaluation set itself: confirm on held-out data before shipping the temperature)."
        if after is not None and temperature is not None
        else ""
    )
    teacher = f" The teacher's ECE is {teacher_ece['value']:.3f}." if teacher_ece is not None else ""
    return [
        Finding(
            "recalibrate",
            "warning",
            "good accuracy, poor calibration: recalibrate",
            f"The student is within {100 * max(drop['value'], 0.0):.1f} points of the teacher's accuracy but its expected calibration error is "
            f"{ece['value']:.3f} (95 % CI {ece['ci_low']:.3f}–{ece['ci_high']:.3f}): its probabilities should not drive thresholds as they are."
            + fix
            + teacher,
            {
                "ece": float(ece["value"]),
                "ece_after_temperature": float(after["value"]) if after is not None else None,
                "temperature": float(temperature["value"]) if temperature is not None else None,
            },
        )
    ]


def _comparison_row(comparison: pd.DataFrame, metric: str) -> pd.Series | None:
    rows = comparison[comparison["metric"] == metric]
    if rows.empty:
        return None
    row = rows.iloc[0]
    ratio = row.get("student_over_teacher")
    if ratio is None or not math.isfinite(float(ratio)):
        teacher, student = row.get("teacher"), row.get("student")
        if teacher is None or student is None or not (math.isfinite(float(teacher)) and math.isfinite(float(student))) or float(teacher) == 0:
            return None
        row = row.copy()
        row["student_over_teacher"] = float(student) / float(teacher)
    return row


def _faster_not_cheaper(comparison: pd.DataFrame | None, t: FindingThresholds) -> list[Finding]:
    if comparison is None or comparison.empty or "metric" not in comparison.columns:
        return []
    p95 = _comparison_row(comparison, "p95_ms")
    if p95 is None or p95["student_over_teacher"] > t.faster_ratio:
        return []
    cost = _comparison_row(comparison, "cost_per_1m_tokens_usd")
    throughput = _comparison_row(comparison, "tokens_per_s_at_budget")
    if throughput is None:
        throughput = _comparison_row(comparison, "qps_at_budget")
    batch = _comparison_row(comparison, "mean_batch_size")
    batch_text = (
        f" Mean executed batch: teacher {batch['teacher']:.2f}, student {batch['student']:.2f}." if batch is not None else ""
    )
    if cost is not None and cost["student_over_teacher"] >= t.not_cheaper_ratio:
        what = f"its cost per 1M tokens is {cost['student_over_teacher']:.2f}× the teacher's"
        evidence_key, evidence = "cost_ratio", float(cost["student_over_teacher"])
    elif cost is None and throughput is not None and throughput["student_over_teacher"] <= t.not_more_throughput_ratio:
        what = f"its throughput at the latency budget ({throughput['metric']}) is only {throughput['student_over_teacher']:.2f}× the teacher's"
        evidence_key, evidence = "throughput_ratio", float(throughput["student_over_teacher"])
    else:
        return []
    return [
        Finding(
            "faster_not_cheaper",
            "warning",
            "faster but not cheaper: batching or utilisation",
            f"The student's P95 is {p95['student_over_teacher']:.2f}× the teacher's, yet {what}. The smaller model is not what limits "
            "throughput: check dynamic batching (max_queue_delay, preferred sizes), instance count, client concurrency and "
            f"accelerator utilisation before pricing the rollout.{batch_text}",
            {"p95_ratio": float(p95["student_over_teacher"]), evidence_key: evidence},
        )
    ]


def _points(value: float, score: str) -> float:
    """A score difference in points: rates ×100, chrF already in points."""
    return 100 * value if score in ("accuracy", "rouge_l") else value


def fairness_gap_widened(table: pd.DataFrame, fairness: dict | None, t: FindingThresholds) -> list[Finding]:
    """Distillation widened the gap between groups (needs the eval's fairness summary for the group names)."""
    if not fairness:
        return []
    row = _value(table, "group_gap_widening", "student")
    if row is None:
        return []
    score = fairness.get("score", "accuracy")
    widening = _points(float(row["value"]), score)
    low = float(row["ci_low"]) if math.isfinite(float(row["ci_low"])) else float("nan")
    if widening < t.fairness_widening_points or not low > 0:
        return []
    groups = fairness.get("groups", {})
    listed = "; ".join(
        f"{name} (n={g['n']}): teacher {_points(g['teacher'], score):.1f}, student {_points(g['student'], score):.1f}"
        for name, g in sorted(groups.items(), key=lambda kv: kv[1]["student"])
    )
    unit = "points of accuracy" if score == "accuracy" else f"{score} points"
    return [
        Finding(
            "fairness_gap_widened",
            "warning",
            f"distillation widened the gap between {fairness.get('column', 'groups')} groups",
            f"Across the groups of '{fairness.get('column')}' the student's best-to-worst gap is "
            f"{_points(fairness['student_gap'], score):.1f} {unit} against the teacher's {_points(fairness['teacher_gap'], score):.1f}: "
            f"{widening:.1f} points wider (95 % CI {_points(low, score):.1f} to {_points(float(row['ci_high']), score):.1f}). "
            f"Per group: {listed}. Distil with more of the worst-served group's examples, or gate on the widening."
            + (" Some group is below the minimum n: treat as a hint." if fairness.get("unstable") else ""),
            {"column": fairness.get("column"), "widening": float(row["value"]), "ci_low": low, "ci_high": float(row["ci_high"])},
        )
    ]


def derive_findings(
    table: pd.DataFrame,
    comparison: pd.DataFrame | None = None,
    thresholds: FindingThresholds | None = None,
    fairness: dict | None = None,
) -> list[Finding]:
    """Every finding the metrics (and the serving comparison, when present) support, most severe first."""
    t = thresholds or FindingThresholds()
    findings = (
        _numerical_health(table)
        + _teacher_ceiling(table, t)
        + _slice_teacher_ceilings(table, t)
        + _coverage_gaps(table, t)
        + _recalibrate(table, t)
        + fairness_gap_widened(table, fairness, t)
        + _faster_not_cheaper(comparison, t)
    )
    return most_severe_first(findings)
