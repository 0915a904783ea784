"""Triton Python-backend scoring model: teacher-forced next-token log-probabilities of a causal LM.

Copied into a generative repository as ``<model>_score/1/model.py`` beside the streaming generator
``<model>``; it runs the *same* ONNX decoder file (``<model>/1/model.onnx``, named by the config parameter
``generator``) in one forward pass over given tokens, with an empty KV cache. Self-contained (numpy and
onnxruntime only) so any Triton with the Python backend serves it.

Contract (non-decoupled, ``max_batch_size`` 0):
  inputs   ``input_ids`` INT64 [-1]      prompt tokens followed by the reference tokens
           ``prompt_length`` INT32 [1]   how many of them are the prompt (≥ 1)
  output   ``logprobs`` FP32 [-1, -1]    row t: log-softmax of the logits that predict token
                                         ``prompt_length + t``, for every reference position
                                         (len(input_ids) − prompt_length rows × vocabulary)
"""

import json
import os

import numpy as np


class LogProbScorer:
    """One ONNX Runtime session over a decoder graph; ``logprobs(ids, prompt_length)``."""

    def __init__(self, model_dir, intra_op_threads=0):
        import onnxruntime as ort

        config_path = os.path.join(model_dir, "genai_config.json")
        filename = "model.onnx"
        self.names = {}
        self.cache_dims = None  # (kv heads, head size) when the config says
        if os.path.isfile(config_path):  # ONNX Runtime GenAI's model builder layout
            decoder = json.load(open(config_path))["model"]["decoder"]
            filename = decoder.get("filename", filename)
            if "num_key_value_heads" in decoder and "head_size" in decoder:
                self.cache_dims = (int(decoder["num_key_value_heads"]), int(decoder["head_size"]))
            self.names = dict(decoder.get("inputs", {}))
            self.logits_name = decoder.get("outputs", {}).get("logits", "logits")
        else:
            self.logits_name = "logits"
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(intra_op_threads)
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(os.path.join(model_dir, filename), sess_options=options, providers=["CPUExecutionProvider"])
        self.inputs = self.session.get_inputs()
        self.input_ids_name = self.names.get("input_ids", "input_ids")
        self.mask_name = self.names.get("attention_mask", "attention_mask")

    def _feed(self, ids):
        length = ids.shape[1]
        feed = {}
        for spec in self.inputs:
            if spec.name == self.input_ids_name:
                feed[spec.name] = ids
            elif spec.name == self.mask_name:
                feed[spec.name] = np.ones((1, length), dtype=np.int64)
            elif "position" in spec.name:
                feed[spec.name] = np.arange(length, dtype=np.int64)[None, :]
            elif "past" in spec.name:  # an empty cache: batch 1, no past tokens
                shape = [d if isinstance(d, int) else 1 for d in spec.shape]
                if self.cache_dims is not None and len(shape) == 4:
                    shape[1], shape[3] = self.cache_dims
                elif len(shape) == 4 and not isinstance(spec.shape[3], int):
                    raise ValueError(f"cache input '{spec.name}' has a symbolic head size and no genai_config.json says it")
                shape[0], shape[2] = 1, 0
                dtype = np.float16 if "float16" in spec.type else np.float32
                feed[spec.name] = np.zeros(shape, dtype=dtype)
            else:
                raise ValueError(f"the decoder takes an input '{spec.name}' the scoring model cannot fill")
        return feed

    def logprobs(self, input_ids, prompt_length):
        ids = np.asarray(input_ids, dtype=np.int64).reshape(1, -1)
        n = ids.shape[1]
        if not 1 <= prompt_length < n:
            raise ValueError(f"prompt_length {prompt_length} must be at least 1 and below the {n} tokens given")
        (logits,) = self.session.run([self.logits_name], self._feed(ids))
        rows = np.asarray(logits[0, prompt_length - 1 : n - 1, :], dtype=np.float64)
        shifted = rows - rows.max(axis=-1, keepdims=True)
        out = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
        return out.astype(np.float32)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        parameters = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        generator = parameters["generator"]
        repository = os.path.dirname(os.path.abspath(args["model_repository"]))
        model_dir = os.path.join(repository, generator, parameters.get("generator_version", "1"))
        self.scorer = LogProbScorer(model_dir, parameters.get("intra_op_threads", "0"))

    def execute(self, requests):
        import triton_python_backend_utils as pb_utils

        responses = []
        for request in requests:
            try:
                ids = pb_utils.get_input_tensor_by_name(request, "input_ids").as_numpy().reshape(-1)
                prompt_length = int(pb_utils.get_input_tensor_by_name(request, "prompt_length").as_numpy().reshape(-1)[0])
                values = self.scorer.logprobs(ids, prompt_length)
                responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("logprobs", values)]))
            except Exception as exc:  # the client gets the reason, the model stays up
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{type(exc).__name__}: {exc}")))
        return responses

    def finalize(self):
        self.scorer = None
