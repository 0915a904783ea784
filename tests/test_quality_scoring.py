"""Per-slice scoring, findings and the report, checked on the stored per-example results."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import entropy
from sklearn.metrics import accuracy_score, f1_score

from _quality_synthetic import LABELS, synthetic_inputs, synthetic_results, write_run
from loadtest.quality import results as store
from loadtest.quality.findings import derive_findings
from loadtest.quality.report import quality_section_html
from loadtest.quality.runner import assemble
from loadtest.quality.scoring import ScoreSettings


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    results = synthetic_results()
    return write_run(tmp_path_factory.mktemp("run"), results), results


def _figure(table, metric, model="student", slice_name="overall", value="all"):
    rows = table[(table.metric == metric) & (table.model == model) & (table.slice == slice_name) & (table.slice_value == value)]
    assert len(rows) == 1, (metric, model, slice_name, value)
    return rows.iloc[0]


def _ece(probs, y, n_bins=15):
    conf, correct = probs.max(1), (probs.argmax(1) == y).astype(float)
    edges = list(zip(np.linspace(0, 1, n_bins + 1)[:-1], np.linspace(0, 1, n_bins + 1)[1:])) + [(1.0, np.inf)]
    return sum(((conf >= lo) & (conf < hi)).mean() * abs(correct[(conf >= lo) & (conf < hi)].mean() - conf[(conf >= lo) & (conf < hi)].mean()) for lo, hi in edges if ((conf >= lo) & (conf < hi)).any())


@pytest.mark.parametrize("slice_name,value", [("overall", "all"), ("rare_class", "True"), ("length_quartile", "Q2"), ("source", "web")])
def test_stored_metrics_match_an_independent_computation(run, slice_name, value):
    run_dir, _ = run
    per = store.read_per_example(run_dir)
    table = store.read_metrics(run_dir)
    if slice_name != "overall":
        per = per[per[slice_name].astype(str) == value]
    y = per["label_id"].to_numpy()
    pt, ps = store.stacked(per, "teacher_probs"), store.stacked(per, "student_probs")
    t_pred, s_pred = pt.argmax(1), ps.argmax(1)
    assert _figure(table, "agreement", "student", slice_name, value)["value"] == pytest.approx(np.mean(t_pred == s_pred))
    kl = np.mean([entropy(a, b) for a, b in zip(pt, ps)])
    assert _figure(table, "kl", "student", slice_name, value)["value"] == pytest.approx(kl, rel=1e-9)
    for model, pred, probs in (("teacher", t_pred, pt), ("student", s_pred, ps)):
        assert _figure(table, "accuracy", model, slice_name, value)["value"] == pytest.approx(accuracy_score(y, pred))
        assert _figure(table, "macro_f1", model, slice_name, value)["value"] == pytest.approx(f1_score(y, pred, average="macro"))
        assert _figure(table, "ece", model, slice_name, value)["value"] == pytest.approx(_ece(probs, y), abs=1e-12)
    drop = accuracy_score(y, t_pred) - accuracy_score(y, s_pred)
    assert _figure(table, "accuracy_drop", "student", slice_name, value)["value"] == pytest.approx(drop)
    assert _figure(table, "accuracy", "student", slice_name, value)["n"] == len(per)
    # stored predictions are the argmax of stored probabilities
    assert (per["student_pred"].to_numpy() == s_pred).all()


def test_every_figure_has_n_and_an_interval(run):
    _, results = run
    table = results.metrics
    assert list(table.columns) == ["model", "slice", "slice_value", "metric", "value", "ci_low", "ci_high", "n", "unstable"]
    with_ci = table[table.metric.isin(["agreement", "accuracy", "kl", "js", "macro_f1", "ece", "accuracy_drop"]) & (table.n > 1)]
    assert with_ci[["ci_low", "ci_high"]].notna().all().all()
    assert ((with_ci.ci_low <= with_ci.value + 1e-12) & (with_ci.value <= with_ci.ci_high + 1e-12)).all()


def test_automatic_and_dataset_slices(run):
    _, results = run
    summary, table = results.summary, results.metrics
    names = [s["name"] for s in summary["slices"]]
    assert names == ["length_quartile", "rare_class", "hard_case", "class", "source", "critical"]
    assert summary["slice_details"]["rare_classes"] == ["e"]
    quartiles = table[(table.slice == "length_quartile") & (table.metric == "accuracy") & (table.model == "student")]
    assert quartiles.slice_value.tolist() == ["Q1", "Q2", "Q3", "Q4"]
    assert quartiles.n.sum() == 1200 and quartiles.n.min() > 200
    classes = table[(table.slice == "class") & (table.metric == "accuracy") & (table.model == "teacher")]
    assert classes.slice_value.tolist() == LABELS
    assert "macro_f1" not in set(table[table.slice == "class"].metric)  # degenerate within one true class


def test_small_and_empty_slices_are_flagged_not_hidden():
    dataset, encoded, logits = synthetic_inputs(200, seed=3)
    frame = dataset.frame
    keep = frame["label"] != "e"  # no example of class e at all
    dataset.frame = frame[keep].reset_index(drop=True)
    dataset.frame.loc[:9, "source"] = "rare-source"
    for key in ("input_tokens", "sent_tokens", "truncated"):
        setattr(encoded, key, getattr(encoded, key)[keep.to_numpy()])
    encoded.input_ids = [x for x, k in zip(encoded.input_ids, keep) if k]
    logits = {r: v[keep.to_numpy()] for r, v in logits.items()}
    results = assemble(dataset, encoded, logits, LABELS, score_settings=ScoreSettings(min_slice_n=30, n_resamples=100))
    table = results.metrics
    empty = _figure(table, "accuracy", "student", "class", "e")
    assert empty["n"] == 0 and empty["unstable"] and math.isnan(empty["value"])
    small = _figure(table, "accuracy", "student", "source", "rare-source")
    assert small["n"] == 10 and small["unstable"] and not math.isnan(small["value"])
    assert not _figure(table, "accuracy", "student")["unstable"]


def test_dataset_rare_class_column_wins_over_the_automatic_one():
    dataset, encoded, logits = synthetic_inputs(300, seed=4)
    dataset.frame["rare_class"] = dataset.frame["label"].isin(["a"]).astype(object)
    dataset.slice_columns = ["rare_class"]
    results = assemble(dataset, encoded, logits, LABELS, score_settings=ScoreSettings(n_resamples=100))
    spec = next(s for s in results.summary["slices"] if s["name"] == "rare_class")
    assert spec["source"] == "dataset"
    assert [s["name"] for s in results.summary["slices"]].count("rare_class") == 1
    assert _figure(results.metrics, "accuracy", "student", "rare_class", "True")["n"] == int((dataset.frame["label"] == "a").sum())


def test_nonfinite_outputs_are_counted_and_excluded():
    dataset, encoded, logits = synthetic_inputs(300, seed=5)
    logits["student"][[3, 7], 1] = np.nan
    logits["teacher"][11, 0] = np.inf
    results = assemble(dataset, encoded, logits, LABELS, score_settings=ScoreSettings(n_resamples=100))
    table = results.metrics
    assert _figure(table, "nonfinite_outputs", "student")["value"] == 2
    assert _figure(table, "nonfinite_outputs", "teacher")["value"] == 1
    assert _figure(table, "accuracy", "student")["n"] == 297
    assert np.isfinite(_figure(table, "kl")["value"])
    kinds = [f.kind for f in results.findings]
    assert kinds.count("numerical_health") == 2 and results.findings[0].severity == "fail"
    assert results.per_example["student_pred"].iloc[3] == -1


def test_rare_slice_coverage_gap_is_found_and_said(run):
    run_dir, results = run
    overall = _figure(results.metrics, "accuracy_drop")["value"]
    rare = _figure(results.metrics, "accuracy_drop", "student", "rare_class", "True")["value"]
    assert rare > overall + 0.1
    gaps = [f for f in results.findings if f.kind == "coverage_gap"]
    assert any(f.evidence.get("slice") == "rare_class" and f.evidence.get("slice_value") == "True" for f in gaps)
    html = quality_section_html(run_dir)
    assert "coverage gap: rare_class=True" in html


def test_no_coverage_gap_when_the_student_is_uniformly_close():
    results = synthetic_results(n=800, seed=6, resamples=200, rare_follow=0.97, common_follow=0.97, student_gain=6.0)
    assert not [f for f in results.findings if f.kind == "coverage_gap"]


def test_teacher_ceiling_finding():
    table = pd.DataFrame(
        [
            ("student", "overall", "all", "agreement", 0.96, 0.95, 0.97, 1000, False),
            ("student", "overall", "all", "accuracy", 0.70, 0.67, 0.73, 1000, False),
            ("teacher", "overall", "all", "accuracy", 0.71, 0.68, 0.74, 1000, False),
        ],
        columns=["model", "slice", "slice_value", "metric", "value", "ci_low", "ci_high", "n", "unstable"],
    )
    findings = derive_findings(table)
    assert [f.kind for f in findings] == ["teacher_ceiling"]
    assert "96.0 %" in findings[0].message and "70.0 %" in findings[0].message
    table.loc[1, "value"] = 0.93  # agreement and accuracy close: no ceiling
    assert derive_findings(table) == []


def test_teacher_ceiling_on_a_slice_is_said_once_for_the_same_examples():
    rows = [
        ("teacher", "overall", "all", "accuracy", 0.94, 0.93, 0.95, 2000, False),
        ("student", "overall", "all", "accuracy", 0.85, 0.83, 0.87, 2000, False),
        ("student", "overall", "all", "agreement", 0.88, 0.86, 0.90, 2000, False),
    ]
    for name, value in (("class", "card_compromised"), ("rare_class", "True")):
        rows += [
            ("teacher", name, value, "accuracy", 0.02, 0.0, 0.1, 50, False),
            ("student", name, value, "accuracy", 0.0, 0.0, 0.07, 50, False),
            ("student", name, value, "agreement", 0.82, 0.69, 0.90, 50, False),
        ]
    rows += [  # hard cases: the teacher is weaker, but the student does not copy it
        ("teacher", "hard", "True", "accuracy", 0.73, 0.66, 0.79, 200, False),
        ("student", "hard", "True", "accuracy", 0.57, 0.50, 0.64, 200, False),
        ("student", "hard", "True", "agreement", 0.56, 0.49, 0.63, 200, False),
    ]
    table = pd.DataFrame(rows, columns=["model", "slice", "slice_value", "metric", "value", "ci_low", "ci_high", "n", "unstable"])
    findings = [f for f in derive_findings(table) if f.kind == "teacher_ceiling"]
    assert len(findings) == 1
    assert findings[0].evidence["slice"] == "rare_class" and findings[0].evidence["same_as"] == ["class=card_compromised"]
    assert "2.0 %" in findings[0].message and "82.0 %" in findings[0].message


def test_slice_values_sort_naturally():
    dataset, encoded, logits = synthetic_inputs(200, seed=8)
    dataset.frame["bucket"] = np.array(["101-200", "16-40", "41-100", "5-15"], dtype=object)[np.arange(200) % 4]
    dataset.slice_columns = ["bucket"]
    results = assemble(dataset, encoded, logits, LABELS, score_settings=ScoreSettings(n_resamples=100))
    spec = next(s for s in results.summary["slices"] if s["name"] == "bucket")
    assert spec["values"] == ["5-15", "16-40", "41-100", "101-200"]


def test_recalibrate_finding_on_an_overconfident_but_accurate_student():
    results = synthetic_results(n=1000, seed=7, resamples=100, rare_follow=0.99, common_follow=0.99, student_gain=9.0)
    findings = [f for f in results.findings if f.kind == "recalibrate"]
    assert findings, [f.title for f in results.findings]
    evidence = findings[0].evidence
    assert evidence["ece"] >= 0.05 and evidence["ece_after_temperature"] < evidence["ece"]
    assert evidence["temperature"] > 1  # overconfident logits get softened


def _comparison(p95_ratio, cost_ratio):
    return pd.DataFrame(
        [
            ("p95_ms", "ms", 40.0, 40.0 * p95_ratio, p95_ratio, 100 * (1 - p95_ratio)),
            ("cost_per_1m_tokens_usd", "USD", 0.10, 0.10 * cost_ratio, cost_ratio, 100 * (1 - cost_ratio)),
            ("mean_batch_size", "", 6.0, 1.3, 1.3 / 6, None),
        ],
        columns=["metric", "unit", "teacher", "student", "student_over_teacher", "saving_pct"],
    )


def test_faster_but_not_cheaper_only_when_the_numbers_show_it(run):
    _, results = run
    said = derive_findings(results.metrics, _comparison(0.4, 0.97))
    finding = next(f for f in said if f.kind == "faster_not_cheaper")
    assert "0.40×" in finding.message and "0.97×" in finding.message and "batch" in finding.message
    assert not [f for f in derive_findings(results.metrics, _comparison(0.4, 0.45)) if f.kind == "faster_not_cheaper"]
    assert not [f for f in derive_findings(results.metrics, _comparison(0.98, 1.0)) if f.kind == "faster_not_cheaper"]
    assert not [f for f in derive_findings(results.metrics, None) if f.kind == "faster_not_cheaper"]


def test_report_section_is_self_contained_html(run, tmp_path):
    run_dir, _ = run
    html = quality_section_html(run_dir)
    assert html.count("<svg") == 2  # per-slice bars and the reliability diagram
    assert "http" not in html.split("<svg")[0]  # no external resources before the plots
    assert "Reliability" in html and "rare_class=True" in html and "unstable" in html
    assert "<script" not in html
    assert quality_section_html(tmp_path) is None
    # a comparison written after eval feeds the findings when the report is built
    (run_dir / "tables").mkdir(exist_ok=True)
    _comparison(0.4, 0.97).to_csv(run_dir / "tables" / "comparison.csv", index=False)
    try:
        assert "faster but not cheaper" in quality_section_html(run_dir)
    finally:
        (run_dir / "tables" / "comparison.csv").unlink()
