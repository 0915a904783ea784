"""Export causal LMs (teacher and student) into a Triton repository as streaming, decoupled models.

Each model is exported by ONNX Runtime GenAI's model builder (a decoder graph with a KV cache: past/present
key and value per layer, GroupQueryAttention, rotary embedding inside the operator), checked against PyTorch
(``exporters.lm_parity``: logits at several batch/new/past lengths, identical greedy tokens) and written as a
standard Triton Python-backend model that runs loadtest's generation engine over the graph:

    <name>/config.pbtxt          backend "python", max_batch_size 0, model_transaction_policy { decoupled: true }
    <name>/1/model.py            loadtest.generation.triton_model
    <name>/1/generation_engine.py   loadtest.generation.engine (no loadtest import: the folder stands alone)
    <name>/1/model.onnx(.data), genai_config.json, tokenizer.json

Why the builder rather than Optimum's ``text-generation-with-past`` or ``torch.onnx.export``: see
docs/generation.md (measured there: export time, graph size and decode-step time).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from pydantic import BaseModel, Field

from loadtest.errors import LoadtestError
from loadtest.repository import ModelRepository, RepositoryMetadata, build_generative_config

from exporters.lm_parity import LmParityReport, check_lm_parity
from exporters.manifest import TensorSignature, library_versions
from exporters.parity import SAMPLE_TEXTS

TASK = "text-generation"
Progress = Callable[[str], None]
ENGINE_FILES = {"model.py": "triton_model.py", "generation_engine.py": "engine.py"}
_BUILDER_TYPES = ("llama", "mistral", "qwen2", "qwen3", "phi3", "gemma", "gemma2", "granite", "olmo", "smollm3")


class GenerativeModelManifest(BaseModel):
    """What was exported for one causal LM."""

    name: str
    source: str
    architecture: str | None
    task: str = TASK
    format: str = "onnx"
    backend: str = "python"
    decoupled: bool = True
    file: str
    file_size_bytes: int
    parameter_count: int
    opset: int | None
    exporter: str
    inputs: list[TensorSignature]
    outputs: list[TensorSignature]
    context_length: int
    vocab_size: int
    num_layers: int
    parity: LmParityReport
    export_seconds: float
    parity_seconds: float

    @property
    def size_mb(self) -> float:
        return self.file_size_bytes / 1e6


class GenerativeExportManifest(BaseModel):
    """``export_manifest.json`` of a generative repository."""

    created: str = Field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    tool: str = "loadtest export"
    task: str = TASK
    versions: dict[str, str] = Field(default_factory=lambda: library_versions(
        ("torch", "transformers", "tokenizers", "onnx", "onnxruntime", "onnxruntime-genai")))
    serving: dict
    max_sequence_length: int
    tokenizer: dict
    models: dict[str, GenerativeModelManifest]


def is_causal_lm_dir(path: Path | str) -> bool:
    """True for a save_pretrained directory whose config names a ``*ForCausalLM`` architecture."""
    config = Path(path) / "config.json"
    if not config.is_file():
        return False
    try:
        data = json.loads(config.read_text())
    except ValueError:
        return False
    return any(str(a).endswith("ForCausalLM") for a in data.get("architectures") or [])


def default_parity_prompts() -> list[str]:
    """Plain prompts of varied length for greedy parity when the caller brings none (24 of them)."""
    halves = [" ".join(t.split()[: max(2, len(t.split()) // 2)]) for t in SAMPLE_TEXTS]
    return list(SAMPLE_TEXTS) + halves


def read_prompts(path: Path) -> list[str]:
    """--prompts: a .parquet with a ``prompt`` column, or a text file with one prompt per line."""
    path = Path(path)
    if not path.is_file():
        raise LoadtestError(f"prompts file {path} does not exist")
    if path.suffix == ".parquet":
        import pandas as pd

        frame = pd.read_parquet(path)
        if "prompt" not in frame.columns:
            raise LoadtestError(f"{path} has no 'prompt' column")
        return frame["prompt"].astype(str).tolist()
    return [line for line in path.read_text().splitlines() if line.strip()]


def export_causal_pair(
    teacher: Path,
    student: Path | None,
    repository: Path,
    *,
    names: tuple[str, str] = ("teacher", "student"),
    max_inflight: int = 16,
    instance_count: int = 1,
    instance_kind: str = "cpu",
    intra_op_threads: int = 1,
    atol: float = 1e-4,
    prompts: Sequence[str] | None = None,
    max_new_tokens: int = 24,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> GenerativeExportManifest:
    """Export one or two causal LMs sharing a tokenizer; nothing is written unless every model passes parity."""
    say = progress or (lambda message: None)
    sources = [Path(teacher)] + ([Path(student)] if student is not None else [])
    names = names[: len(sources)]
    if len(set(names)) != len(names):
        raise LoadtestError(f"model names must differ, got {list(names)}")
    for source in sources:
        if not is_causal_lm_dir(source):
            raise LoadtestError(f"{source} is not a causal LM directory (config.json with a *ForCausalLM architecture)")
    repo = ModelRepository(repository)
    if not overwrite:
        taken = [n for n in names if repo.model_dir(n).exists()]
        if taken:
            raise LoadtestError(f"{repo.path} already holds {taken}; pass --overwrite to replace them")
    prompts = list(prompts) if prompts else default_parity_prompts()
    tokenizer = _shared_tokenizer(sources)
    repo.path.parent.mkdir(parents=True, exist_ok=True)
    manifests: dict[str, GenerativeModelManifest] = {}
    configs = []
    with tempfile.TemporaryDirectory(prefix=f".{repo.path.name}-export-", dir=repo.path.parent) as tmp:
        staging = Path(tmp)
        for source, name in zip(sources, names):
            manifest = _export_one(source, name, staging, tokenizer, prompts, atol, max_new_tokens, say)
            manifests[name] = manifest
            configs.append(build_generative_config(name, max_inflight=max_inflight, instance_count=instance_count,
                                                   instance_kind=instance_kind, intra_op_threads=intra_op_threads))
        say("writing the repository")
        repo.path.mkdir(parents=True, exist_ok=True)
        for name, config in zip(names, configs):
            target = repo.model_dir(name)
            if target.exists():
                shutil.rmtree(target)
            shutil.move(str(staging / name), str(target))
            repo.write_config(config)
        tokenizer_files = _install_tokenizer(repo, sources[0])
    context = min(m.context_length for m in manifests.values())
    repo.write_metadata(RepositoryMetadata(teacher=names[0], student=names[-1], labels=[], max_sequence_length=context,
                                           tokenizer="tokenizer.json", task=TASK))
    manifest = GenerativeExportManifest(
        serving={"max_inflight_requests": max_inflight, "instance_count": instance_count,
                 "instance_kind": instance_kind, "intra_op_threads": intra_op_threads},
        max_sequence_length=context,
        tokenizer={"source": str(sources[0]), "vocab_size": len(tokenizer), "files": tokenizer_files},
        models=manifests,
    )
    repo.write_manifest(manifest.model_dump(mode="json"))
    return manifest


def _shared_tokenizer(sources: list[Path]):
    from transformers import AutoTokenizer

    from exporters.onnx_export import quiet

    with quiet():
        tokenizers = [AutoTokenizer.from_pretrained(s) for s in sources]
    if any(t.get_vocab() != tokenizers[0].get_vocab() for t in tokenizers[1:]):
        raise LoadtestError("teacher and student tokenizers differ: a generative A/B test needs one vocabulary")
    return tokenizers[0]


def _export_one(source: Path, name: str, staging: Path, tokenizer, prompts: Sequence[str], atol: float,
                max_new_tokens: int, say: Progress) -> GenerativeModelManifest:
    import onnx
    import onnxruntime_genai
    import torch
    from transformers import AutoModelForCausalLM

    from exporters.onnx_export import quiet

    with quiet():
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
    config = model.config
    if config.model_type not in _BUILDER_TYPES:
        raise LoadtestError(f"{source}: model type {config.model_type!r} is not one ONNX Runtime GenAI's builder "
                            f"exports here (supported: {', '.join(_BUILDER_TYPES)})")
    head_size = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    if head_size % 16:
        raise LoadtestError(f"{source}: head size {head_size} is not a multiple of 16; ONNX Runtime's "
                            "GroupQueryAttention (the builder's attention) refuses it on CPU")
    version = staging / name / "1"
    say(f"{name}: exporting with ONNX Runtime GenAI's model builder")
    start = time.perf_counter()
    run_builder(source, version, staging / f".cache-{name}")
    export_seconds = time.perf_counter() - start
    say(f"{name}: parity against PyTorch (logits at 5 shapes, greedy tokens on {len(prompts)} prompts)")
    start = time.perf_counter()
    parity = check_lm_parity(model, version, tokenizer, prompts, atol=atol, max_new_tokens=max_new_tokens)
    parity_seconds = time.perf_counter() - start
    package = Path(__file__).resolve().parent.parent / "loadtest" / "generation"
    for target, origin in ENGINE_FILES.items():
        shutil.copyfile(package / origin, version / target)
    proto = onnx.load(str(version / "model.onnx"), load_external_data=False)
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    size = sum(p.stat().st_size for p in version.glob("model.onnx*"))
    genai = json.loads((version / "genai_config.json").read_text())["model"]
    return GenerativeModelManifest(
        name=name, source=str(source.resolve()), architecture=type(model).__name__,
        file=f"{name}/1/model.onnx", file_size_bytes=size,
        parameter_count=sum(p.numel() for p in model.parameters()), opset=opset,
        exporter=f"onnxruntime-genai {onnxruntime_genai.__version__} model builder (fp32, cpu)",
        inputs=[_signature(v) for v in proto.graph.input], outputs=[_signature(v) for v in proto.graph.output],
        context_length=int(genai["context_length"]), vocab_size=int(genai["vocab_size"]),
        num_layers=int(genai["decoder"]["num_hidden_layers"]), parity=parity,
        export_seconds=round(export_seconds, 3), parity_seconds=round(parity_seconds, 3),
    )


def run_builder(source: Path, out_dir: Path, cache_dir: Path, precision: str = "fp32",
                execution_provider: str = "cpu") -> None:
    """``python -m onnxruntime_genai.models.builder`` in a child process (it prints progress bars we keep out)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(source), "-o", str(out_dir),
               "-p", precision, "-e", execution_provider, "-c", str(cache_dir)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0 or not (out_dir / "model.onnx").is_file():
        lines = [l for l in (result.stderr or result.stdout).splitlines() if l.strip()]
        raise LoadtestError(f"ONNX Runtime GenAI's builder failed on {source}: {lines[-1] if lines else result.returncode}")
    shutil.rmtree(cache_dir, ignore_errors=True)


def _signature(value) -> TensorSignature:
    import onnx

    tensor = value.type.tensor_type
    dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name
    shape = [d.dim_param or (d.dim_value if d.HasField("dim_value") else None) for d in tensor.shape.dim]
    return TensorSignature(name=value.name, dtype=dtype, shape=shape)


def _install_tokenizer(repo: ModelRepository, source: Path) -> list[str]:
    written = []
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (source / name).is_file():
            shutil.copyfile(source / name, repo.path / name)
            written.append(name)
    if "tokenizer.json" not in written:
        raise LoadtestError(f"{source} has no tokenizer.json, which the repository and the engine need")
    return written
