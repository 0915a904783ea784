"""Resource footprint of each model: what it costs to hold and to run, beside how fast it is.

The KPI tables teams bring to a distillation review start here: parameters and size on disk (from the
repository's ``export_manifest.json``, else the ONNX file itself), FLOPs per request and per token counted
from the exported graph, the peak resident memory of the model's serving processes under load (recorded
by the load generator when the server runs on its machine), and requests answered with NaN or Inf.

FLOPs are counted, not estimated: the graph runs once in ONNX Runtime at batch 1 and the run's mean
sequence length with every MatMul/Gemm/Conv operand exposed as an output, and each such node adds
2 x multiply-accumulates (``2·M·N·K`` for a matrix product). Element-wise operations, softmax and norms
are not counted (the usual convention; they are a few percent of a transformer's FLOPs). Never imports
Locust.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from loadtest.rundir import NONFINITE_ERROR  # the client's error text for an answer holding NaN or Inf

COUNTED_OPS = ("MatMul", "Gemm", "Conv", "MatMulInteger", "QLinearMatMul")


@dataclass(frozen=True)
class Footprint:
    """One model's footprint; None where a figure could not be obtained (``notes`` says why)."""

    model: str
    parameters: float | None = None
    size_on_disk_mb: float | None = None
    flops_per_request: float | None = None
    flops_per_token: float | None = None
    flops_sequence_length: int | None = None  # the sequence length the FLOPs were counted at
    peak_rss_mb: float | None = None
    serving_processes: int | None = None
    nonfinite_outputs: int | None = None
    notes: str = ""


def repository_of(manifest: dict[str, Any], run_dir: Path) -> Path | None:
    """The model repository the run loaded (its manifest's settings), if it is still on this machine."""
    settings = manifest.get("settings") if isinstance(manifest.get("settings"), dict) else {}
    given = settings.get("repository")
    if not given:
        return None
    path = Path(str(given))
    for candidate in (path, run_dir.parent.parent / path, run_dir / path):
        if (candidate / "loadtest.json").is_file() or any(candidate.glob("*/config.pbtxt")):
            return candidate
    return None


def _export_manifest(repository: Path) -> dict:
    path = repository / "export_manifest.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return data.get("models", {}) if isinstance(data, dict) else {}


def _model_file(repository: Path, model: str, entry: dict) -> Path | None:
    if entry.get("file") and (repository / entry["file"]).is_file():
        return repository / entry["file"]
    found = sorted(repository.glob(f"{model}/*/model.onnx"))
    return found[-1] if found else None


def _inputs_for(session, sequence: int) -> dict[str, np.ndarray]:
    """Batch 1, ``sequence`` tokens: ones for ids and masks, zeros for token types; other dims 1."""
    feeds = {}
    for arg in session.get_inputs():
        shape = []
        for axis, dim in enumerate(arg.shape):
            if isinstance(dim, int) and dim > 0:
                shape.append(dim)  # a fixed dimension
            else:
                shape.append(sequence if axis == 1 else 1)  # dynamic: batch (axis 0) 1, sequence (axis 1) the run's
        dtype = {"tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(float)": np.float32,
                 "tensor(float16)": np.float16, "tensor(bool)": np.bool_}.get(arg.type, np.float32)
        fill = 0 if "type" in arg.name else 1
        feeds[arg.name] = np.full(shape, fill, dtype=dtype)
    return feeds


