"""Serving a model repository on the real Triton Inference Server bundled in the nvidia-pytriton wheel."""

from loadtest.serving.embedded import EmbeddedTriton, ServerPorts

__all__ = ["EmbeddedTriton", "ServerPorts"]
