"""The demo teacher/student pair: corpus structure, tokenizer, a real (quick) build, cache reuse and keys."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from loadtest.demopair import DemoSettings, build_or_reuse, make_settings, settings_hash
from loadtest.demopair import corpus as corpus_mod
from loadtest.demopair.tokenizer import build_vocab, count_tokens, train_tokenizer
from loadtest.demopair.train import distillation_loss
from loadtest.errors import LoadtestError

N_TRAIN, N_EVAL = 3000, 2000


@pytest.fixture(scope="module")
def splits() -> tuple[pd.DataFrame, pd.DataFrame]:
    return corpus_mod.generate_corpus(7, N_TRAIN, N_EVAL)


@pytest.fixture(scope="module")
def quick_build(tmp_path_factory: pytest.TempPathFactory):
    """One real quick build for the whole module (about half a minute), with the progress calls it made."""
    cache = tmp_path_factory.mktemp("cache")
    calls: list[tuple[str, float]] = []
    pair = build_or_reuse(DemoSettings.quick(), cache_dir=cache, progress=lambda m, f: calls.append((m, f)))
    return pair, cache, calls


# ---------------------------------------------------------------- corpus


def test_classes_and_exactly_one_rare_class(splits):
    eval_df, train_df = splits
    for df, n in ((eval_df, N_EVAL), (train_df, N_TRAIN)):
        assert len(df) == n
        assert set(df["label"]) == set(corpus_mod.LABELS)
        shares = df["label"].value_counts(normalize=True)
        assert len(corpus_mod.LABELS) >= 6
        assert list(shares[shares <= 0.03].index) == [corpus_mod.RARE_LABEL]
        assert (df["rare_class"] == (df["label"] == corpus_mod.RARE_LABEL)).all()
        assert (df["label_id"] == df["label"].map(corpus_mod.LABELS.index)).all()
    assert eval_df["rare_class"].sum() >= 50


def test_hard_examples_are_about_ten_percent_and_mix_two_intents(splits):
    eval_df, _ = splits
    assert 0.08 <= eval_df["hard"].mean() <= 0.12
    assert not (eval_df["hard"] & eval_df["rare_class"]).any()
    # A hard text states its intent and mentions a second one in another sentence.
    assert (eval_df[eval_df["hard"]]["text"].str.count(r"[.?]") >= 2).all()


def test_token_lengths_span_the_long_tail(splits):
    eval_df, train_df = splits
    tok = train_tokenizer(train_df["text"].tolist(), 4000, corpus_mod.lexicon())
    annotated = corpus_mod.annotate_lengths(eval_df, lambda texts: count_tokens(tok, texts))
    n = annotated["n_tokens"]
    assert n.min() == corpus_mod.MIN_TOKENS and n.max() <= corpus_mod.MAX_TOKENS
    assert n.max() >= 150 and n.median() <= 30  # long-tailed: most texts short, some near 200
    assert set(annotated["length_bucket"]) == {b for _, _, b in corpus_mod.LENGTH_BUCKETS}
    assert tuple(annotated.columns) == corpus_mod.COLUMNS


def test_corpus_is_deterministic_by_seed():
    a_eval, a_train = corpus_mod.generate_corpus(3, 400, 300)
    b_eval, b_train = corpus_mod.generate_corpus(3, 400, 300)
    c_eval, _ = corpus_mod.generate_corpus(4, 400, 300)
    pd.testing.assert_frame_equal(a_eval, b_eval)
    pd.testing.assert_frame_equal(a_train, b_train)
    assert (a_eval["text"] != c_eval["text"]).mean() > 0.5


def test_segment_is_a_group_column_that_leans_on_length_and_hardness(splits):
    """The fairness review's group column: every segment well populated, drawn after the texts."""
    eval_df, _ = splits
    counts = eval_df["segment"].value_counts()
    assert set(counts.index) == set(corpus_mod.SEGMENTS) and counts.min() >= 200
    long_text = eval_df["text"].map(corpus_mod.count_pretokens) > 40
    premier = eval_df["segment"] == "premier"
    assert premier[long_text & ~eval_df["hard"]].mean() > 2 * premier[~long_text & ~eval_df["hard"]].mean()
    assert (eval_df.loc[eval_df["hard"], "segment"] == "small_business").mean() > 0.4
    # the texts are those of a corpus drawn without segments: same streams, same order
    import random

    plain = corpus_mod._draw_split("eval", 300, random.Random("demopair-eval-5"), corpus_mod.CorpusShape(), set())
    assert [r["text"] for r in plain] == corpus_mod.generate_corpus(5, 50, 300)[0]["text"].tolist()


