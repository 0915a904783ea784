"""A model repository loadtest did not export: standard Triton Python-backend models and an ensemble.

What a user's staging server holds: other input names, FP32 and BYTES inputs, a model without batching
(max_batch_size 0), a variable dimension, and an ensemble whose first step turns text into codes.
Every model is a plain ``model.py`` + ``config.pbtxt`` as Triton's docs write them; no loadtest.json,
no tokenizer. ``char_classifier``/``text_classifier`` output logits, so quality evaluation works on them.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

MLP = '''
import numpy as np
import triton_python_backend_utils as pb_utils

WEIGHTS = np.linspace(-1.0, 1.0, 16 * 3, dtype=np.float32).reshape(16, 3)


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "features").as_numpy()
            scores = (x.astype(np.float32) @ WEIGHTS).astype(np.float32)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("scores", scores)]))
        return responses
'''

TEXT_LENGTH = '''
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            text = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy()
            lengths = np.array([len(t) for t in text.reshape(-1)], dtype=np.int32).reshape(text.shape)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("LENGTH", lengths)]))
        return responses
'''

SUM_NO_BATCH = '''
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            a = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            b = pb_utils.get_input_tensor_by_name(request, "INPUT1").as_numpy()
            total = np.array([a.astype(np.int64).sum() + b.astype(np.int64).sum()], dtype=np.int64)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("SUM", total)]))
        return responses
'''

TEXT_TO_CODES = '''
import numpy as np
import triton_python_backend_utils as pb_utils

WIDTH = 32


class TritonPythonModel:
    """Text -> [batch, WIDTH] byte codes (0-padded): the ensemble's 'tokenizer' step."""

    def execute(self, requests):
        responses = []
        for request in requests:
            text = pb_utils.get_input_tensor_by_name(request, "text").as_numpy().reshape(-1)
            codes = np.zeros((len(text), WIDTH), dtype=np.int64)
            for i, t in enumerate(text):
                raw = np.frombuffer(bytes(t)[:WIDTH], dtype=np.uint8)
                codes[i, : len(raw)] = raw
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("codes", codes)]))
        return responses
'''

CHAR_CLASSIFIER = '''
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    """Logits [batch, 2]: label 1 ('vowels') when more than a third of the characters are vowels."""

    def execute(self, requests):
        vowels = np.array([ord(c) for c in "aeiouAEIOU"])
        responses = []
        for request in requests:
            codes = pb_utils.get_input_tensor_by_name(request, "codes").as_numpy()
            present = (codes > 0).sum(axis=1).clip(min=1)
            share = np.isin(codes, vowels).sum(axis=1) / present
            logits = np.stack([1.0 / 3.0 - share, share - 1.0 / 3.0], axis=1).astype(np.float32) * 10.0
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("logits", logits)]))
        return responses
'''

CONFIGS = {
    "fp32_mlp": """
        backend: "python"
        max_batch_size: 8
        input [ { name: "features" data_type: TYPE_FP32 dims: [ 16 ] } ]
        output [ { name: "scores" data_type: TYPE_FP32 dims: [ 3 ] } ]
        dynamic_batching { max_queue_delay_microseconds: 500 }
        instance_group [ { count: 1 kind: KIND_CPU } ]
    """,
    "text_length": """
        backend: "python"
        max_batch_size: 0
        input [ { name: "TEXT" data_type: TYPE_STRING dims: [ 1 ] } ]
        output [ { name: "LENGTH" data_type: TYPE_INT32 dims: [ 1 ] } ]
        instance_group [ { count: 1 kind: KIND_CPU } ]
    """,
    "sum_no_batch": """
        backend: "python"
        max_batch_size: 0
        input [
          { name: "INPUT0" data_type: TYPE_INT32 dims: [ -1 ] },
          { name: "INPUT1" data_type: TYPE_FP32 dims: [ 4 ] }
        ]
        output [ { name: "SUM" data_type: TYPE_INT64 dims: [ 1 ] } ]
        instance_group [ { count: 1 kind: KIND_CPU } ]
    """,
    "text_to_codes": """
        backend: "python"
        max_batch_size: 8
        input [ { name: "text" data_type: TYPE_STRING dims: [ 1 ] } ]
        output [ { name: "codes" data_type: TYPE_INT64 dims: [ 32 ] } ]
        instance_group [ { count: 1 kind: KIND_CPU } ]
    """,
    "char_classifier": """
        backend: "python"
        max_batch_size: 8
        input [ { name: "codes" data_type: TYPE_INT64 dims: [ 32 ] } ]
        output [ { name: "logits" data_type: TYPE_FP32 dims: [ 2 ] } ]
        dynamic_batching { max_queue_delay_microseconds: 500 }
        instance_group [ { count: 1 kind: KIND_CPU } ]
    """,
    "text_classifier": """
        platform: "ensemble"
        max_batch_size: 8
        input [ { name: "text" data_type: TYPE_STRING dims: [ 1 ] } ]
        output [ { name: "logits" data_type: TYPE_FP32 dims: [ 2 ] } ]
        ensemble_scheduling {
          step [
            {
              model_name: "text_to_codes"
              model_version: -1
              input_map { key: "text" value: "text" }
              output_map { key: "codes" value: "codes" }
            },
            {
              model_name: "char_classifier"
              model_version: -1
              input_map { key: "codes" value: "codes" }
              output_map { key: "logits" value: "logits" }
            }
          ]
        }
    """,
}
SOURCES = {
    "fp32_mlp": MLP,
    "text_length": TEXT_LENGTH,
    "sum_no_batch": SUM_NO_BATCH,
    "text_to_codes": TEXT_TO_CODES,
    "char_classifier": CHAR_CLASSIFIER,
}
FOREIGN_MODELS = tuple(CONFIGS)
ENSEMBLE_STEPS = {"text_classifier": ("text_to_codes", "char_classifier")}  # each ensemble request counts on both


def write_foreign_repository(root: Path) -> Path:
    """Write the models under ``root`` (version folder 1 each) and return ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    for name, config in CONFIGS.items():
        folder = root / name
        (folder / "1").mkdir(parents=True, exist_ok=True)
        (folder / "config.pbtxt").write_text(f'name: "{name}"\n' + textwrap.dedent(config).strip() + "\n")
        if name in SOURCES:
            (folder / "1" / "model.py").write_text(SOURCES[name].lstrip())
    return root


def labelled_texts() -> list[dict]:
    """A labelled dataset in the ensemble's input format (text), labels by the classifier's own rule."""
    words = ["aeiou", "queue", "rhythm", "strengths", "audio", "crypt", "idea", "lynx", "area", "myths"]
    rows = []
    for i in range(40):
        text = " ".join(words[(i + k) % len(words)] for k in range(1 + i % 3))
        letters = [c for c in text if c != " "]
        share = sum(c in "aeiou" for c in text) / max(len(text), 1)
        rows.append({"text": text, "label": "vowels" if share > 1 / 3 else "consonants", "n_letters": len(letters)})
    return rows


def labelled_features(n: int = 30) -> list[dict]:
    """A labelled set in fp32_mlp's own input format (a 'features' column), labels = argmax of its scores."""
    import numpy as np

    weights = np.linspace(-1.0, 1.0, 16 * 3, dtype=np.float32).reshape(16, 3)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        x = rng.normal(size=16).astype(np.float32)
        rows.append({"features": x.tolist(), "label": "abc"[int(np.argmax(x @ weights))], "half": f"h{i % 2}"})
    return rows
