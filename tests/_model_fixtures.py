"""Tiny Hugging Face sequence classifiers built in seconds, for tests that need a real model directory.

Random weights and a WordPiece vocabulary trained on a few sentences: nothing is downloaded, and the
directories are exactly what ``save_pretrained`` writes, so the exporters see what a user hands them.
"""

from __future__ import annotations

from pathlib import Path

SENTENCES = [
    "the service answered quickly and the team was happy",
    "latency went up during the rollout and users complained",
    "the student model is smaller than the teacher model",
    "throughput doubled after dynamic batching was enabled",
    "a refund was requested because the order never arrived",
    "great product, fast shipping, would buy again",
    "terrible support experience, nobody replied for days",
    "the weather in the mountains was cold but beautiful",
    "please reset my password, I cannot log in anymore",
    "the quarterly report shows revenue growth in every region",
]
LABELS = ["negative", "neutral", "positive", "mixed", "other", "spam", "urgent", "info"]
MAX_LENGTH = 128

# Architecture -> (config class, model class, tokenizer inputs its forward accepts, size knobs).
_ARCHS = {
    "bert": ("BertConfig", "BertForSequenceClassification", ["input_ids", "token_type_ids", "attention_mask"]),
    "distilbert": ("DistilBertConfig", "DistilBertForSequenceClassification", ["input_ids", "attention_mask"]),
    "roberta": ("RobertaConfig", "RobertaForSequenceClassification", ["input_ids", "attention_mask"]),
}


