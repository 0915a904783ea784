"""Triton Python-backend model: BYTES text in, the classifier's token inputs out (``loadtest export --with-tokenizer``).

The first step of the ``<model>_text`` ensemble, so clients send raw text and the server's tokenization
is part of what is measured, as in production. Written into ``<model>_tokenizer/1/model.py`` next to
``tokenizer.json``; it needs only numpy and the ``tokenizers`` package in Triton's Python environment.
Each request is tokenized on its own and padded to its longest row (truncated at the repository's
``max_sequence_length``), exactly as loadtest's client pads a batch.
"""

import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils
from tokenizers import Tokenizer


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        folder = os.path.join(args["model_repository"], args["model_version"])
        self.tokenizer = Tokenizer.from_file(os.path.join(folder, params.get("tokenizer_file", "tokenizer.json")))
        self.tokenizer.enable_truncation(int(params["max_sequence_length"]))
        self.tokenizer.no_padding()
        self.pad_id = int(params.get("pad_id", "0"))
        self.input_name = config["input"][0]["name"]
        self.outputs = [(o["name"], pb_utils.triton_string_to_numpy(o["data_type"])) for o in config["output"]]

    def execute(self, requests):
        responses = []
        for request in requests:
            raw = pb_utils.get_input_tensor_by_name(request, self.input_name).as_numpy().reshape(-1)
            texts = [t.decode("utf-8", errors="replace") if isinstance(t, bytes) else str(t) for t in raw]
            encodings = self.tokenizer.encode_batch(texts)
            width = max(1, max(len(e.ids) for e in encodings))
            arrays = {
                "input_ids": np.full((len(texts), width), self.pad_id, dtype=np.int64),
                "attention_mask": np.zeros((len(texts), width), dtype=np.int64),
                "token_type_ids": np.zeros((len(texts), width), dtype=np.int64),
            }
            for row, encoding in enumerate(encodings):
                n = len(encoding.ids)
                arrays["input_ids"][row, :n] = encoding.ids
                arrays["attention_mask"][row, :n] = 1
                arrays["token_type_ids"][row, :n] = encoding.type_ids
            tensors = [pb_utils.Tensor(name, arrays[name].astype(dtype)) for name, dtype in self.outputs]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses
