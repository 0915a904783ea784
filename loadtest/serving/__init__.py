"""Serving a model repository on a real Triton Inference Server embedded in this process (PyTriton)."""

from loadtest.serving.embedded import EmbeddedTriton, ServerPorts

__all__ = ["EmbeddedTriton", "ServerPorts"]
