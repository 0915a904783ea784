"""The evaluation set: formats, clear errors for bad files, documented truncation."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from loadtest.errors import LoadtestError
from loadtest.quality.dataset import encode, load_dataset

LABELS = ["neg", "pos", "spam"]


def _frame(n=6):
    return pd.DataFrame(
        {
            "id": [f"x{i}" for i in range(n)],
            "text": ["good day"] * (n - 1) + [" ".join(["word"] * 40)],
            "label": ["neg", "pos", "spam", "neg", "pos", "spam"][:n],
            "label_id": [0, 1, 2, 0, 1, 2][:n],
            "length_bucket": ["short"] * (n - 1) + ["long"],
            "rare_class": [False, False, True, False, False, True][:n],
            "n_tokens": [3] * n,
        }
    )


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "good": 4, "day": 5, "word": 6}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]")


@pytest.mark.parametrize("fmt", ["parquet", "jsonl", "csv", "json"])
def test_formats_read_the_same(tmp_path, fmt):
    frame = _frame()
    path = tmp_path / f"eval.{fmt}"
    if fmt == "parquet":
        frame.to_parquet(path)
    elif fmt == "jsonl":
        frame.to_json(path, orient="records", lines=True)
    elif fmt == "json":
        path.write_text(json.dumps(frame.to_dict(orient="records")))
    else:
        frame.to_csv(path, index=False)
    dataset = load_dataset(path, LABELS)
    assert dataset.frame["id"].tolist() == frame["id"].tolist()
    assert dataset.frame["label_id"].tolist() == [0, 1, 2, 0, 1, 2]
    assert dataset.slice_columns == ["length_bucket", "rare_class"]  # n_tokens is numeric: not a slice
    assert "n_tokens" in dataset.ignored_columns
    assert dataset.frame["rare_class"].tolist() == [False, False, True, False, False, True]


def _one_line_error(path, labels=LABELS) -> str:
    with pytest.raises(LoadtestError) as info:
        load_dataset(path, labels)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_label_column(tmp_path):
    path = tmp_path / "eval.parquet"
    _frame().drop(columns=["label"]).to_parquet(path)
    assert "no 'label' column" in _one_line_error(path)


def test_unknown_labels_are_named(tmp_path):
    path = tmp_path / "eval.jsonl"
    frame = _frame()
    frame.loc[0, "label"] = "positive"
    frame.loc[1, "label"] = "refund"
    frame.drop(columns=["label_id"]).to_json(path, orient="records", lines=True)
    message = _one_line_error(path)
    assert "'positive'" in message and "'refund'" in message and "'neg'" in message


def test_empty_file_and_header_only(tmp_path):
    empty = tmp_path / "eval.csv"
    empty.write_text("")
    assert "is empty" in _one_line_error(empty)
    header = tmp_path / "header.csv"
    header.write_text("id,text,label\n")
    assert "no rows" in _one_line_error(header)
    no_rows = tmp_path / "none.parquet"
    _frame().iloc[:0].to_parquet(no_rows)
    assert "no rows" in _one_line_error(no_rows)


def test_missing_text_missing_file_bad_format_and_corrupt(tmp_path):
    path = tmp_path / "eval.parquet"
    _frame().drop(columns=["text"]).to_parquet(path)
    assert "'text'" in _one_line_error(path)
    assert "does not exist" in _one_line_error(tmp_path / "nope.parquet")
    odd = tmp_path / "eval.xlsx"
    odd.write_text("x")
    assert "unsupported format" in _one_line_error(odd)
    corrupt = tmp_path / "bad.parquet"
    corrupt.write_text("this is not parquet")
    assert "cannot read" in _one_line_error(corrupt)


def test_label_id_must_follow_the_repository_order(tmp_path):
    path = tmp_path / "eval.parquet"
    frame = _frame()
    frame["label_id"] = [1, 0, 2, 1, 0, 2]  # neg/pos swapped
    frame.to_parquet(path)
    assert "label_id disagrees" in _one_line_error(path)


def test_duplicate_ids_null_text_and_null_labels(tmp_path):
    frame = _frame()
    frame.loc[1, "id"] = "x0"
    path = tmp_path / "dup.parquet"
    frame.to_parquet(path)
    assert "not unique" in _one_line_error(path)
    frame = _frame()
    frame["text"] = frame["text"].astype(object)
    frame.loc[2, "text"] = None
    path = tmp_path / "nulltext.parquet"
    frame.to_parquet(path)
    assert "no text" in _one_line_error(path)
    frame = _frame()
    frame["label"] = frame["label"].astype(object)
    frame.loc[3, "label"] = None
    path = tmp_path / "nulllabel.parquet"
    frame.drop(columns=["label_id"]).to_parquet(path)
    assert "no label" in _one_line_error(path)


def test_high_cardinality_string_column_is_listed_not_sliced(tmp_path):
    frame = pd.DataFrame({"text": ["good"] * 60, "label": ["neg"] * 60, "customer": [f"c{i}" for i in range(60)]})
    path = tmp_path / "eval.parquet"
    frame.to_parquet(path)
    dataset = load_dataset(path, LABELS)
    assert dataset.slice_columns == []
    assert "customer" in dataset.ignored_columns
    assert dataset.frame["id"].iloc[0] == "row-0"


def test_long_text_is_truncated_and_counted(tmp_path):
    path = tmp_path / "eval.parquet"
    _frame().to_parquet(path)
    dataset = load_dataset(path, LABELS)
    encoded = encode(dataset, _tokenizer(), max_length=8)
    assert encoded.truncated.tolist() == [False] * 5 + [True]
    assert encoded.input_tokens[-1] == 42  # [CLS] + 40 words + [SEP]
    assert encoded.sent_tokens[-1] == 8
    assert encoded.input_ids[-1][0] == 2 and encoded.input_ids[-1][-1] == 3  # special tokens kept
    assert encoded.sent_tokens[0] == 4


def test_pretokenized_input_ids_are_cut_to_the_limit(tmp_path):
    path = tmp_path / "eval.parquet"
    pd.DataFrame({"input_ids": [[2, 4, 3], [2] + [6] * 20 + [3]], "label": ["neg", "pos"]}).to_parquet(path)
    dataset = load_dataset(path, LABELS)
    encoded = encode(dataset, None, max_length=10)
    assert encoded.truncated.tolist() == [False, True]
    assert [len(x) for x in encoded.input_ids] == [3, 10]
    assert np.array_equal(encoded.input_tokens, [3, 22])
