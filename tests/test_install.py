"""The light install and the load-generator image's dependency list really run the scenarios.

One virtualenv is built from exactly the dependency list of ``docker/loadtest.Dockerfile`` (parsed from
the file, installed from the package index with pip's cache and ``-c constraints.txt`` as the image
does), then ``pip install .`` (the core install, dependencies resolved from pyproject) must add nothing
but loadtest itself. With that virtualenv, headless Locust runs a scenario against the embedded Triton
started from the full install: once with the exported tiny pair and its repository, once against models
loadtest never exported with no repository at all. torch and transformers must not be importable there.

The virtualenv is cached under ``~/.cache/loadtest/test-venvs/<hash of the list>`` so a re-run costs
seconds; CI starts from a clean cache. Marked ``install`` (runs by default; deselect with -m "not install").
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from _load_helpers import success_delta, triton_success

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "docker" / "loadtest.Dockerfile"
CONSTRAINTS = ROOT / "constraints.txt"
IMAGE_ONLY = {"nvidia-ml-py>=12"}  # the GPU exporter runs from the same image
pytestmark = pytest.mark.install


def dockerfile_requirements(text: str) -> list[str]:
    """The quoted requirements of the Dockerfile's ``RUN pip install -c constraints.txt ...`` instruction."""
    joined = re.sub(r"\\\n", " ", text)
    for line in joined.splitlines():
        if line.strip().startswith("RUN pip install -c constraints.txt"):
            return re.findall(r'"([^"]+)"', line)
    raise AssertionError("docker/loadtest.Dockerfile has no `RUN pip install -c constraints.txt ...` line")


def core_requirements() -> list[str]:
    return list(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"])


def test_dockerfile_lists_exactly_the_core_dependencies():
    listed = dockerfile_requirements(DOCKERFILE.read_text())
    assert set(listed) - IMAGE_ONLY == set(core_requirements())
    assert IMAGE_ONLY <= set(listed)
    unused = {"hdrhistogram", "tritonclient[all]", "torch", "transformers", "onnx", "nvidia-pytriton", "scikit-learn"}
    assert not [r for r in core_requirements() if any(r.startswith(u) for u in unused)]


def _run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def _freeze(python: Path) -> set[str]:
    out = _run([str(python), "-m", "pip", "list", "--format=freeze"]).stdout
    return {line.split("==")[0].lower() for line in out.splitlines() if "==" in line}


@pytest.fixture(scope="module")
def image_venv(tmp_path_factory) -> Path:
    """A virtualenv with the Dockerfile's dependency list, then loadtest's core install on top."""
    requirements = dockerfile_requirements(DOCKERFILE.read_text())
    key = hashlib.sha256(("\n".join(requirements) + CONSTRAINTS.read_text() + sys.version).encode()).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "loadtest" / "test-venvs" / key
    python = cache / "bin" / "python"
    if not (cache / ".complete").is_file():
        shutil.rmtree(cache, ignore_errors=True)
        _run([sys.executable, "-m", "venv", str(cache)])
        _run([str(python), "-m", "pip", "install", "--quiet", "-c", str(CONSTRAINTS), *requirements], timeout=900)
        (cache / ".complete").write_text("\n".join(requirements) + "\n")
    subprocess.run([str(python), "-m", "pip", "uninstall", "--quiet", "-y", "loadtest"], capture_output=True)  # a cached venv
    before = _freeze(python)
    # The core install, as a user runs it: dependencies resolved from pyproject, nothing new may arrive.
    build = tmp_path_factory.mktemp("build")
    source = build / "src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", ".venv", "results", "model_repository", "__pycache__", "*.egg-info", "build"))
    _run([str(python), "-m", "pip", "install", "--quiet", "-c", str(CONSTRAINTS), str(source)], timeout=600)
    after = _freeze(python)
    assert after - before == {"loadtest"}, f"the core install pulled more than the image list: {sorted(after - before)}"
    return python


def _locust(python: Path, args: list[str], cwd: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{python.parent}:{env.get('PATH', '')}"
    command = [str(python.parent / "locust"), "--headless", "--only-summary", "--metrics-port", "0",
               "--records-dir", str(tmp_path / "results"), *args]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=env, timeout=240)


def _records(tmp_path: Path):
    import pyarrow.parquet as pq

    files = sorted((tmp_path / "results").rglob("records/*.parquet"))
    assert files, "the run wrote no records"
    import pyarrow as pa

    return pa.concat_tables([pq.read_table(f) for f in files]).to_pandas()


def test_light_venv_has_no_torch_or_transformers(image_venv):
    for module in ("torch", "transformers", "onnxruntime", "pytriton"):
        result = subprocess.run([str(image_venv), "-c", f"import {module}"], capture_output=True, text=True)
        assert result.returncode != 0, f"{module} is importable in the light install"


def test_light_venv_runs_a_scenario_against_the_exported_pair(image_venv, triton_server, tmp_path):
    # Run from a folder outside the source tree: the installed package, not the checkout, is imported.
    scenarios = tmp_path / "scenarios"
    shutil.copytree(ROOT / "scenarios", scenarios)
    before = triton_success(triton_server.metrics_url)
    result = _locust(
        image_venv,
        ["-f", str(scenarios / "steady.py"), "-u", "2", "-t", "3s", "--host", triton_server.http_url,
         "--repository", str(triton_server.repository)],
        tmp_path, tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    records = _records(tmp_path)
    delta = success_delta(before, triton_success(triton_server.metrics_url))
    assert records["success"].all()
    for model, rows in records.groupby("model"):
        assert len(rows) == delta[model] > 0


@pytest.fixture(scope="module")
def foreign_server(tmp_path_factory):
    """The embedded Triton (full install) serving Python-backend models and an ensemble loadtest did not export."""
    from _foreign_models import write_foreign_repository

    from loadtest.serving import EmbeddedTriton, ServerPorts

    root = tmp_path_factory.mktemp("foreign")
    server = EmbeddedTriton(write_foreign_repository(root / "models"), ServerPorts(0, 0, 0), log_file=root / "t.log")
    server.start()
    yield server
    server.stop()


def test_light_venv_loads_models_it_did_not_export_with_no_repository(image_venv, foreign_server, tmp_path):
    from _foreign_models import ENSEMBLE_STEPS

    scenarios = tmp_path / "scenarios"
    shutil.copytree(ROOT / "scenarios", scenarios)
    before = triton_success(foreign_server.metrics_url)
    result = _locust(image_venv, ["-f", str(scenarios / "steady.py"), "-u", "2", "-t", "3s", "--host",
                                  foreign_server.grpc_url], tmp_path, tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    records = _records(tmp_path)
    assert records["success"].all() and records["model"].nunique() == 6
    own = records.groupby("model").size().to_dict()
    delta = success_delta(before, triton_success(foreign_server.metrics_url))
    for model, n in own.items():
        via_ensembles = sum(own.get(e, 0) for e, steps in ENSEMBLE_STEPS.items() if model in steps)
        assert delta[model] == n + via_ensembles
