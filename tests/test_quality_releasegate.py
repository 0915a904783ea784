"""The release gate a demo shows: a slice that loses more than the whole set is named by the per-slice table,
the gate's verdict, tables/ and report.html — with figures recomputed from the per-example log."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest

from _generative_synthetic import _perturb, synthetic_log
from loadtest.errors import LoadtestError
from loadtest.quality.dataset import frozen_set_hash
from loadtest.quality.gate import evaluate_gate, load_policy
from loadtest.quality.genscoring import GenScoreSettings, add_text_scores, generative_slices, score_generative
from loadtest.quality.releasegate import DEMO_POLICY, run_release_gate
from loadtest.quality.report import quality_section_html
from loadtest.quality.results import write_quality

WORST = "business"  # the segment whose student answers are degraded


def _run(tmp_path, degrade: str | None = WORST, n: int = 300):
    """A generative run whose student loses much more on one customer segment than on the others."""
    per, _ = synthetic_log(n=n, seed=4, student_noise=0.1)
    if degrade is not None:
        rng = np.random.default_rng(1)
        hit = (per["segment"] == degrade) & ~per["required_keys"].map(bool)
        per.loc[hit, "student_output"] = [_perturb(rng, t, 0.7) for t in per.loc[hit, "teacher_output"]]
        per = add_text_scores(per)
    per, specs = generative_slices(per, ["long_prompt", "segment"])
    table = score_generative(per, specs, GenScoreSettings(n_resamples=200))
    summary = {"task": "text-generation", "models": {"teacher": "teacher", "student": "student"}, "host": "http://x", "server": "triton",
               "generation": {"seed": 0, "max_tokens": 32}, "slices": [s.to_dict() for s in specs],
               "frozen_set_sha256": frozen_set_hash(per, ["id", "prompt", "reference"])}
    run = tmp_path / "run"
    write_quality(run, per, table, summary)
    return run, per


def test_demo_policy_names_the_slice_that_drops_more_than_overall(tmp_path):
    from rich.console import Console

    run, per = _run(tmp_path)
    out = io.StringIO()
    gate = run_release_gate(run, console=Console(file=out, width=200))
    assert not gate.passed
    # the per-slice drops recomputed from the per-example log: paired teacher − student chrF, minus the overall drop
    overall = float((per["teacher_chrf"] - per["student_chrf"]).mean())
    worst = per[per["segment"] == WORST]
    expected = float((worst["teacher_chrf"] - worst["student_chrf"]).mean()) - overall
    row = gate.slice_drops.set_index("slice").loc[f"segment={WORST}"]
    assert row["over_overall"] == pytest.approx(expected, abs=1e-9) and expected > 5
    assert gate.slice_drops.iloc[0]["slice"] == "overall" and gate.slice_drops.iloc[1]["slice"] == f"segment={WORST}"
    # the gate's relative rule fails that slice, and only slices that really lose more than overall + 5 points
    relative = [c for c in gate.report.checks if c.metric == "chrf_drop" and c.limit == "≤ overall + 5"]
    failing = {c.slice for c in relative if c.status == "fail"}
    assert f"segment={WORST}" in failing
    drops = gate.slice_drops.set_index("slice")["over_overall"]
    assert all(drops[s] > 5 for s in failing) and all(c.status != "fail" for c in relative if drops[c.slice] <= 5)
    # the verdict names it first, as do the terminal, the tables and the report
    assert gate.verdict.startswith("Gate (gate-generative-demo.yaml): FAIL")
    assert gate.verdict.index(f"segment={WORST}") <= min(gate.verdict.index(s) for s in failing)
    from loadtest.quality.genfindings import derive_generative_findings

    gaps = [f for f in derive_generative_findings(pd.read_csv(run / "quality" / "metrics.csv")) if f.kind == "coverage_gap"]
    assert gaps and gaps[0].title == f"coverage gap: segment={WORST}"  # the finding names it too, first
    text = out.getvalue()
    assert f"segment={WORST}" in text and "FAIL" in text and "drop − overall" in text
    assert (run / "tables" / "gate_verdict.txt").read_text().strip() == gate.verdict
    saved = json.loads((run / "quality" / "gate.json").read_text())
    assert saved["passed"] is False and saved["verdict"] == gate.verdict
    checks = pd.read_csv(run / "tables" / "gate_checks.csv")
    assert ((checks.slice == f"segment={WORST}") & (checks.status == "fail")).any()
    html = quality_section_html(run)
    assert "Release gate (gate-generative-demo.yaml)" in html and "gate: overall + 5" in html
    assert f'<td>segment={WORST}</td>' in html and '<td class="l fail">FAIL</td>' in html


def test_without_a_weak_slice_the_relative_rule_passes(tmp_path):
    run, per = _run(tmp_path, degrade=None)
    policy = tmp_path / "p.yaml"
    policy.write_text("rules:\n  - metric: chrf_drop\n    slice: '*'\n    vs_overall: true\n    max: 15\n")
    gate = run_release_gate(run, policy)
    assert gate.passed and gate.verdict.startswith("Gate (p.yaml): PASS") and "within the policy" in gate.verdict
    worst = gate.slice_drops.iloc[1]
    assert f"The slice that loses most, {worst['slice']}" in gate.verdict


def test_vs_overall_can_bound_a_score_from_below(tmp_path):
    run, _ = _run(tmp_path)
    policy = tmp_path / "p.yaml"
    policy.write_text("rules:\n  - metric: chrf\n    slice: segment\n    vs_overall: true\n    min: -3\n")
    report = evaluate_gate(run, load_policy(policy))
    check = next(c for c in report.checks if c.slice == f"segment={WORST}")
    assert check.status == "fail" and check.limit == "≥ overall − 3" and check.detail.startswith("slice ")
    assert {c.slice for c in report.checks if c.kind == "threshold"} == {"segment=business", "segment=private", "segment=retail"}  # overall is no slice of itself


@pytest.mark.parametrize(
    "text,expected",
    [
        ("rules:\n  - metric: chrf_drop\n    vs_overall: true\n    max: 5\n", "compares slices with overall"),
        ("rules:\n  - metric: chrf\n    slice: '*'\n    vs_overall: true\n    ratio: true\n    min: 1\n", "not both"),
    ],
)
def test_vs_overall_mistakes_are_one_line_errors(tmp_path, text, expected):
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(LoadtestError, match=expected):
        load_policy(path)


def test_shipped_demo_policy_is_valid_and_gates_on_slices():
    policy = load_policy(DEMO_POLICY)
    assert any(r.vs_overall and r.metric == "chrf_drop" and r.slice == "*" for r in policy.rules)
    assert "loadtest/data" in str(DEMO_POLICY.parent.relative_to(DEMO_POLICY.parents[2]))


def test_no_quality_results_is_a_one_line_error(tmp_path):
    with pytest.raises(LoadtestError, match="no quality results"):
        run_release_gate(tmp_path)


def test_generative_report_html_carries_the_quality_section_and_the_gate(tmp_path):
    """What the generative demo writes: report.html of the serving run shows the gate's verdict and the weak slice."""
    from test_analysis_generative import _record

    from loadtest.analysis import generative
    from loadtest.analysis.generative import SLO
    from loadtest.analysis.generative_report import write_outputs
    from loadtest.load.records import RecordWriter
    from loadtest.rundir import RunDir

    run, _ = _run(tmp_path)
    writer = RecordWriter(run, worker="w")
    for model in ("teacher", "student"):
        for i in range(40):
            writer.append(_record(100.0 + i * 0.1, 0.05, 0.2, 16, 8, model=model))
    writer.close()
    RunDir(run).write_manifest({"run_id": "t", "workload": "generative", "models": {"teacher": "teacher", "student": "student"}})
    gate = run_release_gate(run)
    _, report = write_outputs(generative.compute(run, SLO(ttft_ms=200, itl_ms=50), resamples=100))
    html = open(report).read()
    assert "Generative quality through the served models" in html and "Release gate (gate-generative-demo.yaml)" in html
    assert gate.verdict.split(" — ")[0] in html and f"segment={WORST}" in html
