"""`loadtest export`: teacher and student -> a checked Triton model repository.

Only typer and the standard library at import time: torch, onnx and transformers load inside the command,
so ``loadtest --help`` stays instant.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Optional

import typer


class InstanceKind(str, Enum):
    cpu = "cpu"
    gpu = "gpu"


class OutputFormat(str, Enum):
    onnx = "onnx"
    tensorrt = "tensorrt"


class ExporterKind(str, Enum):
    dynamo = "dynamo"
    torchscript = "torchscript"


class Precision(str, Enum):
    FP16 = "FP16"
    FP32 = "FP32"


EXPORT_HELP = (
    "Export a teacher and a student to ONNX in a Triton model repository, refusing any export that fails parity.\n\n"
    "Each source is a Hugging Face model directory (save_pretrained) or a plain .onnx file. ONNX Runtime is "
    "compared with PyTorch at batch 1, an odd batch and the maximum batch, on short to maximum-length padded text "
    "(a plain ONNX file, having no PyTorch reference, is checked for batch invariance instead); a difference above "
    "--atol or an argmax disagreement at any shape is an error and nothing is written.\n\n"
    "The repository gets <name>/config.pbtxt and <name>/1/model.onnx per model, plus the shared tokenizer, "
    "loadtest.json (labels, sequence limit) and export_manifest.json (sizes, parameters, opset, signature, parity)."
)


def export(
    teacher: Path = typer.Option(..., "--teacher", help="Teacher: a Hugging Face model directory or an .onnx file."),
    student: Optional[Path] = typer.Option(
        None, "--student", help="Student: a Hugging Face model directory or an .onnx file (omit to export one model)."
    ),
    repo: Path = typer.Option(Path("model_repository"), "--repo", help="Triton model repository to write."),
    max_batch_size: int = typer.Option(
        32, "--max-batch-size", min=1, help="Largest batch Triton may form; also the largest parity batch."
    ),
    preferred_batch_size: list[int] = typer.Option(
        [], "--preferred-batch-size", help="Dynamic batcher's preferred size (repeatable; usually best left unset)."
    ),
    max_queue_delay_us: int = typer.Option(
        1000, "--max-queue-delay-us", min=0, help="How long the dynamic batcher waits for a fuller batch (µs)."
    ),
    no_dynamic_batching: bool = typer.Option(
        False, "--no-dynamic-batching", help="Serve requests as they come, without Triton's dynamic batcher."
    ),
    instance_kind: Optional[InstanceKind] = typer.Option(
        None,
        "--instance-kind",
        case_sensitive=False,
        help="Where model instances run (default: gpu for --format tensorrt, else cpu).",
    ),
    instance_count: int = typer.Option(1, "--instance-count", min=1, help="Model instances per device."),
    opset: int = typer.Option(18, "--opset", min=7, max=23, help="ONNX opset to export to."),
    atol: float = typer.Option(1e-4, "--atol", min=0.0, help="Largest allowed |ONNX - PyTorch| on any logit."),
    format: OutputFormat = typer.Option(
        OutputFormat.onnx,
        "--format",
        case_sensitive=False,
        help="onnx (ONNX Runtime) or tensorrt (a TensorRT plan; needs a GPU).",
    ),
    fp16: bool = typer.Option(False, "--fp16", help="Build TensorRT engines in FP16 (--format tensorrt)."),
    tensorrt_accelerator: bool = typer.Option(
        False, "--tensorrt-accelerator", help="Let ONNX Runtime run the ONNX model through TensorRT on GPU instances."
    ),
    tensorrt_precision: Precision = typer.Option(
        Precision.FP16, "--tensorrt-precision", help="Precision of --tensorrt-accelerator."
    ),
    tokenizer: Optional[Path] = typer.Option(
        None,
        "--tokenizer",
        help="Tokenizer directory (default: the one saved beside the teacher or student). Needed for .onnx sources.",
    ),
    labels: Optional[str] = typer.Option(
        None,
        "--labels",
        help="Label names: 'a,b,c', or a file with a JSON list or one label per line (default: the models' id2label).",
    ),
    max_sequence_length: Optional[int] = typer.Option(
        None,
        "--max-sequence-length",
        min=2,
        help="Longest sequence served (default: the smallest of the tokenizer's and the models' limits).",
    ),
    exporter: ExporterKind = typer.Option(
        ExporterKind.dynamo,
        "--exporter",
        case_sensitive=False,
        help="torch.onnx path: dynamo (torch.export, symbolic axes) or the legacy torchscript tracer "
        "(for models torch.export cannot capture; parity-checked all the same).",
    ),
    teacher_name: str = typer.Option("teacher", "--teacher-name", help="Model name of the teacher in Triton."),
    student_name: str = typer.Option("student", "--student-name", help="Model name of the student in Triton."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace models (and metadata) already in --repo."),
    with_tokenizer: bool = typer.Option(
        False, "--with-tokenizer",
        help="Also write NAME_text: a Triton ensemble tokenizing BYTES text inside Triton (Python backend), then NAME.",
    ),
) -> None:
    """Export teacher and student to ONNX in a Triton model repository, with parity checks."""
    import time

    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from loadtest.repository import TritonModelSettings

    from exporters.pipeline import export_model, export_pair, parse_labels

    chosen_kind = instance_kind.value if instance_kind else ("gpu" if format == OutputFormat.tensorrt else "cpu")
    settings = TritonModelSettings(
        max_batch_size=max_batch_size,
        preferred_batch_sizes=sorted(set(preferred_batch_size)),
        max_queue_delay_us=max_queue_delay_us,
        dynamic_batching=not no_dynamic_batching,
        instance_kind=chosen_kind,
        instance_count=instance_count,
        tensorrt_accelerator=tensorrt_accelerator,
        tensorrt_precision=tensorrt_precision.value,
    )
    common = dict(
        tokenizer=tokenizer,
        labels=parse_labels(labels),
        max_sequence_length=max_sequence_length,
        opset=opset,
        atol=atol,
        exporter=exporter.value,
        format=format.value,
        fp16=fp16,
        overwrite=overwrite,
    )
    console = Console(stderr=True)
    start = time.perf_counter()
    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console, transient=True
    ) as bar:
        task = bar.add_task("starting", total=None)
        last = {"message": None, "at": time.perf_counter()}

        def progress(message: str) -> None:
            now = time.perf_counter()
            if last["message"]:
                bar.console.print(f"[green]✓[/] {last['message']} [dim]({now - last['at']:.1f} s)[/]", highlight=False)
            last.update(message=message, at=now)
            bar.update(task, description=message)

        if student is None:
            manifests = [export_model(teacher, repo, teacher_name, settings, progress=progress, **common)]
        else:
            report = export_pair(
                teacher, student, repo, settings, names=(teacher_name, student_name), progress=progress, **common
            )
            manifests = list(report.models.values())
        if with_tokenizer:
            from exporters.text_ensemble import write_text_ensembles

            progress("writing the text ensembles (tokenizer inside Triton)")
            write_text_ensembles(repo, [teacher_name] if student is None else [teacher_name, student_name])
        progress("done")
    _print_summary(Console(), repo, manifests, time.perf_counter() - start)


def _print_summary(console, repo: Path, manifests, seconds: float) -> None:
    from rich.table import Table

    table = Table(title=f"Exported to {repo} in {seconds:.1f} s", title_justify="left")
    for column in ("model", "format", "params", "size MB", "opset", "worst max|Δ|", "agreement", "parity"):
        table.add_column(column, justify="left" if column in ("model", "format", "parity") else "right")
    for m in manifests:
        parity = m.engine_parity or m.parity
        worst, agreement = parity.worst_max_abs_diff, parity.min_argmax_agreement
        table.add_row(
            m.name,
            m.format,
            f"{m.parameter_count:,}",
            f"{m.size_mb:.2f}",
            str(m.opset or "-"),
            f"{worst:.1e}" if worst is not None else "-",
            f"{agreement:.3f}" if agreement is not None else "-",
            "[green]passed[/]" if parity.passed else "[red]failed[/]",
        )
    console.print(table)
    for m in manifests:
        parity = m.engine_parity or m.parity
        shapes = ", ".join(f"{s.batch}×{s.sequence}" for s in parity.shapes)
        console.print(
            f"{m.name}: {parity.candidate} vs {parity.reference} ({parity.method}) at batch×sequence {shapes}, "
            f"atol {parity.atol:g}",
            highlight=False,
        )
    console.print(f"manifest: {repo / 'export_manifest.json'}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add `loadtest export` to the CLI."""
    app.command(
        "export",
        help=EXPORT_HELP,
        short_help="Export teacher and student to ONNX in a Triton repository, with parity checks.",
    )(export)
