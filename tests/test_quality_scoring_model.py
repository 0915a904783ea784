"""The teacher-forced scoring model over a real builder-exported ONNX decoder, against PyTorch."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
import torch

from _tiny_decoder import build_tiny_decoder
from loadtest.quality import teacherforced as tf
from loadtest.quality.genrunner import TokenConvention
from loadtest.quality.scoring_model import add_scoring_model
from loadtest.quality.triton_score_model import LogProbScorer

PAIRS = [
    ("your card is", "blocked and a new one arrives in five days"),
    ("the transfer was", "sent today"),
    ("please confirm the amount", "we opened a dispute for that payment"),
    ("rates are", "fixed for one hour"),
]


@pytest.fixture(scope="module")
def decoder(tmp_path_factory):
    return build_tiny_decoder(tmp_path_factory.mktemp("tiny-decoder"))


def _torch_nll(model, ids, prompt_length):
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].double()
    targets = torch.tensor(ids[prompt_length:])
    return float(torch.nn.functional.cross_entropy(logits[prompt_length - 1 : len(ids) - 1], targets, reduction="sum"))


def test_scoring_model_perplexity_equals_pytorch(decoder):
    from transformers import AutoModelForCausalLM

    hf_dir, onnx_dir = decoder
    model = AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    scorer = LogProbScorer(onnx_dir)
    convention = TokenConvention(onnx_dir, " ")
    served_nll, torch_nll, tokens = [], [], []
    for prompt, reference in PAIRS:
        ids, prompt_length = convention.encode(prompt, reference)
        assert ids[0] == convention.bos and ids[-1] == convention.eos
        log_probs = scorer.logprobs(ids, prompt_length)
        assert log_probs.shape == (len(ids) - prompt_length, convention.tokenizer.get_vocab_size())
        served_nll.append(tf.target_nll(log_probs, np.asarray(ids[prompt_length:])))
        torch_nll.append(_torch_nll(model, ids, prompt_length))
        tokens.append(len(ids) - prompt_length)
    served, reference_ppl = tf.perplexity(served_nll, tokens), tf.perplexity(torch_nll, tokens)
    assert abs(served - reference_ppl) / reference_ppl <= 1e-3
    assert reference_ppl == pytest.approx(math.exp(sum(torch_nll) / sum(tokens)))


def test_bad_prompt_length_is_refused(decoder):
    scorer = LogProbScorer(decoder[1])
    with pytest.raises(ValueError, match="prompt_length"):
        scorer.logprobs([2, 5, 6], 3)
    with pytest.raises(ValueError, match="prompt_length"):
        scorer.logprobs([2, 5, 6], 0)


def test_scoring_model_is_written_beside_the_generator(decoder, tmp_path):
    from loadtest.repository import ModelRepository

    repo = tmp_path / "repo"
    shutil.copytree(decoder[1], repo / "tiny" / "1")
    name = add_scoring_model(repo, "tiny")
    assert name == "tiny_score" and (repo / name / "1" / "model.py").is_file()
    config = ModelRepository(repo).read_config(name)
    assert config.backend == "python" and config.max_batch_size == 0 and not config.model_transaction_policy.decoupled
    assert [(i.name, list(i.dims)) for i in config.input] == [("input_ids", [-1]), ("prompt_length", [1])]
    assert [(o.name, list(o.dims)) for o in config.output] == [("logprobs", [-1, -1])]
    assert config.parameters["generator"].string_value == "tiny"
    from loadtest.errors import LoadtestError

    with pytest.raises(LoadtestError, match="no ONNX decoder"):
        add_scoring_model(repo, "nope")
