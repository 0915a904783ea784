"""Build the demo teacher/student pair once per settings and reuse it from a cache.

The cache key is a hash of the settings (and of the build recipe's version), so changing any setting builds a
new pair while the same settings find the old one in well under a second. A build happens in a temporary
directory renamed into place at the end: a build that was interrupted leaves no directory that looks finished.

Layout of ``<cache_dir>/demo/<hash>/``::

    pair.json                 settings, labels, timings and accuracies (written last: marks a finished build)
    data/eval.parquet         frozen evaluation split (written before any model is trained)
    data/train.parquet
    data/labels.json          ordered label names (index = label id)
    teacher/                  Hugging Face model directory + tokenizer + build_info.json
    student/                  likewise, distilled from the teacher
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from loadtest.errors import LoadtestError

# Bump when the corpus, tokenizer or training recipe changes what the same settings produce.
BUILD_VERSION = 2  # 2: the corpus gained the 'segment' group column
MIN_RARE_EVAL = 50

Progress = Callable[[str, float], None]
"""``progress(message, fraction)``: fraction of the whole build done, 0..1."""


class ArchSettings(BaseModel):
    """A BERT encoder's shape."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    num_layers: int = Field(ge=1, le=24, description="transformer layers")
    hidden_size: int = Field(ge=16, le=2048, description="hidden width")
    num_heads: int = Field(ge=1, le=32, description="attention heads (must divide hidden_size)")
    intermediate_size: int = Field(ge=16, le=8192, description="feed-forward width")
    max_position_embeddings: int = Field(default=256, ge=256, le=4096, description="longest input (>= 256)")
    dropout: float = Field(default=0.1, ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _heads_divide_hidden(self) -> ArchSettings:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}")
        return self


class DemoSettings(BaseModel):
    """Everything that determines the demo pair; equal settings give the same pair (and the same cache entry)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int = Field(default=13, description="seeds the corpus, weight init and batch order")
    n_train: int = Field(default=4500, ge=200, le=200_000, description="training examples")
    n_eval: int = Field(default=2400, ge=100, le=200_000, description="frozen evaluation examples")
    rare_share: float = Field(default=0.025, gt=0.0, le=0.03, description="share of the rare class")
    hard_share: float = Field(default=0.10, ge=0.0, le=0.5, description="share of two-intent examples")
    length_median: float = Field(default=18.0, ge=5.0, le=100.0, description="median target length, tokens")
    length_sigma: float = Field(default=0.85, gt=0.0, le=2.0, description="lognormal sigma of the length")
    vocab_size: int = Field(default=4000, ge=200, le=60_000, description="WordPiece vocabulary cap")
    teacher: ArchSettings = ArchSettings(num_layers=4, hidden_size=256, num_heads=4, intermediate_size=1024)
    student: ArchSettings = ArchSettings(num_layers=2, hidden_size=128, num_heads=2, intermediate_size=512)
    teacher_epochs: int = Field(default=4, ge=1, le=100)
    student_epochs: int = Field(default=3, ge=1, le=100)
    teacher_lr: float = Field(default=1e-3, gt=0.0, le=1.0)
    student_lr: float = Field(default=2e-3, gt=0.0, le=1.0)
    batch_size: int = Field(default=32, ge=1, le=4096)
    temperature: float = Field(default=2.0, gt=0.0, le=100.0, description="distillation temperature T")
    alpha: float = Field(default=0.7, ge=0.0, le=1.0, description="weight of the soft (KL) term")

    @model_validator(mode="after")
    def _rare_slice_large_enough(self) -> DemoSettings:
        n_rare = round(self.n_eval * self.rare_share)
        if n_rare < MIN_RARE_EVAL:
            raise ValueError(
                f"n_eval={self.n_eval} gives only {n_rare} rare-class evaluation examples; "
                f"need >= {MIN_RARE_EVAL} (raise n_eval or rare_share)"
            )
        return self

    @classmethod
    def quick(cls) -> DemoSettings:
        """A smaller, faster pair (same corpus recipe, real training) for tests and a first look."""
        return cls(
            n_train=2500,
            n_eval=2000,
            teacher=ArchSettings(num_layers=2, hidden_size=128, num_heads=2, intermediate_size=512),
            student=ArchSettings(num_layers=2, hidden_size=64, num_heads=2, intermediate_size=256),
            teacher_epochs=6,
            student_epochs=6,
            teacher_lr=1.5e-3,
            student_lr=3e-3,
        )

    def settings_hash(self) -> str:
        """12 hex digits of SHA-256 over the canonical settings JSON and the build recipe version."""
        payload = json.dumps({"build_version": BUILD_VERSION, **self.model_dump(mode="json")}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]


def settings_hash(settings: DemoSettings) -> str:
    """The cache key of ``settings`` (see ``DemoSettings.settings_hash``)."""
    return settings.settings_hash()


def make_settings(quick: bool = False, **overrides: Any) -> DemoSettings:
    """Settings from a preset plus overrides, raising LoadtestError (one line) for a bad value a user typed."""
    base = DemoSettings.quick() if quick else DemoSettings()
    try:
        return DemoSettings.model_validate({**base.model_dump(), **overrides})
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err.get("loc", ())) or "settings"
        raise LoadtestError(f"invalid demo setting {where}: {err['msg']}") from None


@dataclass
class DemoPair:
    """A built (or reused) demo pair: Hugging Face model directories and the frozen data splits.

    ``build_seconds`` is how long the build took; for a reused pair, the original build's figure.
    """

    teacher_dir: Path
    student_dir: Path
    data_dir: Path
    train_path: Path
    eval_path: Path
    labels: list[str]
    settings_hash: str
    reused: bool
    build_seconds: float

    @property
    def root(self) -> Path:
        """The cache entry holding the pair."""
        return self.data_dir.parent

    def info(self) -> dict[str, Any]:
        """The pair's ``pair.json``: settings, stage timings, teacher and student evaluation accuracies."""
        return json.loads((self.root / "pair.json").read_text())


