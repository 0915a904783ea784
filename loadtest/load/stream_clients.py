"""Streaming LLM clients that report every request to Locust: OpenAI-compatible SSE, Triton SSE, Triton gRPC.

Like Locust's ``locust/contrib/oai.py``: a client wraps the protocol library and fires
``environment.events.request`` once per request (name = model, response time = E2E in ms,
``response_length`` = output tokens, the server's error text as the exception) with the full raw record
in ``context["loadtest_record"]``; the lifecycle listeners write it and update the client metrics.

Each chunk is timed when it arrives (``CLOCK.now()`` right after it is read), so TTFT, the chunk gaps
and E2E are measured at the client, from the intended send time in open loop. Output tokens are the
server's counts when it sends them (OpenAI ``usage``, Triton ``num_output_tokens``), else the
tokenizer's count of the returned text, never the number of chunks. A request fails, with the server's
own text, on an HTTP error, an error chunk, a chunk that is not valid JSON, a stream cut off before its
end marker, an answer that is not a stream when one was asked for, or an empty completion.

HTTP goes through geventhttpclient (gevent-native, reads the body as it arrives), each chunk timed when
the greenlet reads it; gRPC through ``grpc.aio`` on the process's gRPC loop thread
(``loadtest.load.grpc_loop``: under gevent, tritonclient's stream cost a thread-pool wait per response),
each response timed on that thread when it arrives, with tritonclient's request bytes, channel options
and error text.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field

import gevent
from gevent import GreenletExit

from loadtest.load import triton_client  # noqa: F401  (gevent-ready gRPC, before any channel exists)
from loadtest.generative import protocols as wire
from loadtest.generative.context import GenerativeContext
from loadtest.generative.prompts import Prompt
from loadtest.generative.timing import StreamTiming, itl_s
from loadtest.load.client_metrics import ClientMetrics
from loadtest.load.clock import CLOCK
from loadtest.load.records import RECORD_KEY
from loadtest.rundir import Record

WARMUP_STAGE = "warmup"
API_KEY_ENV = ("LOADTEST_API_KEY", "OPENAI_API_KEY")


class GenerationError(Exception):
    """A failed generative request; the message is the server's (or the transport's) text."""


@dataclass(frozen=True)
class GenerativeRequest:
    """One prompt for one model, serialised once (HTTP APIs) and shared read-only by the users."""

    model: str
    prompt: Prompt
    path: str = ""
    body: bytes = b""
    text: str = ""  # Triton gRPC: the text_input
    sampling: str = ""  # Triton gRPC: sampling_parameters JSON ("" = none)
    wire: bytes = b""  # Triton gRPC: the serialised ModelInferRequest (grpc_stream_request)


def prepare_requests(context: GenerativeContext) -> dict[str, list[GenerativeRequest]]:
    """``{model: [GenerativeRequest]}``: every prompt of the pool for every model."""
    gen = context.generation
    tokenizer = context.counter.tokenizer if context.counter is not None else None
    out: dict[str, list[GenerativeRequest]] = {}
    for model in context.models:
        requests = []
        for prompt in context.prompts:
            if context.endpoint.api in (wire.OPENAI_CHAT, wire.OPENAI_COMPLETIONS):
                body = wire.openai_body(
                    context.endpoint.api, model, prompt.text,
                    list(prompt.messages) if prompt.messages is not None else None, prompt.max_tokens,
                    stream=gen.stream, ignore_eos=gen.ignore_eos, extra=context.extra,
                )  # fmt: skip
                requests.append(GenerativeRequest(model, prompt, wire.openai_path(context.endpoint.api),
                                                  json.dumps(body).encode()))  # fmt: skip
            elif context.endpoint.api == wire.TRITON_GENERATE:
                body = wire.triton_generate_body(prompt.as_text(tokenizer), prompt.max_tokens, stream=gen.stream,
                                                 ignore_eos=gen.ignore_eos, extra=context.extra)  # fmt: skip
                requests.append(GenerativeRequest(model, prompt, wire.triton_generate_path(model, gen.stream),
                                                  json.dumps(body).encode()))  # fmt: skip
            else:
                params = wire.triton_sampling_parameters(prompt.max_tokens, gen.ignore_eos, context.extra)
                text, sampling = prompt.as_text(tokenizer), json.dumps(params) if params else ""
                requests.append(GenerativeRequest(model, prompt, text=text, sampling=sampling, wire=grpc_stream_request(
                    model, text, prompt.max_tokens, gen.stream, sampling)))  # fmt: skip
        out[model] = requests
    return out


@dataclass
class Answer:
    """What came back for one request, accumulated chunk by chunk."""

    timing: StreamTiming
    parts: list[str] = field(default_factory=list)
    chunk_tokens: int | None = None  # sum of per-chunk counts (Triton)
    usage_output_tokens: int | None = None  # OpenAI usage
    input_tokens: int | None = None
    finish_reason: str | None = None
    error: str | None = None
    done: bool = False

    def add(self, chunk: wire.Chunk, at: float) -> None:
        if chunk.error is not None:
            self.error = self.error or chunk.error
            return
        carries = bool(chunk.text) or bool(chunk.output_tokens)
        if chunk.text:
            self.parts.append(chunk.text)
        if chunk.output_tokens is not None:
            self.chunk_tokens = (self.chunk_tokens or 0) + chunk.output_tokens
        if chunk.usage_output_tokens is not None:
            self.usage_output_tokens = chunk.usage_output_tokens
        if chunk.input_tokens is not None and self.input_tokens is None:
            self.input_tokens = chunk.input_tokens
        self.finish_reason = chunk.finish_reason or self.finish_reason
        # The end of stream: [DONE] (vLLM, OpenAI) or a finish_reason (servers that send no [DONE]).
        self.done = self.done or chunk.done or chunk.finish_reason is not None
        if carries or chunk.done or chunk.usage_output_tokens is not None or chunk.finish_reason:
            self.timing.chunk(at, carries_text=carries)

    @property
    def text(self) -> str:
        return "".join(self.parts)


class StreamingClient:
    """Sends generative requests for one Locust user (or open-loop driver) and records each one."""

    def __init__(self, context: GenerativeContext, request_event, *, scenario: str, worker: str,
                 concurrency: int = 1, timeout_s: float = 60.0, metrics: ClientMetrics | None = None):  # fmt: skip
        self.context = context
        self.api = context.endpoint.api
        self.stream = context.generation.stream
        self.request_event = request_event
        self.scenario = scenario
        self.worker = worker
        self.timeout_s = timeout_s
        self.metrics = metrics
        self.warmup = context.generation.warmup_requests
        self.sent: Counter = Counter()
        self.concurrency = concurrency

    # -- one request ------------------------------------------------------------------------
    def _exchange(self, request: GenerativeRequest, answer: Answer) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _output_tokens(self, answer: Answer) -> tuple[int | None, str | None]:
        if answer.usage_output_tokens is not None:
            return answer.usage_output_tokens, "server"
        if answer.chunk_tokens is not None:
            return answer.chunk_tokens, "server"
        if self.context.counter is not None:
            return self.context.counter.count(answer.text), "tokenizer"
        return None, None

    def _send(self, request: GenerativeRequest, stage: str, loop: str, intended: float | None,
              tolerance: float) -> bool:  # fmt: skip
        self.sent[request.model] += 1
        if self.sent[request.model] <= self.warmup:
            stage = WARMUP_STAGE
        in_flight = self.metrics.in_flight_for(request.model) if self.metrics is not None else None
        if in_flight is not None:
            in_flight.inc()
        start = CLOCK.now()
        intended = start if intended is None else intended
        answer = Answer(StreamTiming(start=intended))
        try:
            self._exchange(request, answer)
        except GreenletExit:
            raise
        except Exception as exc:  # every failure is a counted, recorded request
            answer.error = answer.error or _transport_error(exc, answer)
        end = CLOCK.now()
        if in_flight is not None:
            in_flight.dec()
        output_tokens, source = self._output_tokens(answer)
        error = answer.error
        if error is None and self.stream and not answer.done:
            error = "stream cut off: it ended before its end marker"
        if error is None and (not answer.text or output_tokens == 0):
            error = (f"empty completion: no output text (server counted {output_tokens} output tokens, "
                     f"finish_reason={answer.finish_reason})")  # fmt: skip
        input_tokens = answer.input_tokens if answer.input_tokens is not None else request.prompt.input_tokens
        timing = answer.timing
        if error is None and self.stream and timing.end is not None:
            end = timing.end  # E2E ends when the end of the stream arrived (timing.py), as TTFT starts at arrival
        e2e = end - intended
        ttft = timing.ttft_s if self.stream else None
        streamed = self.stream and timing.chunks > 0
        record = Record(
            intended_start=CLOCK.epoch(intended),
            start=CLOCK.epoch(start),
            end=CLOCK.epoch(end),
            latency_s=e2e,
            service_time_s=end - start,
            model=request.model,
            protocol=self.api,
            batch_size=1,
            tokens=int(input_tokens or 0),
            success=error is None,
            error=error,
            stage=stage,
            loop=loop,
            late=(start - intended) > tolerance,
            worker=self.worker,
            scenario=self.scenario,
            ttft_s=ttft,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            token_count_source=source,
            chunks=timing.chunks if streamed else (1 if answer.text else 0),
            chunk_gap_mean_s=timing.gap_mean_s if streamed else None,
            chunk_gap_max_s=timing.gap_max_s if streamed else None,
        )
        self.request_event.fire(
            request_type=self.api,
            name=request.model,
            response_time=e2e * 1000.0,
            response_length=int(output_tokens or 0),
            exception=GenerationError(error) if error is not None else None,
            context={RECORD_KEY: record},
            start_time=record.intended_start,
        )
        return error is None

    def send(self, request: GenerativeRequest, stage: str, loop: str = "closed", intended: float | None = None,
             tolerance: float = 0.0) -> bool:  # fmt: skip
        """Send in the calling greenlet, which the users keep alive to the end of the stream (as TritonClient.send)."""
        return self._send(request, stage, loop, intended, tolerance)

    def infer(self, request: GenerativeRequest, *, stage: str, loop: str = "closed", intended: float | None = None,
              tolerance: float = 0.0) -> bool:  # fmt: skip
        """Send one request and wait for its whole answer; True on success (same contract as TritonClient)."""
        worker = gevent.spawn(self._send, request, stage, loop, intended, tolerance)
        try:
            return worker.get()
        except GreenletExit:
            worker.join()
            raise

    def close(self) -> None:
        pass


def _transport_error(exc: BaseException, answer: Answer) -> str:
    from tritonclient.utils import InferenceServerException

    if isinstance(exc, InferenceServerException):
        text = exc.message() or str(exc)
    else:
        text = str(exc).strip()
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    if answer.timing.end is not None:  # something arrived before the failure: the stream was cut
        return f"stream cut off after {answer.timing.chunks} chunks: {wire.clip(text)}"
    return wire.clip(text)


def _api_key() -> str | None:
    for name in API_KEY_ENV:
        if os.environ.get(name):
            return os.environ[name]
    return None


class SSEClient(StreamingClient):
    """OpenAI-compatible (``/v1/...``) and Triton ``generate_stream`` over HTTP with Server-Sent Events."""

    def __init__(self, context: GenerativeContext, request_event, **kw):
        super().__init__(context, request_event, **kw)
        from geventhttpclient import HTTPClient

        from loadtest.credentials import http_client_tls

        server = context.endpoint.server
        tls = http_client_tls(context.credentials) if server.ssl else {}
        self._http = HTTPClient(
            server.host, server.port, concurrency=max(self.concurrency, 1),
            connection_timeout=self.timeout_s, network_timeout=self.timeout_s, **tls,
        )  # fmt: skip
        self.headers = {"Content-Type": "application/json", "Accept": "text/event-stream" if self.stream else
                        "application/json"}  # fmt: skip
        self.headers.update(context.credentials.request_headers("http") or {})
        key = _api_key()
        if key and self.api in (wire.OPENAI_CHAT, wire.OPENAI_COMPLETIONS):
            self.headers["Authorization"] = f"Bearer {key}"
        self.openai = self.api in (wire.OPENAI_CHAT, wire.OPENAI_COMPLETIONS)

    def _parse_event(self, payload: str) -> wire.Chunk:
        return wire.parse_openai_event(self.api, payload) if self.openai else wire.parse_triton_event(payload)

    def _exchange(self, request: GenerativeRequest, answer: Answer) -> None:
        response = self._http.request("POST", request.path, body=request.body, headers=self.headers)
        complete = False
        try:
            status = response.status_code
            content_type = (response.get("content-type") or "").lower()
            if status >= 400:
                body = response.read().decode("utf-8", errors="replace")
                complete = True
                answer.error = f"HTTP {status}: {wire.clip(body) or '(empty body)'}"
                return
            if not self.stream:
                body = response.read().decode("utf-8", errors="replace")
                complete = True
                at = CLOCK.now()
                chunk = (wire.parse_openai_response(self.api, body) if self.openai
                         else wire.parse_triton_event(body))  # fmt: skip
                answer.add(chunk, at)
                answer.done = True
                return
            if "text/event-stream" not in content_type:
                body = response.read().decode("utf-8", errors="replace")
                complete = True
                answer.error = (f"server did not stream (Content-Type {content_type or 'none'}, expected "
                                f"text/event-stream): {wire.clip(body, 300)}")  # fmt: skip
                return
            parser = wire.SSEParser()
            while True:
                line = response.readline(b"\n")
                if not line:
                    complete = True
                    payload = parser.flush()
                    if payload is not None:
                        answer.add(self._parse_event(payload), CLOCK.now())
                    break
                payload = parser.feed_line(line.decode("utf-8", errors="replace").rstrip("\n"))
                if payload is None:
                    continue
                at = CLOCK.now()
                chunk = self._parse_event(payload)
                answer.add(chunk, at)
                if chunk.error is not None:
                    return
            if not self.openai:  # Triton's generate_stream ends the body after its final response
                answer.done = answer.error is None
        finally:
            if complete:
                response.release()
            else:
                _discard(response)


def _discard(response) -> None:
    """Close a connection whose body was not read to the end (it cannot carry the next request)."""
    pool, sock = getattr(response, "_pool", None), getattr(response, "_sock", None)
    if pool is not None and sock is not None:
        pool.release_socket(sock)
        response._sock = response._pool = None
    else:
        response.release()


MODEL_STREAM_INFER = "/inference.GRPCInferenceService/ModelStreamInfer"


def grpc_stream_request(model: str, text: str, max_tokens: int, stream: bool, sampling: str = "") -> bytes:
    """The ``ModelInferRequest`` that ``tritonclient.grpc``'s ``async_stream_infer(...,
    enable_empty_final_response=True)`` sends for one prompt, serialised (built once per prompt)."""
    import numpy as np
    import tritonclient.grpc as grpcclient
    from tritonclient.grpc._utils import _get_inference_request

    def tensor(name, datatype, value):
        tensor = grpcclient.InferInput(name, [1], datatype)
        tensor.set_data_from_numpy(value)
        return tensor

    inputs = [tensor("text_input", "BYTES", np.array([text.encode()], dtype=np.object_)),
              tensor("max_tokens", "INT32", np.array([max_tokens], dtype=np.int32)),
              tensor("stream", "BOOL", np.array([stream], dtype=bool))]  # fmt: skip
    if sampling:
        inputs.append(tensor("sampling_parameters", "BYTES", np.array([sampling.encode()], dtype=np.object_)))
    request = _get_inference_request(model_name=model, inputs=inputs, model_version="", request_id="", outputs=None,
                                     sequence_id=0, sequence_start=False, sequence_end=False, priority=0,
                                     timeout=None, parameters=None)  # fmt: skip
    request.parameters["triton_enable_empty_final_response"].bool_param = True
    return request.SerializeToString()


class GrpcStreamClient(StreamingClient):
    """Triton ``ModelStreamInfer``: one stream per concurrent request slot, reused request after request.

    The streams are ``grpc.aio`` calls on the process's gRPC loop thread (``loadtest.load.grpc_loop``), over
    one channel with tritonclient's channel options and TLS; every response is handed to the waiting
    greenlet with its arrival time read on that thread. The request bytes are tritonclient's own
    (``grpc_stream_request``) and each response is parsed as tritonclient's stream does (its error text,
    ``InferResult``).
    """

    def __init__(self, context: GenerativeContext, request_event, **kw):
        super().__init__(context, request_event, **kw)
        from tritonclient.grpc import InferResult, service_pb2

        from loadtest.load.grpc_loop import grpc_loop
        from loadtest.load.triton_client import grpc_channel_credentials, tritonclient_channel_options

        server = context.endpoint.server
        self._method = grpc_loop().stream_channel(
            server.address, MODEL_STREAM_INFER, options=tritonclient_channel_options(),
            credentials=grpc_channel_credentials(context.credentials) if server.ssl else None,
        )  # fmt: skip
        self._metadata = tuple((context.credentials.request_headers("grpc") or {}).items())
        self._parse = service_pb2.ModelStreamInferResponse.FromString
        self._result = InferResult
        self.idle: list = []  # open streams with no request in flight
        self.all: list = []

    def _request_bytes(self, request: GenerativeRequest) -> bytes:
        """Serialised once by ``prepare_requests``; a request built without its bytes is serialised here."""
        return request.wire or grpc_stream_request(request.model, request.text, request.prompt.max_tokens,
                                                   self.stream, request.sampling)

    def _exchange(self, request: GenerativeRequest, answer: Answer) -> None:
        from tritonclient.utils import InferenceServerException

        stream = self.idle.pop() if self.idle else None
        if stream is None:
            stream = self._method.open(self._metadata, CLOCK.now)
            self.all.append(stream)
        healthy = False
        deadline = gevent.Timeout(self.timeout_s)
        deadline.start()
        try:
            stream.send(self._request_bytes(request))
            while True:
                at, message = stream.receive()
                if message is None:  # the server ended the stream before the final response: cut off
                    return
                response = self._parse(message)
                if response.error_message:
                    answer.error = _transport_error(InferenceServerException(msg=response.error_message), answer)
                    return
                infer = response.infer_response
                final = infer.parameters.get("triton_final_response")
                is_final = bool(final.bool_param) if final is not None else False
                if infer.outputs:
                    answer.add(_grpc_chunk(self._result(infer)), at)
                if is_final or not self.stream:
                    answer.done = True
                    answer.timing.finish(at)
                    healthy = answer.error is None
                    return
        except gevent.Timeout as timeout:
            if timeout is not deadline:
                raise
            answer.error = f"no final response within --request-timeout {self.timeout_s:g}s"
        except Exception as exc:  # the call's own status (grpc.aio.AioRpcError): as tritonclient's stream reads it
            answer.error = _transport_error(_stream_error(exc), answer)
        finally:
            deadline.close()
            if healthy:
                self.idle.append(stream)
            else:  # an error, a timeout or a kill leaves the stream in an unknown state: a fresh one next time
                stream.cancel()
                self.all.remove(stream)

    def close(self) -> None:
        for stream in self.all:
            stream.cancel()
        self.all, self.idle = [], []
        try:
            self._method.close()
        except Exception:  # closing a broken channel must not mask the test's outcome
            pass


def _stream_error(exc: BaseException) -> BaseException:
    """A gRPC status as tritonclient's stream reports it (``get_error_grpc``); anything else unchanged."""
    import grpc
    from tritonclient.grpc._utils import get_cancelled_error, get_error_grpc

    if isinstance(exc, grpc.RpcError):
        if exc.code() == grpc.StatusCode.CANCELLED:
            return get_cancelled_error(exc.details())
        return get_error_grpc(exc)
    return exc


def _grpc_chunk(result) -> wire.Chunk:
    def scalar(name):
        try:
            value = result.as_numpy(name)
        except Exception:
            return None
        return None if value is None or value.size == 0 else value.reshape(-1)[0]

    text = scalar("text_output")
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    out, inp = scalar("num_output_tokens"), scalar("num_input_tokens")
    return wire.Chunk(text=str(text or ""), output_tokens=None if out is None else int(out),
                      input_tokens=None if inp is None else int(inp))  # fmt: skip


def make_client(context: GenerativeContext, request_event, **kw) -> StreamingClient:
    """The client for the context's API."""
    if context.endpoint.api == wire.TRITON_GRPC:
        return GrpcStreamClient(context, request_event, **kw)
    return SSEClient(context, request_event, **kw)
