"""The OpenAI-compatible teacher-forced path against a real vLLM server (CPU build): echo + logprobs.

vLLM lives in its own virtualenv (its pins clash with ours): point ``LOADTEST_VLLM_PYTHON`` at that
environment's python (docs/quality.md says how to make one); without it the test skips. A tiny Llama is
built here from a config (random weights, a byte-level BPE trained on a few sentences, head size 32:
vLLM's CPU attention takes 32, 64, 80 … only) and served under two names, teacher and student. The
evaluation's perplexity, read from the server's echoed log-probs, must equal PyTorch's on the same tokens.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.slow

SENTENCES = [
    "my card was stolen yesterday and i need a new one",
    "how much is the exchange rate for euros today",
    "please block my card because i lost it on the train",
    "i want to transfer money to my savings account",
    "what is my current balance and when was my last payment",
    "the payment failed twice and i was charged a fee",
    "can i change the pin of my debit card online",
    "tell me about loans for a small business",
]
PROMPTS = [f"customer: {s}. agent:" for s in SENTENCES]
REFERENCES = ["your new card is on its way", "one euro is worth a little more today", "your card is blocked now",
              "the money is in your savings account", "your balance is shown in the app", "we refunded the fee",
              "yes you can change it in the app", "a loan officer will call you"]


def _vllm_python() -> Path | None:
    value = os.environ.get("LOADTEST_VLLM_PYTHON")
    return Path(value) if value and Path(value).is_file() else None


def _tiny_llama(directory: Path) -> Path:
    """A 2-layer Llama (hidden 64, 2 heads of 32) with a byte-level BPE tokenizer; random weights, float32."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<pad>", "<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(PROMPTS + REFERENCES, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])  # BOS first
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, head_dim=32, max_position_embeddings=256,
                         bos_token_id=tok.token_to_id("<s>"), eos_token_id=tok.token_to_id("</s>"), pad_token_id=tok.token_to_id("<pad>"),
                         tie_word_embeddings=False, torch_dtype="float32")
    model = LlamaForCausalLM(config).eval()
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def _pytorch_reference_nll(model_dir: Path, prompt: str, continuation: str) -> tuple[float, int]:
    """Σ NLL of the continuation's tokens given the prompt, in PyTorch, on the tokens the server sees."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = LlamaForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
    text = prompt + continuation
    encoded = tokenizer(text, return_offsets_mapping=True)
    ids = encoded["input_ids"]
    # the tokens whose text starts inside the continuation (the client's rule on the server's text_offset)
    positions = [i for i, (start, end) in enumerate(encoded["offset_mapping"]) if end > start and start >= len(prompt)]
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].double()
    logprobs = torch.log_softmax(logits, dim=-1)
    nll = -sum(float(logprobs[i - 1, ids[i]]) for i in positions)
    return nll, len(positions)


@pytest.fixture(scope="module")
def vllm_server(tmp_path_factory):
    python = _vllm_python()
    if python is None:
        pytest.skip("needs vLLM in its own virtualenv: set LOADTEST_VLLM_PYTHON to its python (docs/quality.md)")
    from loadtest.serving.ports import free_port

    root = tmp_path_factory.mktemp("vllm")
    model_dir = _tiny_llama(root / "tiny-llama")
    port = free_port()
    log = open(root / "vllm.log", "w")
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind"}
    env.pop("PYTHONPATH", None)  # vLLM's own environment, not ours
    process = subprocess.Popen(
        [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir), "--served-model-name", "teacher", "student",
         "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--max-model-len", "256", "--enforce-eager"],
        stdout=log, stderr=subprocess.STDOUT, env=env,
    )
    import requests

    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 420
    try:
        while True:
            if process.poll() is not None:
                pytest.fail(f"vLLM exited with {process.returncode}: {(root / 'vllm.log').read_text()[-3000:]}")
            try:
                if requests.get(f"{url}/v1/models", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.time() > deadline:
                pytest.fail(f"vLLM not ready after 420 s: {(root / 'vllm.log').read_text()[-3000:]}")
            time.sleep(2)
        yield url, model_dir, root
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def test_served_perplexity_equals_pytorch_through_echo_logprobs(vllm_server):
    from loadtest.quality.genrunner import GenEvalSettings, run_generative_eval

    url, model_dir, root = vllm_server
    dataset = root / "eval.parquet"
    pd.DataFrame({"id": [f"v{i}" for i in range(len(PROMPTS))], "prompt": PROMPTS, "reference": REFERENCES,
                  "segment": ["retail", "business"] * (len(PROMPTS) // 2)}).to_parquet(dataset, index=False)
    result = run_generative_eval(GenEvalSettings(dataset=dataset, host=url, openai=True, repository=None, teacher="teacher", student="student",
                                                 results=root / "results", max_tokens=6, min_slice_n=2, n_resamples=100, show_progress=False))
    summary = json.loads((result.run_dir / "quality" / "summary.json").read_text())
    assert summary["teacher_forced_reason"] is None and summary["teacher_forced"] is True
    per = result.per_example
    total_nll, total_tokens = 0.0, 0
    for i, (prompt, reference) in enumerate(zip(PROMPTS, REFERENCES)):
        nll, tokens = _pytorch_reference_nll(model_dir, prompt, " " + reference)
        assert int(per.loc[i, "ref_tokens"]) == tokens
        assert per.loc[i, "teacher_nll"] == pytest.approx(nll, rel=1e-3)
        total_nll, total_tokens = total_nll + nll, total_tokens + tokens
    served = result.metrics
    perplexity = served[(served.metric == "perplexity") & (served.model == "teacher") & (served.slice == "overall")].iloc[0]["value"]
    assert abs(perplexity - math.exp(total_nll / total_tokens)) <= 1e-3 * math.exp(total_nll / total_tokens)
    # one model under two names: the student's figures are the teacher's, and every reference token agrees
    assert np.allclose(per["student_nll"], per["teacher_nll"]) and float(per["tf_agree"].sum()) == total_tokens
    assert "tf_kl" not in set(served.metric) or served[served.metric == "tf_kl"]["value"].isna().all()  # echo gives no full distribution
