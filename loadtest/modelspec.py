"""What a client must know about one served model: its inputs, outputs and largest batch.

Why one type: the load generator and the quality evaluation both build requests for the same served
models; each used to keep its own record of them. Both now build a ``ModelSpec`` from what the server
says about the model (``loadtest.load.server_models.ServerModel``): the load generator keeps the inputs
its payloads fill, the evaluation the inputs it can build and the output it reads as class scores.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelSpec:
    """A model as the client needs it: input names and numpy dtypes, output names, largest batch."""

    name: str
    inputs: tuple[tuple[str, str], ...]  # (name, numpy dtype name; "object" for BYTES)
    outputs: tuple[str, ...]  # the outputs requested, in order
    max_batch_size: int  # 0: no batch dimension of its own, one example per request
    feed: str = "tensors"  # how the client fills the inputs: tokens (a tokenizer's), text (one BYTES input), tensors

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.inputs)

    @property
    def primary_output(self) -> str | None:
        """The output a classifier reads: ``logits`` when requested, else the first output."""
        if "logits" in self.outputs:
            return "logits"
        return self.outputs[0] if self.outputs else None

    @property
    def takes_text(self) -> bool:
        """One BYTES input: the model tokenises inside Triton (e.g. a ``--with-tokenizer`` ensemble)."""
        return self.feed == "text"
