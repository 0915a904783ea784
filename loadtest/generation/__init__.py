"""Streaming text generation over an exported causal LM: the engine (``engine``, no Triton import) and the
Triton Python-backend model that serves it (``triton_model``, imported only inside Triton)."""
