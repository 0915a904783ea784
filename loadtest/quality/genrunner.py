"""``loadtest eval`` on generative models: the frozen set through the served teacher and student.

1. Greedy answers (temperature 0, fixed seed, the same max_tokens) from both models.
2. Teacher-forced log-probs of the references, when the server can give them (Triton: ``<model>_score``;
   OpenAI-compatible: ``echo`` + ``logprobs``), for perplexity, top-1 agreement and KL(T‖S).
3. Optional judged equivalence by a judge model (default: the served teacher), checked against
   ``--judge-labels`` when given, else labelled *unvalidated*.
4. Scores per example, figures per slice with intervals, fairness across ``--group-column``, deltas against
   ``--baseline``, findings; written to ``<run>/quality/`` like the classifier evaluation.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from loadtest.errors import LoadtestError
from loadtest.quality.genassemble import Generated, assemble_generative
from loadtest.quality.genclient import SCORE_SUFFIX, GenerationSettings, connect, generate_all
from loadtest.quality.gendataset import load_gen_dataset
from loadtest.quality.genscoring import GenScoreSettings
from loadtest.quality.dataset import frozen_set_hash
from loadtest.quality.runner import QualityResults, _sha256
from loadtest.quality.teacherforced import TeacherForced, teacher_forced

JUDGE_PROMPT = (
    "Question: {prompt}\nAnswer A: {teacher}\nAnswer B: {student}\n"
    "Do answers A and B mean the same thing? Reply with one word, yes or no.\nVerdict:"
)


@dataclass
class GenEvalSettings:
    dataset: Path
    host: str = "http://127.0.0.1:8000"
    openai: bool = False  # host is an OpenAI-compatible server
    repository: Path | None = Path("model_repository")
    teacher: str | None = None
    student: str | None = None
    run_dir: Path | None = None
    results: Path = Path("results")
    max_tokens: int = 64
    seed: int = 0
    concurrency: int = 4
    chat: bool = False
    reference_separator: str = " "
    min_slice_n: int = 30
    n_resamples: int = 1000
    group_column: str | None = None
    baseline: Path | None = None
    judge: str | None = None  # None: no judging; "teacher": the served teacher; else an OpenAI-compatible URL
    judge_model: str | None = None
    judge_labels: Path | None = None
    api_key: str | None = None
    overwrite: bool = False
    timeout_s: float = 120.0
    show_progress: bool = True


def read_repository_names(repository: Path | None) -> dict:
    """teacher/student names (and task) from a repository's loadtest.json, read as plain JSON."""
    if repository is None:
        return {}
    path = Path(repository) / "loadtest.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise LoadtestError(f"{path} is not valid JSON: {exc}") from None


class TokenConvention:
    """How prompt and reference become the scoring model's tokens: BOS + prompt, then separator + reference + EOS.

    The generative pair's convention (and a causal LM's usual one); the tokenizer and special ids are the
    served model's own (``<model>/1/tokenizer.json``, ``genai_config.json``).
    """

    def __init__(self, model_dir: Path, separator: str):
        from tokenizers import Tokenizer

        tokenizer_file = model_dir / "tokenizer.json"
        if not tokenizer_file.is_file():
            tokenizer_file = model_dir.parent.parent / "tokenizer.json"
        if not tokenizer_file.is_file():
            raise FileNotFoundError(f"no tokenizer.json in {model_dir} or the repository")
        self.tokenizer = Tokenizer.from_file(str(tokenizer_file))
        config_file = model_dir / "genai_config.json"
        model = json.loads(config_file.read_text())["model"] if config_file.is_file() else {}
        self.bos = model.get("bos_token_id")
        eos = model.get("eos_token_id")
        self.eos = eos[0] if isinstance(eos, list) else eos
        self.separator = separator
        self.source = str(tokenizer_file)

    def encode(self, prompt: str, reference: str) -> tuple[list[int], int]:
        prompt_ids = ([self.bos] if self.bos is not None else []) + self.tokenizer.encode(prompt, add_special_tokens=False).ids
        reference_ids = self.tokenizer.encode(self.separator + reference, add_special_tokens=False).ids + ([self.eos] if self.eos is not None else [])
        return prompt_ids + reference_ids, len(prompt_ids)

    def count(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False).ids)


