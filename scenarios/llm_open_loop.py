"""LLM open loop: prompts arrive at a fixed (or Poisson) rate whatever the server does; TTFT and E2E
run from each prompt's intended send time, so a queueing server shows in TTFT (no coordinated omission).

    locust -f scenarios/llm_open_loop.py --headless -t 1m --arrival-rate 2 --api openai-completions \\
        --models my-model --tokenizer ./tokenizer --host http://127.0.0.1:8000
    locust -f scenarios/llm_open_loop.py --headless --stages 30s:1,30s:2,30s:4 --arrival poisson --api ...
"""

from loadtest.load import LLMOpenLoopUser, RatePlanShape


class LLMOpenLoopDriver(LLMOpenLoopUser):
    """Sends to every model on one schedule: the same prompts at the same intended times."""


class LLMArrivalRatePlan(RatePlanShape):
    """--arrival-rate until -t (or --stages DURATION:RATE[:LABEL],... for a rate sweep in one run)."""
