"""The export flow: sources -> checked artefacts -> a Triton model repository that works on its own.

Everything is prepared and checked in a staging folder first; the repository is touched only once every
model has passed parity, so a refused export never leaves a half-written repository behind. Beside the
models go the tokenizer (teacher and student must share it: an A/B test sends both the same token ids),
``loadtest.json`` (labels, sequence limit) and ``export_manifest.json``.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from loadtest.errors import LoadtestError
from loadtest.repository import (
    METADATA_FILE,
    TOKENIZER_FILES,
    ModelRepository,
    RepositoryMetadata,
    TensorSpec,
    TritonModelSettings,
    build_config,
)

from exporters.manifest import ExportManifest, ModelManifest, TensorSignature
from exporters.parity import (
    ParityError,
    ParityReport,
    check_parity,
    onnxruntime_runner,
    parity_shapes,
    pytorch_runner,
    rows_one_at_a_time,
)
from exporters.spec import DEFAULT_ATOL, DEFAULT_OPSET, OUTPUT_NAME, TASK, TOKENIZER_INPUTS, Exporter

Format = Literal["onnx", "tensorrt"]
Progress = Callable[[str], None]
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_TOKENIZER_MARKERS = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "spiece.model")
_UNBOUNDED = 1_000_000  # transformers' "no limit" model_max_length is 1e30


@dataclass(frozen=True)
class Source:
    """Where a model comes from: a save_pretrained directory or a plain ONNX file."""

    path: Path
    kind: Literal["huggingface", "onnx"]


def resolve_source(path: Path | str) -> Source:
    """Classify a --teacher/--student argument, refusing what is neither kind with one line."""
    from exporters.onnx_export import check_model_dir

    path = Path(path)
    if path.suffix.lower() == ".onnx":
        if not path.is_file():
            raise LoadtestError(f"ONNX file {path} does not exist")
        return Source(path.resolve(), "onnx")
    check_model_dir(path)
    return Source(path.resolve(), "huggingface")


@dataclass
class _Loaded:
    """A source, opened and inspected but not yet exported."""

    name: str
    source: Source
    model: object | None = None  # transformers model (huggingface sources)
    proto: object | None = None  # onnx ModelProto (onnx sources)
    tokenizer: object | None = None  # the source's own tokenizer, when it ships one
    labels: list[str] | None = None
    num_labels: int | None = None
    sequence_limit: int | None = None
    architecture: str | None = None


@dataclass
class _Built:
    """A model exported, checked and staged, with its config and manifest entry."""

    name: str
    staged: Path  # staging/<name>
    config: object
    manifest: ModelManifest


@dataclass
class ExportReport:
    """What ``export_pair`` wrote."""

    repository: Path
    metadata: RepositoryMetadata
    manifest: ExportManifest
    seconds: float
    files: list[Path] = field(default_factory=list)

    @property
    def models(self) -> dict[str, ModelManifest]:
        return self.manifest.models


# ---- opening sources ---------------------------------------------------------------------------


def _load(source: Source, name: str, say: Progress) -> _Loaded:
    from exporters.onnx_export import check_onnx, load_classifier, position_limit, quiet

    if source.kind == "onnx":
        say(f"{name}: checking {source.path.name}")
        proto = check_onnx(source.path)
        item = _Loaded(name=name, source=source, proto=proto, architecture="onnx")
        _inspect_onnx(item)
        return item
    say(f"{name}: loading {source.path.name}")
    model = load_classifier(source.path)
    config = model.config
    item = _Loaded(
        name=name,
        source=source,
        model=model,
        labels=[str(config.id2label[i]) for i in range(config.num_labels)],
        num_labels=int(config.num_labels),
        sequence_limit=position_limit(config),
        architecture=type(model).__name__,
    )
    if any((source.path / marker).is_file() for marker in _TOKENIZER_MARKERS):
        with quiet():
            item.tokenizer = _open_tokenizer(source.path)
    return item


def _inspect_onnx(item: _Loaded) -> None:
    """Refuse ONNX graphs that do not follow the repository contract (inputs, axes, one logits output)."""
    from exporters.onnx_export import onnx_signature

    inputs, outputs = onnx_signature(item.proto)
    path = item.source.path
    unknown = [s.name for s in inputs if s.name not in TOKENIZER_INPUTS]
    if unknown or "input_ids" not in [s.name for s in inputs]:
        raise LoadtestError(
            f"{path}: inputs {[s.name for s in inputs]} are not tokenizer inputs; expected input_ids"
            f" and optionally attention_mask, token_type_ids"
        )
    for spec in inputs:
        if spec.dtype != "int64" or len(spec.shape) != 2:
            raise LoadtestError(
                f"{path}: input {spec.name} is {spec.dtype}{spec.shape}; expected int64 [batch, sequence]"
            )
    _require_dynamic_axes(str(path), inputs)
    floats = [s for s in outputs if s.dtype in ("float32", "float16")]
    chosen = next((s for s in outputs if s.name == OUTPUT_NAME), floats[0] if len(floats) == 1 else None)
    if chosen is None or len(chosen.shape) != 2:
        raise LoadtestError(
            f"{path}: expected one [batch, num_labels] logits output, found {[s.name for s in outputs]}"
        )
    if chosen.dtype != "float32":
        raise LoadtestError(
            f"{path}: output {chosen.name} is {chosen.dtype}; Triton clients here expect float32 logits"
        )
    item.num_labels = chosen.shape[1] if isinstance(chosen.shape[1], int) else None


def _require_dynamic_axes(what: str, inputs: list[TensorSignature]) -> None:
    """Every input must keep batch and sequence dynamic: Triton batches, and clients send any length."""
    for spec in inputs:
        for axis, label in enumerate(("batch", "sequence")):
            if isinstance(spec.shape[axis], int):
                raise ParityError(
                    f"{what}: input {spec.name} has a fixed {label} dimension {spec.shape[axis]}; the graph must keep "
                    f"{label} dynamic (a model that specialises on its example shape cannot be served)"
                )


def _open_tokenizer(path: Path):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as exc:
        raise LoadtestError(
            f"cannot load a tokenizer from {path}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        ) from None
    if not getattr(tokenizer, "is_fast", False):
        raise LoadtestError(f"the tokenizer in {path} has no fast (tokenizer.json) form, which the repository ships")
    return tokenizer


# ---- what both models share --------------------------------------------------------------------


def _resolve_tokenizer(explicit: Path | None, loaded: list[_Loaded]):
    """The tokenizer shipped with the repository; every source's own tokenizer must match its vocabulary."""
    from exporters.onnx_export import quiet

    if explicit is not None:
        explicit = Path(explicit)
        if not explicit.is_dir():
            raise LoadtestError(f"--tokenizer {explicit} is not a directory with a saved tokenizer")
        with quiet():
            tokenizer, origin = _open_tokenizer(explicit), explicit.resolve()
    else:
        owner = next((item for item in loaded if item.tokenizer is not None), None)
        if owner is None:
            raise LoadtestError(
                "no tokenizer found beside the models: pass --tokenizer DIR (plain ONNX files carry none)"
            )
        tokenizer, origin = owner.tokenizer, owner.source.path
    vocab = tokenizer.get_vocab()
    for item in loaded:
        if item.tokenizer is not None and item.tokenizer is not tokenizer:
            other = item.tokenizer.get_vocab()
            if other != vocab:
                differing = len(set(vocab.items()) ^ set(other.items())) // 2 or abs(len(vocab) - len(other))
                raise LoadtestError(
                    f"the {item.name} tokenizer ({item.source.path}) differs from {origin}: vocabularies of "
                    f"{len(other)} and {len(vocab)} tokens, about {differing} ids differ; teacher and student must "
                    f"share one vocabulary because an A/B test sends both the same token ids"
                )
        if item.model is not None:
            embedded = int(getattr(item.model.config, "vocab_size", 0) or 0)
            if embedded and len(tokenizer) > embedded:
                raise LoadtestError(
                    f"the tokenizer has {len(tokenizer)} tokens but {item.name} embeds only {embedded}: "
                    "wrong tokenizer?"
                )
    return tokenizer, origin


