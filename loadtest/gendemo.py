"""`loadtest demo --generative`: the generative decision end to end on this machine, in one command.

Build (or reuse) the generative pair -> export both to ONNX with a KV cache, parity-checked, as decoupled
streaming models (plus the scoring models for teacher-forced quality) -> serve them on the embedded Triton ->
sweep each model alone for the highest arrival rate whose P95 TTFT and P95 ITL meet the SLO (open loop,
Triton's HTTP generate_stream, fixed output length) -> evaluate quality through the served models on the frozen
evaluation split (per slice and per segment) -> analyze -> verdict: how much more arrival rate the student
sustains under the same SLO, with the intervals the search bracketed. Nothing here is simulated.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class GenDemoOptions:
    """What `loadtest demo --generative` takes; the quick preset is what the tests run."""

    quick: bool = False
    repository: Path = Path("model_repository_gen")
    results: Path = Path("results")
    cache_dir: Path | None = None
    ttft_ms: float = 250.0
    itl_ms: float = 25.0
    output_tokens: int = 32
    sweep_start: float = 16.0  # the teacher's first rate; the student starts at the teacher's capacity (chain_start)
    step_seconds: float = 8.0
    warmup_seconds: float = 2.0
    max_steps: int = 9
    max_rate: float = 400.0  # the quick student sustains ~190 req/s: the sweep's default 200 cap would cut it off
    min_requests: int = 40
    quality: bool = True
    eval_limit: int | None = None  # evaluate on the first N frozen prompts (None: all)

    @classmethod
    def quick_preset(cls, **overrides) -> GenDemoOptions:
        base = dict(quick=True, output_tokens=16, step_seconds=5.0, warmup_seconds=1.0, max_steps=5, min_requests=40,
                    sweep_start=20.0, eval_limit=60)
        return cls(**{**base, **overrides})


def run_generative_demo(options: GenDemoOptions, console=None) -> Path:
    """Run the generative demo; returns the sweep's run directory (records, tables, report.html, quality/)."""
    import pandas as pd
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from exporters.causal_lm import export_causal_pair
    from loadtest.analysis import generative, generative_report
    from loadtest.analysis.generative import SLO
    from loadtest.analysis.generative_sweep import GenerativeSweepSettings, GenerativeTarget, run_generative_sweep
    from loadtest.console import output_console
    from loadtest.genpair import GenSettings, build_or_reuse
    from loadtest.quality.scoring_model import add_scoring_model
    from loadtest.serving import EmbeddedTriton, ServerPorts

    console = console or output_console()
    started = time.time()
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.fields[note]}"),
               TimeElapsedColumn())

    # 1. the pair
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("generative pair", total=1.0, note="")
        pair = build_or_reuse(GenSettings.quick() if options.quick else GenSettings(), cache_dir=options.cache_dir,
                              progress=lambda m, f: progress.update(task, completed=f, note=m))
        progress.update(task, completed=1.0,
                        note="reused from cache" if pair.reused else f"built in {pair.build_seconds:.0f} s")

    # 2. export with parity, plus the scoring models the quality evaluation reads log-probs from
    eval_df = pd.read_parquet(pair.eval_path)
    with console.status("export + parity ...") as status:
        manifest = export_causal_pair(pair.teacher_dir, pair.student_dir, options.repository,
                                      prompts=eval_df["prompt"].tolist()[:24], max_new_tokens=48, overwrite=True,
                                      progress=status.update)
        for name in ("teacher", "student"):
            add_scoring_model(options.repository, name)
    for m in manifest.models.values():
        console.print(f"{m.name}: {m.num_layers} layers, {m.parameter_count:,} parameters, parity passed (worst "
                      f"logit |Δ| {m.parity.worst_max_abs_diff:.1e}; greedy tokens identical on "
                      f"{m.parity.greedy.onnxruntime_genai_identical}/{m.parity.greedy.prompts} prompts)",
                      highlight=False)

    # 3. serve, sweep each model alone, evaluate
    slo = SLO(ttft_ms=options.ttft_ms, itl_ms=options.itl_ms)
    settings = GenerativeSweepSettings(slo=slo, start=options.sweep_start, warmup_s=options.warmup_seconds,
                                       duration_s=options.step_seconds, max_steps=options.max_steps,
                                       min_requests=options.min_requests, max_rate=options.max_rate,
                                       chain_start=True)
    log_dir = options.results / ".triton-logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    with console.status("starting the embedded Triton ..."):
        server = EmbeddedTriton(options.repository, ServerPorts(0, 0, 0), log_file=log_dir / f"gen-{int(started)}.log")
        server.start()
    try:
        console.print(f"Triton READY on {server.http_url} (gRPC {server.grpc_url})")
        load_args = ("--api", "triton-generate", "--tokenizer", str(options.repository / "tokenizer.json"),
                     "--dataset", str(pair.eval_path), "--text-column", "prompt",
                     "--output-lengths", f"fixed:{options.output_tokens}", "--ignore-eos")
        console.print(f"sweeping teacher then student, each alone, for {slo.describe()} at P95: open-loop steps "
                      f"from {settings.start:g} req/s (the student from the teacher's capacity), ×{settings.growth:g} "
                      f"then bisection to ±{settings.tolerance:.0%}, at most {settings.max_steps} steps each")
        outcome = run_generative_sweep(
            GenerativeTarget(server.http_url, load_args), settings, ["teacher", "student"],
            {"teacher": "teacher", "student": "student"},
            {"api": "triton-generate", "output_lengths": f"fixed:{options.output_tokens}", "ignore_eos": True},
            results_dir=options.results, console=console)
        run_dir = outcome.run_dir
        if options.quality:
            from loadtest.quality.genrunner import GenEvalSettings, run_generative_eval

            dataset = pair.eval_path
            if options.eval_limit:
                dataset = run_dir / "eval_subset.parquet"
                eval_df.head(options.eval_limit).to_parquet(dataset, index=False)
            run_generative_eval(GenEvalSettings(dataset=dataset, host=server.http_url, repository=options.repository,
                                                run_dir=run_dir, max_tokens=48, group_column="segment",
                                                min_slice_n=10 if options.quick else 30), console=console)
    finally:
        with console.status("stopping Triton ..."):
            server.stop()

    gate = None
    if options.quality:  # release gate over the quality results: each slice's drop against the overall drop
        from loadtest.quality.releasegate import run_release_gate

        gate = run_release_gate(run_dir, console=console)

    # 4. analyze and decide
    analysis = generative.compute(run_dir, slo)
    tables, report = generative_report.write_outputs(analysis)
    generative_report.render_terminal(analysis, console, tables, report)
    line = capacity_verdict(outcome.results.get("teacher"), outcome.results.get("student"), slo)
    (run_dir / "tables" / "capacity_verdict.txt").write_text(line + "\n")
    console.print(f"\n[bold]{line}[/]")
    if gate is not None:  # the demo exits 0 either way; `loadtest gate RUN --policy ...` gives the exit status
        console.print(gate.verdict, style="bold " + ("green" if gate.passed else "red"), highlight=False, markup=False)
    console.print(f"[bold green]done[/] in {time.time() - started:.0f} s: {run_dir}/report.html, tables in "
                  f"{run_dir}/tables/")
    return run_dir


