"""Hugging Face sequence classifier directory -> ONNX, and reading what an ONNX file declares.

The default path is torch's dynamo exporter (``torch.onnx.export(dynamo=True)``, built on torch.export,
which needs onnxscript): axes are symbolic dimensions, and where a model specialises on its example shape
the graph comes out with a *fixed* dimension that the pipeline refuses, instead of a graph that declares
dynamic axes yet is right only at the example shape. The legacy TorchScript tracer stays selectable for
models torch.export cannot capture: it records Python ints taken from shapes as constants (the trap), so
its output is trusted only through the parity check. Both run on a module already in eval mode, since the
tracer restores the wrapper's training flag afterwards (a fresh wrapper would switch dropout back on).
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from pathlib import Path

from loadtest.errors import LoadtestError

from exporters.manifest import TensorSignature
from exporters.spec import ExportSpec

CLASSIFIER_SUFFIX = "ForSequenceClassification"
# Models whose position ids start after the padding index (RoBERTa's offset): usable length is smaller.
_POSITION_OFFSET_TYPES = {"roberta", "xlm-roberta", "camembert", "longformer"}


@contextlib.contextmanager
def quiet():
    """Silence the warnings, loggers and progress bars of torch/transformers for the duration."""
    import transformers

    names = ("torch", "torch.onnx", "torch.export", "torch._dynamo", "torch.fx", "onnxscript", "transformers")
    levels = {name: logging.getLogger(name).level for name in names}
    verbosity = transformers.logging.get_verbosity()
    bars = transformers.utils.logging.is_progress_bar_enabled()
    try:
        for name in names:
            logging.getLogger(name).setLevel(logging.ERROR)
        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        with warnings.catch_warnings(), contextlib.redirect_stdout(_Sink()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        transformers.logging.set_verbosity(verbosity)
        if bars:
            transformers.utils.logging.enable_progress_bar()


class _Sink:
    """stdout replacement that drops what exporters print ("[torch.onnx] Obtain model graph ...")."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


def check_model_dir(path: Path) -> None:
    """Refuse, with one line, anything that is not a Hugging Face model directory."""
    if not path.exists():
        raise LoadtestError(f"model directory {path} does not exist")
    if not path.is_dir():
        raise LoadtestError(f"{path} is neither a model directory nor an .onnx file")
    if not (path / "config.json").is_file():
        raise LoadtestError(
            f"{path} is not a Hugging Face model directory (no config.json; save it with save_pretrained)"
        )


def load_classifier(path: Path):
    """Load a sequence classifier from a local save_pretrained directory (never from a hub)."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    check_model_dir(path)
    with quiet():
        try:
            config = AutoConfig.from_pretrained(path, local_files_only=True)
        except Exception as exc:
            raise LoadtestError(
                f"{path}/config.json cannot be read as a transformers config: {_summary(exc)}"
            ) from None
        architectures = list(getattr(config, "architectures", None) or [])
        if not any(a.endswith(CLASSIFIER_SUFFIX) for a in architectures):
            found = ", ".join(architectures) or f"model_type '{config.model_type}' without an architecture"
            raise LoadtestError(
                f"{path}: unsupported task: {found}; "
                f"loadtest export handles sequence classifiers (*{CLASSIFIER_SUFFIX})"
            )
        try:
            model, info = AutoModelForSequenceClassification.from_pretrained(
                # float32 whatever the checkpoint's dtype: ONNX Runtime serves FP32 logits; FP16 is TensorRT's job.
                path,
                local_files_only=True,
                output_loading_info=True,
                dtype=torch.float32,
            )
        except Exception as exc:
            raise LoadtestError(f"{path}: cannot load the model: {_summary(exc)}") from None
    missing = info.get("missing_keys") or []
    if missing:
        # Exporting freshly initialised weights would serve noise with a straight face.
        raise LoadtestError(f"{path}: the checkpoint lacks {len(missing)} weights (e.g. {sorted(missing)[0]})")
    return model.eval()


def position_limit(config) -> int | None:
    """Longest sequence the model's position embeddings allow (None when unbounded)."""
    limit = getattr(config, "max_position_embeddings", None)
    if not limit:
        return None
    if config.model_type in _POSITION_OFFSET_TYPES:
        pad = getattr(config, "pad_token_id", None)
        limit -= (1 if pad is None else int(pad)) + 1
    return int(limit)


