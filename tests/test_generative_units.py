"""Units of generative load: stream timing, the APIs' wire formats, prompts, options (no server, no Locust)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _llm_fixtures import make_tokenizer

from loadtest.errors import LoadtestError
from loadtest.generative import protocols as wire
from loadtest.generative.prompts import PromptSpec, build_prompts, synthetic_text
from loadtest.generative.settings import GenerationOptions
from loadtest.generative.timing import StreamTiming, itl_s
from loadtest.load.payloads import LengthDistribution


def test_timing_with_several_tokens_in_one_chunk():
    """TTFT = first text chunk; ITL from token counts (not chunks); gaps between text chunks only."""
    timing = StreamTiming(start=10.0)
    timing.chunk(10.1, carries_text=False)  # a role-only chunk: not the first token
    timing.chunk(10.3, carries_text=True)  # 2 tokens
    timing.chunk(10.5, carries_text=True)  # 3 tokens
    timing.chunk(10.9, carries_text=True)  # 1 token
    timing.chunk(11.0, carries_text=False)  # usage / finish
    assert timing.ttft_s == pytest.approx(0.3)
    assert timing.e2e_s == pytest.approx(1.0)
    assert timing.chunks == 3
    assert timing.gap_mean_s == pytest.approx(0.3) and timing.gap_max_s == pytest.approx(0.4)
    assert itl_s(timing.e2e_s, timing.ttft_s, 6) == pytest.approx(0.7 / 5)
    assert itl_s(1.0, 0.3, 1) is None and itl_s(1.0, None, 5) is None


def test_openai_chunks():
    chat = json.dumps({"choices": [{"delta": {"content": "hi"}, "index": 0}]})
    assert wire.parse_openai_event(wire.OPENAI_CHAT, chat).text == "hi"
    final = json.dumps({"choices": [{"delta": {}, "finish_reason": "length"}],
                        "usage": {"completion_tokens": 7, "prompt_tokens": 3}})  # fmt: skip
    chunk = wire.parse_openai_event(wire.OPENAI_CHAT, final)
    assert (chunk.usage_output_tokens, chunk.input_tokens, chunk.finish_reason) == (7, 3, "length")
    usage_only = wire.parse_openai_event(wire.OPENAI_COMPLETIONS, json.dumps({"choices": [], "usage": {"completion_tokens": 4}}))
    assert usage_only.usage_output_tokens == 4 and usage_only.error is None
    assert wire.parse_openai_event(wire.OPENAI_COMPLETIONS, "[DONE]").done
    assert "not valid JSON" in wire.parse_openai_event(wire.OPENAI_CHAT, "{oops").error
    err = wire.parse_openai_event(wire.OPENAI_CHAT, json.dumps({"error": {"message": "too long", "code": 400}}))
    assert err.error == "400: too long"
    whole = wire.parse_openai_response(wire.OPENAI_CHAT, json.dumps(
        {"choices": [{"message": {"content": "a b"}, "finish_reason": "stop"}], "usage": {"completion_tokens": 2}}))
    assert whole.text == "a b" and whole.usage_output_tokens == 2 and whole.done


def test_triton_chunks_and_sse_framing():
    chunk = wire.parse_triton_event(json.dumps({"text_output": " a b", "num_output_tokens": 2, "num_input_tokens": [5]}))
    assert (chunk.text, chunk.output_tokens, chunk.input_tokens) == (" a b", 2, 5)
    assert "no text_output" in wire.parse_triton_event(json.dumps({"model_name": "m"})).error
    parser = wire.SSEParser()
    lines = [": keep-alive", "data: {\"a\":", "data: 1}", "", "event: x", "data: [DONE]", ""]
    events = [e for e in (parser.feed_line(line) for line in lines) if e is not None]
    assert events == ['{"a":\n1}', "[DONE]"]
    long = "x" * 300 + "ValueError: the reason"
    assert wire.clip(long, 100).endswith("the reason")


def test_request_bodies():
    body = wire.openai_body(wire.OPENAI_CHAT, "m", None, [{"role": "user", "content": "q"}], 16, stream=True,
                            ignore_eos=True, extra={"temperature": 0})  # fmt: skip
    assert body["messages"][0]["content"] == "q" and body["min_tokens"] == 16 and body["ignore_eos"]
    assert body["stream_options"] == {"include_usage": True} and body["temperature"] == 0
    plain = wire.openai_body(wire.OPENAI_COMPLETIONS, "m", "p", None, 4, stream=False, ignore_eos=False)
    assert plain == {"model": "m", "max_tokens": 4, "stream": False, "prompt": "p"}
    triton = wire.triton_generate_body("p", 8, stream=True, ignore_eos=True)
    assert json.loads(triton["sampling_parameters"]) == {"ignore_eos": True, "min_tokens": 8}


def test_synthetic_prompts_have_the_drawn_token_lengths():
    tokenizer = make_tokenizer()
    rng = np.random.default_rng(0)
    for n in (1, 7, 40):
        text, count = synthetic_text(tokenizer, n, rng)
        assert count == n == len(tokenizer(text, add_special_tokens=False)["input_ids"])
    spec = PromptSpec(None, "text", "messages", "uniform:5:9", LengthDistribution.parse("uniform:3:6"), 20, 1, chat=True)
    prompts = build_prompts(spec, tokenizer)
    assert len(prompts) == 20 and all(p.messages and p.text is None for p in prompts)
    assert all(3 <= p.max_tokens <= 6 for p in prompts)
    assert all(p.input_tokens >= 5 for p in prompts)  # the chat template adds its own tokens


def test_dataset_prompts_text_and_messages(tmp_path):
    tokenizer = make_tokenizer()
    chat = tmp_path / "chat.jsonl"
    chat.write_text("\n".join(json.dumps({"messages": [{"role": "user", "content": f"the service {i}"}]})
                              for i in range(3)))  # fmt: skip
    spec = PromptSpec(chat, "text", "messages", "", LengthDistribution.parse("fixed:4"), 10, 0, chat=False)
    prompts = build_prompts(spec, tokenizer)  # completions API: messages through the chat template
    assert len(prompts) == 3 and all(p.text.startswith("user :") for p in prompts)
    with pytest.raises(LoadtestError, match="neither"):
        build_prompts(PromptSpec(chat, "body", "msgs", "", LengthDistribution.parse("fixed:4"), 10, 0, False))
    with pytest.raises(LoadtestError, match="need --tokenizer"):
        build_prompts(PromptSpec(None, "text", "messages", "", LengthDistribution.parse("fixed:4"), 10, 0, False))


def _options(**kw):
    class Namespace:
        pass

    ns = Namespace()
    for k, v in kw.items():
        setattr(ns, k, v)
    return GenerationOptions.from_namespace(ns)


def test_generation_options():
    assert not _options().enabled
    options = _options(api="openai-chat", ignore_eos="true", extra_body='{"top_p": 0.9}')
    assert options.enabled and options.ignore_eos and options.extra() == {"top_p": 0.9}
    for bad, match in ((dict(api="vllm"), "--api must be"), (dict(api="openai-chat", extra_body="[1]"), "JSON object"),
                       (dict(api="openai-chat", output_lengths="dataset"), "output-lengths")):  # fmt: skip
        with pytest.raises(LoadtestError, match=match):
            _options(**bad)


def test_light_tokenizer_builds_the_same_prompts(tmp_path):
    """Without transformers (the load-generator image), tokenizers alone gives the same synthetic prompts."""
    from loadtest.generative.prompts import light_tokenizer

    tokenizer = make_tokenizer()
    tokenizer.save_pretrained(tmp_path)
    light = light_tokenizer(tmp_path)
    spec = PromptSpec(None, "text", "messages", "uniform:5:9", LengthDistribution.parse("fixed:3"), 8, 2, chat=False)
    assert [p.text for p in build_prompts(spec, light)] == [p.text for p in build_prompts(spec, tokenizer)]
    assert [p.input_tokens for p in build_prompts(spec, light)] == [p.input_tokens for p in build_prompts(spec, tokenizer)]
