"""Build the generative teacher/student pair once per settings and reuse it from a cache.

The same scheme as the classifier pair (``loadtest.demopair.build``): the cache key hashes the settings and
the recipe version; a build runs in a temporary directory renamed into place when finished.

Layout of ``<cache_dir>/genpair/<hash>/``::

    pair.json                 settings, timings, PyTorch-measured quality (written last: marks a finished build)
    data/eval.parquet         frozen evaluation split (written before any model is trained)
    data/train.parquet
    teacher/                  Hugging Face LlamaForCausalLM directory + tokenizer + build_info.json
    student/                  likewise, distilled from the teacher
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from loadtest.demopair.build import Progress, _Bar, _sweep_stale, default_cache_dir
from loadtest.errors import LoadtestError

BUILD_VERSION = 2  # 2: teacher 8 x 256 (compute that shows next to the per-token serving cost), cached teacher logits
MIN_RARE_EVAL = 50


class LmArch(BaseModel):
    """A Llama-style decoder's shape."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    num_layers: int = Field(ge=1, le=32, description="decoder layers")
    hidden_size: int = Field(ge=16, le=4096, description="hidden width")
    num_heads: int = Field(ge=1, le=64, description="attention heads (must divide hidden_size)")
    intermediate_size: int = Field(ge=16, le=16384, description="SwiGLU feed-forward width")
    max_position_embeddings: int = Field(default=512, ge=128, le=8192, description="context length")

    @model_validator(mode="after")
    def _heads_divide_hidden(self) -> LmArch:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}")
        if (self.hidden_size // self.num_heads) % 16:
            raise ValueError(f"head size {self.hidden_size // self.num_heads} is not a multiple of 16, which ONNX "
                             "Runtime's GroupQueryAttention needs on CPU (the exported graph would not run)")
        return self


class GenSettings(BaseModel):
    """Everything that determines the generative pair; equal settings give the same pair and cache entry."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int = 13
    n_train: int = Field(default=2000, ge=100, le=200_000)
    n_eval: int = Field(default=2000, ge=50, le=200_000)
    rare_share: float = Field(default=0.025, gt=0.0, le=0.03)
    hard_share: float = Field(default=0.10, ge=0.0, le=0.5)
    structured_share: float = Field(default=0.15, ge=0.0, le=0.5, description="share of JSON-reply prompts")
    vocab_size: int = Field(default=1024, ge=300, le=65_536, description="byte-level BPE vocabulary")
    # The teacher is ~50× the student's parameters on purpose: served token by token, each token also costs
    # a fixed ~0.5 ms of CPU (engine step, Triton response, HTTP, client) that both models pay; a teacher of a
    # few hundred thousand parameters would differ from its student by a few percent of that (docs/generation.md).
    teacher: LmArch = LmArch(num_layers=8, hidden_size=256, num_heads=4, intermediate_size=704)
    student: LmArch = LmArch(num_layers=2, hidden_size=48, num_heads=3, intermediate_size=128)
    teacher_epochs: int = Field(default=2, ge=1, le=100)
    student_epochs: int = Field(default=3, ge=1, le=100)
    teacher_lr: float = Field(default=2e-3, gt=0.0, le=1.0)
    student_lr: float = Field(default=5e-3, gt=0.0, le=1.0)
    batch_size: int = Field(default=32, ge=1, le=4096)
    temperature: float = Field(default=2.0, gt=0.0, le=100.0, description="distillation temperature T")
    alpha: float = Field(default=0.5, ge=0.0, le=1.0, description="weight of the per-token KL term")
    min_rare_eval: int = Field(default=MIN_RARE_EVAL, ge=1)
    greedy_sample: int = Field(default=40, ge=0, description="eval prompts answered greedily in PyTorch at build "
                               "time (the served evaluation answers all of them)")

    @model_validator(mode="after")
    def _rare_slice_large_enough(self) -> GenSettings:
        n_rare = round(self.n_eval * self.rare_share)
        if n_rare < self.min_rare_eval:
            raise ValueError(f"n_eval={self.n_eval} gives only {n_rare} rare-intent evaluation prompts; "
                             f"need >= {self.min_rare_eval} (raise n_eval or rare_share)")
        if self.student.max_position_embeddings != self.teacher.max_position_embeddings:
            raise ValueError("teacher and student must share a context length")
        return self

    @classmethod
    def quick(cls) -> GenSettings:
        """A much smaller, faster pair (same recipe, real training) for tests and a first look."""
        return cls(n_train=700, n_eval=300, min_rare_eval=5, vocab_size=512,
                   teacher=LmArch(num_layers=4, hidden_size=256, num_heads=4, intermediate_size=704),
                   student=LmArch(num_layers=1, hidden_size=32, num_heads=2, intermediate_size=64),
                   teacher_epochs=2, student_epochs=2, teacher_lr=2e-3, student_lr=8e-3, greedy_sample=10)

    def settings_hash(self) -> str:
        payload = json.dumps({"build_version": BUILD_VERSION, **self.model_dump(mode="json")}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]


def make_settings(quick: bool = False, **overrides: Any) -> GenSettings:
    """Settings from a preset plus overrides; a bad value is a one-line LoadtestError."""
    base = GenSettings.quick() if quick else GenSettings()
    try:
        return GenSettings.model_validate({**base.model_dump(), **overrides})
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err.get("loc", ())) or "settings"
        raise LoadtestError(f"invalid generative pair setting {where}: {err['msg']}") from None


@dataclass
class GenPair:
    """A built (or reused) generative pair."""

    teacher_dir: Path
    student_dir: Path
    data_dir: Path
    train_path: Path
    eval_path: Path
    settings_hash: str
    reused: bool
    build_seconds: float

    @property
    def root(self) -> Path:
        return self.data_dir.parent

    def info(self) -> dict[str, Any]:
        return json.loads((self.root / "pair.json").read_text())


def build_or_reuse(settings: GenSettings, cache_dir: Path | None = None,
                   progress: Progress | None = None) -> GenPair:
    """Return the pair for ``settings``, building it (minutes) only if the cache has no finished copy."""
    key = settings.settings_hash()
    base = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    root = base / "genpair"
    final = root / key
    found = _load_finished(final, key)
    if found is not None:
        if progress is not None:
            progress(f"reusing the generative pair {key}", 1.0)
        return found
    try:
        root.mkdir(parents=True, exist_ok=True)
        _sweep_stale(root)
        tmp = root / f".tmp-{key}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
    except OSError as exc:
        raise LoadtestError(f"cannot write the pair cache in {root}: {exc.strerror or exc}; "
                            "point LOADTEST_CACHE (or the cache option) at a writable directory") from None
    try:
        try:
            _build_into(tmp, settings, key, progress or (lambda _m, _f: None))
        except OSError as exc:
            raise LoadtestError(f"could not write the generative pair in {root}: {exc}") from None
        if final.exists() and _load_finished(final, key) is None:
            shutil.rmtree(final)
        try:
            os.rename(tmp, final)
        except OSError:
            found = _load_finished(final, key)
            if found is None:
                raise
            return found
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    pair = _load_finished(final, key, reused=False)
    assert pair is not None, "a build that just finished must load"
    return pair


def _load_finished(root: Path, key: str, reused: bool = True) -> GenPair | None:
    marker = root / "pair.json"
    needed = [marker, root / "teacher" / "config.json", root / "student" / "config.json",
              root / "data" / "eval.parquet", root / "data" / "train.parquet"]
    if not all(p.is_file() for p in needed):
        return None
    try:
        info = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    if info.get("settings_hash") != key:
        return None
    return GenPair(teacher_dir=root / "teacher", student_dir=root / "student", data_dir=root / "data",
                   train_path=root / "data" / "train.parquet", eval_path=root / "data" / "eval.parquet",
                   settings_hash=key, reused=reused, build_seconds=float(info["build_seconds"]))


def _stage_shares(settings: GenSettings) -> dict[str, float]:
    """Progress-bar share per stage: epochs weighted by layers × width² (+ the teacher's forward when distilling)."""
    def cost(arch: LmArch) -> float:
        return arch.num_layers * (4 * arch.hidden_size ** 2 + 3 * arch.hidden_size * arch.intermediate_size) + 2e5

    teacher = settings.teacher_epochs * cost(settings.teacher)
    student = settings.student_epochs * (cost(settings.student) + cost(settings.teacher) / 3)
    shares = {"corpus": 0.02, "eval": 0.12}
    rest = 1.0 - sum(shares.values())
    shares.update(teacher=rest * teacher / (teacher + student), student=rest * student / (teacher + student))
    return shares


def _build_into(root: Path, settings: GenSettings, key: str, progress: Progress) -> None:
    """Corpus -> tokenizer -> frozen eval split on disk -> teacher -> distilled student -> evaluation."""
    import platform

    import torch
    import transformers

    from loadtest.demopair.train import _jsonable
    from loadtest.genpair import corpus, train
    from loadtest.genpair.tokenizer import train_bpe_tokenizer

    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    bar = _Bar(progress, _stage_shares(settings))
    data_dir = root / "data"
    data_dir.mkdir()

    bar.stage("corpus", "generating the task corpus and its tokenizer")
    t = time.perf_counter()
    shape = corpus.TaskShape(rare_share=settings.rare_share, hard_share=settings.hard_share,
                             structured_share=settings.structured_share)
    eval_df, train_df = corpus.generate_task_corpus(settings.seed, settings.n_train, settings.n_eval, shape)
    tokenizer = train_bpe_tokenizer(corpus.corpus_texts(train_df), settings.vocab_size)
    eval_df = corpus.annotate_lengths(eval_df, tokenizer)
    train_df = corpus.annotate_lengths(train_df, tokenizer)
    corpus.write_split(eval_df, data_dir / "eval.parquet")  # frozen before any model sees data
    corpus.write_split(train_df, data_dir / "train.parquet")
    timings["corpus"] = time.perf_counter() - t

    context = settings.teacher.max_position_embeddings
    train_enc = train.encode(tokenizer, train_df["prompt"], train_df["reference"], context)
    eval_enc = train.encode(tokenizer, eval_df["prompt"], eval_df["reference"], context)

    step = bar.stage("teacher", "training the teacher")
    teacher = train.new_model(train.llama_config(settings.teacher, tokenizer), settings.seed)
    teacher_fit = train.fit(teacher, train_enc, epochs=settings.teacher_epochs, lr=settings.teacher_lr,
                            batch_size=settings.batch_size, seed=settings.seed, progress=step, name="teacher")
    timings["teacher"] = teacher_fit.train_seconds

    step = bar.stage("student", "distilling the student")
    student = train.new_model(train.llama_config(settings.student, tokenizer), settings.seed + 1)
    student_fit = train.fit(student, train_enc, epochs=settings.student_epochs, lr=settings.student_lr,
                            batch_size=settings.batch_size, seed=settings.seed + 1, teacher=teacher,
                            temperature=settings.temperature, alpha=settings.alpha, progress=step, name="student")
    timings["student"] = student_fit.train_seconds

    step = bar.stage("eval", "evaluating and saving")
    t = time.perf_counter()
    sample = eval_df.iloc[: min(settings.greedy_sample, len(eval_df))]
    max_new = int(eval_df["n_reference_tokens"].max()) + 8
    results: dict[str, Any] = {}
    for name, model, fitted, arch, other in (("teacher", teacher, teacher_fit, settings.teacher, None),
                                             ("student", student, student_fit, settings.student, teacher)):
        forced = train.teacher_forced(model, eval_enc, other)
        answers = [tokenizer.decode(a) for a in train.greedy_answers(model, tokenizer, sample["prompt"], max_new)]
        results[name] = {"teacher_forced": forced, "greedy_sample": train.answer_quality(answers, sample)}
        info = {
            "role": name, "settings_hash": key, "architecture": arch,
            "parameters": sum(p.numel() for p in model.parameters()),
            "training": {"epochs": fitted.epochs, "steps": fitted.steps, "final_loss": fitted.final_loss,
                         "lr": settings.teacher_lr if name == "teacher" else settings.student_lr,
                         "batch_size": settings.batch_size, "seed": settings.seed,
                         "objective": "cross_entropy" if name == "teacher" else "token_distillation",
                         **({"temperature": settings.temperature, "alpha": settings.alpha}
                            if name == "student" else {})},
            "train_seconds": fitted.train_seconds, "eval": results[name],
            "eval_measured_in": f"pytorch {torch.__version__}", "settings": settings,
        }
        _save(model, tokenizer, root / name, info, _jsonable)
        step(f"{name} evaluated", 0.5 if name == "teacher" else 1.0)
    timings["eval"] = time.perf_counter() - t

    pair_info = {
        "settings_hash": key, "build_version": BUILD_VERSION, "settings": settings,
        "build_seconds": time.perf_counter() - t0, "stage_seconds": timings, "created": time.time(),
        "host": {"python": platform.python_version(), "torch": torch.__version__,
                 "transformers": transformers.__version__, "threads": torch.get_num_threads()},
        "tokenizer_vocab": len(tokenizer), "eval": results,
        "slices": {c: int(eval_df[c].sum()) for c in ("rare_intent", "hard", "structured", "long_prompt")},
    }
    (root / "pair.json").write_text(json.dumps(pair_info, indent=2, default=_jsonable) + "\n")
    progress("generative pair ready", 1.0)


def _save(model, tokenizer, out_dir: Path, info: dict, jsonable) -> None:
    """A Hugging Face model directory (config, safetensors, generation config, tokenizer) plus build_info.json."""
    from transformers.utils import logging as hf_logging

    out_dir.mkdir(parents=True, exist_ok=True)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(out_dir)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    tokenizer.save_pretrained(out_dir)
    (out_dir / "build_info.json").write_text(json.dumps(info, indent=2, default=jsonable) + "\n")
