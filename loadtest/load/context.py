"""What every user of a process shares for one test: endpoint, models, and the payload pool.

Why once per process: the tokenizer, the payloads and the models' input lists are the same for every
user, and building them per user (or worse, per request) would load the generator, not the server.
Built before the clock from the options and the server (pre-flight, then each model's metadata and
config), so a bad option or an unready model fails before the first request, in one line.
Never imports Locust or gevent.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from loadtest.credentials import Credentials, load_credentials, split_host
from loadtest.endpoint import Endpoint, parse_endpoint
from loadtest.errors import LoadtestError
from loadtest.load.payloads import TOKENIZER_INPUTS, Payload, PayloadSpec, build_payloads
from loadtest.load.settings import LoadOptions
from loadtest.modelspec import ModelSpec
from loadtest.repository import ModelRepository


@dataclass(frozen=True)
class LoadContext:
    options: LoadOptions
    endpoint: Endpoint
    models: tuple[ModelSpec, ...]
    payloads: tuple[Payload, ...]  # the first model's pool (every pool has the same length)
    payload_description: str
    teacher: str | None = None
    student: str | None = None
    model_payloads: dict | None = None  # model name -> tuple[Payload, ...]
    served: tuple = ()  # ServerModel per model, as the server described it
    credentials: Credentials = field(default_factory=Credentials, repr=False)

    @property
    def model_names(self) -> list[str]:
        return [m.name for m in self.models]

    def payloads_for(self, name: str) -> tuple[Payload, ...]:
        if self.model_payloads and name in self.model_payloads:
            return self.model_payloads[name]
        return self.payloads


def _takes_tokens(model) -> bool:
    """A batching text model whose every required input is a tokenizer output of variable length."""
    required = [t for t in model.inputs if not t.optional]
    return bool(required) and model.batches and all(
        t.name in TOKENIZER_INPUTS and t.numpy_dtype is not None and t.numpy_dtype.startswith(("int", "uint"))
        and list(t.dims) == [-1]
        for t in required
    )


def _tokenizer(path: str, repository: ModelRepository, metadata):
    """(tokenizer, max_length) from --tokenizer, else the repository's, else (None, None)."""
    from loadtest.tokenizer import FastTokenizer

    if path:
        limit = metadata.max_sequence_length if metadata is not None else 512
        return FastTokenizer.from_path(path, limit), limit
    if metadata is not None and (repository.path / metadata.tokenizer).is_file():
        return repository.load_tokenizer(), metadata.max_sequence_length
    return None, None


def _spec(model, payload: Payload, feed: str) -> ModelSpec:
    inputs = tuple((t.name, t.numpy_dtype) for t in model.inputs if t.name in payload.arrays)
    return ModelSpec(model.name, inputs, tuple(t.name for t in model.outputs), model.max_batch_size, feed)


def _cycle(pool: list[Payload], length: int) -> tuple[Payload, ...]:
    return tuple(pool[i % len(pool)] for i in range(length))


def build_context(options: LoadOptions, host: str | None, on_wait=None, tokenizer: str = "") -> LoadContext:
    """Pre-flight the server, read the models from it and prepare the payload pools (raises LoadtestError).

    The server is the truth about each model (inputs, datatypes, dims, batching); a local repository
    written by ``loadtest export`` only adds teacher/student roles and the tokenizer for token payloads.
    ``tokenizer`` (``--tokenizer``, shared with the generative options) stands in for a repository's.
    """
    from loadtest.load.model_inputs import InputSettings, build_model_payloads, check_shapes_known, describe
    from loadtest.load.model_inputs import parse_input_shapes, parse_int_range
    from loadtest.load.preflight import check_server
    from loadtest.repository import METADATA_FILE

    endpoint = parse_endpoint(host, options.protocol)
    _, user_info = split_host(host)
    credentials = load_credentials(
        user_info, headers_file=options.headers_file or None, ca_file=options.ssl_ca_file or None,
        cert_file=options.ssl_cert_file or None, key_file=options.ssl_key_file or None,
    )  # fmt: skip
    repository = ModelRepository(options.repository_path)
    metadata = repository.read_metadata() if (repository.path / METADATA_FILE).is_file() else None
    settings = InputSettings(
        shapes=parse_input_shapes(options.input_shape),
        input_data=options.input_data_path,
        dataset=options.dataset_path,
        text_column=options.text_column,
        lengths=options.lengths or None,
        batch_size=options.batch_size,
        pool_size=options.payload_pool,
        seed=options.seed,
        int_range=parse_int_range(options.int_range),
    )
    checked = check_server(
        endpoint,
        options.model_names(metadata),
        version=options.model_version,
        wait_ready_s=options.wait_ready,
        timeout_s=min(options.request_timeout, 10.0),
        on_wait=on_wait,
        credentials=credentials,
    )
    for model in checked.models:
        if model.decoupled:
            raise LoadtestError(
                f"model '{model.name}' is decoupled (streams its responses): the infer users cannot load it; "
                "use a streaming scenario, or leave it out of --models"
            )
    check_shapes_known(checked.models, settings)
    tokenizer, max_length = _tokenizer(tokenizer, repository, metadata)
    token_pool: list[Payload] | None = None
    pools: dict[str, list[Payload]] = {}
    descriptions = []
    for model in checked.models:
        if tokenizer is not None and settings.input_data is None and _takes_tokens(model):
            if model.max_batch_size and options.batch_size > model.max_batch_size:
                raise LoadtestError(
                    f"--batch-size {options.batch_size} exceeds model '{model.name}' max_batch_size {model.max_batch_size}"
                )
            if token_pool is None:  # one pool for every text model: teacher and student get the same requests
                payload_spec = PayloadSpec(
                    repository=repository.path, dataset=options.dataset_path, text_column=options.text_column,
                    lengths=options.lengths or None, batch_size=options.batch_size,
                    pool_size=options.payload_pool, seed=options.seed,
                )  # fmt: skip
                token_pool = build_payloads(payload_spec, tokenizer=tokenizer, max_length=max_length)
                descriptions.append(payload_spec.describe())
            pools[model.name] = token_pool
        else:
            pools[model.name] = build_model_payloads(model, settings, tokenizer)
            if describe(settings) not in descriptions:
                descriptions.append(describe(settings))
    if any(not pool for pool in pools.values()):
        raise LoadtestError("no payloads could be built: the dataset is smaller than one batch")
    length = max(len(pool) for pool in pools.values())
    model_payloads = {name: _cycle(pool, length) for name, pool in pools.items()}
    feeds = {name: "tokens" if pool is token_pool else "tensors" for name, pool in pools.items()}
    specs = tuple(_spec(m, model_payloads[m.name][0], feeds[m.name]) for m in checked.models)
    first = model_payloads[specs[0].name]
    return LoadContext(
        options, endpoint, specs, first, "; ".join(descriptions),
        _role(metadata, "teacher", checked.names), _role(metadata, "student", checked.names),
        model_payloads, checked.models, credentials,
    )  # fmt: skip


def _role(metadata, role: str, names: list[str]) -> str | None:
    """The loaded model playing ``role``: the repository's model itself, or its text ensemble."""
    if metadata is None:
        return None
    name = getattr(metadata, role)
    if name in names:
        return name
    text = metadata.text_models.get(name)
    return text if text in names else None
