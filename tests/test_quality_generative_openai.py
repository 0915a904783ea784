"""``loadtest eval`` on an OpenAI-compatible server: the real ``transformers serve``, two tiny causal LMs.

The server gives answers but no prompt log-probs (no ``echo``/``logprobs``): teacher-forced figures must be
reported as not measured, with the reason, never invented; every generated-text figure must be recomputable
from the per-example log and the answers must be what the server returns for the same request.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
import requests
import sacrebleu

from _llm_fixtures import WORDS, make_tiny_causal_lm
from _llm_server import TransformersServe
from loadtest.errors import LoadtestError
from loadtest.quality import results as store
from loadtest.quality.genrunner import GenEvalSettings, parse_verdict, run_generative_eval
from loadtest.quality.report import quality_section_html

N = 24


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen-openai")
    teacher = make_tiny_causal_lm(root / "teacher", layers=2, seed=0)
    student = make_tiny_causal_lm(root / "student", layers=1, seed=1)
    server = TransformersServe(root)
    try:
        server.load(teacher)
        server.load(student)
        yield server, teacher, student, root
    finally:
        server.stop()


@pytest.fixture(scope="module")
def evaluated(served):
    server, teacher, student, root = served
    rows = []
    for i in range(N):
        words = [WORDS[(i * 7 + k) % len(WORDS)] for k in range(3 + i % 5)]
        reference = json.dumps({"intent": words[0]}) if i % 4 == 0 else " ".join(words[::-1])
        rows.append({"id": f"p{i}", "prompt": " ".join(words), "reference": reference, "segment": ["retail", "business"][i % 2]})
    path = root / "set.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    settings = GenEvalSettings(
        dataset=path, host=server.url, openai=True, repository=None, teacher=str(teacher), student=str(student),
        results=root / "results", max_tokens=6, concurrency=2, n_resamples=100, group_column="segment", show_progress=False,
    )
    return run_generative_eval(settings), settings


def test_answers_are_the_servers_and_figures_come_from_the_log(served, evaluated):
    server, teacher, _student, _ = served
    result, settings = evaluated
    per = store.read_per_example(result.run_dir)
    summary = store.read_summary(result.run_dir)
    assert summary["server"] == "openai" and summary["failed_requests"] == {"teacher": 0, "student": 0}
    direct = requests.post(f"{server.url}/v1/completions", json={"model": str(teacher), "prompt": per.loc[5, "prompt"], "max_tokens": 6,
                                                                 "temperature": 0.0, "seed": 0}, timeout=60).json()
    assert per.loc[5, "teacher_output"] == direct["choices"][0]["text"]
    assert per.loc[5, "teacher_output_tokens"] == direct["usage"]["completion_tokens"]
    table = store.read_metrics(result.run_dir)
    chrf = table[(table.metric == "chrf") & (table.model == "student") & (table.slice == "overall")].iloc[0]["value"]
    assert chrf == pytest.approx(sum(sacrebleu.sentence_chrf(o, [r]).score for o, r in zip(per.student_output, per.reference)) / N)
    structured = table[(table.metric == "format_adherence") & (table.model == "teacher") & (table.slice == "overall")].iloc[0]
    assert structured["n"] == N // 4
    assert summary["fairness"]["column"] == "segment"


def test_teacher_forced_is_not_measured_without_logprobs(evaluated):
    result, _ = evaluated
    summary = store.read_summary(result.run_dir)
    assert summary["teacher_forced"] is False and "log-probs" in summary["teacher_forced_reason"]
    assert not {"perplexity", "tf_kl", "tf_agreement"} & set(result.metrics.metric)
    html = quality_section_html(result.run_dir)
    assert "teacher-forced figures not measured" in html


def test_judge_defaults_to_the_served_teacher_and_is_unvalidated(served, evaluated, tmp_path):
    server, teacher, student, root = served
    _, settings = evaluated
    from dataclasses import replace

    result = run_generative_eval(replace(settings, judge="teacher", group_column=None, results=tmp_path, dataset=settings.dataset))
    judge = result.summary["judge"]
    assert judge["model"] == str(teacher) and judge["validated"] is False and judge["verdicts"] + judge["no_verdict"] == N
    per = result.per_example  # the judge's replies are kept, and its verdicts are what they say
    assert [parse_verdict(t) for t in per["judge_reply"]] == [None if pd.isna(v) else bool(v) for v in per["judge_equivalent"]]
    html = quality_section_html(result.run_dir)
    assert "judged_equivalence (unvalidated)" in html and "UNVALIDATED (no --judge-labels)" in html
    assert any(f.kind == "unvalidated_judge" for f in result.findings)


def test_unknown_model_is_a_one_line_error(served, evaluated, tmp_path):
    from dataclasses import replace

    _, settings = evaluated
    with pytest.raises(LoadtestError, match="answered none of the"):
        run_generative_eval(replace(settings, student=str(tmp_path / "nope"), results=tmp_path, group_column=None))
    assert not [p for p in tmp_path.iterdir() if p.is_dir()]  # nothing half-written
