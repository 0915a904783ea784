"""What every LLM user of a process shares for one test: the API endpoint, models, prompts, tokenizer.

Built once per process at test start (like ``loadtest.load.context`` for classifiers), so a bad option
or an unusable model fails before the first request, in one line. For Triton's streaming APIs the
models' configurations are read from the server: streaming needs a decoupled model, and a model that
is not one is named before the test rather than measured as something it is not.
Never imports Locust or gevent.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from loadtest.credentials import Credentials, load_credentials, split_host

from loadtest.errors import LoadtestError
from loadtest.generative.prompts import Prompt, PromptSpec, TokenCounter, build_prompts, load_tokenizer
from loadtest.generative.protocols import OPENAI_CHAT, TRITON_GENERATE, TRITON_GRPC
from loadtest.generative.settings import GenerationOptions
from loadtest.endpoint import Endpoint, parse_endpoint
from loadtest.load.settings import LoadOptions

CONFIG_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class LLMEndpoint:
    """The server and the API spoken to it; ``protocol`` (the API name) is what records carry."""

    api: str
    server: Endpoint

    @property
    def protocol(self) -> str:
        return self.api

    # the classifier Endpoint's attributes, so code written for either endpoint reads both
    @property
    def host(self) -> str:
        return self.server.host

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def ssl(self) -> bool:
        return self.server.ssl

    @property
    def address(self) -> str:
        return self.server.address

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
    served: tuple = ()  # Triton APIs: ServerModel per model, as the pre-flight found them
    credentials: Credentials = field(default_factory=Credentials, repr=False)  # only in memory, never written

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


def check_triton_models(endpoint: LLMEndpoint, models: list[str], options: LoadOptions, stream: bool,
                        credentials: Credentials | None = None) -> tuple:
    """Pre-flight (reachable, protocol, every model READY) and the generative contract, before the test.

    Streaming from Triton needs decoupled models: one that is not is named here, in one line.
    """
    from loadtest.load.preflight import check_server

    checked = check_server(endpoint.server, models, version=options.model_version, wait_ready_s=options.wait_ready,
                           timeout_s=min(options.request_timeout, CONFIG_TIMEOUT_S), credentials=credentials)  # fmt: skip
    for model in checked.models:
        if stream and not model.decoupled:
            raise LoadtestError(
                f"model '{model.name}' is not decoupled: Triton streams tokens only from a decoupled model "
                "(model_transaction_policy { decoupled: true }); use --no-stream to measure whole answers"
            )
        if model.input("text_input") is None:
            names = ", ".join(t.name for t in model.inputs) or "none"
            raise LoadtestError(
                f"model '{model.name}' has no text_input input (inputs: {names}): it does not follow the "
                "generative model contract (text_input -> text_output)"
            )
    return tuple(checked.models)


def build_generative_context(options: LoadOptions, generation: GenerationOptions, host: str | None,
                             *, check_server: bool = True) -> GenerativeContext:  # fmt: skip
    """Resolve the endpoint and models, load the tokenizer, build the prompt pool (raises LoadtestError)."""
    if not generation.enabled:
        raise LoadtestError("no --api given: name the generative API (openai-chat, openai-completions, ...)")
    protocol = "grpc" if generation.api == TRITON_GRPC else "http"
    if host and "://" not in host and generation.api == TRITON_GRPC:
        host = f"grpc://{host}"
    server = parse_endpoint(host, protocol)
    _, user_info = split_host(host)  # URL user-info becomes a header in memory; the records never see it
    credentials = load_credentials(
        user_info, headers_file=options.headers_file or None, ca_file=options.ssl_ca_file or None,
        cert_file=options.ssl_cert_file or None, key_file=options.ssl_key_file or None,
    )  # fmt: skip
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
    served: tuple = ()
    if check_server and generation.api in (TRITON_GENERATE, TRITON_GRPC):
        served = check_triton_models(endpoint, models, options, generation.stream, credentials)
    prompts = build_prompts(spec, tokenizer)
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
        served=served,
        credentials=credentials,
    )
