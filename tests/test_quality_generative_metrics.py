"""Generative quality formulas, and every per-slice figure recomputed from the per-example log."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import sacrebleu
import torch
from rouge_score import rouge_scorer
from scipy import special

from _generative_synthetic import synthetic_log
from loadtest.quality import teacherforced as tf
from loadtest.quality import textmetrics as tm
from loadtest.quality.genscoring import GenScoreSettings, generative_slices, score_generative
from loadtest.quality.paired import mcnemar_exact, paired_bootstrap


def test_exact_match_normalises_whitespace_only():
    assert tm.exact_match("  the  card\n is blocked ", "the card is blocked")
    assert not tm.exact_match("The card is blocked", "the card is blocked")  # case counts
    assert not tm.exact_match("the card is blocked.", "the card is blocked")  # punctuation counts
    assert tm.is_empty(" \n\t") and tm.is_empty(None) and not tm.is_empty(".")


def test_chrf_is_sacrebleus_chrf2_and_rouge_l_is_rouge_scores():
    hyp, ref = "the card was blocked today", "your card is blocked since today"
    assert tm.chrf(hyp, ref) == pytest.approx(sacrebleu.sentence_chrf(hyp, [ref], char_order=6, word_order=0, beta=2).score)
    assert tm.chrf(ref, ref) == pytest.approx(100.0)
    expected = rouge_scorer.RougeScorer(["rougeL"]).score(ref, hyp)["rougeL"].fmeasure
    assert tm.rouge_l(hyp, ref) == pytest.approx(expected)
    # LCS "card blocked today" (3) of 5 and 6 tokens: F = 2PR/(P+R)
    p, r = 3 / 5, 3 / 6
    assert tm.rouge_l("the card was blocked today", "your card is blocked since today") == pytest.approx(2 * p * r / (p + r))


@pytest.mark.parametrize(
    "output,keys,ok",
    [
        ('{"intent": "card", "amount": 3}', ["intent", "amount"], True),
        ('  {"intent": "card", "amount": 3}\n', ["intent", "amount"], True),
        ('{"intent": "card"}', ["intent", "amount"], False),
        ('["intent", "amount"]', ["intent"], False),
        ('Sure! {"intent": "card", "amount": 3}', ["intent", "amount"], False),
        ('{"intent": "card", "amount": 3', ["intent"], False),
        ("", ["intent"], False),
        ("{}", [], True),
    ],
)
def test_format_adherence(output, keys, ok):
    assert tm.format_adherence(output, keys) is ok


def test_required_keys_from_any_cell():
    assert tm.parse_required_keys('["a", "b"]') == ["a", "b"]
    assert tm.parse_required_keys("a, b") == ["a", "b"]
    assert tm.parse_required_keys(None) == [] and tm.parse_required_keys(float("nan")) == [] and tm.parse_required_keys("") == []
    assert tm.parse_required_keys(np.array(["x"])) == ["x"]


def test_perplexity_equals_torch_cross_entropy_token_weighted():
    rng = np.random.default_rng(0)
    logits = [rng.normal(0, 3, (t, 11)) for t in (1, 4, 9)]
    targets = [rng.integers(0, 11, len(x)) for x in logits]
    nll = [tf.target_nll(tf.log_softmax(x), y) for x, y in zip(logits, targets)]
    ppl = tf.perplexity(nll, [len(y) for y in targets])
    loss = torch.nn.functional.cross_entropy(torch.tensor(np.concatenate(logits)), torch.tensor(np.concatenate(targets)))
    assert ppl == pytest.approx(math.exp(loss.item()), rel=1e-9)
    # token-weighted, not the mean of per-example perplexities
    assert ppl != pytest.approx(np.mean([math.exp(n / len(y)) for n, y in zip(nll, targets)]))
    assert math.isnan(tf.perplexity([], [])) and math.isnan(tf.perplexity([float("inf")], [3]))


def test_teacher_forced_agreement_and_kl_by_loop():
    rng = np.random.default_rng(1)
    lt = special.log_softmax(rng.normal(0, 2, (6, 7)), axis=1)
    ls = special.log_softmax(rng.normal(0, 2, (6, 7)), axis=1)
    y = rng.integers(0, 7, 6)
    result = tf.teacher_forced(lt, ls, y)
    agree = sum(int(np.argmax(lt[t]) == np.argmax(ls[t])) for t in range(6))
    kl = sum(sum(math.exp(lt[t, v]) * (lt[t, v] - ls[t, v]) for v in range(7)) for t in range(6))
    assert result.agree == agree and result.kl == pytest.approx(kl, rel=1e-9) and result.tokens == 6
    assert result.teacher_nll == pytest.approx(-sum(lt[t, y[t]] for t in range(6)))
    bad = ls.copy()
    bad[2, 3] = np.nan
    assert tf.teacher_forced(lt, bad, y).nonfinite == {"teacher": False, "student": True}
    with pytest.raises(ValueError):
        tf.teacher_forced(lt, ls[:3], y)


def test_mcnemar_exact_matches_the_binomial_sum():
    a = np.array([1] * 30 + [1] * 9 + [0] * 2 + [0] * 10, dtype=bool)
    b = np.array([1] * 30 + [0] * 9 + [1] * 2 + [0] * 10, dtype=bool)
    result = mcnemar_exact(a, b)
    n, k = 11, 2
    p = min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)
    assert (result.only_a, result.only_b) == (9, 2) and result.p_value == pytest.approx(p)
    assert mcnemar_exact(a, a).p_value == 1.0


def test_paired_bootstrap_is_seeded_and_centred():
    rng = np.random.default_rng(2)
    a = rng.normal(50, 10, 200)
    b = a - 2 + rng.normal(0, 1, 200)
    mean, ci = paired_bootstrap(a, b, n_resamples=500, seed=3)
    assert mean == pytest.approx(np.mean(a - b)) and ci[0] < mean < ci[1] and ci[0] > 1.5
    assert paired_bootstrap(a, b, n_resamples=500, seed=3)[1] == ci


@pytest.fixture(scope="module")
def log_and_table():
    per, tf_inputs = synthetic_log(n=240, seed=0)
    per, specs = generative_slices(per, ["long_prompt", "segment"])
    table = score_generative(per, specs, GenScoreSettings(min_slice_n=30, n_resamples=200))
    return per, specs, table, tf_inputs


def _row(table, metric, model="student", slice_name="overall", value="all"):
    rows = table[(table.metric == metric) & (table.model == model) & (table.slice == slice_name) & (table.slice_value == value)]
    assert len(rows) == 1, (metric, model, slice_name, value)
    return rows.iloc[0]


@pytest.mark.parametrize("slice_name,value", [("overall", "all"), ("structured", "True"), ("segment", "business"), ("long_prompt", "True")])
def test_every_figure_recomputed_from_the_per_example_log(log_and_table, slice_name, value):
    per, _specs, table, _ = log_and_table
    members = per if slice_name == "overall" else per[per[slice_name].astype(str) == value]
    n = len(members)
    for role in ("teacher", "student"):
        # scores recomputed from the outputs with the libraries themselves
        chrf = np.mean([sacrebleu.sentence_chrf(o, [r]).score for o, r in zip(members[f"{role}_output"], members["reference"])])
        assert _row(table, "chrf", role, slice_name, value)["value"] == pytest.approx(chrf)
        exact = np.mean([" ".join(o.split()) == " ".join(r.split()) for o, r in zip(members[f"{role}_output"], members["reference"])])
        assert _row(table, "exact_match", role, slice_name, value)["value"] == pytest.approx(exact)
        assert _row(table, "rouge_l", role, slice_name, value)["value"] == pytest.approx(members[f"{role}_rouge_l"].mean())
        ppl = math.exp(members[f"{role}_nll"].sum() / members["ref_tokens"].sum())
        assert _row(table, "perplexity", role, slice_name, value)["value"] == pytest.approx(ppl)
        structured = members[members["required_keys"].map(len) > 0]
        if len(structured):
            adherent = np.mean([isinstance(j, dict) and {"intent", "amount"} <= set(j) for j in map(_loads, structured[f"{role}_output"])])
            row = _row(table, "format_adherence", role, slice_name, value)
            assert row["value"] == pytest.approx(adherent) and row["n"] == len(structured)
        assert _row(table, "empty_outputs", role, slice_name, value)["value"] == sum(not o.strip() for o in members[f"{role}_output"])
    assert _row(table, "tf_agreement", "student", slice_name, value)["value"] == pytest.approx(members["tf_agree"].sum() / members["ref_tokens"].sum())
    assert _row(table, "tf_kl", "student", slice_name, value)["value"] == pytest.approx(members["tf_kl"].sum() / members["ref_tokens"].sum())
    assert _row(table, "length_ratio", "student", slice_name, value)["value"] == pytest.approx(
        members["student_output_tokens"].sum() / members["teacher_output_tokens"].sum()
    )
    drop = _row(table, "chrf_drop", "student", slice_name, value)
    assert drop["value"] == pytest.approx((members["teacher_chrf"] - members["student_chrf"]).mean())
    assert drop["ci_low"] <= drop["value"] <= drop["ci_high"] and drop["n"] == n
    em_drop = _row(table, "exact_match_drop", "student", slice_name, value)
    assert em_drop["p_value"] == pytest.approx(mcnemar_exact(members["teacher_exact"], members["student_exact"]).p_value)
    chrf_vs = np.mean([sacrebleu.sentence_chrf(s, [t]).score for s, t in zip(members["student_output"], members["teacher_output"])])
    assert _row(table, "chrf_vs_teacher", "student", slice_name, value)["value"] == pytest.approx(chrf_vs)


def _loads(text):
    try:
        return json.loads(text.strip())
    except ValueError:
        return None


def test_overall_teacher_forced_sums_match_the_raw_log_probs(log_and_table):
    per, _specs, table, tf_inputs = log_and_table
    nll = sum(-lt[np.arange(len(y)), y].sum() for lt, _ls, y in tf_inputs)
    tokens = sum(len(y) for _lt, _ls, y in tf_inputs)
    assert _row(table, "perplexity", "teacher")["value"] == pytest.approx(math.exp(nll / tokens))
    kl = sum((np.exp(lt) * (lt - ls)).sum() for lt, ls, _y in tf_inputs) / tokens
    assert _row(table, "tf_kl")["value"] == pytest.approx(kl, rel=1e-6)


def test_every_figure_has_n_an_interval_and_stability(log_and_table):
    _per, specs, table, _ = log_and_table
    assert {s.name for s in specs} == {"length_quartile", "structured", "long_prompt", "segment"}
    rates = table[table.metric.isin(["exact_match", "format_adherence", "tf_agreement"]) & (table.n > 0)]
    assert (rates.ci_low <= rates.value + 1e-12).all() and (rates.value <= rates.ci_high + 1e-12).all()
    assert (table.unstable == (table.n < 30)).all()


def test_broken_format_student_is_seen_on_the_structured_slice():
    per, _ = synthetic_log(n=200, seed=4, broken_format=True, with_tf=False)
    per, specs = generative_slices(per, [])
    table = score_generative(per, specs, GenScoreSettings(n_resamples=100))
    assert _row(table, "format_adherence", "student", "structured", "True")["value"] == 0.0
    assert _row(table, "format_adherence", "teacher", "structured", "True")["value"] > 0.8
    drop = _row(table, "format_adherence_drop", "student", "structured", "True")
    assert drop["value"] > 0.8 and drop["p_value"] < 1e-6
    assert "perplexity" not in set(table.metric)  # not scored: not invented
