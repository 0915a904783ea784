"""``loadtest eval``: the evaluation set through both served models, scored, sliced, read and written.

``assemble`` is the pure part (served logits in, per-example table + metrics + summary out) so it can be
checked without a server; ``run_eval`` adds the repository, the Triton client, progress and the files.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from loadtest.credentials import redact_url
from loadtest.errors import LoadtestError
from loadtest.quality import metrics as m
from loadtest.quality.dataset import EncodedInputs, EvalDataset, frozen_set_hash
from loadtest.quality.findings import Finding, FindingThresholds, derive_findings
from loadtest.quality.scoring import ModelOutputs, ScoreSettings, score, slice_count
from loadtest.quality.slices import SliceSettings, assign_slices

SUMMARY_SCHEMA = 1


@dataclass
class EvalSettings:
    """Everything ``loadtest eval`` takes; the defaults are the CLI's."""

    dataset: Path
    host: str = "http://127.0.0.1:8000"
    repository: Path = Path("model_repository")
    teacher: str | None = None  # default: loadtest.json's
    student: str | None = None
    run_dir: Path | None = None  # write into this existing run (e.g. the demo's)
    results: Path = Path("results")  # else create results/<run-id>-eval/
    batch_size: int = 32
    rare_threshold: float = 0.10
    hard_margin: float = 0.20
    min_slice_n: int = 30
    n_resamples: int = 1000
    seed: int = 0
    overwrite: bool = False
    timeout_s: float = 120.0
    show_progress: bool = True
    labels: list[str] | None = None  # default: loadtest.json's (needed without a repository)
    tokenizer: Path | None = None  # default: the repository's (token-input models fed text)
    wait_ready_s: float = 0.0
    group_column: str | None = None  # fairness across the groups of this dataset column
    baseline: Path | None = None  # a previous eval run on the identical frozen set (version over version)


@dataclass
class QualityResults:
    """What an evaluation produced (and what ``quality/`` holds)."""

    per_example: pd.DataFrame
    metrics: pd.DataFrame
    summary: dict
    findings: list[Finding] = field(default_factory=list)
    run_dir: Path | None = None


