"""What every LLM user of a process shares for one test: the API endpoint, models, prompts, tokenizer.

Built once per process at test start (like ``loadtest.load.context`` for classifiers), so a bad option
or an unusable model fails before the first request, in one line. For Triton's streaming APIs the
models' configurations are read from the server: streaming needs a decoupled model, and a model that
is not one is named before the test rather than measured as something it is not.
Never imports Locust or gevent.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass

from loadtest.errors import LoadtestError
from loadtest.generative.prompts import Prompt, PromptSpec, TokenCounter, build_prompts, load_tokenizer
from loadtest.generative.protocols import OPENAI_CHAT, TRITON_GENERATE, TRITON_GRPC
from loadtest.generative.settings import GenerationOptions
from loadtest.load.settings import Endpoint, LoadOptions, parse_endpoint

CONFIG_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class LLMEndpoint:
    """The server and the API spoken to it; ``protocol`` (the API name) is what records carry."""

    api: str
    server: Endpoint

    @property
    def protocol(self) -> str:
        return self.api

    @property
    def base_url(self) -> str:
        scheme = "https" if self.server.ssl else "http"
        return f"{scheme}://{self.server.host}:{self.server.port}"


@dataclass(frozen=True)
class GenerativeContext:
    options: LoadOptions
    generation: GenerationOptions
    endpoint: LLMEndpoint
    models: tuple[str, ...]
    prompts: tuple[Prompt, ...]
    payload_description: str
    teacher: str | None
    student: str | None
    counter: TokenCounter | None
    extra: dict

    generative = True

    @property
    def model_names(self) -> list[str]:
        return list(self.models)


def model_names(options: LoadOptions, generation: GenerationOptions) -> list[str]:
    names = [m.strip() for m in options.models.split(",") if m.strip()]
    if not names:
        names = [n for n in (generation.teacher, generation.student) if n]
    if not names:
        raise LoadtestError("generative load needs the served model names: --models NAME[,NAME] or --teacher/--student")
    return list(dict.fromkeys(names))


def triton_model_config(endpoint: LLMEndpoint, model: str, timeout_s: float = CONFIG_TIMEOUT_S) -> dict:
    """A model's configuration as JSON, over the API's own protocol (raises LoadtestError in one line)."""
    where = f"{endpoint.server.host}:{endpoint.server.port}"
    if endpoint.api == TRITON_GRPC:
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException

        client = grpcclient.InferenceServerClient(endpoint.server.address, ssl=endpoint.server.ssl)
        try:
            return client.get_model_config(model, as_json=True, client_timeout=timeout_s).get("config", {})
        except InferenceServerException as exc:
            raise LoadtestError(f"model '{model}' at {where} (gRPC): {exc.message() or exc}") from None
        finally:
            client.close()
    url = f"{endpoint.base_url}/v2/models/{model}/config"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return json.loads(response.read().decode("utf-8", errors="replace"))
    except urllib.error.HTTPError as exc:
        text = exc.read().decode("utf-8", errors="replace").strip()[:300]
        raise LoadtestError(f"model '{model}' at {where}: HTTP {exc.code} {text}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise LoadtestError(f"cannot read model '{model}' config from {url}: {reason}") from None


def check_triton_models(endpoint: LLMEndpoint, models: list[str], stream: bool) -> None:
    """Streaming from Triton needs decoupled models: say which one is not, before the test."""
    for model in models:
        config = triton_model_config(endpoint, model)
        decoupled = bool((config.get("model_transaction_policy") or {}).get("decoupled", False))
        if stream and not decoupled:
            raise LoadtestError(
                f"model '{model}' is not decoupled: Triton streams tokens only from a decoupled model "
                "(model_transaction_policy {{ decoupled: true }}); use --no-stream to measure whole answers"
            )
        names = {t.get("name") for t in config.get("input", [])}
        if "text_input" not in names:
            raise LoadtestError(
                f"model '{model}' has no text_input input (inputs: {', '.join(sorted(map(str, names))) or 'none'}):"
                " it does not follow the generative model contract (text_input -> text_output)"
            )


def build_generative_context(options: LoadOptions, generation: GenerationOptions, host: str | None,
                             *, check_server: bool = True) -> GenerativeContext:  # fmt: skip
    """Resolve the endpoint and models, load the tokenizer, build the prompt pool (raises LoadtestError)."""
    if not generation.enabled:
        raise LoadtestError("no --api given: name the generative API (openai-chat, openai-completions, ...)")
    protocol = "grpc" if generation.api == TRITON_GRPC else "http"
    if host and "://" not in host and generation.api == TRITON_GRPC:
        host = f"grpc://{host}"
    server = parse_endpoint(host, protocol)
    endpoint = LLMEndpoint(generation.api, server)
    models = model_names(options, generation)
    tokenizer = load_tokenizer(generation.tokenizer) if generation.tokenizer else None
    spec = PromptSpec(
        dataset=options.dataset_path,
        text_column=options.text_column,
        messages_column=generation.messages_column,
        input_lengths=options.lengths,
        output_lengths=generation.output_distribution(),
        pool_size=options.payload_pool,
        seed=options.seed,
        chat=generation.api == OPENAI_CHAT,
    )
    prompts = build_prompts(spec, tokenizer)
    if check_server and generation.api in (TRITON_GENERATE, TRITON_GRPC):
        check_triton_models(endpoint, models, generation.stream)
    return GenerativeContext(
        options=options,
        generation=generation,
        endpoint=endpoint,
        models=tuple(models),
        prompts=tuple(prompts),
        payload_description=spec.describe(),
        teacher=generation.teacher or None,
        student=generation.student or None,
        counter=TokenCounter(tokenizer) if tokenizer is not None else None,
        extra=generation.extra(),
    )
