"""Fairness across groups, version over version (--baseline) and the gate on generative and fairness figures."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from fairlearn.metrics import demographic_parity_difference

from _generative_synthetic import write_generative_run
from _quality_synthetic import LABELS, synthetic_inputs, write_run
from loadtest.errors import LoadtestError
from loadtest.quality import results as store
from loadtest.quality.baseline import attach_baseline, write_deltas
from loadtest.quality.fairness import FairnessSettings, group_fairness
from loadtest.quality.gate import evaluate_gate, load_policy
from loadtest.quality.paired import mcnemar_exact
from loadtest.quality.runner import assemble
from loadtest.quality.scoring import ScoreSettings


def _policy(tmp_path, text, name="policy.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return load_policy(path)


def _row(table, metric, model="student", slice_name="overall", value="all"):
    rows = table[(table.metric == metric) & (table.model == model) & (table.slice == slice_name) & (table.slice_value.astype(str) == value)]
    assert len(rows) == 1, (metric, model, slice_name, value)
    return rows.iloc[0]


def test_group_gaps_are_per_group_means_difference_and_widening_is_paired():
    rng = np.random.default_rng(0)
    groups = rng.choice(["a", "b", "c"], 900)
    teacher = (rng.random(900) < 0.9).astype(float)
    student = np.where(groups == "c", rng.random(900) < 0.6, teacher).astype(float)
    rows, summary = group_fairness(groups, {"teacher": teacher, "student": student}, "accuracy", FairnessSettings(n_resamples=300))
    frame = pd.DataFrame({"g": groups, "t": teacher, "s": student})
    by = frame.groupby("g").mean()
    assert summary["teacher_gap"] == pytest.approx(by["t"].max() - by["t"].min())
    assert summary["student_gap"] == pytest.approx(by["s"].max() - by["s"].min())
    assert summary["groups"]["c"]["student"] == pytest.approx(by.loc["c", "s"]) and summary["groups"]["c"]["n"] == (groups == "c").sum()
    widening = next(r for r in rows if r["metric"] == "group_gap_widening")
    assert widening["value"] == pytest.approx(summary["student_gap"] - summary["teacher_gap"])
    assert 0 < widening["ci_low"] < widening["value"] < widening["ci_high"]
    # an untouched student does not widen anything
    _, same = group_fairness(groups, {"teacher": teacher, "student": teacher}, "accuracy", FairnessSettings(n_resamples=100))
    assert same["widening"] == 0


def test_two_class_parity_differences_are_fairlearns():
    rng = np.random.default_rng(1)
    groups = rng.choice(["x", "y"], 400)
    y = rng.integers(0, 2, 400)
    pred = {"teacher": y.copy(), "student": np.where(groups == "y", 1, y)}
    scores = {r: (pred[r] == y).astype(float) for r in pred}
    rows, summary = group_fairness(groups, scores, "accuracy", FairnessSettings(n_resamples=100), binary={"y": y, **pred})
    rate = pd.DataFrame({"g": groups, "p": pred["student"]}).groupby("g")["p"].mean()
    assert summary["student_demographic_parity_difference"] == pytest.approx(rate.max() - rate.min())
    assert summary["teacher_demographic_parity_difference"] == pytest.approx(demographic_parity_difference(y, y, sensitive_features=groups))
    assert {r["metric"] for r in rows} >= {"equalized_odds_difference", "demographic_parity_difference"}


def _unfair_results(weak_group: str | None = "email", seed: int = 0, resamples: int = 150, rare_follow: float = 0.55):
    """Synthetic classifier results where the student guesses at random for one group."""
    dataset, encoded, logits = synthetic_inputs(1200, seed, rare_follow=rare_follow)
    if weak_group:
        rng = np.random.default_rng(seed + 100)
        weak = (dataset.frame["source"] == weak_group).to_numpy() & (rng.random(len(dataset)) < 0.35)
        logits["student"][weak] = rng.normal(0, 1, (weak.sum(), len(LABELS)))
    return assemble(dataset, encoded, logits, LABELS, score_settings=ScoreSettings(n_resamples=resamples), group_column="source")


def test_classifier_fairness_rows_finding_and_gate(tmp_path):
    results = _unfair_results()
    table = results.metrics
    per = results.per_example
    correct = per["student_pred"] == per["label_id"]
    by_group = correct.groupby(per["source"]).mean()
    assert _row(table, "accuracy", "student", "source", "email")["value"] == pytest.approx(by_group["email"])
    assert _row(table, "group_gap", "student")["value"] == pytest.approx(by_group.max() - by_group.min())
    finding = next(f for f in results.findings if f.kind == "fairness_gap_widened")
    assert "'source'" in finding.message and "email" in finding.message
    run = write_run(tmp_path / "unfair", results)
    policy = _policy(tmp_path, "rules:\n  - metric: group_gap_widening\n    max: 0.02\n    note: distillation may widen the gap by 2 points at most\n")
    report = evaluate_gate(run, policy)
    assert [c.metric for c in report.failures] == ["group_gap_widening"]
    fair = write_run(tmp_path / "fair", _unfair_results(weak_group=None))
    assert evaluate_gate(fair, policy).passed
    assert not [f for f in _unfair_results(weak_group=None).findings if f.kind == "fairness_gap_widened"]


def test_unknown_group_column_is_a_one_line_error():
    dataset, encoded, logits = synthetic_inputs(200, 0)
    with pytest.raises(LoadtestError, match="--group-column 'segment'.*source, critical"):
        assemble(dataset, encoded, logits, LABELS, score_settings=ScoreSettings(n_resamples=100), group_column="segment")


def _classifier_run(path, rare_follow, seed=1):
    dataset, encoded, logits = synthetic_inputs(600, seed, rare_follow=rare_follow)
    return write_run(path, assemble(dataset, encoded, logits, LABELS, score_settings=ScoreSettings(n_resamples=100)))


def test_version_over_version_for_classifiers(tmp_path):
    old = _classifier_run(tmp_path / "old", rare_follow=0.95)
    new = _classifier_run(tmp_path / "new", rare_follow=0.2)
    per, summary = store.read_per_example(new), store.read_summary(new)
    deltas = attach_baseline(per, summary, old, generative=False, n_resamples=200, seed=0)
    write_deltas(new, deltas)
    assert (new / "quality" / "baseline.csv").is_file() and summary["baseline"]["run"] == str(old)
    rare = deltas[(deltas.slice == "rare_class") & (deltas.slice_value == "True") & (deltas.metric == "accuracy")].iloc[0]
    old_per = store.read_per_example(old)
    members = per["rare_class"].to_numpy(bool)
    new_ok = (per["student_pred"] == per["label_id"]).to_numpy()[members]
    old_ok = (old_per["student_pred"] == old_per["label_id"]).to_numpy()[members]
    assert rare["delta"] == pytest.approx(new_ok.mean() - old_ok.mean()) and rare["delta"] < 0
    assert rare["p_value"] == pytest.approx(mcnemar_exact(new_ok, old_ok).p_value) and rare["test"] == "mcnemar_exact"
    assert rare["ci_high"] < 0
    kl = deltas[(deltas.slice == "overall") & (deltas.metric == "kl")].iloc[0]
    assert kl["test"] == "paired_bootstrap" and kl["delta"] == pytest.approx(per["kl"].mean() - old_per["kl"].mean())


def test_baseline_on_another_frozen_set_is_refused(tmp_path):
    old = _classifier_run(tmp_path / "old", rare_follow=0.9, seed=1)
    other = _classifier_run(tmp_path / "other", rare_follow=0.9, seed=2)
    per, summary = store.read_per_example(other), store.read_summary(other)
    with pytest.raises(LoadtestError, match="different set"):
        attach_baseline(per, summary, old, generative=False, n_resamples=100, seed=0)
    policy = _policy(tmp_path, "regression:\n  - metric: accuracy\n    max_worsening: 0.01\n")
    with pytest.raises(LoadtestError, match="different frozen set"):
        evaluate_gate(other, policy, old)


def test_broken_format_student_fails_the_gate_naming_the_slice(tmp_path):
    run = write_generative_run(tmp_path / "broken", broken_format=True)
    policy = _policy(
        tmp_path,
        """