def _resolve_labels(explicit: Sequence[str] | None, loaded: list[_Loaded]) -> list[str]:
    if explicit:
        labels = [str(label) for label in explicit]
        if len(set(labels)) != len(labels):
            raise LoadtestError(f"--labels has duplicates: {labels}")
    else:
        named = [item for item in loaded if item.labels]
        if not named:
            raise LoadtestError("plain ONNX files carry no label names: pass --labels a,b,c or --labels labels.txt")
        labels = named[0].labels
        for item in named[1:]:
            if item.labels != labels:
                raise LoadtestError(
                    f"{named[0].name} labels {labels} differ from {item.name} labels {item.labels}; "
                    f"pass --labels to name the shared classes"
                )
    for item in loaded:
        if item.num_labels is not None and item.num_labels != len(labels):
            raise LoadtestError(
                f"{item.name} has {item.num_labels} outputs but {len(labels)} labels are given: {labels}"
            )
    return labels


def _resolve_max_sequence(explicit: int | None, tokenizer, loaded: list[_Loaded]) -> int:
    limits: dict[str, int] = {}
    model_max = getattr(tokenizer, "model_max_length", None)
    if model_max and model_max < _UNBOUNDED:
        limits["the tokenizer"] = int(model_max)
    for item in loaded:
        if item.sequence_limit:
            limits[item.name] = int(item.sequence_limit)
    if explicit is not None:
        if explicit < 2:
            raise LoadtestError(f"--max-sequence-length must be at least 2, got {explicit}")
        for who, limit in limits.items():
            if explicit > limit:
                raise LoadtestError(f"--max-sequence-length {explicit} exceeds {who}'s limit of {limit}")
        return explicit
    if not limits:
        raise LoadtestError("no sequence limit is known for these models: pass --max-sequence-length")
    return min(limits.values())


