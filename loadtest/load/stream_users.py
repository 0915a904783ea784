"""Locust users for generative (streaming LLM) load: closed loop (``LLMUser``) and open loop (``LLMOpenLoopUser``).

They are the classifier users (``loadtest.load.users``) with another client: the same closed-loop
turn-taking over the models and the same open-loop schedule (intended send times, late and dropped
sends, TTFT and E2E from the intended time), but each request is a prompt streamed through the API
``--api`` names (``loadtest.load.stream_clients``). ``generative = True`` marks them: with ``--api`` set
only these run, without it they stay out of a classifier test (``lifecycle._select_workload``).
"""

from __future__ import annotations

from locust.exception import StopUser

from loadtest.load import lifecycle
from loadtest.load.stream_clients import StreamingClient, make_client
from loadtest.load.users import OpenLoopUser, TritonUser


def _start_streaming_client(user, concurrency: int) -> tuple[StreamingClient, dict]:
    context = lifecycle.current_context()
    if context is None or lifecycle.STATE.error is not None or not getattr(context, "generative", False):
        raise StopUser()
    client = make_client(
        context,
        user.environment.events.request,
        scenario=type(user).__name__,
        worker=lifecycle.STATE.worker,
        concurrency=concurrency,
        timeout_s=context.options.request_timeout,
        metrics=lifecycle.STATE.metrics,
    )
    return client, lifecycle.prepared_requests(context.endpoint.protocol)


class LLMUser(TritonUser):
    """Closed loop: one prompt at a time, waiting for the whole stream, cycling through the models."""

    abstract = True
    generative = True

    def start_client(self, concurrency: int) -> tuple:
        return _start_streaming_client(self, concurrency)


class ABLLMUser(LLMUser):
    """Closed loop A/B: the same prompt to every model at the same moment."""

    abstract = True
    send_to_all_models = True


class LLMOpenLoopUser(OpenLoopUser):
    """Open-loop driver: prompts leave on the arrival schedule whatever the streams are doing."""

    abstract = True
    generative = True

    def start_client(self, concurrency: int) -> tuple:
        return _start_streaming_client(self, concurrency)
