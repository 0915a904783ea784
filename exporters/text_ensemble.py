"""``loadtest export --with-tokenizer``: a Triton ensemble that takes raw text, the production way.

For an exported model ``NAME`` this writes two more models into the repository:

* ``NAME_tokenizer``: a Python-backend model (``model.py`` + the repository's ``tokenizer.json`` in its
  version folder) turning a BYTES ``text`` input ``[1]`` into the model's inputs (``input_ids``,
  ``attention_mask``, ``token_type_ids`` as NAME declares them), truncated at the repository's
  ``max_sequence_length``;
* ``NAME_text``: an ensemble whose first step is ``NAME_tokenizer`` and whose second is ``NAME``; it
  takes ``text`` (BYTES) and returns NAME's outputs.

So clients send text and the server's tokenization cost is part of what is measured; scenarios can
target ``NAME`` (token ids) or ``NAME_text`` (text). ``loadtest.json`` maps each model to its ensemble
(``text_models``). The tokenizer step needs numpy and ``tokenizers`` in Triton's Python environment
(the embedded server has them; NGC's image needs ``pip install tokenizers``, see docs/staging.md).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from loadtest.errors import LoadtestError
from loadtest.repository import TOKENIZER_FILES, ModelRepository

TEXT_INPUT = "text"
TOKENIZER_SUFFIX = "_tokenizer"
ENSEMBLE_SUFFIX = "_text"
TOKEN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
TEMPLATE = Path(__file__).resolve().parent / "triton_models" / "tokenizer_model.py"


def text_model_names(name: str) -> tuple[str, str]:
    """(tokenizer step, ensemble) names for model ``name``."""
    return f"{name}{TOKENIZER_SUFFIX}", f"{name}{ENSEMBLE_SUFFIX}"


def _pad_id(repo: ModelRepository) -> int:
    tokenizer = repo.load_tokenizer()
    return int(tokenizer.pad_token_id) if tokenizer.pad_token_id is not None else 0


def write_text_ensemble(repository: Path | str, name: str) -> list[Path]:
    """Write ``NAME_tokenizer`` and ``NAME_text`` for the exported model ``name``; return the files written."""
    from tritonclient.grpc import model_config_pb2 as mc

    repo = ModelRepository(repository)
    metadata = repo.read_metadata()
    model = repo.read_config(name)
    if model.max_batch_size < 1:
        raise LoadtestError(f"model '{name}' does not batch (max_batch_size 0): the text ensemble needs a batching model")
    unknown = [t.name for t in model.input if t.name not in TOKEN_INPUTS]
    if unknown:
        raise LoadtestError(f"model '{name}' takes {unknown}, which a tokenizer does not produce: no text ensemble for it")
    tokenizer_name, ensemble_name = text_model_names(name)
    written: list[Path] = []

    step = mc.ModelConfig(name=tokenizer_name, backend="python", max_batch_size=model.max_batch_size)
    text = step.input.add()
    text.name, text.data_type = TEXT_INPUT, mc.TYPE_STRING
    text.dims.append(1)
    for tensor in model.input:
        out = step.output.add()
        out.name, out.data_type = tensor.name, tensor.data_type
        out.dims.extend([-1])
    step.dynamic_batching.max_queue_delay_microseconds = model.dynamic_batching.max_queue_delay_microseconds
    group = step.instance_group.add()
    group.count, group.kind = 1, mc.ModelInstanceGroup.KIND_CPU
    for key, value in {
        "tokenizer_file": "tokenizer.json",
        "max_sequence_length": str(metadata.max_sequence_length),
        "pad_id": str(_pad_id(repo)),
    }.items():
        step.parameters[key].string_value = value
    version = repo.model_dir(tokenizer_name) / "1"
    if version.parent.exists():
        shutil.rmtree(version.parent)
    version.mkdir(parents=True)
    written.append(repo.write_config(step))
    shutil.copyfile(TEMPLATE, version / "model.py")
    written.append(version / "model.py")
    for file in TOKENIZER_FILES:
        if (repo.path / file).is_file():
            shutil.copyfile(repo.path / file, version / file)
            written.append(version / file)

    ensemble = mc.ModelConfig(name=ensemble_name, platform="ensemble", max_batch_size=model.max_batch_size)
    text = ensemble.input.add()
    text.name, text.data_type = TEXT_INPUT, mc.TYPE_STRING
    text.dims.append(1)
    for tensor in model.output:
        ensemble.output.add().CopyFrom(tensor)
    first = ensemble.ensemble_scheduling.step.add()
    first.model_name, first.model_version = tokenizer_name, -1
    first.input_map[TEXT_INPUT] = TEXT_INPUT
    for tensor in model.input:
        first.output_map[tensor.name] = f"_{tensor.name}"
    second = ensemble.ensemble_scheduling.step.add()
    second.model_name, second.model_version = name, -1
    for tensor in model.input:
        second.input_map[tensor.name] = f"_{tensor.name}"
    for tensor in model.output:
        second.output_map[tensor.name] = tensor.name
    if repo.model_dir(ensemble_name).exists():
        shutil.rmtree(repo.model_dir(ensemble_name))
    (repo.model_dir(ensemble_name) / "1").mkdir(parents=True)  # Triton wants a version folder, even empty
    written.append(repo.write_config(ensemble))
    return written


def write_text_ensembles(repository: Path | str, names: list[str]) -> list[Path]:
    """Ensembles for every name, and their mapping in ``loadtest.json`` (``text_models``)."""
    repo = ModelRepository(repository)
    written = [path for name in names for path in write_text_ensemble(repo.path, name)]
    metadata = repo.read_metadata()
    mapping = dict(metadata.text_models)
    mapping.update({name: text_model_names(name)[1] for name in names})
    written.append(repo.write_metadata(metadata.model_copy(update={"text_models": mapping})))
    return written