def _check_names(names: Sequence[str]) -> None:
    for name in names:
        if not _NAME.match(name):
            raise LoadtestError(f"model name {name!r} must be letters, digits, '_', '-' or '.'")
    if len(set(names)) != len(names):
        raise LoadtestError(f"model names must differ, got {list(names)}")


def _check_settings(settings: TritonModelSettings, format: Format) -> None:
    if format not in ("onnx", "tensorrt"):
        raise LoadtestError(f"--format must be onnx or tensorrt, got {format!r}")
    if format == "tensorrt" and settings.instance_kind != "gpu":
        raise LoadtestError("TensorRT plans run on GPU instances only: use --instance-kind gpu")
    if settings.tensorrt_accelerator and settings.instance_kind != "gpu":
        raise LoadtestError("ONNX Runtime's TensorRT accelerator needs GPU instances: use --instance-kind gpu")
    if settings.preferred_batch_sizes and max(settings.preferred_batch_sizes) > settings.max_batch_size:
        raise LoadtestError(
            f"preferred batch sizes {settings.preferred_batch_sizes} exceed --max-batch-size {settings.max_batch_size}"
        )
    if format == "tensorrt":
        from exporters.tensorrt import require_tensorrt

        require_tensorrt()


def _refuse_overwrite(repo: ModelRepository, names: Sequence[str], overwrite: bool, metadata: bool) -> None:
    if overwrite or not repo.path.exists():
        return
    if not repo.path.is_dir():
        raise LoadtestError(f"{repo.path} exists and is not a directory")
    taken = [name for name in names if repo.model_dir(name).exists()]
    if metadata and (repo.path / METADATA_FILE).exists():
        taken.append(METADATA_FILE)
    if taken:
        raise LoadtestError(f"{repo.path} already holds {', '.join(taken)}: pass --overwrite to replace them")


