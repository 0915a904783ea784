"""Session fixtures of the generative pair: one quick build and one export per test session."""

from __future__ import annotations

import pytest

PARITY_PROMPTS = 20


@pytest.fixture(scope="session")
def gen_pair(tmp_path_factory):
    """The quick generative pair, really trained (seconds), cached in the session's temp folder."""
    import os

    from loadtest.genpair import GenSettings, build_or_reuse

    # LOADTEST_TEST_CACHE keeps the pair between sessions (development); by default each session builds its own.
    cache = os.environ.get("LOADTEST_TEST_CACHE") or tmp_path_factory.getbasetemp() / "gencache"
    return build_or_reuse(GenSettings.quick(), cache_dir=cache)


@pytest.fixture(scope="session")
def gen_repository(gen_pair, tmp_path_factory):
    """The quick pair exported (builder + parity) as decoupled streaming models: (repository, manifest)."""
    import pandas as pd

    from exporters.causal_lm import export_causal_pair

    prompts = pd.read_parquet(gen_pair.eval_path)["prompt"].tolist()[:PARITY_PROMPTS]
    repository = tmp_path_factory.mktemp("genrepo") / "model_repository"
    manifest = export_causal_pair(gen_pair.teacher_dir, gen_pair.student_dir, repository, max_inflight=8,
                                  prompts=prompts, max_new_tokens=40)
    return repository, manifest