class _Classifier:
    """Wraps the model so its forward takes exactly the spec's inputs and returns the logits tensor."""

    @staticmethod
    def build(model, inputs: tuple[str, ...]):
        import torch

        class Wrapped(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self, input_ids, attention_mask=None, token_type_ids=None):
                given = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
                return self.model(**{k: v for k, v in given.items() if k in inputs}).logits

        return Wrapped().eval()


def _example(spec: ExportSpec, max_sequence_length: int, vocab_size: int):
    """Example inputs: batch 2 with one padded row, so nothing about masks is constant-folded away."""
    import torch

    batch, length = 2, max(2, min(16, max_sequence_length - 1))
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, max(6, min(vocab_size, 1000)), (batch, length), generator=generator)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[1, length // 2 :] = 0
    given = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros(batch, length, dtype=torch.long)}
    return {name: given[name] for name in spec.inputs}


def export_classifier(model, spec: ExportSpec, destination: Path, max_sequence_length: int) -> float:
    """Export a loaded classifier to ``destination`` (ONNX); returns the seconds it took."""
    import torch

    destination.parent.mkdir(parents=True, exist_ok=True)
    wrapped = _Classifier.build(model, spec.inputs)
    example = _example(spec, max_sequence_length, int(getattr(model.config, "vocab_size", 1000)))
    names = list(spec.inputs)
    start = time.perf_counter()
    with quiet():
        try:
            if spec.exporter == "dynamo":
                _require_onnxscript()
                batch = torch.export.Dim("batch", min=1)
                sequence = torch.export.Dim("sequence", min=1, max=max_sequence_length)
                program = torch.onnx.export(
                    wrapped,
                    (),
                    kwargs=example,
                    dynamo=True,
                    input_names=names,
                    output_names=[spec.output],
                    dynamic_shapes={name: {0: batch, 1: sequence} for name in names},
                    opset_version=spec.opset,
                    verbose=False,
                )
                program.save(str(destination))
            else:
                torch.onnx.export(
                    wrapped,
                    tuple(example[name] for name in names),
                    str(destination),
                    dynamo=False,
                    input_names=names,
                    output_names=[spec.output],
                    dynamic_axes=spec.dynamic_axes,
                    opset_version=spec.opset,
                )
        except LoadtestError:
            raise
        except Exception as exc:
            raise LoadtestError(
                f"torch.onnx ({spec.exporter}) could not export {type(model).__name__}: {_summary(exc)}"
            ) from None
    return time.perf_counter() - start


def _require_onnxscript() -> None:
    try:
        import onnxscript  # noqa: F401
    except ImportError:
        raise LoadtestError("the dynamo ONNX exporter needs onnxscript: pip install onnxscript") from None


def check_onnx(path: Path):
    """Validate an ONNX file with onnx.checker and return its ModelProto (weights not loaded)."""
    import onnx

    if not path.is_file():
        raise LoadtestError(f"ONNX file {path} does not exist")
    try:
        onnx.checker.check_model(str(path))
        return onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise LoadtestError(f"{path} is not a valid ONNX model: {_summary(exc)}") from None


def onnx_opset(model) -> int | None:
    """The default-domain opset the graph was written for."""
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return None


def onnx_parameter_count(model) -> int:
    """Number of weights stored as initializers (dims are known without loading external data)."""
    total = 0
    for tensor in model.graph.initializer:
        count = 1
        for dim in tensor.dims:
            count *= int(dim)
        total += count
    return total


def onnx_signature(model) -> tuple[list[TensorSignature], list[TensorSignature]]:
    """Graph inputs (initializers excluded) and outputs with numpy dtypes and named or fixed axes."""
    import onnx

    initializers = {t.name for t in model.graph.initializer}

    def describe(value) -> TensorSignature:
        tensor = value.type.tensor_type
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name if tensor.elem_type else "unknown"
        shape: list[int | str | None] = []
        for dim in tensor.shape.dim:
            if dim.HasField("dim_value"):
                shape.append(int(dim.dim_value))
            elif dim.HasField("dim_param"):
                shape.append(dim.dim_param)
            else:
                shape.append(None)
        return TensorSignature(name=value.name, dtype=dtype, shape=shape)

    inputs = [describe(v) for v in model.graph.input if v.name not in initializers]
    outputs = [describe(v) for v in model.graph.output]
    return inputs, outputs


def file_size(path: Path) -> int:
    """Bytes of an ONNX file plus any external-data files beside it that belong to it."""
    total = path.stat().st_size
    for sibling in path.parent.iterdir():
        if sibling != path and sibling.name.startswith(path.name):
            total += sibling.stat().st_size
    return total


def _summary(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return text[:400]