# ---- building one model ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Options:
    settings: TritonModelSettings
    opset: int
    atol: float
    exporter: Exporter
    format: Format
    fp16: bool
    engine_atol: float | None


def _build(
    item: _Loaded, tokenizer, labels: list[str], max_sequence: int, options: _Options, staging: Path, say: Progress
) -> _Built:
    from exporters.onnx_export import check_onnx, file_size, onnx_opset, onnx_parameter_count, onnx_signature

    version = staging / item.name / "1"
    version.mkdir(parents=True, exist_ok=True)
    onnx_path = version / "model.onnx"
    shapes = parity_shapes(options.settings.max_batch_size, max_sequence)
    if item.source.kind == "huggingface":
        import torch

        from exporters.onnx_export import export_classifier
        from exporters.spec import spec_for_model

        spec = spec_for_model(item.model, opset=options.opset, atol=options.atol, exporter=options.exporter)
        say(f"{item.name}: exporting {item.architecture} to ONNX (opset {spec.opset}, {spec.exporter} exporter)")
        export_seconds = export_classifier(item.model, spec, onnx_path, max_sequence)
        say(f"{item.name}: checking the graph")
        proto = check_onnx(onnx_path)
        input_names = list(spec.inputs)
        exporter = f"torch.onnx ({spec.exporter})"
        parameter_count = sum(p.numel() for p in item.model.parameters())
        reference, method = pytorch_runner(item.model), "pytorch-reference"
        reference_label = f"PyTorch {torch.__version__} ({item.architecture})"
    else:
        start = time.perf_counter()
        proto = _stage_onnx(item, onnx_path)
        export_seconds = time.perf_counter() - start
        input_names = [s.name for s in onnx_signature(proto)[0]]
        exporter = "copied (plain ONNX file)"
        parameter_count = onnx_parameter_count(proto)
        reference, method, reference_label = None, "batch-invariance", "ONNX Runtime, each row run alone"
    inputs, outputs = onnx_signature(proto)
    _require_dynamic_axes(f"{item.name} ({item.source.path.name})", inputs)
    start = time.perf_counter()
    candidate = onnxruntime_runner(onnx_path, OUTPUT_NAME)
    if reference is None:
        reference = rows_one_at_a_time(candidate)
    parity = check_parity(
        item.name,
        candidate,
        reference,
        tokenizer,
        input_names,
        shapes,
        method=method,
        candidate_label="ONNX Runtime" if method == "pytorch-reference" else "ONNX Runtime (batched)",
        reference_label=reference_label,
        atol=options.atol,
        progress=say,
    )
    parity_seconds = time.perf_counter() - start
    num_labels = _output_columns(candidate, tokenizer, input_names)
    if num_labels != len(labels):
        raise LoadtestError(f"{item.name} returns {num_labels} logits per row but {len(labels)} labels are given")

    platform, model_file, engine_parity, settings = "onnxruntime_onnx", onnx_path, None, options.settings
    if options.format == "tensorrt":
        model_file, engine_parity, inputs, outputs, engine_seconds, profile = _build_engine(
            item.name, onnx_path, input_names, tokenizer, shapes, max_sequence, options, say
        )
        export_seconds += engine_seconds
        # Triton may not form batches the engine has no profile for.
        settings = settings.model_copy(update={"max_batch_size": min(settings.max_batch_size, profile.max_batch)})
        platform = "tensorrt_plan"
        onnx_path.unlink()
        for extra in version.glob("model.onnx*"):
            extra.unlink()
    config = build_config(
        item.name,
        [TensorSpec(s.name, s.dtype, _dims(s.shape[1:])) for s in inputs],
        [TensorSpec(OUTPUT_NAME, _dtype_of(outputs, OUTPUT_NAME), (num_labels,))],
        settings,
        platform=platform,
    )
    manifest = ModelManifest(
        name=item.name,
        source=str(item.source.path),
        source_format=item.source.kind,
        architecture=item.architecture,
        task=TASK,
        format="tensorrt_plan" if platform == "tensorrt_plan" else "onnx",
        platform=platform,
        file=f"{item.name}/1/{model_file.name}",
        file_size_bytes=file_size(model_file),
        parameter_count=int(parameter_count),
        opset=onnx_opset(proto),
        exporter=exporter if platform == "onnxruntime_onnx" else f"{exporter} + TensorRT",
        inputs=inputs,
        outputs=outputs,
        num_labels=num_labels,
        parity=parity,
        engine_parity=engine_parity,
        export_seconds=round(export_seconds, 3),
        parity_seconds=round(parity_seconds, 3),
    )
    return _Built(name=item.name, staged=staging / item.name, config=config, manifest=manifest)


