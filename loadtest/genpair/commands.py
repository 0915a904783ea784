"""`loadtest genpair`: build (or reuse) the generative teacher/student pair and say what it is."""

from __future__ import annotations

from pathlib import Path

import typer


def genpair(
    quick: bool = typer.Option(False, "--quick", help="The small, fast pair the tests use (seconds of training)."),
    cache_dir: Path = typer.Option(None, "--cache-dir", help="Pair cache (default $LOADTEST_CACHE or ~/.cache/loadtest)."),
    export_to: Path = typer.Option(None, "--export", help="Also export both into this Triton repository "
                                   "(ONNX Runtime GenAI builder, parity-checked, decoupled streaming models)."),
) -> None:
    """Build the generative pair (task corpus with references, BPE tokenizer, Llama teacher, distilled student).

    Cached by a hash of its settings: a second run returns at once. Prints where the Hugging Face model
    directories and the frozen evaluation split are, and the PyTorch-measured quality of both.
    """
    import json

    import pandas as pd
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from loadtest.genpair import GenSettings, build_or_reuse

    console = Console()
    settings = GenSettings.quick() if quick else GenSettings()
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.fields[note]}"),
                  TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task("generative pair", total=1.0, note="")
        pair = build_or_reuse(settings, cache_dir=cache_dir,
                              progress=lambda m, f: progress.update(task, completed=f, note=m))
    info = pair.info()
    console.print(f"{'reused' if pair.reused else 'built'} {pair.root} (build {pair.build_seconds:.0f} s)")
    for name in ("teacher", "student"):
        build = json.loads((getattr(pair, f"{name}_dir") / "build_info.json").read_text())
        forced = info["eval"][name]["teacher_forced"]
        greedy = info["eval"][name]["greedy_sample"]
        extra = (f", top-1 agreement with the teacher {forced['top1_agreement']:.3f}, "
                 f"KL(T||S) {forced['kl_teacher_student']:.3f}") if name == "student" else ""
        console.print(f"{name}: {build['architecture']['num_layers']} layers, hidden {build['architecture']['hidden_size']}, "
                      f"{build['parameters']:,} parameters; perplexity {forced['perplexity']:.3f}{extra}; greedy exact "
                      f"match {greedy['exact_match']:.3f} on {greedy['n']} prompts, JSON adherence "
                      f"{greedy['format_adherence']:.3f} on {greedy['n_structured']}", highlight=False)
    console.print(f"frozen evaluation split: {pair.eval_path} ({info['slices']})", highlight=False)
    if export_to is not None:
        from exporters.causal_lm import export_causal_pair

        prompts = pd.read_parquet(pair.eval_path)["prompt"].tolist()[:24]
        with console.status("exporting") as status:
            manifest = export_causal_pair(pair.teacher_dir, pair.student_dir, export_to, prompts=prompts,
                                          max_new_tokens=48, overwrite=True, progress=status.update)
        for m in manifest.models.values():
            console.print(f"{m.name}: parity passed, worst logit |Δ| {m.parity.worst_max_abs_diff:.1e}, greedy tokens "
                          f"identical on {m.parity.greedy.onnxruntime_genai_identical}/{m.parity.greedy.prompts} prompts "
                          f"({m.parity.greedy.tokens_compared} tokens)", highlight=False)
        console.print(f"repository: {export_to}")


def register(app: typer.Typer) -> None:
    app.command("genpair", short_help="Build (or reuse) the generative teacher/student pair; optionally export it.")(genpair)
