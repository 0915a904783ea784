"""Exporters: a teacher/student pair (Hugging Face directories or ONNX files) -> a Triton model repository.

Every export is checked before it lands: ONNX Runtime must reproduce PyTorch at several batch and
sequence sizes (or, for a plain ONNX file, batched rows must equal the rows run alone). Modules:
``spec`` (what to export), ``onnx_export`` (HF -> ONNX), ``parity`` (the check), ``manifest`` (what was
done), ``tensorrt`` (the GPU engine path), ``pipeline`` (the whole flow), ``commands`` (``loadtest export``).
This package never imports Locust; its heavy imports happen inside functions.
"""
