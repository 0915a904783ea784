"""Models as the *server* describes them: inputs, datatypes, dims, batching, decoupled, version.

Why from the server: users load their own staging Triton, with models loadtest never exported (other
input names, FP32 or BYTES inputs, no batching, ensembles). The KServe v2 metadata endpoint
(``/v2/models/NAME[/versions/V]``, gRPC ``ModelMetadata``) gives names, datatypes and shapes; Triton's
config endpoint (``.../config``, gRPC ``ModelConfig``) gives ``max_batch_size``, optional inputs and the
transaction policy. Both protocols end in the same ``ServerModel`` (the config parsed into
``model_config_pb2.ModelConfig`` either way), so nothing downstream cares how it was read.

Plain synchronous tritonclient calls: used before the load starts (pre-flight, payload building), never
per request. Never imports Locust or gevent.
"""

from __future__ import annotations

from dataclasses import dataclass

from loadtest.errors import LoadtestError

# Triton datatype -> numpy dtype name ("object" holds BYTES as Python bytes).
TRITON_DATATYPES = {
    "BOOL": "bool",
    "UINT8": "uint8",
    "UINT16": "uint16",
    "UINT32": "uint32",
    "UINT64": "uint64",
    "INT8": "int8",
    "INT16": "int16",
    "INT32": "int32",
    "INT64": "int64",
    "FP16": "float16",
    "FP32": "float32",
    "FP64": "float64",
    "BYTES": "object",
}
DEFAULT_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class ServerTensor:
    """One input or output as served. ``dims`` exclude the batch dimension when the model batches."""

    name: str
    datatype: str  # Triton's name: INT64, FP32, BYTES, ...
    dims: tuple[int, ...]  # -1 = variable
    optional: bool = False

    @property
    def numpy_dtype(self) -> str | None:
        """numpy dtype name, or None for a datatype loadtest cannot fill (BF16, ...)."""
        return TRITON_DATATYPES.get(self.datatype)

    @property
    def dynamic_axes(self) -> list[int]:
        return [i for i, d in enumerate(self.dims) if d < 0]


@dataclass(frozen=True)
class ServerModel:
    """What the server says about one model version."""

    name: str
    version: str  # the version answering ("" when the server names none)
    versions: tuple[str, ...]  # versions the metadata lists
    platform: str  # onnxruntime_onnx, python, ensemble, ... (backend when platform is empty)
    inputs: tuple[ServerTensor, ...]
    outputs: tuple[ServerTensor, ...]
    max_batch_size: int  # 0: no batch dimension; requests carry exactly ``dims``
    decoupled: bool = False
    ensemble_steps: tuple[str, ...] = ()

    @property
    def batches(self) -> bool:
        return self.max_batch_size > 0

    def input(self, name: str) -> ServerTensor | None:
        return next((t for t in self.inputs if t.name == name), None)

    def describe(self) -> str:
        """``name v1 (python, max_batch_size 8): TEXT BYTES [1], ...`` for logs and errors."""
        inputs = ", ".join(f"{t.name} {t.datatype} {list(t.dims)}" for t in self.inputs)
        version = f" v{self.version}" if self.version else ""
        return f"{self.name}{version} ({self.platform}, max_batch_size {self.max_batch_size}): {inputs}"


@dataclass(frozen=True)
class IndexEntry:
    """One row of the server's repository index."""

    name: str
    version: str
    state: str  # READY, UNAVAILABLE, LOADING, UNLOADING, or "" when the server gives none
    reason: str = ""


# ---- parsing (pure; the same for both protocols) ----------------------------------------------
def _int(value) -> int:
    return int(value)  # gRPC's JSON gives int64 as strings


def parse_config(config) -> object:
    """A ``model_config_pb2.ModelConfig`` from the gRPC message or the HTTP JSON dict."""
    from google.protobuf import json_format
    from tritonclient.grpc import model_config_pb2 as mc

    if isinstance(config, mc.ModelConfig):
        return config
    message = mc.ModelConfig()
    json_format.ParseDict(config, message, ignore_unknown_fields=True)
    return message


def _metadata_dict(metadata) -> dict:
    if isinstance(metadata, dict):
        return metadata
    from google.protobuf import json_format

    return json_format.MessageToDict(metadata, preserving_proto_field_name=True)


def _config_tensors(tensors) -> dict:
    return {t.name: t for t in tensors}


