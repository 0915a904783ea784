"""Triton's gRPC streaming (``GrpcStreamClient``) on the gRPC loop thread, against a real ``grpc.aio`` server.

The server speaks Triton's ``ModelStreamInfer`` on the same loop thread and behaves as the model name says:
``words`` streams the prompt's words back one per response and then an empty final response (as Triton does
with ``triton_enable_empty_final_response``), ``refuse`` answers with an error response, ``cut`` ends the
call after one chunk with status OK, ``abort`` fails the call after one chunk, ``silent`` never answers,
``empty`` sends only the final response. Each test reads the record the client fired.

Run by tests/test_grpc_loop.py in a process of its own: importing Locust monkey-patches the process.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()  # before ssl and the rest are imported, as Locust's own process does

import asyncio  # noqa: E402
import dataclasses  # noqa: E402

import gevent  # noqa: E402
import grpc  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from tritonclient.grpc import service_pb2  # noqa: E402
from tritonclient.utils import deserialize_bytes_tensor, serialize_byte_tensor  # noqa: E402

from loadtest.credentials import Credentials  # noqa: E402
from loadtest.endpoint import Endpoint  # noqa: E402
from loadtest.generative.context import GenerativeContext, LLMEndpoint  # noqa: E402
from loadtest.generative.prompts import Prompt  # noqa: E402
from loadtest.generative.settings import GenerationOptions  # noqa: E402
from loadtest.load.clock import CLOCK  # noqa: E402
from _grpc_servers import RecordedEvents, serve_on_loop  # noqa: E402
from loadtest.load.stream_clients import GrpcStreamClient, prepare_requests  # noqa: E402

SERVED = monkey.get_original("threading", "Event")  # set by the server (loop thread), waited on with the hub blocked
seen_metadata: list = []
all_sent = SERVED()


def _text(request: service_pb2.ModelInferRequest) -> str:
    index = [i.name for i in request.inputs].index("text_input")
    return deserialize_bytes_tensor(request.raw_input_contents[index])[0].decode()


def _chunk(model: str, word: str) -> bytes:
    infer = service_pb2.ModelInferResponse(model_name=model)
    infer.outputs.add(name="text_output", datatype="BYTES", shape=[1])
    infer.raw_output_contents.append(serialize_byte_tensor(np.array([(" " + word).encode()], dtype=np.object_)).item())
    infer.outputs.add(name="num_output_tokens", datatype="INT32", shape=[1])
    infer.raw_output_contents.append(np.array([1], np.int32).tobytes())
    return service_pb2.ModelStreamInferResponse(infer_response=infer).SerializeToString()


def _final(model: str) -> bytes:
    infer = service_pb2.ModelInferResponse(model_name=model)
    infer.parameters["triton_final_response"].bool_param = True
    return service_pb2.ModelStreamInferResponse(infer_response=infer).SerializeToString()


async def _stream_infer(requests, context):
    seen_metadata.append(dict(context.invocation_metadata()))
    async for raw in requests:
        request = service_pb2.ModelInferRequest.FromString(raw)
        model, words = request.model_name, _text(request).split()
        assert request.parameters["triton_enable_empty_final_response"].bool_param
        if model == "refuse":
            yield service_pb2.ModelStreamInferResponse(error_message="prompt exceeds the context").SerializeToString()
            continue
        if model == "silent":
            await asyncio.sleep(30)
        if model in ("cut", "abort"):
            yield _chunk(model, words[0])
            if model == "abort":
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "server overloaded")
            return
        if model == "words":
            for word in words:
                yield _chunk(model, word)
        yield _final(model)
        if model == "words":
            all_sent.set()


@pytest.fixture(scope="module")
def server_port():
    yield from serve_on_loop({"ModelStreamInfer": grpc.stream_stream_rpc_method_handler(_stream_infer)})


def _client(port: int, models: tuple[str, ...], prompt: str = "one two three", timeout_s: float = 5.0,
            headers: tuple = ()) -> tuple[GrpcStreamClient, RecordedEvents, dict]:  # fmt: skip
    generation = dataclasses.replace(GenerationOptions.from_namespace(None), api="triton-grpc", warmup_requests=0)
    context = GenerativeContext(
        options=None, generation=generation, endpoint=LLMEndpoint("triton-grpc", Endpoint("grpc", "127.0.0.1", port)),
        models=models, prompts=(Prompt(prompt, None, len(prompt.split()), 8),), payload_description="test",
        teacher=None, student=None, counter=None, extra={}, credentials=Credentials(headers=headers),
    )  # fmt: skip
    events = RecordedEvents()
    client = GrpcStreamClient(context, events, scenario="test", worker="w", timeout_s=timeout_s)
    return client, events, {model: requests[0] for model, requests in prepare_requests(context).items()}


def test_chunks_tokens_and_metadata(server_port):
    client, events, requests = _client(server_port, ("words",), headers=(("X-Tenant", "blue"),))
    try:
        client.send(requests["words"], "steady")
        client.send(requests["words"], "steady")  # the same stream, reused
    finally:
        client.close()
    first, second = events.records()
    assert first.error is None and second.error is None, (first.error, second.error)
    assert first.success and first.output_tokens == 3 and first.chunks == 3 and first.token_count_source == "server"
    assert 0 < first.ttft_s <= first.latency_s and second.success
    assert events.fired[0]["response_length"] == 3 and events.fired[0]["exception"] is None
    assert seen_metadata[-1]["x-tenant"] == "blue"


def test_arrival_is_timed_on_the_loop_thread_while_the_hub_is_blocked(server_port):
    """Every response arrives while no greenlet can run: TTFT and E2E still end at arrival, not at wake-up."""
    client, events, requests = _client(server_port, ("words",))
    all_sent.clear()
    sender = gevent.spawn(client.send, requests["words"], "steady")
    gevent.sleep(0)  # the sender posts its request and waits
    try:
        assert all_sent.wait(10)  # the hub is blocked: nothing of gevent's runs
        monkey.get_original("time", "sleep")(0.3)  # the client's loop thread reads the responses meanwhile
        unblocked = CLOCK.epoch(CLOCK.now())
        sender.join()
    finally:
        client.close()
    (record,) = events.records()
    assert record.success and record.chunks == 3
    assert record.intended_start + record.ttft_s < unblocked and record.end < unblocked


def test_error_response_is_the_servers_text_and_the_stream_is_replaced(server_port):
    client, events, requests = _client(server_port, ("refuse", "words"))
    try:
        assert not client.send(requests["refuse"], "steady")
        assert client.send(requests["words"], "steady")
    finally:
        client.close()
    refused, ok = events.records()
    assert refused.error == "prompt exceeds the context" and not refused.success and ok.success
    assert str(events.fired[0]["exception"]) == "prompt exceeds the context"


def test_cut_off_aborted_silent_and_empty_streams_are_failures(server_port):
    client, events, requests = _client(server_port, ("cut", "abort", "silent", "empty", "words"), timeout_s=0.5)
    try:
        for model in ("cut", "abort", "silent", "empty", "words"):
            client.send(requests[model], "steady")
    finally:
        client.close()
    errors = {r.model: r.error for r in events.records()}
    assert errors["cut"] == "stream cut off: it ended before its end marker"
    assert errors["abort"] == "stream cut off after 1 chunks: server overloaded"
    assert errors["silent"] == "no final response within --request-timeout 0.5s"
    assert errors["empty"].startswith("empty completion")
    assert errors["words"] is None  # a fresh stream after each failure
