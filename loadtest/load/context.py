"""What every user of a process shares for one test: endpoint, models, and the payload pool.

Why once per process: the tokenizer, the payloads and the models' input lists are the same for every
user, and building them per user (or worse, per request) would load the generator, not the server.
Built at test start from the options, so a bad option fails before the first request, in one line.
Never imports Locust or gevent.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from loadtest.credentials import Credentials, load_credentials, split_host
from loadtest.errors import LoadtestError
from loadtest.load.payloads import Payload, PayloadSpec, build_payloads
from loadtest.load.settings import Endpoint, LoadOptions, parse_endpoint
from loadtest.repository import TRITON_TO_NUMPY, ModelRepository


@dataclass(frozen=True)
class ModelSpec:
    """A model as the client needs it: input names and dtypes, output names, largest batch."""

    name: str
    inputs: tuple[tuple[str, str], ...]  # (name, numpy dtype name)
    outputs: tuple[str, ...]
    max_batch_size: int


def model_specs(repository: ModelRepository, names: list[str]) -> list[ModelSpec]:
    """Specs of ``names`` from their config.pbtxt in ``repository``."""
    specs = []
    for name in names:
        config = repository.read_config(name)
        inputs = []
        for tensor in config.input:
            if tensor.data_type not in TRITON_TO_NUMPY:
                raise LoadtestError(f"model '{name}': input '{tensor.name}' has a data type loadtest cannot fill")
            inputs.append((tensor.name, TRITON_TO_NUMPY[tensor.data_type]))
        specs.append(ModelSpec(name, tuple(inputs), tuple(t.name for t in config.output), config.max_batch_size))
    return specs


@dataclass(frozen=True)
class LoadContext:
    options: LoadOptions
    endpoint: Endpoint
    models: tuple[ModelSpec, ...]
    payloads: tuple[Payload, ...]
    payload_description: str
    teacher: str | None = None
    student: str | None = None
    credentials: Credentials = field(default_factory=Credentials, repr=False)

    @property
    def model_names(self) -> list[str]:
        return [m.name for m in self.models]


def build_context(options: LoadOptions, host: str | None) -> LoadContext:
    """Resolve the endpoint, read the models' configs and prepare the payload pool (raises LoadtestError)."""
    endpoint = parse_endpoint(host, options.protocol)
    _, user_info = split_host(host)
    credentials = load_credentials(
        user_info, headers_file=options.headers_file or None, ca_file=options.ssl_ca_file or None,
        cert_file=options.ssl_cert_file or None, key_file=options.ssl_key_file or None,
    )  # fmt: skip
    repository = ModelRepository(options.repository_path)
    if not repository.path.is_dir():
        raise LoadtestError(
            f"model repository {repository.path} not found: pass --repository (or LOADTEST_REPOSITORY), "
            "a local copy of the repository Triton serves (for the tokenizer and the models' inputs)"
        )
    metadata = repository.read_metadata()
    models = model_specs(repository, options.model_names(metadata))
    for spec in models:
        if spec.max_batch_size and options.batch_size > spec.max_batch_size:
            raise LoadtestError(
                f"--batch-size {options.batch_size} exceeds model '{spec.name}' max_batch_size {spec.max_batch_size}"
            )
    payload_spec = PayloadSpec(
        repository=repository.path,
        dataset=options.dataset_path,
        text_column=options.text_column,
        lengths=options.lengths or None,
        batch_size=options.batch_size,
        pool_size=options.payload_pool,
        seed=options.seed,
    )
    payloads = build_payloads(payload_spec)
    if not payloads:
        raise LoadtestError("no payloads could be built: the dataset is smaller than one batch")
    return LoadContext(
        options, endpoint, tuple(models), tuple(payloads), payload_spec.describe(), metadata.teacher, metadata.student,
        credentials,
    )  # fmt: skip
