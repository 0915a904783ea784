"""A generated customer-support task corpus for the generative pair: every prompt has a reference answer.

The prompts are the classifier demo's banking requests (``loadtest.demopair.corpus``: eight intents, one rare,
long-tailed lengths, ~10 % hard two-intent texts whose answer depends on which intent is in the present), each
framed with the customer's segment; the reference is the agent's reply for the present intent, closed by a
segment-specific line. A share of prompts ask for a structured reply, a one-line JSON object, so format
adherence can be measured. Because the reply follows from the prompt, a model that understands the request
can reproduce the reference exactly; a student with less capacity slips first where the teacher also works
hardest (the rare intent, hard and long prompts), which is what the quality review must find.

Slice columns: ``rare_intent``, ``long_prompt`` (set once the tokenizer exists), ``hard``, ``structured``;
group column: ``segment``.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from loadtest.demopair import corpus as intents

if TYPE_CHECKING:
    import pandas as pd

SEGMENTS: tuple[str, ...] = ("retail", "business", "premium")
SEGMENT_WEIGHTS = (0.6, 0.25, 0.15)
JSON_INSTRUCTION = "Reply in JSON."
ANSWER_CUE = "\nagent:"
LONG_PROMPT_TOKENS = 64  # prompt tokens (shared tokenizer) from which a prompt counts as long
HIGH_PRIORITY = frozenset({"card_lost", "dispute_charge", "card_compromised"})

REPLIES: dict[str, str] = {
    "balance_inquiry": "Your current balance is shown on the home screen of the app under accounts.",
    "transfer_money": "You can send money from payments in the app; transfers to new payees arrive within two hours.",
    "card_lost": "I have frozen your card and a replacement will arrive within five working days.",
    "dispute_charge": "I have opened a dispute for that payment and you will hear from us within ten days.",
    "exchange_rate": "Today's exchange rates are listed under travel in the app and are fixed for one hour.",
    "change_pin": "You can change your pin at any cash machine or under card settings in the app.",
    "loan_inquiry": "You can check your loan options in the app without affecting your credit score.",
    "card_compromised": "I have blocked your card, refunded the unknown payment and ordered a new card today.",
}
CLOSINGS: dict[str, str] = {
    "retail": "Is there anything else I can help with?",
    "business": "Your relationship manager has been copied on this.",
    "premium": "Your premium line is open day and night if you need us.",
}

COLUMNS = ("id", "prompt", "reference", "intent", "segment", "rare_intent", "hard", "structured", "long_prompt",
           "n_prompt_tokens", "n_reference_tokens")


@dataclass(frozen=True)
class TaskShape:
    """How the task corpus is drawn: the intent corpus's shape plus the share of structured (JSON) prompts."""

    rare_share: float = 0.025
    hard_share: float = 0.10
    length_median: float = 18.0
    length_sigma: float = 0.85
    structured_share: float = 0.15


def reference_answer(intent: str, segment: str, structured: bool) -> str:
    """The agent's reply: the intent's answer and the segment's closing, or the JSON record of both."""
    if structured:
        priority = "high" if intent in HIGH_PRIORITY else "normal"
        return json.dumps({"intent": intent, "segment": segment, "priority": priority})
    return f"{REPLIES[intent]} {CLOSINGS[segment]}"


def format_prompt(text: str, segment: str, structured: bool) -> str:
    """What the model is given: who is asking, the request, the optional format instruction, the answer cue."""
    ask = f"{text} {JSON_INSTRUCTION}" if structured else text
    return f"customer ({segment}): {ask}{ANSWER_CUE}"


def parses_as_reply(text: str) -> bool:
    """Format adherence of a structured reply: a JSON object carrying intent, segment and priority strings."""
    try:
        value = json.loads(text.strip())
    except ValueError:
        return False
    return isinstance(value, dict) and all(isinstance(value.get(k), str) for k in ("intent", "segment", "priority"))


def generate_task_corpus(seed: int, n_train: int, n_eval: int, shape: TaskShape | None = None
                         ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(eval_df, train_df)`` without token columns; the evaluation split is drawn first, from its own stream."""
    shape = shape or TaskShape()
    base = intents.CorpusShape(rare_share=shape.rare_share, hard_share=shape.hard_share,
                               length_median=shape.length_median, length_sigma=shape.length_sigma)
    eval_df, train_df = intents.generate_corpus(seed, n_train, n_eval, base)
    return (_frame(eval_df, random.Random(f"genpair-eval-{seed}"), shape),
            _frame(train_df, random.Random(f"genpair-train-{seed}"), shape))


def _frame(df: pd.DataFrame, rng: random.Random, shape: TaskShape) -> pd.DataFrame:
    import pandas as pd

    rows = []
    for row in df.itertuples(index=False):
        segment = rng.choices(SEGMENTS, SEGMENT_WEIGHTS)[0]
        structured = rng.random() < shape.structured_share
        rows.append({"id": row.id, "prompt": format_prompt(row.text, segment, structured),
                     "reference": reference_answer(row.label, segment, structured), "intent": row.label,
                     "segment": segment, "rare_intent": bool(row.rare_class), "hard": bool(row.hard),
                     "structured": structured})
    return pd.DataFrame(rows)


def annotate_lengths(df: pd.DataFrame, tokenizer) -> pd.DataFrame:
    """Add prompt and reference token counts (the shared tokenizer) and the ``long_prompt`` slice."""
    out = df.copy()
    out["n_prompt_tokens"] = [len(x) for x in tokenizer(out["prompt"].tolist())["input_ids"]]
    out["n_reference_tokens"] = [len(x) for x in tokenizer(out["reference"].tolist())["input_ids"]]
    out["long_prompt"] = out["n_prompt_tokens"] >= LONG_PROMPT_TOKENS
    out = out.astype({"id": "str", "prompt": "str", "reference": "str", "intent": "str", "segment": "str",
                      "rare_intent": "bool", "hard": "bool", "structured": "bool", "long_prompt": "bool",
                      "n_prompt_tokens": "int64", "n_reference_tokens": "int64"})
    return out[list(COLUMNS)].reset_index(drop=True)


def write_split(df: pd.DataFrame, path: Path) -> None:
    """Parquet with plain string columns, so any reader gets the same schema."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    types = {"n_prompt_tokens": pa.int64(), "n_reference_tokens": pa.int64()}
    types.update({c: pa.bool_() for c in ("rare_intent", "hard", "structured", "long_prompt")})
    schema = pa.schema([(c, types.get(c, pa.string())) for c in COLUMNS])
    pq.write_table(pa.Table.from_pandas(df[list(COLUMNS)], schema=schema, preserve_index=False), path)


def corpus_texts(df: pd.DataFrame) -> list[str]:
    """Texts the tokenizer learns from: prompts and references of the training split."""
    return df["prompt"].tolist() + df["reference"].tolist()
