"""LLM (streaming) closed loop: -u users, each streaming one prompt after another to the models in turn.

Runs when --api names the server's API (openai-chat, openai-completions, triton-generate, triton-grpc);
records TTFT, output tokens, chunk gaps per request.

    locust -f scenarios/llm.py --headless -u 8 -t 2m --host http://127.0.0.1:8000 --api openai-chat \\
        --teacher big-model --student small-model --tokenizer ./tokenizer --output-lengths fixed:128 --ignore-eos
"""

from loadtest.load import LLMUser


class LLMStreamUser(LLMUser):
    """Closed loop, no think time: concurrency = users; TTFT and E2E from the send time."""
