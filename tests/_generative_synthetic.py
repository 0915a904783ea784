"""A synthetic generative evaluation log: known structure, no server.

Free-text answers and JSON answers; the teacher reproduces the reference most of the time, the student
follows the teacher. ``broken_format=True`` makes a student that drops the JSON format on structured
prompts (it answers in prose), the regression the gate must catch and name.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from loadtest.quality import teacherforced as tf
from loadtest.quality.genscoring import add_teacher_forced, add_text_scores

WORDS = "balance card transfer pin loan rate euros pounds account savings blocked sent today yesterday".split()
VOCAB = 24


def _sentence(rng, n_words):
    return " ".join(rng.choice(WORDS, n_words))


def _perturb(rng, text, p):
    words = text.split(" ")
    return " ".join(w if rng.random() > p else str(rng.choice(WORDS)) for w in words)


def synthetic_log(n: int = 240, seed: int = 0, broken_format: bool = False, student_noise: float = 0.15, with_tf: bool = True):
    """(per-example frame, [(teacher log-probs, student log-probs, targets)]) of a generative evaluation."""
    rng = np.random.default_rng(seed)
    rows = []
    tf_inputs = []
    for i in range(n):
        structured = i % 4 == 0
        long_prompt = bool(rng.random() < 0.3)
        group = ["retail", "business", "private"][i % 3]
        if structured:
            intent = str(rng.choice(WORDS))
            reference = json.dumps({"intent": intent, "amount": int(rng.integers(1, 500))})
            teacher = reference if rng.random() < 0.9 else json.dumps({"intent": intent})
            student = teacher if rng.random() > student_noise else json.dumps({"intent": str(rng.choice(WORDS)), "amount": 1})
            if broken_format:
                student = f"the intent is {intent}"
            keys = ["intent", "amount"]
        else:
            reference = _sentence(rng, int(rng.integers(3, 12)))
            teacher = reference if rng.random() < 0.6 else _perturb(rng, reference, 0.3)
            student = teacher if rng.random() > student_noise else _perturb(rng, teacher, 0.4)
            if rng.random() < 0.02:
                student = "  "
            keys = []
        rows.append(
            {
                "id": f"g{i}",
                "prompt": ("please " * (20 if long_prompt else 2)) + "answer",
                "prompt_tokens": 40 if long_prompt else 4,
                "reference": reference,
                "required_keys": keys,
                "long_prompt": long_prompt,
                "segment": group,
                "teacher_output": teacher,
                "student_output": student,
                "teacher_output_tokens": len(teacher.split()),
                "student_output_tokens": len(student.split()),
            }
        )
        t = int(rng.integers(2, 9))
        targets = rng.integers(0, VOCAB, t)
        lt = tf.log_softmax(rng.normal(0, 2, (t, VOCAB)) + 3.0 * np.eye(VOCAB)[targets])
        ls = tf.log_softmax(np.log(np.exp(lt) + 1e-3) + rng.normal(0, 0.5, (t, VOCAB)))
        tf_inputs.append((lt, ls, targets))
    per = add_text_scores(pd.DataFrame(rows))
    if with_tf:
        per = add_teacher_forced(per, [tf.teacher_forced(lt, ls, y) for lt, ls, y in tf_inputs])
    return per, tf_inputs


def write_generative_run(run_dir, n: int = 240, seed: int = 0, resamples: int = 100, **kwargs):
    """A run directory with generative quality results scored from ``synthetic_log`` (as the eval writes them)."""
    from loadtest.quality.genscoring import GenScoreSettings, generative_slices, score_generative
    from loadtest.quality.results import write_quality
    from loadtest.quality.dataset import frozen_set_hash

    per, _ = synthetic_log(n=n, seed=seed, **kwargs)
    per, specs = generative_slices(per, ["long_prompt", "segment"])
    table = score_generative(per, specs, GenScoreSettings(n_resamples=resamples))
    summary = {
        "task": "text-generation",
        "models": {"teacher": "teacher", "student": "student"},
        "slices": [s.to_dict() for s in specs],
        "frozen_set_sha256": frozen_set_hash(per, ["id", "prompt", "reference"]),
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    write_quality(run_dir, per, table, summary)
    return run_dir