def capacity_verdict(teacher, student, slo) -> str:
    """How much more arrival rate the student sustains under the SLO, from both searches' brackets.

    Each search brackets its capacity between the highest passing rate and the lowest failing one; the
    ratio's interval is [student low / teacher high, student high / teacher low].
    """
    def bracket(result):
        if result is None or result.best is None:
            return None, None
        return result.best.rate, result.failing_rate

    t_low, t_high = bracket(teacher)
    s_low, s_high = bracket(student)
    if t_low is None or s_low is None:
        who = "teacher" if t_low is None else "student"
        return f"Verdict: no capacity for the {who} under {slo.describe()} (no step met the SLO): no comparison."
    point = s_low / t_low
    low = s_low / t_high if t_high else None
    high = s_high / t_low if s_high else None
    interval = (f"[{low:.2f}×, {high:.2f}×]" if low is not None and high is not None
                else f"[{low:.2f}×, open]" if low is not None else "[open]")
    word = "more" if point > 1 else "less"
    return (f"Verdict: under {slo.describe()} at P95 the student sustains {s_low:g} req/s (fails at "
            f"{s_high if s_high is not None else '?'}) against the teacher's {t_low:g} (fails at "
            f"{t_high if t_high is not None else '?'}): {point:.2f}× the teacher's arrival rate ({word}), "
            f"interval {interval} from the brackets.")