def test_eval_and_train_are_disjoint(splits):
    eval_df, train_df = splits
    assert not set(eval_df["id"]) & set(train_df["id"])
    assert eval_df["id"].is_unique and train_df["id"].is_unique
    long_eval = {t for t in eval_df["text"] if corpus_mod.count_pretokens(t) >= 12}
    assert long_eval and not long_eval & set(train_df["text"])


def test_rare_class_shares_its_cues_with_two_common_intents(splits):
    """The rare intent has no vocabulary of its own: every rare text holds a card_lost and a dispute cue."""
    eval_df, _ = splits
    rare = eval_df[eval_df["rare_class"]]["text"].str.lower()
    common_text = " ".join(eval_df[~eval_df["rare_class"]]["text"].str.lower())
    rare_words = set(" ".join(rare).replace(".", " ").replace("?", " ").split())
    assert rare_words <= set(common_text.replace(".", " ").replace("?", " ").split())


# ---------------------------------------------------------------- tokenizer


def test_tokenizer_vocabulary_is_deterministic_and_bert_like(splits):
    _, train_df = splits
    texts = train_df["text"].tolist()[:1000]
    assert build_vocab(texts, 3000, corpus_mod.lexicon()) == build_vocab(texts, 3000, corpus_mod.lexicon())
    tok = train_tokenizer(texts, 3000, corpus_mod.lexicon())
    assert 2000 <= len(tok) <= 3000
    assert tok.pad_token_id == 0 and tok.model_max_length == 256
    enc = tok("I lost my card.")
    assert enc["input_ids"][0] == tok.cls_token_id and enc["input_ids"][-1] == tok.sep_token_id
    assert tok.unk_token_id not in tok("Zyxwv qqq, 12345!")["input_ids"]  # unseen words split, never [UNK]
    assert len(tok("word " * 600, truncation=True)["input_ids"]) == 256


# ---------------------------------------------------------------- training pieces


def test_distillation_loss_matches_its_formula():
    torch.manual_seed(0)
    s, t = torch.randn(5, 4), torch.randn(5, 4)
    y = torch.tensor([0, 1, 2, 3, 0])
    temp, alpha = 2.0, 0.7
    p_t = torch.softmax(t / temp, -1)
    kl = (p_t * (p_t.log() - torch.log_softmax(s / temp, -1))).sum(-1).mean()
    expected = alpha * temp**2 * kl + (1 - alpha) * torch.nn.functional.cross_entropy(s, y)
    assert torch.allclose(distillation_loss(s, t, y, temp, alpha), expected, atol=1e-6)
    assert torch.allclose(distillation_loss(s, s, y, temp, 1.0), torch.tensor(0.0), atol=1e-6)


# ---------------------------------------------------------------- settings


def test_settings_hash_changes_with_any_setting():
    base = DemoSettings.quick()
    assert settings_hash(base) == DemoSettings.quick().settings_hash()
    assert len(settings_hash(base)) == 12
    assert settings_hash(base) != settings_hash(base.model_copy(update={"seed": base.seed + 1}))
    assert settings_hash(base) != settings_hash(base.model_copy(update={"temperature": 3.0}))
    assert settings_hash(base) != settings_hash(DemoSettings())


def test_bad_settings_are_one_line_user_errors():
    with pytest.raises(LoadtestError, match="num_heads"):
        make_settings(student={"num_layers": 2, "hidden_size": 100, "num_heads": 3, "intermediate_size": 64})
    with pytest.raises(LoadtestError, match="rare-class"):
        make_settings(n_eval=500)
    with pytest.raises(LoadtestError, match="rare_share"):
        make_settings(rare_share=0.2)
    assert make_settings(quick=True, seed=5).seed == 5


