"""A model repository without models, for load-generator unit tests: tokenizer, loadtest.json, configs.

Payload building needs only the tokenizer, the sequence limit and the models' inputs; building it takes
well under a second (a WordPiece vocabulary trained on a few sentences, nothing downloaded).
"""

from __future__ import annotations

import json
from pathlib import Path

from loadtest.repository import ModelRepository, RepositoryMetadata, TensorSpec, TritonModelSettings, build_config

SENTENCES = [
    "the service answered quickly and the team was happy",
    "latency went up during the rollout and users complained",
    "the student model is smaller than the teacher model",
    "throughput doubled after dynamic batching was enabled",
]


def make_repository(root: Path, max_length: int = 64, max_batch_size: int = 8) -> Path:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(SENTENCES, trainers.WordPieceTrainer(vocab_size=200, special_tokens=specials,
                                                                 show_progress=False))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))]
    )
    root.mkdir(parents=True, exist_ok=True)
    tok.save(str(root / "tokenizer.json"))
    (root / "tokenizer_config.json").write_text(json.dumps(
        {"pad_token": "[PAD]", "cls_token": "[CLS]", "sep_token": "[SEP]", "unk_token": "[UNK]", "mask_token": "[MASK]"}
    ))
    repository = ModelRepository(root)
    repository.write_metadata(RepositoryMetadata(labels=["a", "b", "c"], max_sequence_length=max_length))
    settings = TritonModelSettings(max_batch_size=max_batch_size)
    teacher_inputs = [TensorSpec(n, "int64", (-1,)) for n in ("input_ids", "attention_mask", "token_type_ids")]
    student_inputs = teacher_inputs[:2]  # a distilbert-like student takes no token_type_ids
    for name, inputs in (("teacher", teacher_inputs), ("student", student_inputs)):
        repository.write_config(build_config(name, inputs, [TensorSpec("logits", "float32", (3,))], settings))
    return root
