"""Options of a generative load test (registered with Locust beside the classifier options).

Why a table of its own: these options only matter when ``--api`` names a generative serving API; the
classifier options (``--models``, ``--dataset``, ``--lengths``, ``--seed``, ``--arrival-rate``, ...)
keep their meaning and are shared. ``--api`` set means a generative test: only the streaming users run.
The API key is read from the environment (``LOADTEST_API_KEY`` or ``OPENAI_API_KEY``) when a client
starts, never from an option, so it never reaches the manifest. Never imports Locust or gevent.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields

from loadtest.errors import LoadtestError
from loadtest.generative.protocols import APIS
from loadtest.load.payloads import LengthDistribution

DEFAULT_OUTPUT_LENGTHS = "fixed:64"
DEFAULT_INPUT_LENGTHS = "fixed:128"

# (flag, env var, default, type (bool = a switch), help)
GENERATIVE_OPTIONS: list[tuple[str, str, object, type, str]] = [
    ("--api", "LOADTEST_API", "", str,
     "Generative load: openai-chat, openai-completions (OpenAI-compatible /v1 API), triton-generate (Triton "
     "HTTP generate_stream) or triton-grpc (Triton gRPC streaming). Set, only the LLM users run."),
    ("--teacher", "LOADTEST_TEACHER", "", str, "Generative: the teacher's model name on the server."),
    ("--student", "LOADTEST_STUDENT", "", str, "Generative: the student's model name on the server."),
    ("--tokenizer", "LOADTEST_TOKENIZER", "", str,
     "A Hugging Face tokenizer (folder or tokenizer.json). Generative: synthetic prompts and token counts when "
     "the server reports none. Classifiers without a repository: text into token ids."),
    ("--messages-column", "LOADTEST_MESSAGES_COLUMN", "messages", str,
     "Generative: column of --dataset holding chat messages ([{role, content}, ...]); used when present."),
    ("--output-lengths", "LOADTEST_OUTPUT_LENGTHS", DEFAULT_OUTPUT_LENGTHS, str,
     "Generative: max_tokens per request: fixed:N, uniform:MIN:MAX or lognormal:MEDIAN:SIGMA."),
    ("--ignore-eos", "LOADTEST_IGNORE_EOS", False, bool,
     "Generative: ask for exactly max_tokens (ignore_eos + min_tokens; vLLM, SGLang, TensorRT-LLM)."),
    ("--no-stream", "LOADTEST_NO_STREAM", False, bool, "Generative: ask for whole answers (no TTFT/ITL)."),
    ("--warmup-requests", "LOADTEST_WARMUP_REQUESTS", 1, int,
     "Generative: the first N requests of each user to each model are labelled stage 'warmup' (excluded)."),
    ("--extra-body", "LOADTEST_EXTRA_BODY", "", str,
     "Generative: a JSON object merged into each OpenAI request body (Triton: into sampling_parameters)."),
]  # fmt: skip


@dataclass(frozen=True)
class GenerationOptions:
    """Typed view of the options above."""

    api: str
    teacher: str
    student: str
    tokenizer: str
    messages_column: str
    output_lengths: str
    ignore_eos: bool
    no_stream: bool
    warmup_requests: int
    extra_body: str

    @classmethod
    def from_namespace(cls, namespace) -> GenerationOptions:
        values = {}
        for f, (_flag, _env, default, kind, _help) in zip(fields(cls), GENERATIVE_OPTIONS):
            raw = getattr(namespace, f.name, None) if namespace is not None else None
            raw = default if raw is None else raw
            values[f.name] = _truthy(raw) if kind is bool else kind(raw)
        options = cls(**values)
        options.validate()
        return options

    @property
    def enabled(self) -> bool:
        return bool(self.api)

    @property
    def stream(self) -> bool:
        return not self.no_stream

    def validate(self) -> None:
        if self.api and self.api not in APIS:
            raise LoadtestError(f"--api must be one of {', '.join(APIS)}, got '{self.api}'")
        if self.warmup_requests < 0:
            raise LoadtestError(f"--warmup-requests must be >= 0, got {self.warmup_requests}")
        if self.api:
            self.output_distribution()
            self.extra()

    def output_distribution(self) -> LengthDistribution:
        dist = LengthDistribution.parse(self.output_lengths)
        if dist.kind == "dataset":
            raise LoadtestError("--output-lengths: use fixed:N, uniform:MIN:MAX or lognormal:MEDIAN:SIGMA")
        return dist

    def extra(self) -> dict:
        if not self.extra_body.strip():
            return {}
        try:
            value = json.loads(self.extra_body)
        except ValueError as exc:
            raise LoadtestError(f"--extra-body is not valid JSON: {exc}") from None
        if not isinstance(value, dict):
            raise LoadtestError("--extra-body must be a JSON object, e.g. '{\"temperature\": 0}'")
        return value

    def settings(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _truthy(value) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


assert [f.name for f in fields(GenerationOptions)] == [o[0][2:].replace("-", "_") for o in GENERATIVE_OPTIONS]