def _dtype_of(signatures: list[TensorSignature], name: str) -> str:
    return next((s.dtype for s in signatures if s.name == name), "float32")


def _dims(shape: Sequence[int | str | None]) -> tuple[int, ...]:
    return tuple(d if isinstance(d, int) and d > 0 else -1 for d in shape)


def _output_columns(runner, tokenizer, input_names: list[str]) -> int:
    from exporters.parity import sample_feed

    return int(runner(sample_feed(tokenizer, 1, 4, input_names)).shape[-1])


def _stage_onnx(item: _Loaded, destination: Path):
    """Copy a plain ONNX file into the staging folder, naming its output ``logits`` when it is not."""
    import onnx

    from exporters.onnx_export import check_onnx, onnx_signature

    _, outputs = onnx_signature(item.proto)
    chosen = next((s for s in outputs if s.name == OUTPUT_NAME), None)
    if chosen is not None and len(outputs) == 1 and not _has_external_data(item.proto):
        shutil.copyfile(item.source.path, destination)
        return check_onnx(destination)
    model = onnx.load(str(item.source.path), load_external_data=True)
    if chosen is None:
        old = next(s.name for s in outputs if s.dtype == "float32" and len(s.shape) == 2)
        for node in model.graph.node:
            node.output[:] = [OUTPUT_NAME if o == old else o for o in node.output]
            node.input[:] = [OUTPUT_NAME if i == old else i for i in node.input]
        for output in model.graph.output:
            if output.name == old:
                output.name = OUTPUT_NAME
    keep = [o for o in model.graph.output if o.name == OUTPUT_NAME]
    del model.graph.output[:]
    model.graph.output.extend(keep)
    large = model.ByteSize() > 1_800_000_000
    onnx.save_model(model, str(destination), save_as_external_data=large, location=f"{destination.name}.data")
    return check_onnx(destination)


def _has_external_data(proto) -> bool:
    return any(t.data_location == 1 for t in proto.graph.initializer)  # TensorProto.EXTERNAL


def _build_engine(name, onnx_path, input_names, tokenizer, shapes, max_sequence, options: _Options, say: Progress):
    from exporters.tensorrt import Profile, build_engine, engine_runner

    profile = Profile.for_serving(options.settings.max_batch_size, max_sequence)
    say(f"{name}: building a TensorRT engine ({'FP16' if options.fp16 else 'FP32'})")
    build = build_engine(onnx_path, onnx_path.with_name("model.plan"), input_names, profile, fp16=options.fp16)
    atol = options.engine_atol if options.engine_atol is not None else (2e-2 if options.fp16 else 1e-3)
    report: ParityReport = check_parity(
        name,
        engine_runner(build.path, OUTPUT_NAME),
        onnxruntime_runner(onnx_path, OUTPUT_NAME),
        tokenizer,
        input_names,
        shapes,
        method="onnxruntime-reference",
        candidate_label=f"TensorRT {build.tensorrt_version} engine",
        reference_label="ONNX Runtime (the exported ONNX)",
        atol=atol,
        progress=say,
    )
    return build.path, report, build.inputs, build.outputs, build.seconds, profile


# ---- writing the repository --------------------------------------------------------------------


