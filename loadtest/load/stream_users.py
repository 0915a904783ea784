"""Locust users for generative (streaming LLM) load: closed loop (``LLMUser``) and open loop (``LLMOpenLoopUser``).

They are the classifier users (``loadtest.load.users``) with another client: the same closed-loop
turn-taking over the models and the same open-loop schedule (intended send times, late and dropped
sends, TTFT and E2E from the intended time), but each request is a prompt streamed through the API
``--api`` names (``loadtest.load.stream_clients``). ``generative = True`` marks them: with ``--api`` set
only these run, without it they stay out of a classifier test (``lifecycle._select_workload``).
"""

from __future__ import annotations

from locust.exception import StopUser

from loadtest.load.process import LoadProcess
from loadtest.load.stream_clients import StreamingClient, make_client
from loadtest.load.users import OpenLoopUser, TritonUser


def _start_streaming_client(user, process: LoadProcess, concurrency: int) -> tuple[StreamingClient, dict]:
    context = process.context
    if not getattr(context, "generative", False):
        raise StopUser()
    client = make_client(
        context,
        user.environment.events.request,
        scenario=type(user).__name__,
        worker=process.worker,
        concurrency=concurrency,
        timeout_s=context.options.request_timeout,
        metrics=process.metrics,
    )
    return client, process.prepared_requests(context.endpoint.protocol)


class LLMUser(TritonUser):
    """Closed loop: one prompt at a time, waiting for the whole stream, cycling through the models."""

    abstract = True
    generative = True

    def start_client(self, process: LoadProcess, concurrency: int) -> tuple:
        return _start_streaming_client(self, process, concurrency)


class ABLLMUser(LLMUser):
    """Closed loop A/B: the same prompt to every model at the same moment."""

    abstract = True
    send_to_all_models = True


class LLMOpenLoopUser(OpenLoopUser):
    """Open-loop driver: prompts leave on the arrival schedule whatever the streams are doing."""

    abstract = True
    generative = True

    def start_client(self, process: LoadProcess, concurrency: int) -> tuple:
        return _start_streaming_client(self, process, concurrency)
