"""CLI: ``loadtest eval`` and ``loadtest gate``. Heavy imports stay inside the command bodies."""

from __future__ import annotations

from pathlib import Path

import typer

from loadtest.console import output_console


def eval_command(
    dataset: Path = typer.Option(..., "--dataset", "-d", help="Frozen evaluation set: .parquet, .jsonl or .csv with 'text' (or 'input_ids') and 'label' columns; extra bool/str columns become slices."),
    host: str = typer.Option("http://127.0.0.1:8000", "--host", help="Triton endpoint (http://HOST:PORT, or grpc://HOST:PORT)."),
    repo: Path = typer.Option(Path("model_repository"), "--repo", help="Optional loadtest repository: labels, tokenizer, sequence limit, teacher/student names. The models' inputs are read from the server."),
    teacher: str | None = typer.Option(None, "--teacher", help="Teacher model name on the server (default: the repository's loadtest.json)."),
    student: str | None = typer.Option(None, "--student", help="Student model name on the server (default: the repository's loadtest.json)."),
    run_dir: Path | None = typer.Option(None, "--run-dir", help="Write into this existing run directory (e.g. a load test's) so its report.html shows quality too."),
    results: Path = typer.Option(Path("results"), "--results", help="Without --run-dir: create results/<run-id>-eval/ under this folder."),
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="Examples per request (capped by each model's max_batch_size)."),
    rare_threshold: float = typer.Option(0.10, "--rare-threshold", help="A class below this fraction of the set is 'rare' (automatic rare_class slice; a dataset 'rare_class' column takes precedence)."),
    hard_margin: float = typer.Option(0.20, "--hard-margin", help="Teacher top-1 minus top-2 probability below this marks a hard case."),
    min_slice_n: int = typer.Option(30, "--min-slice-n", min=1, help="Slices with fewer examples are flagged 'unstable' (shown, not hidden)."),
    resamples: int = typer.Option(1000, "--bootstrap-resamples", min=100, help="Bootstrap resamples for the intervals of KL, JS, F1, ECE and the drops (seeded)."),
    seed: int = typer.Option(0, "--seed", help="Bootstrap seed."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace quality results already in --run-dir."),
    timeout: float = typer.Option(120.0, "--timeout", help="Seconds to wait for one batch's answer."),
    labels: str | None = typer.Option(None, "--labels", help="Class names in the order of the models' scores, comma-separated (default: the repository's loadtest.json; needed without one)."),
    tokenizer: Path | None = typer.Option(None, "--tokenizer", help="tokenizer.json (or its folder) turning the set's text into token ids, for models that take token ids (default: the repository's)."),
    wait_ready: float = typer.Option(0.0, "--wait-ready", help="Wait up to SECONDS for the server and both models to be READY."),
    group_column: str | None = typer.Option(None, "--group-column", help="Fairness across the groups of this dataset column (e.g. segment): per-group accuracy of both models, the largest gap, and whether distillation widened it."),
    baseline: str | None = typer.Option(None, "--baseline", help="A previous eval run (directory or run id) on the identical frozen set: per-slice deltas of this student against that one, with McNemar / paired bootstrap. Refused when the set differs."),
    openai: bool = typer.Option(False, "--openai", help="Generative: --host is an OpenAI-compatible server (vLLM, TensorRT-LLM, SGLang, transformers serve); API key from $OPENAI_API_KEY if set."),
    max_tokens: int = typer.Option(64, "--max-tokens", min=1, help="Generative: most tokens per answer (the same for both models; greedy, temperature 0)."),
    concurrency: int = typer.Option(4, "--concurrency", min=1, help="Generative: requests in flight at once while answering."),
    chat: bool = typer.Option(False, "--chat", help="Generative, OpenAI: ask /v1/chat/completions (prompt as one user message) instead of /v1/completions."),
    judge: str | None = typer.Option(None, "--judge", help="Generative: judged equivalence by 'teacher' (the served teacher) or an OpenAI-compatible URL (with --judge-model)."),
    judge_model: str | None = typer.Option(None, "--judge-model", help="The judge's model name on --judge URL."),
    judge_labels: Path | None = typer.Option(None, "--judge-labels", help="Labels (id, equivalent) to validate the judge; without them judged figures are marked unvalidated."),
    reference_separator: str = typer.Option(" ", "--reference-separator", help="Generative, teacher-forced: text between the prompt and its reference (as the model's answers begin)."),
) -> None:
    """Measure distillation quality through the served teacher and student, per slice: classifiers (agreement, KL, accuracy, ECE) or generators (perplexity, top-1 agreement, KL, exact match, chrF, ROUGE-L, format adherence, judged equivalence).

    Sends the evaluation set through both models on Triton (batched), keeps every example's probabilities and writes quality/per_example.parquet, metrics.csv and summary.json. Inputs longer than the repository's max_sequence_length are truncated to it, counted and reported.
    """
    from rich.console import Console

    from loadtest.quality.runner import EvalSettings, run_eval
    from loadtest.quality.terminal import render_quality

    from loadtest.rundir import resolve_run

    console = Console(stderr=True)
    if _is_generative(dataset, repo, openai):
        import os

        from loadtest.quality.genrunner import GenEvalSettings, run_generative_eval

        gen_settings = GenEvalSettings(
            dataset=dataset, host=host, openai=openai, repository=repo if repo.is_dir() else None, teacher=teacher, student=student,
            run_dir=run_dir, results=results, max_tokens=max_tokens, seed=seed, concurrency=concurrency, chat=chat,
            reference_separator=reference_separator, min_slice_n=min_slice_n, n_resamples=resamples, group_column=group_column,
            baseline=resolve_run(baseline, results) if baseline else None, judge=judge, judge_model=judge_model,
            judge_labels=judge_labels, api_key=os.environ.get("OPENAI_API_KEY"), overwrite=overwrite, timeout_s=timeout,
        )
        result = run_generative_eval(gen_settings, console=console)
        out = output_console()
        render_quality(result, out)
        out.print(f"quality results: [bold]{result.run_dir / 'quality'}[/]")
        out.print(f"gate it: loadtest gate {result.run_dir} --policy examples/gate-generative.yaml", highlight=False)
        return
    settings = EvalSettings(
        dataset=dataset,
        host=host,
        repository=repo,
        teacher=teacher,
        student=student,
        run_dir=run_dir,
        results=results,
        batch_size=batch_size,
        rare_threshold=rare_threshold,
        hard_margin=hard_margin,
        min_slice_n=min_slice_n,
        n_resamples=resamples,
        seed=seed,
        overwrite=overwrite,
        timeout_s=timeout,
        labels=[x.strip() for x in labels.split(",") if x.strip()] if labels else None,
        tokenizer=tokenizer,
        wait_ready_s=wait_ready,
        group_column=group_column,
        baseline=resolve_run(baseline, results) if baseline else None,
    )
    result = run_eval(settings, console=console)
    out = output_console()
    render_quality(result, out)
    out.print(f"quality results: [bold]{result.run_dir / 'quality'}[/]")
    out.print(f"gate it: loadtest gate {result.run_dir} --policy examples/gate.yaml", highlight=False)


