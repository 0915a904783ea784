"""What to export for one model, declared rather than discovered at export time (as Optimum's OnnxConfig).

The spec fixes the graph's contract with the rest of loadtest: which tokenizer inputs the model takes
(BERT uses ``token_type_ids``, DistilBERT and RoBERTa-style models do not), the named dynamic axes, the
opset and how close ONNX Runtime must come to PyTorch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from loadtest.errors import LoadtestError

TASK = "sequence-classification"
OUTPUT_NAME = "logits"
# Graph input order, as Optimum writes it: ids, mask, then segments.
TOKENIZER_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
DEFAULT_OPSET = 18  # the dynamo exporter's native opset; ONNX Runtime >= 1.14 and Triton 23.x+ run it
DEFAULT_ATOL = 1e-4
Exporter = Literal["dynamo", "torchscript"]

# model_type -> the inputs its sequence classifier takes. RoBERTa-family models accept token_type_ids
# but have a single segment (type_vocab_size 1): Optimum leaves them out, and so do we.
_WITH_SEGMENTS = ("input_ids", "attention_mask", "token_type_ids")
_NO_SEGMENTS = ("input_ids", "attention_mask")
MODEL_INPUTS: dict[str, tuple[str, ...]] = {
    "bert": _WITH_SEGMENTS,
    "albert": _WITH_SEGMENTS,
    "electra": _WITH_SEGMENTS,
    "mobilebert": _WITH_SEGMENTS,
    "xlnet": _WITH_SEGMENTS,
    "distilbert": _NO_SEGMENTS,
    "roberta": _NO_SEGMENTS,
    "xlm-roberta": _NO_SEGMENTS,
    "camembert": _NO_SEGMENTS,
    "mpnet": _NO_SEGMENTS,
    "modernbert": _NO_SEGMENTS,
    "bart": _NO_SEGMENTS,
}


@dataclass(frozen=True)
class ExportSpec:
    """The declared export of one sequence classifier."""

    model_type: str
    inputs: tuple[str, ...]
    output: str = OUTPUT_NAME
    opset: int = DEFAULT_OPSET
    atol: float = DEFAULT_ATOL
    min_agreement: float = 1.0
    exporter: Exporter = "dynamo"
    task: str = TASK

    def __post_init__(self) -> None:
        unknown = [name for name in self.inputs if name not in TOKENIZER_INPUTS]
        if unknown or "input_ids" not in self.inputs:
            raise LoadtestError(f"{self.model_type}: unsupported model inputs {list(self.inputs)}")
        if not 7 <= self.opset <= 23:
            raise LoadtestError(f"opset {self.opset} is outside the supported range 7..23")
        if self.atol <= 0:
            raise LoadtestError(f"--atol must be positive, got {self.atol}")

    @property
    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """Named dynamic axes: every input is [batch, sequence]; the output is [batch, num_labels]."""
        axes = {name: {0: "batch", 1: "sequence"} for name in self.inputs}
        axes[self.output] = {0: "batch"}
        return axes


def inputs_for(model_type: str, forward_params: set[str], type_vocab_size: int | None) -> tuple[str, ...]:
    """The tokenizer inputs a model's forward takes: the registry first, else its signature.

    Unknown architectures keep ``token_type_ids`` only when the forward accepts it *and* the model has more
    than one segment type, which is what separates BERT-style from RoBERTa-style embeddings.
    """
    if model_type in MODEL_INPUTS:
        return tuple(name for name in MODEL_INPUTS[model_type] if name in forward_params)
    names = [name for name in TOKENIZER_INPUTS if name in forward_params]
    if "token_type_ids" in names and (type_vocab_size or 0) < 2:
        names.remove("token_type_ids")
    return tuple(names)


def spec_for_model(
    model,
    *,
    opset: int = DEFAULT_OPSET,
    atol: float = DEFAULT_ATOL,
    exporter: Exporter = "dynamo",
) -> ExportSpec:
    """Build the spec of a loaded transformers sequence classifier."""
    import inspect

    config = model.config
    params = set(inspect.signature(model.forward).parameters)
    inputs = inputs_for(config.model_type, params, getattr(config, "type_vocab_size", None))
    if "input_ids" not in inputs:
        raise LoadtestError(f"{type(model).__name__} takes no input_ids: only text classifiers are supported")
    return ExportSpec(model_type=config.model_type, inputs=inputs, opset=opset, atol=atol, exporter=exporter)