def count_flops(onnx_path: Path, sequence: int) -> float:
    """FLOPs of one request (batch 1, ``sequence`` tokens): 2 x the MACs of every matrix-product node."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(onnx_path))
    try:
        model = onnx.shape_inference.infer_shapes(model)  # element types of the intermediates we expose
    except Exception:  # noqa: BLE001  (inference is only needed for types; a graph it cannot type still runs)
        pass
    graph = model.graph
    consts = {init.name: list(init.dims) for init in graph.initializer}
    typed = {vi.name: vi for vi in list(graph.value_info) + list(graph.input) + list(graph.output)}
    nodes = [n for n in graph.node if n.op_type in COUNTED_OPS]
    wanted = []
    for node in nodes:
        for name in (*node.input[:2], node.output[0]):
            if name and name not in consts and name not in wanted:
                wanted.append(name)
    existing = {o.name for o in graph.output}
    for name in wanted:
        if name not in existing and name in typed:
            graph.output.append(typed[name])
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep the nodes we count
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    values = session.run(names, _inputs_for(session, sequence))
    shapes = {n: list(v.shape) for n, v in zip(names, values)}
    shapes.update(consts)
    total = 0.0
    for node in nodes:
        a, b, out = (shapes.get(node.input[0]), shapes.get(node.input[1]), shapes.get(node.output[0]))
        if a is None or b is None or out is None:
            raise ValueError(f"shape of {node.op_type} {node.name or node.output[0]} unknown")
        if node.op_type == "Conv":
            total += 2.0 * math.prod(out) * math.prod(b[1:])
        elif node.op_type == "Gemm":
            trans_a = next((at.i for at in node.attribute if at.name == "transA"), 0)
            k = a[0] if trans_a else a[-1]
            total += 2.0 * math.prod(out) * k
        else:
            total += 2.0 * math.prod(out) * a[-1]
    return total


def nonfinite_counts(records: pd.DataFrame) -> dict[str, int]:
    """Requests per model answered with NaN or Inf (the client records them as failures with this text)."""
    errors = records["error"]
    if isinstance(errors.dtype, pd.CategoricalDtype):
        bad = [c for c in errors.cat.categories if str(c).startswith(NONFINITE_ERROR)]
        mask = errors.isin(bad).to_numpy()
    else:
        mask = errors.fillna("").astype(str).str.startswith(NONFINITE_ERROR).to_numpy()
    if not mask.any():
        return {}
    return {str(k): int(v) for k, v in records.loc[mask, "model"].astype(str).value_counts().items()}


def serving_memory(manifest: dict[str, Any]) -> dict[str, dict]:
    """``{model: {"peak_rss_bytes", "processes"}}`` the load generator recorded, if the server was local."""
    raw = manifest.get("serving_footprint")
    return {str(k): v for k, v in raw.items() if isinstance(v, dict)} if isinstance(raw, dict) else {}


def footprints(models: list[str], manifest: dict[str, Any], run_dir: Path, records: pd.DataFrame,
               mean_tokens: dict[str, float]) -> dict[str, Footprint]:
    """Every model's footprint (figures that cannot be obtained are None, with the reason in ``notes``)."""
    repository = repository_of(manifest, run_dir)
    exported = _export_manifest(repository) if repository else {}
    memory = serving_memory(manifest)
    nonfinite = nonfinite_counts(records)
    out = {}
    for model in models:
        notes = []
        entry = exported.get(model, {}) if isinstance(exported.get(model), dict) else {}
        path = _model_file(repository, model, entry) if repository else None
        params = float(entry["parameter_count"]) if isinstance(entry.get("parameter_count"), (int, float)) else None
        size = entry.get("file_size_bytes")
        if size is None and path is not None:
            size = sum(p.stat().st_size for p in path.parent.iterdir() if p.is_file())  # model + external data
        if params is None and path is not None:
            params = _parameters_of(path)
        flops = per_token = seq = None
        if path is None:
            notes.append("model repository not found on this machine: no size, parameters or FLOPs")
        else:
            seq = max(1, int(round(mean_tokens.get(model, 0) or 0))) if mean_tokens.get(model) else None
            if seq is None:
                notes.append("no token counts in the records: FLOPs not counted")
            else:
                try:
                    flops = count_flops(path, seq)
                    per_token = flops / seq
                except Exception as exc:  # noqa: BLE001  (a graph we cannot run still has its other figures)
                    notes.append(f"FLOPs not counted ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})")
        mem = memory.get(model, {})
        rss = mem.get("peak_rss_bytes")
        if rss is None:
            notes.append("serving memory not recorded (the server was not on the load generator's machine)")
        out[model] = Footprint(
            model, params, size / 1e6 if isinstance(size, (int, float)) else None, flops, per_token, seq,
            rss / 1e6 if isinstance(rss, (int, float)) else None, mem.get("processes"), nonfinite.get(model, 0),
            "; ".join(notes),
        )
    return out


def _parameters_of(path: Path) -> float | None:
    """Parameter count of an ONNX file: elements of its floating-point initializers."""
    try:
        import onnx

        model = onnx.load(str(path))
    except Exception:  # noqa: BLE001
        return None
    floating = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE}
    return float(sum(math.prod(t.dims) for t in model.graph.initializer if t.data_type in floating))