def assemble(
    dataset: EvalDataset,
    encoded: EncodedInputs,
    logits: dict[str, np.ndarray],
    labels: list[str],
    slice_settings: SliceSettings | None = None,
    score_settings: ScoreSettings | None = None,
    comparison: pd.DataFrame | None = None,
    progress=None,
    group_column: str | None = None,
) -> QualityResults:
    """Per-example results, metrics and summary from both models' served logits (dataset order)."""
    slice_settings = slice_settings or SliceSettings()
    score_settings = score_settings or ScoreSettings()
    k = len(labels)
    outputs = {}
    for role in ("teacher", "student"):
        values = np.asarray(logits[role], dtype=np.float64)
        if values.shape != (len(dataset), k):
            raise LoadtestError(
                f"the {role} returned {values.shape[1] if values.ndim == 2 else '?'} scores per example but the repository has {k} labels"
            )
        with np.errstate(all="ignore"):
            outputs[role] = ModelOutputs(logits=values, probs=m.softmax(values))

    frame = dataset.frame
    per = pd.DataFrame({"id": frame["id"]})
    if "text" in frame.columns:
        per["text"] = frame["text"]
    elif "input_ids" in frame.columns:
        per["input_ids"] = frame["input_ids"]
    per["input_tokens"] = encoded.input_tokens
    per["n_tokens"] = encoded.sent_tokens
    per["truncated"] = encoded.truncated
    per["label"] = frame["label"]
    per["label_id"] = frame["label_id"].astype("int64")
    for role in ("teacher", "student"):
        out = outputs[role]
        nonfinite = m.nonfinite_rows(out.logits) | m.nonfinite_rows(out.probs)
        pred = out.pred
        per[f"{role}_logits"] = list(out.logits)
        per[f"{role}_probs"] = list(out.probs)
        per[f"{role}_pred"] = np.where(nonfinite, -1, pred).astype("int64")
        per[f"{role}_pred_label"] = [labels[p] if ok else None for p, ok in zip(pred, ~nonfinite)]
        per[f"{role}_confidence"] = np.where(nonfinite, np.nan, np.nan_to_num(out.probs).max(axis=1))
        per[f"{role}_nonfinite"] = nonfinite
    per["teacher_margin"] = np.where(per["teacher_nonfinite"], np.nan, m.margin(np.nan_to_num(outputs["teacher"].probs)))
    finite = ~(per["teacher_nonfinite"] | per["student_nonfinite"]).to_numpy()
    per["agree"] = (per["teacher_pred"] == per["student_pred"]) & finite
    kl = np.full(len(per), np.nan)
    js = np.full(len(per), np.nan)
    kl[finite] = m.kl_divergence(outputs["teacher"].probs[finite], outputs["student"].probs[finite])
    js[finite] = m.js_divergence(outputs["teacher"].probs[finite], outputs["student"].probs[finite])
    per["kl"], per["js"] = kl, js
    for column in dataset.slice_columns:
        per[column] = frame[column]
    per, specs, details = assign_slices(per, labels, dataset.slice_columns, slice_settings)

    scores = score(per, outputs, specs, k, score_settings, progress=progress)
    fairness = None
    if group_column is not None:
        fairness_rows, fairness = _classifier_fairness(per, dataset, group_column, labels, score_settings)
        scores.table = pd.concat([scores.table, pd.DataFrame(fairness_rows, columns=scores.table.columns)], ignore_index=True)
    findings = derive_findings(scores.table, comparison, FindingThresholds(), fairness=fairness)
    headline = {}
    for model, metric in (
        ("teacher", "accuracy"),
        ("student", "accuracy"),
        ("student", "agreement"),
        ("student", "kl"),
        ("student", "js"),
        ("teacher", "macro_f1"),
        ("student", "macro_f1"),
        ("student", "accuracy_drop"),
        ("teacher", "ece"),
        ("student", "ece"),
        ("student", "ece_after_temperature"),
    ):
        rows = scores.table[(scores.table["slice"] == "overall") & (scores.table["model"] == model) & (scores.table["metric"] == metric)]
        if not rows.empty:
            headline[f"{model}_{metric}"] = float(rows.iloc[0]["value"])
    summary = {
        "schema": SUMMARY_SCHEMA,
        "labels": list(labels),
        "n_examples": int(len(per)),
        "n_scored": scores.finite_examples,
        "truncated": int(encoded.truncated.sum()),
        "nonfinite": {role: int(per[f"{role}_nonfinite"].sum()) for role in ("teacher", "student")},
        "temperatures": scores.temperatures,
        "reliability": scores.reliability,
        "slices": [spec.to_dict() for spec in specs],
        "slice_details": details,
        "ignored_columns": dataset.ignored_columns,
        "settings": {
            "rare_threshold": slice_settings.rare_threshold,
            "hard_margin": slice_settings.hard_margin,
            "min_slice_n": score_settings.min_slice_n,
            "bootstrap_resamples": score_settings.n_resamples,
            "seed": score_settings.seed,
            "ece_bins": m.ECE_BINS,
            "probability_floor": m.PROBABILITY_FLOOR,
            "confidence_level": m.CONFIDENCE_LEVEL,
        },
        "headline": headline,
        "findings": [f.to_dict() for f in findings],
        "frozen_set_sha256": frozen_set_hash(frame, ["id", *_input_columns(dataset), "label"]),
    }
    if fairness is not None:
        summary["fairness"] = fairness
    return QualityResults(per_example=per, metrics=scores.table, summary=summary, findings=findings)


def _classifier_fairness(per: pd.DataFrame, dataset: EvalDataset, column: str, labels: list[str], settings: ScoreSettings):
    """Fairness rows for a classifier: per-group accuracy of both models (and parity figures with two classes)."""
    from loadtest.quality.fairness import FairnessSettings, group_fairness, group_values

    if column not in dataset.slice_columns:
        _classifier_fairness_column_error(dataset, column)
    finite = ~(per["teacher_nonfinite"] | per["student_nonfinite"]).to_numpy()
    y = per["label_id"].to_numpy()
    scores = {role: (per[f"{role}_pred"].to_numpy() == y).astype(float) for role in ("teacher", "student")}
    binary = {"y": y, "teacher": per["teacher_pred"].to_numpy(), "student": per["student_pred"].to_numpy()} if len(labels) == 2 else None
    rows, summary = group_fairness(
        group_values(per, column), scores, "accuracy", FairnessSettings(settings.min_slice_n, settings.n_resamples, settings.seed), finite, binary
    )
    summary["column"] = column
    return rows, summary


