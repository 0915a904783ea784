"""The generative pair: task corpus (references, slices, group), tokenizer, a real quick build, cache reuse."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from loadtest.errors import LoadtestError
from loadtest.genpair import GenSettings, build_or_reuse, make_settings
from loadtest.genpair import corpus as corpus_mod
from loadtest.genpair.tokenizer import train_bpe_tokenizer
from loadtest.genpair.train import IGNORE, token_distillation_loss


@pytest.fixture(scope="module")
def splits():
    return corpus_mod.generate_task_corpus(5, 1500, 1000)


def test_every_prompt_has_a_reference_and_the_slices_and_group_are_present(splits):
    eval_df, train_df = splits
    for df in (eval_df, train_df):
        assert df["reference"].str.len().gt(0).all() and df["prompt"].str.endswith(corpus_mod.ANSWER_CUE).all()
        assert set(df["segment"]) == set(corpus_mod.SEGMENTS)
        assert 0 < df["rare_intent"].mean() <= 0.03
        assert 0.05 < df["hard"].mean() < 0.15
        assert 0.10 < df["structured"].mean() < 0.20
    long_eval = eval_df[eval_df["prompt"].str.split().str.len() > 20]["prompt"]
    assert len(long_eval) > 50 and not set(long_eval) & set(train_df["prompt"])  # unseen in training


def test_structured_references_are_json_and_plain_ones_are_not(splits):
    eval_df, _ = splits
    structured = eval_df[eval_df["structured"]]
    assert structured["reference"].map(corpus_mod.parses_as_reply).all()
    assert structured["prompt"].str.contains(corpus_mod.JSON_INSTRUCTION, regex=False).all()
    record = json.loads(structured["reference"].iloc[0])
    assert record["intent"] == structured["intent"].iloc[0] and record["segment"] == structured["segment"].iloc[0]
    assert not eval_df[~eval_df["structured"]]["reference"].map(corpus_mod.parses_as_reply).any()


def test_the_reference_follows_from_intent_and_segment(splits):
    eval_df, _ = splits
    for row in eval_df.head(200).itertuples():
        assert row.reference == corpus_mod.reference_answer(row.intent, row.segment, row.structured)


def test_corpus_is_deterministic_by_seed():
    a = corpus_mod.generate_task_corpus(3, 300, 200)
    b = corpus_mod.generate_task_corpus(3, 300, 200)
    c = corpus_mod.generate_task_corpus(4, 300, 200)
    pd.testing.assert_frame_equal(a[0], b[0])
    pd.testing.assert_frame_equal(a[1], b[1])
    assert (a[0]["prompt"] != c[0]["prompt"]).mean() > 0.5


def test_tokenizer_is_deterministic_small_and_round_trips_json(splits):
    _, train_df = splits
    texts = corpus_mod.corpus_texts(train_df)
    first, second = train_bpe_tokenizer(texts, 512), train_bpe_tokenizer(list(reversed(texts)), 512)
    assert first.get_vocab() == second.get_vocab() and len(first) == 512
    assert (first.pad_token_id, first.bos_token_id, first.eos_token_id) == (0, 1, 2)
    reply = corpus_mod.reference_answer("card_lost", "premium", True)
    assert first.decode(first(" " + reply)["input_ids"]) == " " + reply  # byte-level BPE: exact round trip
    assert first("hello")["input_ids"][0] not in (first.bos_token_id, first.eos_token_id)  # we place specials


def test_distillation_loss_is_cross_entropy_plus_kl_on_answer_tokens_only():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 11)
    targets = torch.full((2, 5), IGNORE)
    targets[:, 2:4] = torch.tensor([[3, 4], [5, 6]])
    ce = token_distillation_loss(logits, None, targets, 2.0, 0.5)
    assert torch.isclose(ce, torch.nn.functional.cross_entropy(logits[:, 2:4].reshape(-1, 11), targets[:, 2:4].reshape(-1)))
    same = token_distillation_loss(logits, logits.clone(), targets, 2.0, 0.5)
    assert torch.isclose(same, 0.5 * ce, atol=1e-6)  # KL of identical distributions is 0
    garbage = logits.clone()
    garbage[:, :2] += 100.0  # positions without targets do not count
    assert torch.isclose(token_distillation_loss(logits, garbage, targets, 2.0, 0.5), same, atol=1e-6)


def test_cached_teacher_logits_give_the_loss_of_the_teacher_run_alongside():
    """The teacher's answer logits computed once give the same distillation loss as running it per batch."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from loadtest.genpair.train import Encoded, TeacherAnswerLogits, collate

    torch.manual_seed(0)
    teacher = LlamaForCausalLM(LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                           num_attention_heads=2, num_key_value_heads=2, pad_token_id=0)).eval()
    data = Encoded(ids=[[1, 5, 6, 7, 8, 2], [1, 9, 10, 11, 12, 13, 14, 2], [1, 3, 4, 2]], answer_start=[3, 5, 2])
    idx = np.array([2, 0, 1])
    batch, targets = collate(data, idx, 0)
    with torch.no_grad():
        full = teacher(**batch).logits
    student_logits = torch.randn_like(full)
    cached = TeacherAnswerLogits(teacher, data, batch_size=2).batch(idx)
    assert cached.shape == (int((targets != IGNORE).sum()), 40)
    alongside = token_distillation_loss(student_logits, full, targets, 2.0, 0.5)
    assert torch.isclose(token_distillation_loss(student_logits, cached, targets, 2.0, 0.5), alongside, atol=1e-3)