def parse_verdict(text: str) -> bool | None:
    """The judge's first word: yes -> True, no -> False, anything else -> None (no verdict)."""
    words = text.strip().lower().replace(".", " ").replace(",", " ").split()
    if not words:
        return None
    return True if words[0] in ("yes", "same", "equivalent") else False if words[0] in ("no", "different") else None


def read_judge_labels(path: Path) -> dict[str, bool]:
    from loadtest.quality.dataset import read_table

    frame = read_table(Path(path))
    if "id" not in frame.columns or "equivalent" not in frame.columns:
        raise LoadtestError(f"--judge-labels {path}: needs columns 'id' and 'equivalent' (true/false or yes/no)")
    out = {}
    for key, value in zip(frame["id"].astype(str), frame["equivalent"]):
        text = str(value).strip().lower()
        if text in ("true", "1", "yes", "y"):
            out[key] = True
        elif text in ("false", "0", "no", "n"):
            out[key] = False
        else:
            raise LoadtestError(f"--judge-labels {path}: id {key!r} has label {value!r}; use true/false or yes/no")
    return out


def run_generative_eval(settings: GenEvalSettings, console=None) -> QualityResults:
    """The whole generative evaluation; writes ``<run>/quality/`` and returns the results."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from loadtest.quality import results as store

    console = console or Console(stderr=True)
    if settings.max_tokens < 1:
        raise LoadtestError("--max-tokens must be at least 1")
    if settings.run_dir is not None:
        store.check_writable(settings.run_dir, settings.overwrite)
    metadata = read_repository_names(settings.repository)
    names = {"teacher": settings.teacher or metadata.get("teacher"), "student": settings.student or metadata.get("student")}
    missing = [role for role, name in names.items() if not name]
    if missing:
        raise LoadtestError(f"name the {' and '.join(missing)} model(s): --teacher/--student (no loadtest.json in --repo to read them from)")
    dataset = load_gen_dataset(settings.dataset)
    fingerprint = frozen_set_hash(dataset.frame, ["id", "prompt", "reference"])
    if settings.baseline is not None:
        from loadtest.quality.baseline import load_baseline

        load_baseline(settings.baseline, fingerprint)
    if settings.group_column is not None and settings.group_column not in dataset.slice_columns:
        raise LoadtestError(f"--group-column '{settings.group_column}' is not a group/slice column of the set (columns: {', '.join(dataset.slice_columns) or 'none'})")
    labels = read_judge_labels(settings.judge_labels) if settings.judge_labels else None
    if labels is not None and settings.judge is None:
        raise LoadtestError("--judge-labels needs a judge: --judge teacher (the served teacher) or --judge URL")

    client = connect(settings.host, settings.openai, settings.timeout_s, settings.api_key)
    client.check_ready([names["teacher"], names["student"]])
    conventions: dict[str, TokenConvention] = {}
    tf_reason = None
    if not settings.openai:
        if settings.repository is None:
            tf_reason = "no --repo: the scoring model's tokenizer is unknown"
        else:
            missing_score = [n + SCORE_SUFFIX for n in names.values() if not client.ready(n + SCORE_SUFFIX)]
            if missing_score:
                tf_reason = f"the server has no scoring model {', '.join(missing_score)} (loadtest export adds it)"
            else:
                try:
                    conventions = {role: TokenConvention(Path(settings.repository) / name / "1", settings.reference_separator) for role, name in names.items()}
                except FileNotFoundError as exc:
                    tf_reason = str(exc)
    gen = GenerationSettings(settings.max_tokens, settings.seed, settings.concurrency, settings.timeout_s, settings.chat)
    prompts = dataset.frame["prompt"].tolist()
    references = dataset.frame["reference"].tolist()
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    started = time.time()
    timing: dict[str, float] = {}
    outputs: dict[str, list[Generated]] = {}
    forced: list[TeacherForced] | None = None
    verdicts = None
    with Progress(*columns, console=console, disable=not settings.show_progress) as progress:
        for role in ("teacher", "student"):
            task = progress.add_task(f"{role} answers ({names[role]})", total=len(prompts))
            t0 = time.perf_counter()
            outputs[role] = generate_all(client, names[role], prompts, gen, on_done=lambda k, task=task: progress.advance(task, k))
            timing[f"{role}_generate_s"] = time.perf_counter() - t0
            failed = [a.error for a in outputs[role] if a.error is not None]
            if len(failed) == len(prompts):
                raise LoadtestError(f"the {role} ({names[role]}) answered none of the {len(prompts)} prompts; first error: {failed[0]}")
        if conventions or settings.openai:
            task = progress.add_task("teacher-forced log-probs", total=len(prompts))
            t0 = time.perf_counter()
            forced, tf_reason = _teacher_forced_all(client, names, prompts, references, conventions, settings, lambda: progress.advance(task, 1))
            timing["teacher_forced_s"] = time.perf_counter() - t0
        if settings.judge is not None:
            task = progress.add_task("judge", total=len(prompts))
            t0 = time.perf_counter()
            verdicts, judge_info, judge_replies = _judge_all(settings, client, names, prompts, outputs, gen, lambda k: progress.advance(task, k))
            timing["judge_s"] = time.perf_counter() - t0
    counter = conventions.get("teacher")
    for role in ("teacher", "student"):
        for answer in outputs[role]:
            if answer.output_tokens < 0:  # the server did not say: count with the model's tokenizer, else words
                answer.output_tokens = counter.count(answer.text) if counter else len(answer.text.split())
    prompt_tokens = [len(conventions["teacher"].encode(p, "")[0]) for p in prompts] if conventions else None
    comparison = store.read_comparison(settings.run_dir) if settings.run_dir is not None else None
    result = assemble_generative(
        dataset,
        outputs,
        forced,
        GenScoreSettings(settings.min_slice_n, settings.n_resamples, settings.seed),
        group_column=settings.group_column,
        judge_verdicts=verdicts,
        prompt_tokens=prompt_tokens,
        comparison=comparison,
    )
    finished = time.time()
    summary = result.summary
    if settings.judge is not None:
        result.per_example["judge_reply"] = judge_replies  # the judge's own words: a "no verdict" explains itself
        summary["judge"] = judge_info
        if labels is not None:
            summary["judge"].update(_judge_agreement(result.per_example, labels))
        result.findings = _refresh_findings(result, summary, comparison)
    summary.update(
        {
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(finished)),
            "start": started,
            "end": finished,
            "host": settings.host,
            "server": "openai" if settings.openai else "triton",
            "repository": str(settings.repository) if settings.repository else None,
            "models": names,
            "dataset": {"path": str(dataset.path), "sha256": _sha256(dataset.path), "rows": len(dataset)},
            "generation": {"max_tokens": settings.max_tokens, "temperature": 0.0, "seed": settings.seed, "chat": settings.chat},
            "teacher_forced_reason": tf_reason,
            "token_convention": (
                f"BOS + prompt tokens, then {settings.reference_separator!r} + reference tokens + EOS ({conventions['teacher'].source})" if conventions else None
            ),
            "timing": timing,
        }
    )
    run_dir = settings.run_dir
    if run_dir is None:
        run_dir = store.new_run_dir(settings.results, "eval")
        store.write_manifest(run_dir, {"kind": "eval", "task": "text-generation", "start": started, "end": finished, "models": names,
                                       "settings": {k: str(v) for k, v in asdict(settings).items() if k != "api_key"}})
    deltas = None
    if settings.baseline is not None:
        from loadtest.quality.baseline import attach_baseline

        deltas = attach_baseline(result.per_example, summary, settings.baseline, True, settings.n_resamples, settings.seed)
    store.write_quality(run_dir, result.per_example, result.metrics, summary)
    if deltas is not None:
        from loadtest.quality.baseline import write_deltas

        write_deltas(run_dir, deltas)
    result.run_dir = Path(run_dir)
    return result


def _teacher_forced_all(client, names, prompts, references, conventions, settings, tick):
    """Teacher-forced sums per example, or (None, why) when the server cannot give log-probs."""
    results: list[TeacherForced] = []
    if settings.openai:
        for prompt, reference in zip(prompts, references):
            got = {r: client.prompt_logprobs(names[r], prompt, settings.reference_separator + reference, settings.timeout_s) for r in names}
            if got["teacher"] is None or got["student"] is None:
                return None, "the OpenAI-compatible server returns no prompt log-probs (echo + logprobs on /v1/completions)"
            (lt, top_t), (ls, top_s) = got["teacher"], got["student"]
            if len(lt) != len(ls):
                return None, "teacher and student tokenize the reference differently: token-level figures are not comparable"
            agree = sum(a is not None and a == b for a, b in zip(top_t, top_s)) if all(t is not None for t in top_t + top_s) else float("nan")
            finite = {"teacher": bool(np.isfinite(lt).all()), "student": bool(np.isfinite(ls).all())}
            results.append(TeacherForced(len(lt), -float(np.sum(lt)), -float(np.sum(ls)), agree, float("nan"), {r: not ok for r, ok in finite.items()}))
            tick()
        return results, None
    for prompt, reference in zip(prompts, references):
        ids, prompt_length = conventions["teacher"].encode(prompt, reference)
        student_ids, _ = conventions["student"].encode(prompt, reference)
        if student_ids != ids:
            return None, "teacher and student tokenizers differ: token-level figures are not comparable"
        lt = client.score(names["teacher"], ids, prompt_length)
        ls = client.score(names["student"], ids, prompt_length)
        try:
            results.append(teacher_forced(lt, ls, np.asarray(ids[prompt_length:])))
        except ValueError as exc:
            raise LoadtestError(f"scoring models returned unexpected log-probs: {exc}") from None
        tick()
    return results, None


def _judge_all(settings, client, names, prompts, outputs, gen, tick):
    from loadtest.quality.genclient import OpenAIGenerative, generate_all

    if settings.judge == "teacher":
        judge_client, model = client, names["teacher"]
    else:
        if not settings.judge_model:
            raise LoadtestError("--judge URL needs --judge-model (the judge's model name on that server)")
        judge_client, model = OpenAIGenerative(settings.judge, settings.timeout_s, settings.api_key), settings.judge_model
    questions = [
        JUDGE_PROMPT.format(prompt=p, teacher=t.text, student=s.text) for p, t, s in zip(prompts, outputs["teacher"], outputs["student"])
    ]
    answers = generate_all(judge_client, model, questions, GenerationSettings(8, gen.seed, gen.concurrency, gen.timeout_s, gen.chat), on_done=tick)
    verdicts = [parse_verdict(a.text) if a.error is None else None for a in answers]
    info = {
        "model": model,
        "endpoint": settings.judge if settings.judge != "teacher" else settings.host,
        "prompt": JUDGE_PROMPT,
        "verdicts": int(sum(v is not None for v in verdicts)),
        "no_verdict": int(sum(v is None for v in verdicts)),
        "validated": False,
        "label": "unvalidated",
    }
    return verdicts, info, [a.text if a.error is None else f"error: {a.error}" for a in answers]


def _judge_agreement(per: pd.DataFrame, labels: dict[str, bool]) -> dict:
    from loadtest.quality.metrics import wilson_interval

    verdicts = dict(zip(per["id"].astype(str), per["judge_equivalent"]))
    pairs = [(verdicts[k], v) for k, v in labels.items() if k in verdicts and verdicts[k] is not pd.NA and verdicts[k] is not None]
    n = len(pairs)
    agree = sum(bool(a) == b for a, b in pairs)
    low, high = wilson_interval(agree, n)
    return {
        "validated": n > 0,
        "label": "validated" if n > 0 else "unvalidated",
        "labels": len(labels),
        "labelled_with_verdict": n,
        "agreement_with_labels": agree / n if n else None,
        "agreement_ci": [low, high],
    }


def _refresh_findings(result: QualityResults, summary: dict, comparison):
    from loadtest.quality.genfindings import derive_generative_findings

    findings = derive_generative_findings(result.metrics, comparison, summary)
    summary["findings"] = [f.to_dict() for f in findings]
    return findings