def _classifier_fairness_column_error(dataset: EvalDataset, column: str):
    why = dataset.ignored_columns.get(column)
    known = ", ".join(dataset.slice_columns) or "none"
    raise LoadtestError(
        f"--group-column '{column}' is not a usable group column" + (f" ({why})" if why else "") + f"; the dataset's group/slice columns: {known}"
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _input_columns(dataset) -> list[str]:
    """The columns that identify an example's input: text, token ids, or the model's own input columns."""
    if dataset.has_text:
        return ["text"]
    return ["input_ids"] if "input_ids" in dataset.frame else dataset.tensor_columns


def run_eval(settings: EvalSettings, console=None) -> QualityResults:
    """Send the evaluation set through teacher and student on Triton and write ``<run>/quality/``."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from loadtest.quality import results as store
    from loadtest.load.preflight import check_server
    from loadtest.endpoint import parse_endpoint
    from loadtest.quality.client import TritonEvaluator, served_model
    from loadtest.quality.dataset import encode, load_dataset, tensors_only, text_only
    from loadtest.repository import METADATA_FILE, ModelRepository
    from loadtest.tokenizer import FastTokenizer

    console = console or Console(stderr=True)
    from loadtest import bounds

    bounds.check_number("--batch-size", settings.batch_size, 1, bounds.MAX_BATCH_SIZE)
    bounds.check_number("--timeout", settings.timeout_s, 0, bounds.MAX_TIMEOUT_S, low_open=True, unit="s")
    if not 0.0 < settings.rare_threshold < 1.0:
        raise LoadtestError("--rare-threshold is a fraction of the evaluation set, between 0 and 1 (e.g. 0.1)")
    if not 0.0 < settings.hard_margin <= 1.0:
        raise LoadtestError("--hard-margin is a probability margin between 0 and 1 (e.g. 0.2)")
    if settings.min_slice_n < 1:
        raise LoadtestError("--min-slice-n must be at least 1")
    if settings.run_dir is not None:
        store.check_writable(settings.run_dir, settings.overwrite)
    else:
        bounds.check_writable_dir("--results", settings.results)

    repository = ModelRepository(settings.repository)
    metadata = repository.read_metadata() if (repository.path / METADATA_FILE).is_file() else None
    if metadata is None and not (settings.labels and settings.teacher and settings.student):
        raise LoadtestError(
            f"no loadtest.json in {repository.path}: without a repository pass --teacher, --student and --labels "
            "(the class names in the order of the models' scores)"
        )
    labels = list(settings.labels or metadata.labels)
    max_length = metadata.max_sequence_length if metadata is not None else 512
    names = {"teacher": settings.teacher or metadata.teacher, "student": settings.student or metadata.student}
    from loadtest.credentials import load_credentials, split_host

    clean_host, user_info = split_host(settings.host)
    checked = check_server(
        parse_endpoint(clean_host), list(dict.fromkeys(names.values())), wait_ready_s=settings.wait_ready_s,
        timeout_s=min(settings.timeout_s, 10.0), credentials=load_credentials(user_info),
    )  # fmt: skip
    by_name = {model.name: model for model in checked.models}
    served = {role: served_model(by_name[name]) for role, name in names.items()}
    tensor_columns = tuple(dict.fromkeys(n for m in served.values() if m.feed == "tensors" for n, _ in m.inputs))
    dataset = load_dataset(settings.dataset, labels, tensor_columns)
    if settings.baseline is not None:  # refuse a baseline on another set before any request is sent
        from loadtest.quality.baseline import load_baseline

        load_baseline(settings.baseline, frozen_set_hash(dataset.frame, ["id", *_input_columns(dataset), "label"]))
    if settings.group_column is not None and settings.group_column not in dataset.slice_columns:
        _classifier_fairness_column_error(dataset, settings.group_column)
    tokenizer = None
    if settings.tokenizer is not None:
        tokenizer = FastTokenizer.from_path(settings.tokenizer, max_length)
    elif metadata is not None and dataset.has_text:
        tokenizer = repository.load_tokenizer()
    needs_tokens = any(model.feed == "tokens" for model in served.values())
    if needs_tokens and dataset.has_text and tokenizer is None:
        raise LoadtestError(
            "the evaluation set holds text and a model takes token ids: give the tokenizer (--tokenizer tokenizer.json "
            "or a repository with loadtest.json), or an 'input_ids' column"
        )
    if any(m.feed == "text" for m in served.values()) and not dataset.has_text:
        raise LoadtestError("a model takes text (a BYTES input): the evaluation set needs a 'text' column")
    if needs_tokens:
        encoded = encode(dataset, tokenizer, max_length)
    elif dataset.has_text:
        encoded = encode(dataset, tokenizer, max_length) if tokenizer is not None else text_only(dataset)
    else:
        encoded = tensors_only(dataset)
    tensors = {name: list(dataset.frame[name]) for name in tensor_columns} if tensor_columns else None
    texts = dataset.frame["text"].astype(str).tolist() if dataset.has_text else None
    if encoded.truncated.any() and needs_tokens:
        console.print(
            f"[yellow]note:[/] {int(encoded.truncated.sum())} of {len(dataset)} inputs are longer than the model's limit of "
            f"{max_length} tokens and were truncated to it (counted in the report; column 'truncated')."
        )
    pad_id = tokenizer.pad_token_id if tokenizer is not None and tokenizer.pad_token_id is not None else 0

    started = time.time()
    timing: dict[str, float] = {}
    logits: dict[str, np.ndarray] = {}
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with TritonEvaluator(settings.host, timeout_s=settings.timeout_s) as client:
        with Progress(*columns, console=console, disable=not settings.show_progress, transient=False) as progress:
            for role in ("teacher", "student"):
                model = served[role]
                task = progress.add_task(f"{role} ({model.name})", total=len(dataset))
                t0 = time.perf_counter()
                logits[role] = client.logits(
                    model, encoded, settings.batch_size, pad_id, on_batch=lambda rows, task=task: progress.advance(task, rows),
                    texts=texts, tensors=tensors,
                )
                timing[f"{role}_s"] = time.perf_counter() - t0
            run_dir = settings.run_dir
            comparison = store.read_comparison(run_dir) if run_dir is not None else None
            slice_settings = SliceSettings(settings.rare_threshold, settings.hard_margin)
            score_settings = ScoreSettings(settings.min_slice_n, settings.n_resamples, settings.seed)
            task = progress.add_task("scoring slices", total=None)
            counter = {"done": 0}

            def tick() -> None:
                counter["done"] += 1
                progress.update(task, completed=counter["done"])

            result = assemble(dataset, encoded, logits, labels, slice_settings, score_settings, comparison, progress=tick, group_column=settings.group_column)
            progress.update(task, total=counter["done"])
    finished = time.time()

    if run_dir is None:
        run_dir = store.new_run_dir(settings.results, "eval")
        store.write_manifest(
            run_dir,
            {
                "kind": "eval",
                "start": started,
                "end": finished,
                "models": names,
                "settings": {k: str(redact_url(v) if k == "host" else v) for k, v in asdict(settings).items()},
            },
        )
    result.summary.update(
        {
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(finished)),
            "start": started,
            "end": finished,
            "host": redact_url(settings.host),
            "repository": str(repository.path),
            "models": names,
            "max_sequence_length": max_length,
            "dataset": {
                "path": str(dataset.path),
                "sha256": _sha256(dataset.path),
                "rows": len(dataset),
                "input": "text" if dataset.has_text else ("input_ids" if "input_ids" in dataset.frame else list(tensor_columns)),
            },
            "truncation": (
                f"inputs longer than {max_length} tokens are truncated to it by the repository's tokenizer"
                " (special tokens kept); 'input_tokens' keeps the original length"
            ),
            "batch_size": {role: min(settings.batch_size, served[role].max_batch_size or 1) for role in served},
            "timing": timing,
        }
    )
    result.summary["settings"]["batch_size"] = settings.batch_size
    deltas = None
    if settings.baseline is not None:
        from loadtest.quality.baseline import attach_baseline

        deltas = attach_baseline(result.per_example, result.summary, settings.baseline, False, settings.n_resamples, settings.seed)
    store.write_quality(run_dir, result.per_example, result.metrics, result.summary)
    if deltas is not None:
        from loadtest.quality.baseline import write_deltas

        write_deltas(run_dir, deltas)
    result.run_dir = Path(run_dir)
    return result