def build_server_model(metadata, config, version: str = "") -> ServerModel:
    """Combine metadata (names, datatypes, shapes) and config (batching, optional, decoupled)."""
    meta = _metadata_dict(metadata)
    cfg = parse_config(config)
    batch = int(cfg.max_batch_size)
    config_inputs = _config_tensors(cfg.input)

    def tensors(entries, config_tensors) -> tuple[ServerTensor, ...]:
        out = []
        for entry in entries or []:
            shape = [_int(d) for d in entry.get("shape", [])]
            if batch > 0 and shape:
                shape = shape[1:]  # the metadata shows the batch dimension as -1
            declared = config_tensors.get(entry["name"])
            if declared is not None and declared.dims and not declared.reshape.shape:
                shape = [int(d) for d in declared.dims]
            optional = bool(getattr(declared, "optional", False))  # outputs have no such field
            out.append(ServerTensor(entry["name"], str(entry.get("datatype", "")), tuple(shape), optional))
        return tuple(out)

    steps = ()
    if cfg.platform == "ensemble":
        steps = tuple(step.model_name for step in cfg.ensemble_scheduling.step)
    return ServerModel(
        name=str(meta.get("name") or cfg.name),
        version=str(version or ""),
        versions=tuple(str(v) for v in meta.get("versions", []) or []),
        platform=str(meta.get("platform") or cfg.platform or cfg.backend),
        inputs=tensors(meta.get("inputs"), config_inputs),
        outputs=tensors(meta.get("outputs"), _config_tensors(cfg.output)),
        max_batch_size=batch,
        decoupled=bool(cfg.model_transaction_policy.decoupled),
        ensemble_steps=steps,
    )


# ---- the client ------------------------------------------------------------------------------
class ServerModelReader:
    """Reads readiness, the repository index and model descriptions from one Triton endpoint.

    ``endpoint`` is a ``loadtest.endpoint.Endpoint`` (protocol, host, port, ssl). Every failure is
    a one-line LoadtestError naming the server, what was asked, and what to do.
    """

    def __init__(self, endpoint, timeout_s: float = DEFAULT_TIMEOUT_S, credentials=None):
        from loadtest.credentials import Credentials, grpc_client_tls, http_client_tls

        self.endpoint = endpoint
        self.protocol = endpoint.protocol
        self.timeout_s = timeout_s
        credentials = credentials or Credentials()
        self.headers = credentials.request_headers(self.protocol)
        tls = ((grpc_client_tls if self.protocol == "grpc" else http_client_tls)(credentials)
               if endpoint.ssl else {"ssl": False})  # fmt: skip
        scheme = ("grpcs" if endpoint.ssl else "grpc") if self.protocol == "grpc" else ("https" if endpoint.ssl else "http")
        self.url = f"{scheme}://{endpoint.address}"
        try:
            if self.protocol == "grpc":
                import tritonclient.grpc as module

                self._client = module.InferenceServerClient(endpoint.address, **tls)
            else:
                import tritonclient.http as module

                self._client = module.InferenceServerClient(
                    endpoint.address, connection_timeout=timeout_s, network_timeout=timeout_s, **tls
                )
        except Exception as exc:  # a malformed address
            raise LoadtestError(f"cannot create a Triton client for {self.url}: {exc}") from None

    def close(self) -> None:
        try:
            self._client.close()
        except Exception:  # closing a dead connection must not hide the real error
            pass

    def __enter__(self) -> ServerModelReader:
        return self

    def __exit__(self, *_exc) -> None:
        self.close()

    def _kwargs(self) -> dict:
        kwargs = {"client_timeout": self.timeout_s} if self.protocol == "grpc" else {}
        return {**kwargs, "headers": self.headers} if self.headers else kwargs

    def call(self, fn, *args, **kwargs):
        """Run one client call; raise the tritonclient error (callers decide what it means)."""
        return fn(*args, **kwargs, **self._kwargs())

    # ---- server --------------------------------------------------------------------------------
    def is_live(self) -> bool:
        return bool(self.call(self._client.is_server_live))

    def is_model_ready(self, name: str, version: str = "") -> bool:
        return bool(self.call(self._client.is_model_ready, name, version))

    def server_metadata(self) -> dict:
        if self.protocol == "grpc":
            return _metadata_dict(self.call(self._client.get_server_metadata))
        return dict(self.call(self._client.get_server_metadata))

    def repository_index(self) -> list[IndexEntry]:
        """Every model the server knows, with its state (needs the repository API to be open)."""
        if self.protocol == "grpc":
            rows = _metadata_dict(self.call(self._client.get_model_repository_index)).get("models", [])
        else:
            rows = self.call(self._client.get_model_repository_index)
        return [
            IndexEntry(str(r.get("name", "")), str(r.get("version", "")), str(r.get("state", "")), str(r.get("reason", "")))
            for r in rows or []
        ]

    # ---- models --------------------------------------------------------------------------------
    def model(self, name: str, version: str = "") -> ServerModel:
        """Metadata + config of ``name`` (``version``: "" = the server's default policy)."""
        metadata = self.call(self._client.get_model_metadata, name, version)
        config = self.call(self._client.get_model_config, name, version)
        if self.protocol == "grpc":
            config = config.config
        return build_server_model(metadata, config, version)


def error_text(exc: BaseException) -> str:
    """The server's message of a tritonclient error, or the exception's own text (one line)."""
    try:
        from tritonclient.utils import InferenceServerException
    except ImportError:  # pragma: no cover - tritonclient is a core dependency
        InferenceServerException = ()  # noqa: N806
    if InferenceServerException and isinstance(exc, InferenceServerException):
        text = exc.message() or str(exc)
    else:
        text = str(exc) or type(exc).__name__
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