rules:
  - metric: format_adherence
    slice: [overall, structured]
    min: 0.90
  - metric: chrf_vs_teacher
    min: 20
  - metric: perplexity
    max: 50
""",
    )
    report = evaluate_gate(run, policy)
    failing = {(c.metric, c.slice) for c in report.failures}
    assert ("format_adherence", "structured=True") in failing and ("format_adherence", "overall") in failing
    assert all(c.status == "pass" for c in report.checks if c.metric in ("perplexity", "nonfinite_outputs"))
    good = write_generative_run(tmp_path / "good")
    assert evaluate_gate(good, policy).passed


def test_no_slice_may_lose_more_than_two_points_of_chrf(tmp_path):
    old = write_generative_run(tmp_path / "old", student_noise=0.05)
    new = write_generative_run(tmp_path / "new", broken_format=True, student_noise=0.05)
    per, summary = store.read_per_example(new), store.read_summary(new)
    deltas = attach_baseline(per, summary, old, generative=True, n_resamples=100, seed=0)
    from loadtest.quality.results import write_quality

    write_quality(new, per, store.read_metrics(new), summary)  # the eval records its baseline run
    structured = deltas[(deltas.slice == "structured") & (deltas.slice_value == "True") & (deltas.metric == "format_adherence")].iloc[0]
    assert structured["delta"] < -0.8 and structured["p_value"] < 1e-6
    policy = _policy(
        tmp_path,
        """
regression:
  - metric: chrf
    slice: "*"
    max_worsening: 2.0
    note: no slice may lose more than 2 points of chrF
""",
    )
    report = evaluate_gate(new, policy)  # no --baseline: the recorded one is used
    assert report.baseline == str(old)
    failing = {c.slice for c in report.failures}
    assert "structured=True" in failing and "structured=False" not in failing
    assert evaluate_gate(old, policy, old).passed
