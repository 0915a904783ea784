"""Batched inference on the *served* models through tritonclient (HTTP or gRPC), never through Locust.

The evaluation is not a load test: requests go one batch at a time, as large as the model's
``max_batch_size`` (config.pbtxt) and the user's ``--batch-size`` allow, examples sorted by length so a
batch pads little. Inputs are built exactly as the load generator builds them: the repository's tokenizer,
INT64 ``input_ids`` / ``attention_mask`` / ``token_type_ids`` as the model's config declares them.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from loadtest.endpoint import parse_endpoint
from loadtest.errors import LoadtestError
from loadtest.modelspec import ModelSpec
from loadtest.quality.dataset import EncodedInputs

KNOWN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def served_model(model) -> ModelSpec:
    """A classifier as the *server* describes it (``loadtest.load.server_models.ServerModel``).

    Fed as: ``text`` (a single BYTES input taking the text itself: a model that tokenises inside Triton,
    such as a ``--with-tokenizer`` ensemble), ``tokens`` (``input_ids`` plus optional ``attention_mask``/
    ``token_type_ids``), or ``tensors`` (anything else: the evaluation set holds one column per input, in
    the model's format). The output read is ``logits``, else the only floating-point output.
    """
    required = [t for t in model.inputs if not t.optional]
    text_inputs = [t for t in required if t.datatype == "BYTES"]
    tokens = bool(required) and all(t.name in KNOWN_INPUTS and t.datatype != "BYTES" for t in required)
    if text_inputs and len(required) == 1:
        feed, inputs = "text", ((text_inputs[0].name, "object"),)
    elif tokens and any(t.name == "input_ids" for t in required):
        feed, inputs = "tokens", tuple((t.name, t.numpy_dtype) for t in model.inputs if t.name in KNOWN_INPUTS)
    else:
        unfillable = [f"{t.name} {t.datatype}" for t in required if t.numpy_dtype is None]
        if unfillable:
            raise LoadtestError(f"model '{model.name}' takes {', '.join(unfillable)}, which loadtest eval cannot send")
        feed, inputs = "tensors", tuple((t.name, t.numpy_dtype) for t in required)
    floats = [t.name for t in model.outputs if t.datatype in ("FP16", "FP32", "FP64")]
    if "logits" in floats:
        output = "logits"
    elif len(floats) == 1:
        output = floats[0]
    else:
        raise LoadtestError(
            f"model '{model.name}' has outputs {[t.name for t in model.outputs]}: loadtest eval reads 'logits' "
            "(or a single floating-point output) as the class scores"
        )
    return ModelSpec(model.name, inputs, (output,), int(model.max_batch_size), feed)


class TritonEvaluator:
    """A tritonclient connection that returns each model's logits for a set of encoded examples."""

    def __init__(self, host: str, timeout_s: float = 120.0):
        from loadtest.credentials import grpc_client_tls, http_client_tls, load_credentials, split_host

        clean, user_info = split_host(host)
        self.host = clean  # what messages show: never the user-info
        self.endpoint = parse_endpoint(clean)
        self.protocol, self.address, self.ssl = self.endpoint.protocol, self.endpoint.address, self.endpoint.ssl
        credentials = load_credentials(user_info)
        self.headers = credentials.request_headers(self.protocol)
        self.timeout_s = timeout_s
        if self.protocol == "grpc":
            import tritonclient.grpc as client_module
        else:
            import tritonclient.http as client_module
        self._module = client_module
        try:
            if self.protocol == "grpc":
                tls = grpc_client_tls(credentials) if self.ssl else {}
                self._client = client_module.InferenceServerClient(self.address, **tls)
            else:
                tls = http_client_tls(credentials) if self.ssl else {}
                self._client = client_module.InferenceServerClient(
                    self.address, connection_timeout=timeout_s, network_timeout=timeout_s, **tls
                )
        except Exception as exc:  # malformed address and the like
            raise LoadtestError(f"cannot create a Triton client for {self.host}: {exc}") from None

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> TritonEvaluator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, what: str, fn, *args, **kwargs):
        from tritonclient.utils import InferenceServerException

        try:
            return fn(*args, **kwargs)
        except InferenceServerException as exc:
            text = " ".join(str(exc.message() or exc).split())
            if self.protocol == "grpc" and ("UNAVAILABLE" in text or "HTTP/2" in text):
                raise LoadtestError(
                    f"cannot reach Triton's gRPC at {self.host} ({what}: {text[:200]}); is it running, and is this its "
                    "gRPC port (usually 8001, HTTP is 8000)?"
                ) from None
            raise LoadtestError(f"Triton at {self.host}: {what}: {text}") from None
        except (OSError, ConnectionError) as exc:
            raise LoadtestError(f"cannot reach Triton at {self.host} ({what}): {exc}") from None
        except Exception as exc:  # e.g. HTTP spoken to the gRPC port: the answer is not HTTP at all
            other = "gRPC (usually 8001)" if self.protocol == "http" else "HTTP (usually 8000)"
            raise LoadtestError(
                f"Triton at {self.host} did not answer {self.protocol.upper()} ({what}: {type(exc).__name__}); "
                f"is this the {other} port? use http://HOST:8000 or grpc://HOST:8001"
            ) from None

    def check_ready(self, names: list[str]) -> None:
        """Fail with one line when the server is down or a model is not loaded."""
        kwargs = {"client_timeout": self.timeout_s} if self.protocol == "grpc" else {}
        kwargs["headers"] = self.headers
        if not self._call("is the server live?", self._client.is_server_live, **kwargs):
            raise LoadtestError(f"Triton at {self.host} is not live")
        for name in names:
            if not self._call(f"is model '{name}' ready?", self._client.is_model_ready, name, **kwargs):
                raise LoadtestError(
                    f"model '{name}' is not ready on Triton at {self.host} (check --teacher/--student and the server's log)"
                )

    def logits(
        self,
        model: ModelSpec,
        encoded: EncodedInputs,
        batch_size: int,
        pad_id: int = 0,
        on_batch: Callable[[int], None] | None = None,
        texts: list[str] | None = None,
        tensors: dict[str, list] | None = None,
    ) -> np.ndarray:
        """Logits (n, num_labels) for every example, in the dataset's order; ``on_batch(rows)`` after each batch."""
        n = len(encoded.input_ids)
        limit = model.max_batch_size if model.max_batch_size > 0 else 1
        size = max(1, min(batch_size, limit))
        order = np.argsort(encoded.sent_tokens, kind="stable")
        result: np.ndarray | None = None
        for start in range(0, n, size):
            rows = order[start : start + size]
            if model.takes_text:
                if texts is None:
                    raise LoadtestError(f"model '{model.name}' takes text: the evaluation set needs a 'text' column")
                shape = (len(rows), 1) if model.max_batch_size > 0 else (1,)
                arrays = {model.inputs[0][0]: np.array([texts[r].encode() for r in rows], dtype=object).reshape(shape)}
            elif model.feed == "tensors":
                arrays = {}
                for name, dtype in model.inputs:
                    values = [np.asarray(tensors[name][r], dtype=dtype) for r in rows]
                    if len({v.shape for v in values}) > 1:
                        raise LoadtestError(f"model '{model.name}' input '{name}': examples differ in shape; use --batch-size 1")
                    arrays[name] = np.stack(values) if model.max_batch_size > 0 else values[0]
            else:
                arrays = self._batch_arrays(model, encoded, rows, pad_id)
            out = self._infer(model, arrays)
            if model.max_batch_size == 0:  # no batch dimension: one example's scores
                out = out.reshape(1, -1)
            if out.ndim != 2 or out.shape[0] != len(rows):
                raise LoadtestError(
                    f"model '{model.name}' returned '{model.primary_output}' of shape {list(out.shape)} for a batch of {len(rows)};"
                    " expected [batch, num_labels]"
                )
            if result is None:
                result = np.empty((n, out.shape[1]), dtype=np.float64)
            elif out.shape[1] != result.shape[1]:
                raise LoadtestError(f"model '{model.name}' changed its output width between batches ({result.shape[1]} -> {out.shape[1]})")
            result[rows] = out
            if on_batch:
                on_batch(len(rows))
        assert result is not None
        return result

    def _batch_arrays(self, model: ModelSpec, encoded: EncodedInputs, rows: np.ndarray, pad_id: int) -> dict[str, np.ndarray]:
        length = int(max(encoded.sent_tokens[rows]))
        ids = np.full((len(rows), length), pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), length), dtype=np.int64)
        types = np.zeros((len(rows), length), dtype=np.int64)
        for i, row in enumerate(rows):
            tokens = encoded.input_ids[row]
            ids[i, : len(tokens)] = tokens
            mask[i, : len(tokens)] = 1
            if encoded.token_type_ids is not None:
                types[i, : len(tokens)] = encoded.token_type_ids[row]
        built = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        return {name: built[name].astype(dtype) for name, dtype in model.inputs}

    def _infer(self, model: ModelSpec, arrays: dict[str, np.ndarray]) -> np.ndarray:
        from tritonclient.utils import np_to_triton_dtype

        inputs = []
        for name, array in arrays.items():
            tensor = self._module.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            if self.protocol == "grpc":
                tensor.set_data_from_numpy(array)
            else:
                tensor.set_data_from_numpy(array, binary_data=True)
            inputs.append(tensor)
        if self.protocol == "grpc":
            outputs = [self._module.InferRequestedOutput(model.primary_output)]
            response = self._call(f"inference on '{model.name}'", self._client.infer, model.name, inputs, outputs=outputs, client_timeout=self.timeout_s, headers=self.headers)
        else:
            outputs = [self._module.InferRequestedOutput(model.primary_output, binary_data=True)]
            response = self._call(f"inference on '{model.name}'", self._client.infer, model.name, inputs, outputs=outputs, headers=self.headers)
        out = response.as_numpy(model.primary_output)
        if out is None:
            raise LoadtestError(f"model '{model.name}' returned no '{model.primary_output}' output")
        return np.asarray(out, dtype=np.float64)