def _install(repo: ModelRepository, built: list[_Built]) -> list[Path]:
    repo.path.mkdir(parents=True, exist_ok=True)
    written = []
    for item in built:
        target = repo.model_dir(item.name)
        if target.exists():
            shutil.rmtree(target)
        shutil.move(str(item.staged), str(target))
        written.append(repo.write_config(item.config))
        written.extend(sorted(p for p in (target / "1").iterdir()))
    return written


def _install_tokenizer(repo: ModelRepository, tokenizer, staging: Path) -> list[Path]:
    saved = staging / "tokenizer"
    tokenizer.save_pretrained(saved)
    if not (saved / "tokenizer.json").is_file():
        raise LoadtestError("the tokenizer could not be saved as tokenizer.json, which the repository ships")
    written = []
    for name in TOKENIZER_FILES:
        target = repo.path / name
        if target.exists():
            target.unlink()
        if (saved / name).is_file():
            shutil.copyfile(saved / name, target)
            written.append(target)
    return written


def _tokenizer_info(tokenizer, origin: Path, files: list[Path]) -> dict:
    return {
        "source": str(origin),
        "class": type(tokenizer).__name__,
        "vocab_size": len(tokenizer),
        "model_input_names": list(getattr(tokenizer, "model_input_names", [])),
        "files": [p.name for p in files],
    }


# ---- public API --------------------------------------------------------------------------------


