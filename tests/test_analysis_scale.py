"""The analyzer's fast paths (categorical reads, one split per run, sorted percentiles) give the plain answers.

Checked against straightforward pandas on a synthetic run written by benchmarks/analyzer_scale.py (the
record schema, several shards, workers and stages): no timing is asserted here.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from analyzer_scale import write_synthetic_run  # noqa: E402

from loadtest.analysis import stats  # noqa: E402
from loadtest.analysis.analyze import compute  # noqa: E402
from loadtest.analysis.records import ALL_STAGES, load_run, stage_frames  # noqa: E402


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("scale") / "run"
    write_synthetic_run(path, 40_000, shard_rows=1_500, seed=3)
    return path


def _plain(run_dir: Path) -> pd.DataFrame:
    return pd.concat([pq.read_table(p).to_pandas() for p in sorted((run_dir / "records").glob("*.parquet"))])


def test_split_equals_masking_the_whole_frame(run_dir):
    run = load_run(run_dir)
    plain = _plain(run_dir)
    frames = stage_frames(run)
    assert {k for k in frames} == {(m, s) for m, s in plain[["model", "stage"]].drop_duplicates().itertuples(index=False)}
    for (model, stage), frame in frames.items():
        info = run.stages[stage]
        want = plain[(plain["model"] == model) & (plain["stage"] == stage)
                     & (plain["intended_start"] >= info.start + info.warmup_s)]
        assert len(frame) == len(want)
        np.testing.assert_array_equal(frame["latency_s"].to_numpy(), want["latency_s"].to_numpy())  # order kept
        assert frame["success"].sum() == want["success"].sum()
        assert list(frame["stage"].astype(str).unique()) == [stage]


def test_latency_table_and_difference_match_plain_computation(run_dir):
    analysis = compute(run_dir, bootstrap_resamples=2000)
    plain = _plain(run_dir)
    run = load_run(run_dir)
    for model in ("teacher", "student"):
        mine = plain[plain["model"] == model]
        keep = np.zeros(len(mine), dtype=bool)
        for stage, info in run.stages.items():
            keep |= (mine["stage"] == stage).to_numpy() & (mine["intended_start"] >= info.start + info.warmup_s).to_numpy()
        lat = mine.loc[keep & mine["success"].to_numpy(), "latency_s"].to_numpy()
        row = analysis.latency[(analysis.latency["model"] == model) & (analysis.latency["stage"] == ALL_STAGES)].iloc[0]
        assert row["requests"] == keep.sum() and row["successes"] == lat.size
        for p in (50.0, 95.0, 99.0):
            est = stats.estimate(lat, p)
            key = stats.percentile_key(p)
            assert row[f"{key}_ms"] == est.value * 1000
            assert (row[f"{key}_ci_low_ms"], row[f"{key}_ci_high_ms"]) == (est.ci_low * 1000, est.ci_high * 1000)
        np.testing.assert_array_equal(analysis.references[model].latencies_s, np.sort(lat))
    d = analysis.difference
    assert d.verdict == "faster" and (d.n_student, d.n_teacher) == (
        analysis.references["student"].latencies_s.size, analysis.references["teacher"].latencies_s.size)


def test_a_shard_without_a_schema_column_is_still_refused(tmp_path, run_dir):
    import shutil

    from loadtest.errors import LoadtestError

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    shard = sorted((copy / "records").glob("*.parquet"))[0]
    pq.write_table(pq.read_table(shard).drop_columns(["worker"]), shard)
    with pytest.raises(LoadtestError, match="lacks column"):
        load_run(copy)
