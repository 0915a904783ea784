"""A KServe v2 client for Triton that reports every request to Locust (HTTP or gRPC).

Like Locust's own ``locust/contrib/oai.py``: the client wraps a protocol library (``tritonclient``)
and fires ``environment.events.request`` once per request, with the model as the name, the latency
in ms, the token count as ``response_length``, the server's error text as the exception, and the full
raw record in ``context["loadtest_record"]`` (what the records writer and the Prometheus metrics
consume). So Locust's table, ``--csv``, ``--html`` and our records count the same requests.

gevent: ``tritonclient.http`` is built on geventhttpclient (gevent-native). gRPC inference calls go
through ``loadtest.load.grpc_loop`` (grpc.aio on one native thread, wake-ups batched): under gevent,
tritonclient's blocking gRPC call costs about twice the CPU per request. tritonclient's gRPC client is
still built for its metadata plugin and for what is not an inference call; it needs
``grpc.experimental.gevent.init_gevent()`` after gevent's monkey-patching (done by importing Locust)
and before any channel exists; importing this module does both, in that order.

A request that is in flight when Locust stops its user is completed, recorded and counted before
the user dies (the call runs in its own greenlet and the user waits for it): otherwise Triton would
count requests that neither Locust nor the records ever see.
"""

from __future__ import annotations

from dataclasses import dataclass

import gevent
import locust  # noqa: F401  (gevent monkey-patching happens here, before gRPC is set up)
import numpy as np
from gevent import GreenletExit

from loadtest.credentials import Credentials, grpc_client_tls, http_client_tls
from loadtest.endpoint import Endpoint
from loadtest.load.client_metrics import ClientMetrics
from loadtest.load.grpc_loop import grpc_loop
from loadtest.load.clock import CLOCK
from loadtest.load.payloads import Payload, model_arrays
from loadtest.load.records import RECORD_KEY
from loadtest.modelspec import ModelSpec
from loadtest.rundir import NONFINITE_ERROR, Record

_GRPC_READY = False


def init_grpc_gevent() -> None:
    """Make gRPC cooperate with gevent (once per process, before any channel is created)."""
    global _GRPC_READY
    if not _GRPC_READY:
        import grpc.experimental.gevent as grpc_gevent

        grpc_gevent.init_gevent()
        _GRPC_READY = True


init_grpc_gevent()


MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"


def tritonclient_channel_options() -> list:
    """The channel arguments ``tritonclient.grpc.InferenceServerClient`` sets by default (message sizes, keepalive)."""
    from tritonclient.grpc import KeepAliveOptions
    from tritonclient.grpc._client import MAX_GRPC_MESSAGE_SIZE

    keepalive = KeepAliveOptions()
    return [
        ("grpc.max_send_message_length", MAX_GRPC_MESSAGE_SIZE),
        ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_SIZE),
        ("grpc.keepalive_time_ms", keepalive.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", keepalive.keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", keepalive.keepalive_permit_without_calls),
        ("grpc.http2.max_pings_without_data", keepalive.http2_max_pings_without_data),
    ]


def grpc_channel_credentials(credentials: Credentials):
    """TLS credentials built from the same files, the same way, as ``tritonclient.grpc`` with ``ssl=True``."""
    import grpc

    def read(path):
        if path is None:
            return None
        with open(path, "rb") as handle:
            return handle.read()

    tls = grpc_client_tls(credentials)
    return grpc.ssl_channel_credentials(root_certificates=read(tls["root_certificates"]),
                                        private_key=read(tls["private_key"]),
                                        certificate_chain=read(tls["certificate_chain"]))  # fmt: skip


class TritonRequestError(Exception):
    """A failed request; the message is the server's (or the transport's) error text."""


@dataclass(frozen=True)
class PreparedRequest:
    """A request ready to send: serialised once, sent as the same bytes every time.

    ``wire`` is what goes on the wire: for HTTP the KServe binary-tensor body and its JSON header length
    (exactly what ``tritonclient.http`` builds, built here once instead of per request); for gRPC the
    ``ModelInferRequest`` protobuf and its serialised bytes. ``inputs``/``outputs`` are the tritonclient
    objects it came from.
    """

    model: str
    inputs: list
    outputs: list
    batch_size: int
    tokens: int
    output_name: str | None
    wire: tuple = ()
    model_version: str = ""  # "" = the server's version policy


def _modules(protocol: str):
    if protocol == "grpc":
        import tritonclient.grpc as module
    else:
        import tritonclient.http as module
    return module