def test_settings_are_checked_with_one_line_errors():
    with pytest.raises(LoadtestError, match="num_heads"):
        make_settings(teacher={"num_layers": 2, "hidden_size": 30, "num_heads": 4, "intermediate_size": 64})
    with pytest.raises(LoadtestError, match="multiple of 16"):
        make_settings(student={"num_layers": 2, "hidden_size": 48, "num_heads": 2, "intermediate_size": 64})
    with pytest.raises(LoadtestError, match="rare-intent"):
        make_settings(n_eval=100)
    assert make_settings(quick=True, seed=2).settings_hash() != GenSettings.quick().settings_hash()


def test_quick_build_writes_the_pair_the_frozen_split_and_its_figures(gen_pair):
    info = gen_pair.info()
    assert not gen_pair.reused or gen_pair.build_seconds > 0
    eval_df = pd.read_parquet(gen_pair.eval_path)
    assert tuple(eval_df.columns) == corpus_mod.COLUMNS and len(eval_df) == GenSettings.quick().n_eval
    assert eval_df["long_prompt"].any() and eval_df["structured"].any() and eval_df["rare_intent"].any()
    # the evaluation split was frozen before any model was trained
    assert gen_pair.eval_path.stat().st_mtime <= (gen_pair.teacher_dir / "config.json").stat().st_mtime
    teacher = json.loads((gen_pair.teacher_dir / "build_info.json").read_text())
    student = json.loads((gen_pair.student_dir / "build_info.json").read_text())
    assert student["training"]["objective"] == "token_distillation"
    assert student["parameters"] < teacher["parameters"]
    assert student["architecture"]["num_layers"] < teacher["architecture"]["num_layers"]
    for name in ("teacher", "student"):
        forced = info["eval"][name]["teacher_forced"]
        assert 1.0 < forced["perplexity"] < GenSettings.quick().vocab_size  # trained: far below uniform
    assert 0.0 <= info["eval"]["student"]["teacher_forced"]["top1_agreement"] <= 1.0
    assert info["eval"]["student"]["teacher_forced"]["kl_teacher_student"] >= 0.0
    assert (gen_pair.teacher_dir / "tokenizer.json").is_file()


def test_the_cache_returns_the_same_pair_without_building(gen_pair):
    marker = (gen_pair.root / "pair.json").stat().st_mtime_ns
    calls = []
    again = build_or_reuse(GenSettings.quick(), cache_dir=gen_pair.root.parent.parent,
                           progress=lambda m, f: calls.append(m))
    assert again.reused and again.root == gen_pair.root
    assert (gen_pair.root / "pair.json").stat().st_mtime_ns == marker
    assert calls == [f"reusing the generative pair {gen_pair.settings_hash}"]