def _train_vocab() -> dict[str, int]:
    """A WordPiece vocabulary (BERT's special tokens first) trained on SENTENCES."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(
        vocab_size=300, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], show_progress=False
    )
    tok.train_from_iterator(SENTENCES, trainer=trainer)
    return tok.get_vocab()


def _tokenizer(arch: str, vocab_from: Path | None):
    from transformers import AutoTokenizer, BertTokenizer

    input_names = _ARCHS[arch][2]
    if vocab_from is not None:
        tokenizer = AutoTokenizer.from_pretrained(vocab_from)
    else:
        tokenizer = BertTokenizer(vocab=_train_vocab(), do_lower_case=True)
    tokenizer.model_max_length = MAX_LENGTH
    tokenizer.model_input_names = list(input_names)
    tokenizer.init_kwargs["model_input_names"] = list(input_names)  # persisted by save_pretrained
    return tokenizer


def _config(arch: str, vocab_size: int, num_labels: int, pad_id: int, layers: int, hidden: int):
    import transformers

    labels = {i: LABELS[i] if i < len(LABELS) else f"label_{i}" for i in range(num_labels)}
    common = dict(
        vocab_size=vocab_size,
        num_labels=num_labels,
        id2label=labels,
        label2id={v: k for k, v in labels.items()},
        pad_token_id=pad_id,
        max_position_embeddings=MAX_LENGTH + (2 if arch == "roberta" else 0),
        # Larger than the usual 0.02 so random logits are O(1): parity and argmax checks then discriminate.
        initializer_range=0.2,
    )
    cls = getattr(transformers, _ARCHS[arch][0])
    if arch == "distilbert":
        return cls(n_layers=layers, n_heads=2, dim=hidden, hidden_dim=2 * hidden, seq_classif_dropout=0.0, **common)
    return cls(
        num_hidden_layers=layers, num_attention_heads=2, hidden_size=hidden, intermediate_size=2 * hidden, **common
    )


def make_tiny_classifier(
    path: Path,
    arch: str = "bert",
    num_labels: int = 4,
    seed: int = 0,
    vocab_from: Path | None = None,
    layers: int = 2,
    hidden: int = 32,
) -> Path:
    """Write a save_pretrained directory (model + fast tokenizer, model_max_length 128) and return it.

    ``arch`` is "bert", "distilbert" or "roberta"; ``vocab_from`` reuses another tiny model's tokenizer so
    a teacher/student pair shares token ids.
    """
    import torch
    import transformers

    if arch not in _ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose from {sorted(_ARCHS)}")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = _tokenizer(arch, vocab_from)
    torch.manual_seed(seed)
    config = _config(arch, len(tokenizer), num_labels, tokenizer.pad_token_id, layers, hidden)
    model = getattr(transformers, _ARCHS[arch][1])(config).eval()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def make_tiny_pair(directory: Path, num_labels: int = 4) -> tuple[Path, Path]:
    """A BERT teacher (2 layers, hidden 32) and a smaller BERT student (1 layer, hidden 16), one tokenizer."""
    directory = Path(directory)
    teacher = make_tiny_classifier(directory / "teacher", "bert", num_labels=num_labels, seed=0)
    student = make_tiny_classifier(
        directory / "student", "bert", num_labels=num_labels, seed=1, vocab_from=teacher, layers=1, hidden=16
    )
    return teacher, student


# ---- models whose export is broken away from the example shape -----------------------------------


def _constant_batch_classes():
    """A Hugging Face-style classifier whose forward turns the batch size into a Python int.

    The TorchScript tracer records that int as a constant, so the exported graph reshapes every batch to
    the example's batch size: right at batch 2, wrong (or unrunnable) at any other. Registered with the
    Auto classes, as a custom architecture would be.
    """
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification, PretrainedConfig, PreTrainedModel
    from transformers.modeling_outputs import SequenceClassifierOutput

    class ConstantBatchConfig(PretrainedConfig):
        model_type = "loadtest-constant-batch"

        def __init__(
            self, vocab_size: int = 300, hidden_size: int = 16, max_position_embeddings: int = MAX_LENGTH, **kwargs
        ):
            super().__init__(**kwargs)
            self.vocab_size = vocab_size
            self.hidden_size = hidden_size
            self.max_position_embeddings = max_position_embeddings

    class ConstantBatchForSequenceClassification(PreTrainedModel):
        config_class = ConstantBatchConfig
        base_model_prefix = "constant_batch"

        def __init__(self, config):
            super().__init__(config)
            self.embed = torch.nn.Embedding(config.vocab_size, config.hidden_size)
            self.classifier = torch.nn.Linear(config.hidden_size, config.num_labels)
            self.post_init()

        def _init_weights(self, module):
            if isinstance(module, (torch.nn.Embedding, torch.nn.Linear)):
                torch.nn.init.normal_(module.weight, std=0.5)

        def forward(self, input_ids, attention_mask=None, **kwargs):
            mask = attention_mask.unsqueeze(-1).to(torch.float32)
            pooled = (self.embed(input_ids) * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            batch = int(input_ids.shape[0])  # the trap: a traced constant
            logits = self.classifier(pooled).reshape(batch, -1)
            return SequenceClassifierOutput(logits=logits)

    AutoConfig.register(ConstantBatchConfig.model_type, ConstantBatchConfig, exist_ok=True)
    AutoModelForSequenceClassification.register(
        ConstantBatchConfig, ConstantBatchForSequenceClassification, exist_ok=True
    )
    return ConstantBatchConfig, ConstantBatchForSequenceClassification


def make_constant_batch_classifier(path: Path, vocab_from: Path, num_labels: int = 4, seed: int = 0) -> Path:
    """Save the constant-batch classifier (with ``vocab_from``'s tokenizer) as a save_pretrained directory."""
    import torch
    from transformers import AutoTokenizer

    config_cls, model_cls = _constant_batch_classes()
    path = Path(path)
    tokenizer = AutoTokenizer.from_pretrained(vocab_from)
    torch.manual_seed(seed)
    labels = {i: LABELS[i] for i in range(num_labels)}
    model = model_cls(
        config_cls(
            vocab_size=len(tokenizer),
            num_labels=num_labels,
            id2label=labels,
            label2id={v: k for k, v in labels.items()},
        )
    ).eval()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def export_torchscript_onnx(model, input_names: list[str], path: Path, batch: int = 2, length: int = 8) -> Path:
    """Export with the legacy TorchScript tracer and dynamic axes declared, as many older scripts still do."""
    import warnings

    import torch

    ids = torch.randint(5, 50, (batch, length))
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[0, length // 2 :] = 0
    example = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}

    class Logits(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, *args):
            out = self.model(**dict(zip(input_names, args)))
            return out.logits if hasattr(out, "logits") else out

    axes = {name: {0: "batch", 1: "sequence"} for name in input_names} | {"logits": {0: "batch"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Logits().eval(),
            tuple(example[n] for n in input_names),
            str(path),
            dynamo=False,
            input_names=input_names,
            output_names=["logits"],
            dynamic_axes=axes,
            opset_version=17,
        )
    return Path(path)


def make_transformer_encoder_onnx(path: Path, vocab_size: int, num_labels: int = 4, seed: int = 0) -> Path:
    """A plain torch classifier on nn.TransformerEncoder exported with the TorchScript tracer.

    The tracer bakes the example's sequence length into the attention reshapes: the graph declares
    dynamic axes yet fails at any other length (the classic trap the parity check exists for).
    """
    import torch

    class EncoderClassifier(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(vocab_size, 16)
            layer = torch.nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
            self.encoder = torch.nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
            self.head = torch.nn.Linear(16, num_labels)

        def forward(self, input_ids, attention_mask):
            hidden = self.encoder(self.embed(input_ids), src_key_padding_mask=attention_mask == 0)
            return self.head(hidden[:, 0])

    torch.manual_seed(seed)
    return export_torchscript_onnx(EncoderClassifier().eval(), ["input_ids", "attention_mask"], path)