def prepare_request(protocol: str, spec: ModelSpec, payload: Payload, model_version: str = "") -> PreparedRequest:
    """Build ``InferInput``s for one model and payload (binary tensors; read-only afterwards, so shareable)."""
    from tritonclient.utils import np_to_triton_dtype

    module = _modules(protocol)
    inputs = []
    for name, array in model_arrays(payload, list(spec.inputs)).items():
        tensor = module.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        if protocol == "grpc":
            tensor.set_data_from_numpy(array)
        else:
            tensor.set_data_from_numpy(array, binary_data=True)
        inputs.append(tensor)
    if protocol == "grpc":
        outputs = [module.InferRequestedOutput(name) for name in spec.outputs]
    else:
        outputs = [module.InferRequestedOutput(name, binary_data=True) for name in spec.outputs]
    # Rows are checked against the batch only where the model has a batch dimension.
    checked_output = spec.outputs[0] if spec.outputs and spec.max_batch_size > 0 else None
    return PreparedRequest(spec.name, inputs, outputs, payload.batch_size, payload.tokens, checked_output,
                           _wire(protocol, spec.name, inputs, outputs, model_version), model_version)


def _wire(protocol: str, model: str, inputs: list, outputs: list, model_version: str = "") -> tuple:
    """The serialised request, built by tritonclient's own request builders (so the bytes are identical)."""
    if protocol == "grpc":
        from tritonclient.grpc._utils import _get_inference_request

        message = _get_inference_request(model_name=model, inputs=inputs, model_version=model_version, request_id="",
                                         outputs=outputs, sequence_id=0, sequence_start=False, sequence_end=False,
                                         priority=0, timeout=None, parameters=None)  # fmt: skip
        return message, message.SerializeToString()
    from urllib.parse import quote

    from tritonclient.http._utils import _get_inference_request

    body, json_size = _get_inference_request(inputs=inputs, request_id="", outputs=outputs, sequence_id=0,
                                             sequence_start=False, sequence_end=False, priority=0, timeout=None,
                                             custom_parameters=None)  # fmt: skip
    headers = {"Inference-Header-Content-Length": json_size} if json_size is not None else {}
    version = f"/versions/{quote(model_version)}" if model_version else ""
    return f"v2/models/{quote(model)}{version}/infer", body, headers


def _already_closed() -> None:
    """Stands in for a closed tritonclient's ``close`` (see ``TritonClient.close``)."""