def _is_generative(dataset: Path, repo: Path, openai: bool) -> bool:
    """A generative evaluation: an OpenAI-compatible server, a text-generation repository, or a prompt/reference set."""
    import json

    if openai:
        return True
    metadata = repo / "loadtest.json"
    if metadata.is_file():
        try:
            if json.loads(metadata.read_text()).get("task") == "text-generation":
                return True
        except json.JSONDecodeError:
            pass
    from loadtest.quality.dataset import read_table

    try:
        columns = set(map(str, read_table(dataset).columns))
    except Exception:  # the classifier path reports the problem in its own words
        return False
    return {"prompt", "reference"} <= columns and "text" not in columns


def gate_command(
    run: str = typer.Argument(..., help="Run directory (or run id under results/) holding quality/metrics.csv and/or tables/comparison.csv."),
    policy: Path = typer.Option(..., "--policy", "-p", help="Gate policy YAML (see examples/gate.yaml)."),
    baseline: str | None = typer.Option(None, "--baseline", help="A previous run: the policy's 'regression' rules compare against it (default: the run `loadtest eval --baseline` recorded). Refused when its frozen set differs."),
    json_out: Path | None = typer.Option(None, "--json", help="Also write every check as JSON here (for CI artefacts)."),
) -> None:
    """Pass or fail a release on a run's figures and a YAML policy: prints each check, exits 0 (pass) or 1 (fail)."""
    import json

    from rich.markup import escape
    from rich.table import Table

    from loadtest.quality.gate import evaluate_gate, format_value, load_policy
    from loadtest.rundir import resolve_run

    gate_policy = load_policy(policy)
    run_dir = resolve_run(run)
    baseline_dir = resolve_run(baseline) if baseline else None
    report = evaluate_gate(run_dir, gate_policy, baseline_dir, str(policy))

    console = output_console()
    styles = {"pass": "green", "fail": "bold red", "warn": "yellow", "not measured": "dim", "skipped": "dim"}
    table = Table(title=f"Gate: {run_dir} against {policy}" + (f" (baseline {report.baseline})" if report.baseline else ""), title_justify="left")
    table.add_column("status", no_wrap=True)
    table.add_column("metric", no_wrap=True)
    table.add_column("model", no_wrap=True)
    table.add_column("slice", overflow="fold")
    table.add_column("n", justify="right", no_wrap=True)
    table.add_column("value", justify="right", no_wrap=True)
    table.add_column("limit", no_wrap=True)
    table.add_column("detail", ratio=1)
    for check in report.checks:
        style = styles.get(check.status, "white")
        detail = check.detail if check.kind == "threshold" else f"[{check.kind}] {check.detail}".strip()
        table.add_row(
            f"[{style}]{check.status.upper()}[/]",
            check.metric,
            "ratio" if check.model == "student/teacher" else check.model,
            check.slice,
            "" if check.n is None else str(check.n),
            format_value(check.value),
            check.limit,
            escape(detail),
        )
    console.print(table)
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(report.to_dict(), indent=2, default=str) + "\n")
    failures = report.failures
    if failures:
        listed = "; ".join(f"{c.metric} ({c.model}) on {c.slice}: {format_value(c.value)} vs {c.limit}" for c in failures[:6])
        more = f" (+{len(failures) - 6} more)" if len(failures) > 6 else ""
        console.print(f"[bold red]FAIL[/]: {len(failures)} of {len(report.checks)} checks failed: {listed}{more}", highlight=False)
        raise SystemExit(1)  # not typer.Exit: under standalone_mode=False click would return it, and exit 0
    console.print(f"[bold green]PASS[/]: {len(report.checks)} checks, none failed", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("eval", help=eval_command.__doc__)(eval_command)
    app.command("gate", help=gate_command.__doc__)(gate_command)