def test_unwritable_cache_is_a_user_error(tmp_path: Path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(LoadtestError, match="demo cache"):
        build_or_reuse(DemoSettings.quick(), cache_dir=blocker)


def test_interrupted_build_leaves_nothing_that_is_reused(tmp_path: Path):
    class Stop(Exception):
        pass

    def stop_in_teacher(message: str, fraction: float) -> None:
        if message.startswith("teacher"):
            raise Stop

    with pytest.raises(Stop):
        build_or_reuse(DemoSettings.quick(), cache_dir=tmp_path, progress=stop_in_teacher)
    assert list((tmp_path / "demo").iterdir()) == []


# ---------------------------------------------------------------- a real quick build


def test_quick_build_is_a_pair_of_hugging_face_model_directories(quick_build):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    pair, _, _ = quick_build
    assert not pair.reused and pair.build_seconds > 0
    assert pair.labels == list(corpus_mod.LABELS)
    assert json.loads((pair.data_dir / "labels.json").read_text()) == pair.labels
    eval_df = pd.read_parquet(pair.eval_path).head(300)
    for model_dir in (pair.teacher_dir, pair.student_dir):
        assert (model_dir / "tokenizer.json").is_file() and (model_dir / "build_info.json").is_file()
        tok = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
        assert [model.config.id2label[i] for i in range(len(pair.labels))] == pair.labels
        batch = tok(eval_df["text"].tolist(), padding=True, truncation=True, return_tensors="pt")
        with torch.inference_mode():
            pred = model(**batch).logits.argmax(-1).numpy()
        assert (pred == eval_df["label_id"].to_numpy()).mean() > 0.6  # chance is 1/8


def test_quick_build_teacher_student_and_slices(quick_build):
    pair, _, _ = quick_build
    teacher = json.loads((pair.teacher_dir / "build_info.json").read_text())
    student = json.loads((pair.student_dir / "build_info.json").read_text())
    assert student["training"]["objective"] == "distillation"
    assert student["training"]["temperature"] == 2.0 and student["training"]["alpha"] == 0.7
    assert teacher["parameters"] > student["parameters"]
    assert teacher["eval"]["accuracy"] >= 0.85
    assert teacher["eval"]["slices"]["rare_class"]["n"] >= 50
    drop = teacher["eval"]["accuracy"] - student["eval"]["accuracy"]
    rare = [info["eval"]["slices"]["rare_class"]["accuracy"] for info in (teacher, student)]
    rare_drop = rare[0] - rare[1]
    assert rare_drop > drop


def test_quick_build_splits_have_the_schema(quick_build):
    pair, _, _ = quick_build
    eval_df, train_df = pd.read_parquet(pair.eval_path), pd.read_parquet(pair.train_path)
    for df in (eval_df, train_df):
        assert tuple(df.columns) == corpus_mod.COLUMNS
        assert str(df["label_id"].dtype) == "int64" and str(df["n_tokens"].dtype) == "int64"
        assert df["rare_class"].dtype == bool and df["hard"].dtype == bool
        assert df["n_tokens"].between(5, 200).all()
    assert not set(eval_df["id"]) & set(train_df["id"])


def test_progress_reaches_one_and_never_goes_back(quick_build):
    _, _, calls = quick_build
    fractions = [f for _, f in calls]
    assert fractions[-1] == 1.0
    assert all(b >= a - 1e-9 for a, b in zip(fractions, fractions[1:]))
    assert any(m.startswith("student") for m, _ in calls)


def test_second_call_reuses_the_cache(quick_build):
    pair, cache, _ = quick_build
    again = build_or_reuse(DemoSettings.quick(), cache_dir=cache)
    assert again.reused
    assert again.teacher_dir == pair.teacher_dir and again.settings_hash == pair.settings_hash
    assert again.build_seconds == pytest.approx(pair.build_seconds)
    assert pair.teacher_dir == cache / "demo" / pair.settings_hash / "teacher"
    assert not [p for p in (cache / "demo").iterdir() if p.name.startswith(".tmp")]
