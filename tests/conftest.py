"""Shared test setup: the one place markers are skipped, and the session's real Triton.

Markers are declared in pyproject.toml. ``gpu`` tests run only where NVML finds a GPU; ``slow`` tests
run with ``--run-slow`` or ``LOADTEST_RUN_SLOW=1``. The ``triton_server`` fixture is a real embedded
Triton serving a real exported (tiny) teacher/student pair on free loopback ports.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
if str(TESTS_DIR) not in sys.path:  # the _*.py helper modules beside the tests
    sys.path.insert(0, str(TESTS_DIR))

from _genpair_fixtures import gen_pair, gen_repository  # noqa: E402,F401  (session fixtures of the generative pair)


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", default=False, help="run tests marked slow")


def _gpu_skip_reason() -> str | None:
    from loadtest.observability.gpu import nvml_unavailable_reason

    reason = nvml_unavailable_reason()
    return f"needs an NVIDIA GPU: {reason}" if reason else None


def pytest_collection_modifyitems(config, items):
    run_slow = config.getoption("--run-slow") or os.environ.get("LOADTEST_RUN_SLOW") == "1"
    gpu_reason: str | None = None
    gpu_checked = False
    for item in items:
        if "slow" in item.keywords and not run_slow:
            item.add_marker(pytest.mark.skip(reason="slow: run with --run-slow or LOADTEST_RUN_SLOW=1"))
        if "gpu" in item.keywords:
            if not gpu_checked:
                gpu_reason, gpu_checked = _gpu_skip_reason(), True
            if gpu_reason:
                item.add_marker(pytest.mark.skip(reason=gpu_reason))


@pytest.fixture(scope="session")
def tiny_repository(tmp_path_factory) -> Path:
    """A model repository holding a tiny random BERT teacher and student, exported and parity-checked."""
    from _model_fixtures import make_tiny_pair

    from exporters.pipeline import export_pair
    from loadtest.repository import TritonModelSettings

    root = tmp_path_factory.mktemp("tiny")
    teacher, student = make_tiny_pair(root / "hf")
    repository = root / "model_repository"
    export_pair(teacher, student, repository, TritonModelSettings(max_batch_size=16, max_queue_delay_us=500))
    return repository


@pytest.fixture(scope="session")
def triton_server(tiny_repository):
    """A real embedded Triton serving ``tiny_repository`` on free loopback ports for the whole session."""
    from loadtest.serving import EmbeddedTriton, ServerPorts

    server = EmbeddedTriton(tiny_repository, ServerPorts(0, 0, 0), log_file=tiny_repository.parent / "triton.log")
    server.start()
    yield server
    server.stop()