def export_pair(
    teacher: Path,
    student: Path,
    repository: Path,
    settings: TritonModelSettings,
    *,
    opset: int = DEFAULT_OPSET,
    atol: float = DEFAULT_ATOL,
    names: tuple[str, str] = ("teacher", "student"),
    tokenizer: Path | None = None,
    labels: Sequence[str] | None = None,
    max_sequence_length: int | None = None,
    exporter: Exporter = "dynamo",
    format: Format = "onnx",
    fp16: bool = False,
    engine_atol: float | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> ExportReport:
    """Export teacher and student into a Triton repository after checking parity; raise on any failure.

    Writes ``<name>/config.pbtxt`` and ``<name>/1/model.onnx`` (or ``model.plan``) for both models, the
    tokenizer files, ``loadtest.json`` and ``export_manifest.json``. Nothing is written when a check fails.
    """
    start = time.perf_counter()
    say = progress or (lambda message: None)
    _check_names(names)
    repo = ModelRepository(repository)
    _refuse_overwrite(repo, names, overwrite, metadata=True)
    _check_settings(settings, format)
    sources = [resolve_source(teacher), resolve_source(student)]
    loaded = [_load(source, name, say) for source, name in zip(sources, names)]
    tok, origin = _resolve_tokenizer(tokenizer, loaded)
    label_names = _resolve_labels(labels, loaded)
    max_sequence = _resolve_max_sequence(max_sequence_length, tok, loaded)
    options = _Options(settings, opset, atol, exporter, format, fp16, engine_atol)
    repo.path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{repo.path.name}-export-", dir=repo.path.parent) as tmp:
        staging = Path(tmp)
        built = [_build(item, tok, label_names, max_sequence, options, staging, say) for item in loaded]
        say("writing the repository")
        files = _install(repo, built)
        tokenizer_files = _install_tokenizer(repo, tok, staging)
    metadata = RepositoryMetadata(
        teacher=names[0],
        student=names[1],
        labels=label_names,
        max_sequence_length=max_sequence,
        tokenizer="tokenizer.json",
        task=TASK,
    )
    files.append(repo.write_metadata(metadata))
    manifest = ExportManifest(
        settings=settings.model_dump(),
        max_sequence_length=max_sequence,
        labels=label_names,
        tokenizer=_tokenizer_info(tok, origin, tokenizer_files),
        models={b.name: b.manifest for b in built},
    )
    files.append(repo.write_manifest(manifest.model_dump(mode="json")))
    return ExportReport(repo.path, metadata, manifest, time.perf_counter() - start, files + tokenizer_files)


def export_model(
    source: Path,
    repository: Path,
    name: str,
    settings: TritonModelSettings,
    *,
    tokenizer: Path | None = None,
    labels: Sequence[str] | None = None,
    max_sequence_length: int | None = None,
    opset: int = DEFAULT_OPSET,
    atol: float = DEFAULT_ATOL,
    exporter: Exporter = "dynamo",
    format: Format = "onnx",
    fp16: bool = False,
    engine_atol: float | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> ModelManifest:
    """Export one model (an HF directory or a plain ONNX file) as ``<repository>/<name>/``.

    A plain ONNX file has no PyTorch reference, so its check is batch invariance: batched rows must equal
    the same rows run one at a time. The repository's manifest gains (or replaces) this model's entry; the
    tokenizer and ``loadtest.json`` are written only when the repository has none yet.
    """
    say = progress or (lambda message: None)
    _check_names([name])
    repo = ModelRepository(repository)
    _refuse_overwrite(repo, [name], overwrite, metadata=False)
    _check_settings(settings, format)
    item = _load(resolve_source(source), name, say)
    tok, origin = _resolve_tokenizer(tokenizer, [item])
    label_names = _resolve_labels(labels, [item])
    max_sequence = _resolve_max_sequence(max_sequence_length, tok, [item])
    if (repo.path / METADATA_FILE).exists():
        _check_joins(repo, tok, label_names, max_sequence)
    options = _Options(settings, opset, atol, exporter, format, fp16, engine_atol)
    repo.path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{repo.path.name}-export-", dir=repo.path.parent) as tmp:
        staging = Path(tmp)
        built = _build(item, tok, label_names, max_sequence, options, staging, say)
        say("writing the repository")
        _install(repo, [built])
        fresh = not (repo.path / METADATA_FILE).exists()
        tokenizer_files = _install_tokenizer(repo, tok, staging) if fresh else []
    if fresh:
        repo.write_metadata(
            RepositoryMetadata(
                teacher=name, student=name, labels=label_names, max_sequence_length=max_sequence, task=TASK
            )
        )
    existing = repo.read_manifest()
    if existing.get("models"):
        existing["models"][name] = built.manifest.model_dump(mode="json")
        repo.write_manifest(existing)
    else:
        manifest = ExportManifest(
            settings=settings.model_dump(),
            max_sequence_length=max_sequence,
            labels=label_names,
            tokenizer=_tokenizer_info(tok, origin, tokenizer_files),
            models={name: built.manifest},
        )
        repo.write_manifest(manifest.model_dump(mode="json"))
    return built.manifest


def _check_joins(repo: ModelRepository, tokenizer, labels: list[str], max_sequence: int) -> None:
    """A model added to an existing repository must speak its tokenizer and labels."""
    metadata = repo.read_metadata()
    if metadata.labels != labels:
        raise LoadtestError(f"{repo.path} serves labels {metadata.labels}; this model's are {labels}")
    if repo.load_tokenizer().get_vocab() != tokenizer.get_vocab():
        raise LoadtestError(f"this model's tokenizer differs from the one in {repo.path}: they must share a vocabulary")
    if max_sequence < metadata.max_sequence_length:
        raise LoadtestError(
            f"{repo.path} sends up to {metadata.max_sequence_length} tokens; this model takes only {max_sequence}"
        )


def parse_labels(value: str | None) -> list[str] | None:
    """--labels: "a,b,c", or a file holding a JSON list or one label per line."""
    if not value:
        return None
    path = Path(value)
    if path.is_file():
        text = path.read_text().strip()
        if text.startswith("["):
            try:
                labels = json.loads(text)
            except json.JSONDecodeError as exc:
                raise LoadtestError(f"{path}: not a JSON list of labels: {exc.msg}") from None
        else:
            labels = [line.strip() for line in text.splitlines() if line.strip()]
    else:
        labels = [part.strip() for part in value.split(",") if part.strip()]
    if not labels or not all(isinstance(label, str) for label in labels):
        raise LoadtestError(f"--labels {value!r} names no labels")
    return labels


__all__ = ["ExportReport", "Source", "TensorSignature", "export_model", "export_pair", "parse_labels", "resolve_source"]
