"""perf_analyzer's ``--input-data`` JSON files, read into arrays for any model.

Why: users who measured with perf_analyzer already have these files; the same file must drive
loadtest. The format (perf_analyzer's docs, "Real Input Data"): ``{"data": [STEP, ...]}`` where a
STEP maps every input name to a flat row-major list, to ``{"content": [...], "shape": [...]}``, or to
``{"b64": "..."}`` (raw little-endian bytes; BYTES elements each prefixed by a 4-byte length). Each step
is *one* batch element (its shape excludes the batch dimension). Sequence streams (a list of lists of
steps) are read one step after another. ``validation_data`` is ignored.

Never imports Locust or gevent.
"""

from __future__ import annotations

import base64
import json
import struct
from pathlib import Path

import numpy as np

from loadtest.errors import LoadtestError


def read_steps(path: Path | str) -> list[dict]:
    """The steps of an input-data file (streams flattened), each ``{input name: raw value}``."""
    path = Path(path)
    if not path.is_file():
        raise LoadtestError(f"--input-data {path}: no such file")
    try:
        document = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LoadtestError(f"--input-data {path} is not JSON: {exc}") from None
    data = document.get("data") if isinstance(document, dict) else None
    if not isinstance(data, list) or not data:
        raise LoadtestError(f'--input-data {path}: expected {{"data": [{{"INPUT": [...]}}, ...]}} (perf_analyzer format)')
    steps = []
    for item in data:
        for step in item if isinstance(item, list) else [item]:
            if not isinstance(step, dict) or not step:
                raise LoadtestError(f"--input-data {path}: every entry of \"data\" must map input names to values")
            steps.append(step)
    return steps


def _bytes_elements(raw: bytes) -> list[bytes]:
    """BYTES tensor content in Triton's wire form: each element is a 4-byte little-endian length + bytes."""
    out, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise ValueError("truncated length prefix")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        out.append(raw[offset : offset + length])
        offset += length
    return out


def _content(value, datatype: str, numpy_dtype: str) -> tuple[np.ndarray, list[int] | None]:
    """(flat values, shape or None) of one input in one step."""
    shape = None
    if isinstance(value, dict) and "content" in value:
        shape = value.get("shape")
        value = value["content"]
    if isinstance(value, dict) and "b64" in value:
        raw = base64.b64decode(value["b64"])
        if datatype == "BYTES":
            flat = np.array(_bytes_elements(raw), dtype=object)
        else:
            flat = np.frombuffer(raw, dtype=np.dtype(numpy_dtype).newbyteorder("<")).astype(numpy_dtype)
    elif datatype == "BYTES":
        flat = np.array([v.encode("utf-8") if isinstance(v, str) else json.dumps(v).encode() for v in np.ravel(value)], dtype=object)
    else:
        flat = np.asarray(value, dtype=numpy_dtype).reshape(-1)
    return flat, shape


def step_array(step: dict, tensor, model_name: str, shape_override: tuple[int, ...] | None) -> np.ndarray:
    """One input's value in one step, shaped to the tensor's dims (batch dimension excluded).

    ``tensor`` is a ``ServerTensor``; ``shape_override`` comes from ``--input-shape``. The shape is the
    step's own ``shape``, else the override, else the dims with a single variable dim inferred from the
    element count.
    """
    where = f"--input-data: model '{model_name}' input '{tensor.name}'"
    try:
        flat, shape = _content(step[tensor.name], tensor.datatype, tensor.numpy_dtype)
    except (ValueError, TypeError, struct.error) as exc:
        raise LoadtestError(f"{where}: values are not {tensor.datatype}: {exc}") from None
    dims = list(tensor.dims)
    if shape is None:
        shape = list(shape_override) if shape_override else None
    if shape is None:
        variable = [i for i, d in enumerate(dims) if d < 0]
        known = int(np.prod([d for d in dims if d >= 0])) if dims else 1
        if not variable:
            shape = dims
        elif len(variable) == 1 and known and flat.size % known == 0:
            shape = [flat.size // known if d < 0 else d for d in dims]
        else:
            raise LoadtestError(
                f"{where} has variable dims {dims}: give a \"shape\" in the file or --input-shape {tensor.name}:d1,d2"
            )
    shape = [int(d) for d in shape]
    if len(shape) != len(dims) or any(d >= 0 and d != s for d, s in zip(dims, shape)):
        raise LoadtestError(f"{where}: shape {shape} does not fit the model's dims {dims} (batch dimension excluded)")
    if int(np.prod(shape)) != flat.size:
        raise LoadtestError(f"{where}: {flat.size} values do not fill shape {shape}")
    return flat.reshape(shape)