def _error_text(exc: BaseException) -> str:
    from tritonclient.utils import InferenceServerException

    if isinstance(exc, InferenceServerException):
        text = exc.message() or str(exc)
        status = exc.status()
        return f"{status}: {text}" if status and status not in text else text
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class TritonClient:
    """One connection set to Triton for one Locust user (or open-loop driver)."""

    def __init__(
        self,
        endpoint: Endpoint,
        request_event,
        *,
        scenario: str,
        worker: str,
        concurrency: int = 1,
        timeout_s: float = 60.0,
        metrics: ClientMetrics | None = None,
        credentials: Credentials | None = None,
    ):
        self.endpoint = endpoint
        self.protocol = endpoint.protocol
        self.request_event = request_event
        self.scenario = scenario
        self.worker = worker
        self.timeout_s = timeout_s
        self.metrics = metrics
        self.last_error: str | None = None  # the last request's error text (None: it succeeded)
        credentials = credentials or Credentials()
        self.headers = credentials.request_headers(self.protocol)
        module = _modules(self.protocol)
        self._result = module.InferResult
        if self.protocol == "grpc":
            import grpc
            from tritonclient.grpc import service_pb2
            from tritonclient.grpc._utils import raise_error_grpc

            self._rpc_error, self._raise_rpc = grpc.RpcError, raise_error_grpc
            self._parse_response = service_pb2.ModelInferResponse.FromString
        else:
            from tritonclient.http._utils import _raise_if_error

            self._raise_if_error = _raise_if_error
        if self.protocol == "grpc":
            tls = grpc_client_tls(credentials) if endpoint.ssl else {}
            self._client = module.InferenceServerClient(url=endpoint.address, **tls)
            self._model_infer = grpc_loop().unary_channel(
                endpoint.address, MODEL_INFER, credentials=grpc_channel_credentials(credentials) if endpoint.ssl else None,
                options=tritonclient_channel_options(),
            )  # fmt: skip
        else:
            tls = http_client_tls(credentials) if endpoint.ssl else {}
            self._client = module.InferenceServerClient(
                url=endpoint.address,
                concurrency=concurrency,
                connection_timeout=timeout_s,
                network_timeout=timeout_s,
                **tls,
            )

    def _call(self, request: PreparedRequest):
        """Send the prepared bytes: HTTP through tritonclient's own connection (its pool, TLS and plugin
        headers); gRPC through the native gRPC loop with tritonclient's channel options, TLS and plugin
        metadata.

        ``InferenceServerClient.infer`` would rebuild and re-serialise the request every time; this sends
        the request serialised once and parses the answer with tritonclient's ``InferResult`` as ``infer``
        does (gRPC errors go through tritonclient's ``raise_error_grpc``), so what Triton receives and how
        its errors read are unchanged.
        """
        client = self._client
        if not request.wire:
            return self._infer(request)
        if self.protocol == "grpc":
            try:
                response = self._model_infer(
                    request.wire[1], tuple(client._get_metadata(self.headers)), self.timeout_s
                )
            except self._rpc_error as rpc_error:
                self._raise_rpc(rpc_error)
            return self._result(self._parse_response(response))
        uri, body, headers = request.wire
        response = client._post(request_uri=uri, request_body=body, headers={**dict(headers), **(self.headers or {})},
                                query_params=None)  # fmt: skip
        self._raise_if_error(response)
        return self._result(response, False)

    def _infer(self, request: PreparedRequest):
        """tritonclient's ``infer``: for requests prepared without their wire bytes."""
        if self.protocol == "grpc":
            return self._client.infer(
                request.model, request.inputs, model_version=request.model_version, outputs=request.outputs,
                client_timeout=self.timeout_s, headers=self.headers,
            )  # fmt: skip
        return self._client.infer(request.model, request.inputs, model_version=request.model_version,
                                  outputs=request.outputs, headers=self.headers)  # fmt: skip

    def send(
        self, request: PreparedRequest, stage: str, loop: str = "closed", intended: float | None = None,
        tolerance: float = 0.0,
    ) -> bool:
        """Send, measure, and report one request in the calling greenlet; True on success.

        The caller keeps its greenlet alive until the request is answered (``TritonUser.stop`` defers a
        kill; open-loop sends run in greenlets nobody kills). Should a kill still land mid-request, the
        request is recorded and counted as a failure before the kill proceeds, so Locust's counts and our
        records still match what Triton saw.
        """
        in_flight = self.metrics.in_flight_for(request.model) if self.metrics else None
        error: str | None = None
        killed = False
        if in_flight is not None:
            in_flight.inc()
        start = CLOCK.now()
        try:
            result = self._call(request)
            if request.output_name is not None:
                rows = result.as_numpy(request.output_name)
                if rows is None or len(rows) != request.batch_size:
                    got = "no output" if rows is None else f"{len(rows)} rows"
                    error = f"bad response: {got} for a batch of {request.batch_size}"
                elif rows.dtype.kind == "f" and not np.isfinite(rows).all():  # the footprint's non-finite count
                    error = f"{NONFINITE_ERROR}: NaN or Inf in {request.output_name}"
        except Exception as exc:  # every failure is a counted, recorded request
            error = _error_text(exc)
        except GreenletExit:
            killed = True
            error = "interrupted: the load generator stopped this user mid-request"
        end = CLOCK.now()
        self.last_error = error
        if in_flight is not None:
            in_flight.dec()
        intended = start if intended is None else intended
        latency = end - intended
        record = Record(
            intended_start=CLOCK.epoch(intended),
            start=CLOCK.epoch(start),
            end=CLOCK.epoch(end),
            latency_s=latency,
            service_time_s=end - start,
            model=request.model,
            protocol=self.protocol,
            batch_size=request.batch_size,
            tokens=request.tokens,
            success=error is None,
            error=error,
            stage=stage,
            loop=loop,
            late=(start - intended) > tolerance,
            worker=self.worker,
            scenario=self.scenario,
        )
        self.request_event.fire(
            request_type=self.protocol,
            name=request.model,
            response_time=latency * 1000.0,
            response_length=request.tokens,
            exception=TritonRequestError(error) if error is not None else None,
            context={RECORD_KEY: record},
            start_time=record.intended_start,
        )
        if killed:
            raise GreenletExit()
        return error is None

    def infer(
        self,
        request: PreparedRequest,
        *,
        stage: str,
        loop: str = "closed",
        intended: float | None = None,
        tolerance: float = 0.0,
    ) -> bool:
        """Send one request in a greenlet of its own and wait for it; True on success.

        For callers that may be killed at any moment (``send`` is the cheaper path for those that are not).
        ``intended`` (a ``CLOCK.now()`` reading) makes the latency run from the schedule's send time
        (open loop). If the calling greenlet is killed meanwhile, the request still completes and is
        reported before the kill proceeds.
        """
        worker = gevent.spawn(self.send, request, stage, loop, intended, tolerance)
        try:
            return worker.get()
        except GreenletExit:
            worker.join()
            raise

    def close(self) -> None:
        if self.protocol == "grpc" and self._model_infer is not None:
            try:
                self._model_infer.close()
            except Exception:  # closing a broken channel must not mask the test's outcome
                pass
            self._model_infer = None
        try:
            self._client.close()
        except Exception:  # closing a broken connection must not mask the test's outcome
            pass
        # tritonclient's __del__ closes the client again when it is collected, at interpreter exit for the
        # last ones; a second gevent-patched gRPC channel close there was seen to block the exiting load
        # generator forever. Closed once is enough.
        self._client.close = _already_closed
