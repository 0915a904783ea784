"""The export manifest (``export_manifest.json``): what the exporter did, so a result can be defended later.

Per model: where it came from, what was written (format, file, size, parameters, opset, signature with
named axes), how long it took, and the parity figures per shape; plus the library versions that did it.
"""

from __future__ import annotations

import importlib.metadata
import platform
from datetime import datetime, timezone
from typing import Literal

from pydantic import BaseModel, Field

from exporters.parity import ParityReport

SourceFormat = Literal["huggingface", "onnx"]
_LIBRARIES = ("torch", "transformers", "tokenizers", "onnx", "onnxruntime", "onnxscript", "tensorrt")


class TensorSignature(BaseModel):
    """One graph input or output: name, numpy dtype, shape with axis names for the dynamic axes."""

    name: str
    dtype: str
    shape: list[int | str | None]


class ModelManifest(BaseModel):
    """What was exported for one model."""

    name: str
    source: str
    source_format: SourceFormat
    architecture: str | None = None
    task: str = "sequence-classification"
    format: Literal["onnx", "tensorrt_plan"]
    platform: str
    file: str  # relative to the repository
    file_size_bytes: int
    parameter_count: int
    opset: int | None
    exporter: str
    inputs: list[TensorSignature]
    outputs: list[TensorSignature]
    num_labels: int
    parity: ParityReport
    engine_parity: ParityReport | None = None  # TensorRT engine vs ONNX Runtime
    export_seconds: float
    parity_seconds: float

    @property
    def size_mb(self) -> float:
        return self.file_size_bytes / 1e6


class ExportManifest(BaseModel):
    """The whole ``export_manifest.json``."""

    created: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    tool: str = "loadtest export"
    versions: dict[str, str] = Field(default_factory=lambda: library_versions())
    host: dict[str, str] = Field(
        default_factory=lambda: {"python": platform.python_version(), "machine": platform.machine()}
    )
    settings: dict
    max_sequence_length: int
    labels: list[str]
    tokenizer: dict
    models: dict[str, ModelManifest]


def library_versions(names: tuple[str, ...] = _LIBRARIES) -> dict[str, str]:
    """Installed versions of the libraries an export depends on (absent ones are left out)."""
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions
