"""``loadtest gate``: policies, pass/fail, exit codes, baselines, clear errors."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from _quality_synthetic import synthetic_results, write_run
from loadtest.errors import LoadtestError
from loadtest.quality import commands
from loadtest.quality.gate import evaluate_gate, load_policy

REPO_ROOT = Path(__file__).resolve().parents[1]

STRICT = """
rules:
  - metric: agreement
    min: 0.80
  - metric: accuracy_drop
    slice: rare_class=True
    max: 0.05
"""

LENIENT = """
rules:
  - metric: agreement
    min: 0.50
  - metric: accuracy_drop
    slice: "*"
    max: 0.60
  - metric: ece
    max: 0.5
"""


@pytest.fixture(scope="module")
def app():
    application = typer.Typer()
    commands.register(application)
    return application


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return write_run(tmp_path_factory.mktemp("gate") / "run", synthetic_results(resamples=100))


def _policy(tmp_path, text, name="policy.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_strict_policy_fails_naming_the_rare_slice(app, run_dir, tmp_path):
    result = CliRunner().invoke(app, ["gate", str(run_dir), "--policy", str(_policy(tmp_path, STRICT))], terminal_width=200)
    assert result.exit_code == 1, result.output
    assert "rare_class=True" in result.output
    assert "FAIL" in result.output


def test_lenient_policy_passes(app, run_dir, tmp_path):
    result = CliRunner().invoke(app, ["gate", str(run_dir), "--policy", str(_policy(tmp_path, LENIENT))], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "PASS" in result.output


def test_gate_writes_json(app, run_dir, tmp_path):
    out = tmp_path / "gate.json"
    CliRunner().invoke(app, ["gate", str(run_dir), "--policy", str(_policy(tmp_path, STRICT)), "--json", str(out)])
    import json

    report = json.loads(out.read_text())
    assert report["passed"] is False
    failing = [c for c in report["checks"] if c["status"] == "fail"]
    assert [c["slice"] for c in failing] == ["rare_class=True"]


def test_shipped_example_policy_is_valid_and_documented():
    path = REPO_ROOT / "examples" / "gate.yaml"
    policy = load_policy(path)
    metrics = {r.metric for r in policy.rules}
    assert {"agreement", "accuracy_drop", "ece", "p95_ms", "qps_at_budget", "cost_per_1m_tokens_usd"} <= metrics
    assert policy.regression
    assert path.read_text().count("#") > 20


def test_example_policy_fails_the_weak_student_and_says_serving_was_not_measured(run_dir):
    report = evaluate_gate(run_dir, load_policy(REPO_ROOT / "examples" / "gate.yaml"))
    assert not report.passed
    p95 = next(c for c in report.checks if c.metric == "p95_ms" and c.kind == "threshold")
    assert p95.status == "fail" and "not measured" in p95.detail
    cost = next(c for c in report.checks if c.metric == "cost_per_1m_tokens_usd")
    assert cost.status == "not measured"  # optional
    assert all(c.status == "skipped" for c in report.checks if c.kind == "regression")


@pytest.mark.parametrize(
    "text,expected",
    [
        ("rules:\n  - metric: agrement\n    min: 0.9\n", "did you mean 'agreement'"),
        ("rules:\n  - metric: agreement\n    mn: 0.9\n", "rules.0.mn"),
        ("rules:\n  - metric: agreement\n", "needs 'min' or 'max'"),
        ("rules:\n  - metric: p95_ms\n    slice: class\n    max: 3\n", "serving figure"),
        ("regression:\n  - metric: temperature\n", "no better direction"),
        ("rules: [\n", "not valid YAML"),
        ("", "is empty"),
        ("description: nothing\n", "has no rules"),
    ],
)
def test_policy_mistakes_are_one_line_errors(tmp_path, text, expected):
    with pytest.raises(LoadtestError) as info:
        load_policy(_policy(tmp_path, text))
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_serving_rules_read_the_comparison_table(run_dir, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    (run / "tables").mkdir()
    pd.DataFrame(
        [
            ("p95_ms", "ms", 40.0, 18.0, 0.45, 55.0),
            ("qps_at_budget", "1/s", 100.0, 260.0, 2.6, -160.0),
            ("cost_per_1m_tokens_usd", "USD", 0.2, None, None, None),
        ],
        columns=["metric", "unit", "teacher", "student", "student_over_teacher", "saving_pct"],
    ).to_csv(run / "tables" / "comparison.csv", index=False)
    policy = _policy(
        tmp_path,
        """
rules:
  - {metric: p95_ms, max: 20}
  - {metric: p95_ms, model: teacher, max: 20}
  - {metric: qps_at_budget, ratio: true, min: 2.0}
  - {metric: cost_per_1m_tokens_usd, max: 0.1}
  - {metric: cost_per_1m_tokens_usd, max: 0.1, optional: true}
""",
    )
    checks = evaluate_gate(run, load_policy(policy)).checks
    statuses = [(c.metric, c.model, c.status) for c in checks if c.kind == "threshold"]
    assert statuses == [
        ("p95_ms", "student", "pass"),
        ("p95_ms", "teacher", "fail"),
        ("qps_at_budget", "student/teacher", "pass"),
        ("cost_per_1m_tokens_usd", "student", "fail"),  # empty cell: not measured, not optional
        ("cost_per_1m_tokens_usd", "student", "not measured"),
    ]


def test_regression_against_a_baseline(tmp_path):
    good = write_run(tmp_path / "good", synthetic_results(n=600, seed=1, resamples=100, rare_follow=0.9))
    worse = write_run(tmp_path / "worse", synthetic_results(n=600, seed=1, resamples=100, rare_follow=0.3))
    policy = load_policy(
        _policy(
            tmp_path,
            """
regression:
  - metric: agreement
    slice: [overall, rare_class]
    max_worsening: 0.01
  - metric: kl
    max_worsening_pct: 5
""",
        )
    )
    same = evaluate_gate(good, policy, good)
    assert same.passed and {c.status for c in same.checks if c.kind == "regression"} == {"pass"}
    regressed = evaluate_gate(worse, policy, good)
    failing = {(c.metric, c.slice) for c in regressed.failures}
    assert ("agreement", "rare_class=True") in failing and ("kl", "overall") in failing
    assert ("agreement", "rare_class=False") not in failing  # common classes did not change


def test_unstable_slices_can_warn_instead_of_failing(tmp_path):
    run = write_run(tmp_path / "small", synthetic_results(n=300, seed=2, resamples=100))  # rare slice n < 30
    text = "unstable_slices: {mode}\nrules:\n  - metric: accuracy_drop\n    slice: rare_class=True\n    max: 0.05\n"
    enforced = evaluate_gate(run, load_policy(_policy(tmp_path, text.format(mode="enforce"), "a.yaml")))
    warned = evaluate_gate(run, load_policy(_policy(tmp_path, text.format(mode="warn"), "b.yaml")))
    check = next(c for c in enforced.checks if c.slice == "rare_class=True")
    assert check.unstable and check.status == "fail"
    assert next(c for c in warned.checks if c.slice == "rare_class=True").status == "warn" and warned.passed


def test_nan_outputs_fail_whatever_the_policy(tmp_path):
    results = synthetic_results(n=300, seed=3, resamples=100)
    table = results.metrics
    table.loc[(table.metric == "nonfinite_outputs") & (table.model == "student") & (table.slice == "overall"), "value"] = 2
    run = write_run(tmp_path / "nan", results)
    report = evaluate_gate(run, load_policy(_policy(tmp_path, LENIENT)))
    assert not report.passed
    assert [c.metric for c in report.failures] == ["nonfinite_outputs"]


def test_missing_run_and_empty_run(app, tmp_path):
    policy = _policy(tmp_path, LENIENT)
    result = CliRunner().invoke(app, ["gate", str(tmp_path / "nope"), "--policy", str(policy)])
    assert isinstance(result.exception, LoadtestError) and "not found" in str(result.exception)
    (tmp_path / "empty").mkdir()
    with pytest.raises(LoadtestError, match="neither quality results"):
        evaluate_gate(tmp_path / "empty", load_policy(policy))
