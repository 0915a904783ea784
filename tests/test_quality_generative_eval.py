"""The generative evaluation without a server: dataset rules, assembly, findings, report, example policy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from _generative_synthetic import synthetic_log
from loadtest.errors import LoadtestError
from loadtest.quality import results as store
from loadtest.quality.genassemble import Generated, assemble_generative
from loadtest.quality.gendataset import load_gen_dataset
from loadtest.quality.genrunner import parse_verdict
from loadtest.quality.genscoring import GenScoreSettings
from loadtest.quality.gate import evaluate_gate, load_policy
from loadtest.quality.report import quality_section_html

REPO_ROOT = Path(__file__).resolve().parents[1]


def _set_file(tmp_path, n=200, seed=0):
    per, _ = synthetic_log(n=n, seed=seed, with_tf=False)
    frame = per[["id", "prompt", "reference", "long_prompt", "segment"]].copy()
    frame["n_reference_tokens"] = per["reference"].str.split().map(len)
    path = tmp_path / "genset.parquet"
    frame.to_parquet(path)
    return path, per


def test_dataset_reads_structured_prompts_from_json_references(tmp_path):
    path, per = _set_file(tmp_path)
    dataset = load_gen_dataset(path)
    assert dataset.keys_from == "reference" and dataset.slice_columns == ["long_prompt", "segment"]
    assert "n_reference_tokens" in dataset.ignored_columns
    structured = dataset.frame["required_keys"].map(len) > 0
    assert (structured == per["required_keys"].map(len).gt(0)).all()
    assert dataset.frame.loc[structured.idxmax(), "required_keys"] == ["intent", "amount"]


@pytest.mark.parametrize(
    "rows,message",
    [
        ([{"prompt": "a"}], "no 'reference' column"),
        ([{"prompt": "a", "reference": None}], "'reference' must hold text"),
        ([{"prompt": " ", "reference": "x"}], "empty prompts"),
        ([{"id": 1, "prompt": "a", "reference": "x"}, {"id": 1, "prompt": "b", "reference": "y"}], "not unique"),
    ],
)
def test_dataset_mistakes_are_one_line_errors(tmp_path, rows, message):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(LoadtestError, match=message):
        load_gen_dataset(path)


def _assembled(tmp_path, broken=False, group="segment"):
    path, per = _set_file(tmp_path)
    dataset = load_gen_dataset(path)
    outputs = {}
    for role in ("teacher", "student"):
        texts = per[f"{role}_output"].tolist()
        if broken and role == "student":
            texts = [f"intent {t}" if k else t for t, k in zip(texts, per["required_keys"])]
        outputs[role] = [Generated(t, len(t.split())) for t in texts]
    outputs["student"][3] = Generated("", 0, "HTTP 500: boom")
    return assemble_generative(dataset, outputs, None, GenScoreSettings(n_resamples=100), group_column=group, judge_verdicts=[True, None] * 100)


def test_assembled_log_figures_and_findings(tmp_path):
    result = _assembled(tmp_path, broken=True)
    per, table, summary = result.per_example, result.metrics, result.summary
    assert summary["failed_requests"] == {"teacher": 0, "student": 1} and per.loc[3, "student_error"].startswith("HTTP 500")
    assert summary["teacher_forced"] is False and "perplexity" not in set(table.metric)
    judged = table[(table.metric == "judged_equivalence") & (table.slice == "overall")].iloc[0]
    assert judged["value"] == 1.0 and judged["n"] == 100  # 'no verdict' is not counted as a verdict
    assert {f.kind for f in result.findings} >= {"format_drift"}
    drift = next(f for f in result.findings if f.kind == "format_drift")
    assert "structured=True" in drift.title or drift.title.endswith("overall")
    assert summary["fairness"]["score"] == "chrf" and set(summary["fairness"]["groups"]) == {"retail", "business", "private"}


def test_report_and_example_policy_on_a_broken_student(tmp_path):
    result = _assembled(tmp_path, broken=True)
    run = tmp_path / "run"
    run.mkdir()
    summary = {**result.summary, "models": {"teacher": "t", "student": "s"}, "host": "http://x", "server": "triton", "generation": {"seed": 0, "max_tokens": 32}}
    store.write_quality(run, result.per_example, result.metrics, summary)
    html = quality_section_html(run)
    assert "Generative quality" in html and "format drift" in html and "teacher-forced figures not measured" in html
    assert "(unvalidated)" in html and "Fairness across" in html
    policy = load_policy(REPO_ROOT / "examples" / "gate-generative.yaml")
    report = evaluate_gate(run, policy)
    failing = {(c.metric, c.slice) for c in report.failures}
    assert ("format_adherence", "structured=True") in failing
    assert not any(c.status == "fail" and c.metric == "format_adherence" and c.slice == "structured=False" for c in report.checks)
    assert next(c for c in report.checks if c.metric == "tf_kl").status == "not measured"


@pytest.mark.parametrize("text,verdict", [("Yes.", True), (" no, they differ", False), ("maybe", None), ("", None), ("SAME", True)])
def test_judge_verdicts(text, verdict):
    assert parse_verdict(text) is verdict


def test_unknown_group_column_in_a_generative_set(tmp_path):
    path, _ = _set_file(tmp_path)
    dataset = load_gen_dataset(path)
    outputs = {r: [Generated("x", 1)] * len(dataset) for r in ("teacher", "student")}
    with pytest.raises(LoadtestError, match="--group-column 'region'"):
        assemble_generative(dataset, outputs, None, GenScoreSettings(n_resamples=100), group_column="region")
    assert np.isfinite(assemble_generative(dataset, outputs, None, GenScoreSettings(n_resamples=100)).metrics.value.iloc[0])
    assert isinstance(pd.read_parquet(path), pd.DataFrame)


def test_judge_agreement_with_labels(tmp_path):
    from loadtest.quality.genrunner import _judge_agreement, read_judge_labels

    labels_file = tmp_path / "labels.csv"
    labels_file.write_text("id,equivalent\ng0,yes\ng1,no\ng2,true\ng3,false\ng9,yes\n")
    labels = read_judge_labels(labels_file)
    per = pd.DataFrame({"id": ["g0", "g1", "g2", "g3"], "judge_equivalent": pd.array([True, True, None, False], dtype="boolean")})
    info = _judge_agreement(per, labels)
    assert info["validated"] and info["labelled_with_verdict"] == 3 and info["agreement_with_labels"] == pytest.approx(2 / 3)
    bad = tmp_path / "bad.csv"
    bad.write_text("id,equivalent\ng0,perhaps\n")
    with pytest.raises(LoadtestError, match="perhaps"):
        read_judge_labels(bad)


def test_echo_offsets_that_count_a_bos_token_are_realigned():
    """vLLM's text_offset counts '<s>' (3 characters) that its echoed text leaves out: the reference tokens
    must still be the ones after the prompt (a response vLLM 0.32 gave; tests/test_quality_generative_vllm.py
    checks the whole path against a live vLLM)."""
    from loadtest.quality.genclient import _special_prefix_length

    tokens = ["<s>", "customer", ":", " my", " card", ".", " agent", ":", " ", "ye", "s", "le"]
    offsets = [0, 3, 11, 12, 15, 20, 21, 27, 28, 29, 31, 32]
    text = "customer: my card. agent: yesle"
    assert _special_prefix_length(text, tokens, offsets) == 3
    assert _special_prefix_length("ab", ["a", "b"], [0, 1]) == 0  # offsets already relative to the text


@pytest.mark.parametrize("verdicts,silent,expected", [(0, 100, True), (10, 90, True), (90, 10, False)])
def test_a_judge_that_mostly_gives_no_verdict_is_a_finding(tmp_path, verdicts, silent, expected):
    from loadtest.quality.genfindings import derive_generative_findings

    table = _assembled(tmp_path).metrics
    judge = {"model": "teacher", "verdicts": verdicts, "no_verdict": silent, "validated": verdicts > 0}
    found = [f for f in derive_generative_findings(table, None, {"judge": judge}) if f.kind == "judge_without_verdicts"]
    assert bool(found) is expected
    if found:
        assert f"yes or no on {verdicts} of {verdicts + silent} prompts" in found[0].message
