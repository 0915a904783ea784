"""The gRPC loop thread (grpc.aio on a native thread) as TritonClient uses it, against a real gRPC server.

The server is a ``grpc.aio`` server on the same loop thread speaking Triton's ``ModelInfer`` method: it
echoes the request's metadata into the response's parameters, sleeps past the deadline when asked, or fails
with a status. So each test sees what went over the wire: headers as metadata, the deadline, the error text
tritonclient would give, a kill mid-request, and that the gevent hub keeps running while calls wait.

Run by tests/test_grpc_loop.py in a process of its own: importing Locust monkey-patches the process.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()  # before ssl and the rest are imported, as Locust's own process does

import asyncio  # noqa: E402

import gevent  # noqa: E402
import grpc  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from gevent import GreenletExit  # noqa: E402
from tritonclient.grpc import service_pb2  # noqa: E402

from loadtest.credentials import Credentials  # noqa: E402
from loadtest.endpoint import Endpoint  # noqa: E402
from loadtest.load.grpc_loop import grpc_loop  # noqa: E402
from _grpc_servers import RecordedEvents, serve_on_loop  # noqa: E402
from loadtest.load.triton_client import MODEL_INFER, TritonClient, prepare_request  # noqa: E402
from loadtest.load.payloads import Payload  # noqa: E402
from loadtest.modelspec import ModelSpec  # noqa: E402


def _answer(request: service_pb2.ModelInferRequest, metadata) -> service_pb2.ModelInferResponse:
    response = service_pb2.ModelInferResponse(model_name=request.model_name, id=request.id)
    for key, value in metadata:
        response.parameters[key].string_param = value if isinstance(value, str) else value.decode()
    rows = request.inputs[0].shape[0]
    output = response.outputs.add(name="logits", datatype="FP32", shape=[rows, 3])
    response.raw_output_contents.append(np.ones((rows, 3), np.float32).tobytes())
    assert output.name == "logits"
    return response


async def _model_infer(request_bytes: bytes, context) -> bytes:
    request = service_pb2.ModelInferRequest.FromString(request_bytes)
    if request.model_name == "slow":
        await asyncio.sleep(5)
    if request.model_name == "missing":
        await context.abort(grpc.StatusCode.NOT_FOUND, "Request for unknown model: 'missing' is not found")
    return _answer(request, context.invocation_metadata()).SerializeToString()


@pytest.fixture(scope="module")
def server_port():
    yield from serve_on_loop({"ModelInfer": grpc.unary_unary_rpc_method_handler(_model_infer)})


def _client(port: int, events: RecordedEvents, **kwargs) -> TritonClient:
    return TritonClient(Endpoint("grpc", "127.0.0.1", port), events, scenario="test", worker="w", **kwargs)


def _request(model: str):
    spec = ModelSpec(name=model, inputs=(("input_ids", "int64"), ("attention_mask", "int64")), outputs=("logits",),
                     max_batch_size=8)  # fmt: skip
    ones = np.ones((2, 4), np.int64)
    payload = Payload(arrays={"input_ids": ones, "attention_mask": ones}, batch_size=2, tokens=8)
    return prepare_request("grpc", spec, payload)


def test_headers_travel_as_metadata_and_the_answer_is_parsed(server_port):
    events = RecordedEvents()
    client = _client(server_port, events, credentials=Credentials(headers=(("X-Tenant", "blue"),)))
    try:
        assert client.send(_request("echo"), "steady")
        result = client._call(_request("echo"))
    finally:
        client.close()
    assert result.get_response().parameters["x-tenant"].string_param == "blue"
    assert result.as_numpy("logits").shape == (2, 3)
    record = events.fired[0]["context"]["loadtest_record"]
    assert record.success and record.protocol == "grpc" and events.fired[0]["exception"] is None


def test_status_errors_read_as_tritonclient_would_and_are_recorded(server_port):
    events = RecordedEvents()
    client = _client(server_port, events)
    try:
        assert not client.send(_request("missing"), "steady")
    finally:
        client.close()
    assert client.last_error == "StatusCode.NOT_FOUND: Request for unknown model: 'missing' is not found"
    assert not events.fired[0]["context"]["loadtest_record"].success


def test_deadline_ends_the_call_while_the_hub_keeps_running(server_port):
    events = RecordedEvents()
    client = _client(server_port, events, timeout_s=0.3)
    ticks = []

    def tick():
        while True:
            ticks.append(1)
            gevent.sleep(0.01)

    ticker = gevent.spawn(tick)
    try:
        assert not client.send(_request("slow"), "steady")
    finally:
        ticker.kill()
        client.close()
    assert client.last_error.startswith("StatusCode.DEADLINE_EXCEEDED")
    assert len(ticks) > 1  # other greenlets ran while this one waited for its answer


def test_a_kill_mid_request_is_recorded_and_the_late_answer_is_harmless(server_port):
    events = RecordedEvents()
    client = _client(server_port, events, timeout_s=1.0)
    sender = gevent.spawn(client.send, _request("slow"), "steady")
    gevent.sleep(0.05)
    sender.kill()
    assert isinstance(sender.exception, GreenletExit) or sender.successful()
    record = events.fired[0]["context"]["loadtest_record"]
    assert not record.success and record.error.startswith("interrupted")
    gevent.sleep(1.2)  # the abandoned call's deadline answer arrives for a waiter nobody waits on
    try:
        assert client.send(_request("echo"), "steady")  # the loop still serves
    finally:
        client.close()


def test_many_greenlets_share_the_loop(server_port):
    method = grpc_loop().unary_channel(f"127.0.0.1:{server_port}", MODEL_INFER)
    raw = _request("echo").wire[1]
    try:
        answers = gevent.joinall([gevent.spawn(method, raw, (("k", str(i)),), 5.0) for i in range(32)])
    finally:
        method.close()
    got = sorted(service_pb2.ModelInferResponse.FromString(g.value).parameters["k"].string_param for g in answers)
    assert got == sorted(str(i) for i in range(32))  # each greenlet got its own answer
