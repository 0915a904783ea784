"""What a client must know about one served model: its inputs, outputs and largest batch.

Why one type: the load generator and the quality evaluation both build requests for the same served
models; each used to read config.pbtxt into its own record. ``ModelSpec.from_config`` reads a Triton
``ModelConfig`` (from the repository's config.pbtxt, or from the server) into the one shape both use.
"""

from __future__ import annotations

from dataclasses import dataclass

from loadtest.errors import LoadtestError


@dataclass(frozen=True)
class ModelSpec:
    """A model as the client needs it: input names and numpy dtypes, output names, largest batch."""

    name: str
    inputs: tuple[tuple[str, str], ...]  # (name, numpy dtype name)
    outputs: tuple[str, ...]
    max_batch_size: int  # 0: no batch dimension of its own, one example per request

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.inputs)

    @property
    def primary_output(self) -> str | None:
        """The output a classifier reads: ``logits`` when declared, else the first output."""
        if "logits" in self.outputs:
            return "logits"
        return self.outputs[0] if self.outputs else None

    @classmethod
    def from_config(cls, config, name: str | None = None) -> ModelSpec:
        """A spec from a ``model_config_pb2.ModelConfig`` (LoadtestError for a datatype no client can fill)."""
        from loadtest.repository import TRITON_TO_NUMPY

        name = name or config.name
        inputs = []
        for tensor in config.input:
            if tensor.data_type not in TRITON_TO_NUMPY:
                raise LoadtestError(f"model '{name}': input '{tensor.name}' has a data type loadtest cannot fill")
            inputs.append((tensor.name, TRITON_TO_NUMPY[tensor.data_type]))
        outputs = tuple(tensor.name for tensor in config.output)
        return cls(name, tuple(inputs), outputs, int(config.max_batch_size))


def repository_specs(repository, names: list[str]) -> list[ModelSpec]:
    """Specs of ``names`` from their config.pbtxt in a ``ModelRepository``."""
    return [ModelSpec.from_config(repository.read_config(name), name) for name in names]