def default_cache_dir() -> Path:
    """``$LOADTEST_CACHE`` or ``~/.cache/loadtest``."""
    env = os.environ.get("LOADTEST_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "loadtest"


def build_or_reuse(
    settings: DemoSettings,
    cache_dir: Path | None = None,
    progress: Progress | None = None,
) -> DemoPair:
    """Return the demo pair for ``settings``, building it (minutes) only if the cache has no finished copy."""
    key = settings.settings_hash()
    base = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    demo_root = base / "demo"
    final = demo_root / key
    found = _load_finished(final, key)
    if found is not None:
        if progress is not None:
            progress(f"reusing the demo pair {key}", 1.0)
        return found
    try:
        demo_root.mkdir(parents=True, exist_ok=True)
        _sweep_stale(demo_root)
        tmp = demo_root / f".tmp-{key}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
    except OSError as exc:
        raise LoadtestError(
            f"cannot write the demo cache in {demo_root}: {exc.strerror or exc}; "
            "point LOADTEST_CACHE (or the cache option) at a writable directory"
        ) from None
    try:
        try:
            _build_into(tmp, settings, key, progress or (lambda _m, _f: None))
        except OSError as exc:  # a full disk or a cache directory removed under us
            raise LoadtestError(f"could not write the demo pair in {demo_root}: {exc}") from None
        if final.exists() and _load_finished(final, key) is None:
            shutil.rmtree(final)  # a hand-damaged entry: replace it
        try:
            os.rename(tmp, final)
        except OSError:
            # Another process finished the same build first; its copy is as good as ours.
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


STALE_TMP_SECONDS = 6 * 3600


def _sweep_stale(demo_root: Path) -> None:
    """Remove temporary build directories of builds killed long ago (a build takes minutes, not hours)."""
    now = time.time()
    for entry in demo_root.glob(".tmp-*"):
        try:
            if now - entry.stat().st_mtime > STALE_TMP_SECONDS:
                shutil.rmtree(entry, ignore_errors=True)
        except OSError:
            pass


def _load_finished(root: Path, key: str, reused: bool = True) -> DemoPair | None:
    """The pair at ``root`` if its build finished (pair.json and both model configs present), else None."""
    marker = root / "pair.json"
    needed = [marker, root / "teacher" / "config.json", root / "student" / "config.json",
              root / "data" / "eval.parquet", root / "data" / "train.parquet", root / "data" / "labels.json"]
    if not all(p.is_file() for p in needed):
        return None
    try:
        info = json.loads(marker.read_text())
        labels = json.loads((root / "data" / "labels.json").read_text())
    except (OSError, ValueError):
        return None
    if info.get("settings_hash") != key:
        return None
    return DemoPair(
        teacher_dir=root / "teacher",
        student_dir=root / "student",
        data_dir=root / "data",
        train_path=root / "data" / "train.parquet",
        eval_path=root / "data" / "eval.parquet",
        labels=list(labels),
        settings_hash=key,
        reused=reused,
        build_seconds=float(info["build_seconds"]),
    )


def _stage_shares(settings: DemoSettings) -> dict[str, float]:
    """Share of the progress bar per stage, from a cost model fitted to measured builds on a 2-core CPU.

    A training epoch costs about (non-embedding weights + 350k) units per example; the constant is the
    per-step overhead that dominates for tiny models. Soft labels cost about a quarter of a teacher epoch.
    """

    def epoch_cost(arch: ArchSettings) -> float:
        h, i = arch.hidden_size, arch.intermediate_size
        return arch.num_layers * (4 * h * h + 2 * h * i) + 350_000

    teacher = settings.teacher_epochs * epoch_cost(settings.teacher)
    soft = 0.25 * epoch_cost(settings.teacher)
    student = settings.student_epochs * epoch_cost(settings.student)
    total = teacher + soft + student
    shares = {"corpus": 0.01, "tokenizer": 0.01, "eval": 0.03}
    rest = 1.0 - sum(shares.values())
    shares.update(teacher=rest * teacher / total, soft_labels=rest * soft / total, student=rest * student / total)
    return shares


class _Bar:
    """Maps a stage's own 0..1 progress onto the whole build's 0..1."""

    def __init__(self, progress: Progress, shares: dict[str, float]) -> None:
        self.progress = progress
        self.shares = shares
        self.done = 0.0

    def stage(self, name: str, message: str) -> Callable[[str, float], None]:
        start, width = self.done, self.shares[name]
        self.done += width
        self.progress(message, start)
        return lambda msg, frac: self.progress(msg, start + width * min(max(frac, 0.0), 1.0))


def _build_into(root: Path, settings: DemoSettings, key: str, progress: Progress) -> None:
    """Corpus -> frozen eval split on disk -> tokenizer -> teacher -> soft labels -> student -> evaluation."""
    import platform

    import torch
    import transformers

    from loadtest.demopair import corpus, train
    from loadtest.demopair.tokenizer import count_tokens, train_tokenizer

    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    bar = _Bar(progress, _stage_shares(settings))
    data_dir = root / "data"
    data_dir.mkdir()

    bar.stage("corpus", "generating the intent corpus")
    t = time.perf_counter()
    shape = corpus.CorpusShape(rare_share=settings.rare_share, hard_share=settings.hard_share,
                               length_median=settings.length_median, length_sigma=settings.length_sigma)
    eval_df, train_df = corpus.generate_corpus(settings.seed, settings.n_train, settings.n_eval, shape)
    timings["corpus"] = time.perf_counter() - t

    bar.stage("tokenizer", "training the WordPiece tokenizer")
    t = time.perf_counter()
    tokenizer = train_tokenizer(train_df["text"].tolist(), settings.vocab_size, corpus.lexicon())
    eval_df = corpus.annotate_lengths(eval_df, lambda texts: count_tokens(tokenizer, texts))
    train_df = corpus.annotate_lengths(train_df, lambda texts: count_tokens(tokenizer, texts))
    # The evaluation split is frozen on disk before any model sees data.
    corpus.write_split(eval_df, data_dir / "eval.parquet")
    corpus.write_split(train_df, data_dir / "train.parquet")
    (data_dir / "labels.json").write_text(json.dumps(list(corpus.LABELS), indent=2) + "\n")
    timings["tokenizer"] = time.perf_counter() - t

    labels = list(corpus.LABELS)
    train_enc = train.encode(tokenizer, train_df["text"].tolist(), train_df["label_id"].tolist())
    eval_enc = train.encode(tokenizer, eval_df["text"].tolist(), eval_df["label_id"].tolist())

    step = bar.stage("teacher", "training the teacher")
    teacher = train.new_model(train.bert_config(settings.teacher, tokenizer, labels), settings.seed)
    teacher_fit = train.fit(teacher, train_enc, epochs=settings.teacher_epochs, lr=settings.teacher_lr,
                            batch_size=settings.batch_size, seed=settings.seed, progress=step, name="teacher")
    timings["teacher"] = teacher_fit.train_seconds

    bar.stage("soft_labels", "computing the teacher's soft labels")
    t = time.perf_counter()
    soft = train.predict_logits(teacher, train_enc)
    timings["soft_labels"] = time.perf_counter() - t

    step = bar.stage("student", "distilling the student")
    student = train.new_model(train.bert_config(settings.student, tokenizer, labels), settings.seed + 1)
    student_fit = train.fit(student, train_enc, epochs=settings.student_epochs, lr=settings.student_lr,
                            batch_size=settings.batch_size, seed=settings.seed + 1, teacher_logits=soft,
                            temperature=settings.temperature, alpha=settings.alpha, progress=step,
                            name="student")
    timings["student"] = student_fit.train_seconds

    bar.stage("eval", "evaluating and saving")
    t = time.perf_counter()
    results = {}
    for name, model, fitted, arch in (("teacher", teacher, teacher_fit, settings.teacher),
                                      ("student", student, student_fit, settings.student)):
        result = train.evaluate(train.predict_logits(model, eval_enc), eval_df)
        results[name] = result
        info = {
            "role": name,
            "settings_hash": key,
            "architecture": arch,
            "parameters": sum(p.numel() for p in model.parameters()),
            "training": {
                "epochs": fitted.epochs, "steps": fitted.steps, "final_loss": fitted.final_loss,
                "lr": settings.teacher_lr if name == "teacher" else settings.student_lr,
                "batch_size": settings.batch_size, "seed": settings.seed,
                "objective": "cross_entropy" if name == "teacher" else "distillation",
                **({"temperature": settings.temperature, "alpha": settings.alpha} if name == "student" else {}),
            },
            "train_seconds": fitted.train_seconds,
            "eval": result,
            "eval_measured_in": f"pytorch {torch.__version__}",
            "settings": settings,
        }
        train.save_model(model, tokenizer, root / name, info)
    timings["eval"] = time.perf_counter() - t

    build_seconds = time.perf_counter() - t0
    pair_info = {
        "settings_hash": key,
        "build_version": BUILD_VERSION,
        "settings": settings,
        "labels": labels,
        "rare_label": corpus.RARE_LABEL,
        "build_seconds": build_seconds,
        "stage_seconds": timings,
        "created": time.time(),
        "host": {"python": platform.python_version(), "torch": torch.__version__,
                 "transformers": transformers.__version__, "threads": torch.get_num_threads()},
        "tokenizer_vocab": len(tokenizer),
        "eval": results,
    }
    (root / "pair.json").write_text(json.dumps(pair_info, indent=2, default=train._jsonable) + "\n")
    progress("demo pair ready", 1.0)
