"""Load generator parts that need no server: payloads, records, run dirs, stages, options, metrics.

None of these modules may import Locust or gevent (the analyzer and the CLI import them); the first
test checks that in a fresh interpreter.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from _load_repo import make_repository

from loadtest.errors import LoadtestError
from loadtest.load.client_metrics import LATENCY_BUCKETS_S, ClientMetrics, metrics_port_for
from loadtest.load.payloads import LengthDistribution, PayloadSpec, build_payloads, model_arrays
from loadtest.endpoint import parse_endpoint
from loadtest.load.records import RecordWriter
from loadtest.load.runner import build_command, scenario_path
from loadtest.load.settings import OPTIONS, LoadOptions
from loadtest.load.stages import StageBoard, parse_duration, parse_stage_plan, stage_at
from loadtest.analysis import stats
from loadtest.load.summary import latency_percentiles, summarize_table
from loadtest.rundir import COLUMNS, SCHEMA, Record, RunDir, claim_run_dir, create_run_dir, new_run_id, read_records, shard_paths

PY = sys.executable


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    return make_repository(tmp_path_factory.mktemp("loadrepo") / "model_repository", max_length=64)


def test_library_side_never_imports_locust_or_gevent():
    code = (
        "import sys\n"
        "import loadtest.load, loadtest.load.payloads, loadtest.load.records, loadtest.load.client_metrics\n"
        "import loadtest.rundir, loadtest.load.runner, loadtest.load.summary, loadtest.load.context\n"
        "import loadtest.load.commands, loadtest.load.stages, loadtest.load.settings, loadtest.load.process\n"
        "import loadtest.load.snapshots, loadtest.endpoint, loadtest.modelspec\n"
        "bad = [m for m in ('locust', 'gevent') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([PY, "-c", code], check=True)


# ---- payloads ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text,kind", [("fixed:32", "fixed"), ("uniform:4:40", "uniform"), ("lognormal:20:0.5", "lognormal"), ("dataset", "dataset")]
)
def test_length_distribution_parses(text, kind):
    assert LengthDistribution.parse(text).kind == kind
    assert str(LengthDistribution.parse(text)) == text


@pytest.mark.parametrize("text", ["fixed", "fixed:0", "uniform:9:3", "lognormal:10", "normal:3", "fixed:x"])
def test_length_distribution_rejects(text):
    with pytest.raises(LoadtestError):
        LengthDistribution.parse(text)


def test_length_samples_stay_within_bounds():
    rng = np.random.default_rng(1)
    lengths = LengthDistribution.parse("lognormal:40:1.5").sample(rng, 2000, max_length=64)
    assert lengths.min() >= 1 and lengths.max() <= 64 and lengths.max() == 64  # heavy tail clipped at the limit
    uniform = LengthDistribution.parse("uniform:5:9").sample(rng, 500, max_length=64)
    assert set(np.unique(uniform)) == {5, 6, 7, 8, 9}


def test_synthetic_payloads_count_tokens_from_the_attention_mask(repo):
    payloads = build_payloads(PayloadSpec(repo, lengths="uniform:3:30", batch_size=4, pool_size=20, seed=7))
    assert len(payloads) == 20
    for p in payloads:
        mask = p.arrays["attention_mask"]
        assert mask.shape == p.arrays["input_ids"].shape == (4, p.sequence_length)
        assert p.tokens == int(mask.sum())
        assert 3 * 4 <= p.tokens <= 30 * 4
        assert p.sequence_length == int(mask.sum(axis=1).max())  # padded to the longest row, not to the limit
    again = build_payloads(PayloadSpec(repo, lengths="uniform:3:30", batch_size=4, pool_size=20, seed=7))
    assert all(np.array_equal(a.arrays["input_ids"], b.arrays["input_ids"]) for a, b in zip(payloads, again))


def test_synthetic_rows_are_framed_by_special_tokens(repo):
    from loadtest.repository import ModelRepository

    tokenizer = ModelRepository(repo).load_tokenizer()
    payload = build_payloads(PayloadSpec(repo, lengths="fixed:10", pool_size=1))[0]
    ids = payload.arrays["input_ids"][0]
    assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id and len(ids) == 10
    assert not set(ids[1:-1]) & set(tokenizer.all_special_ids)


def test_lengths_are_capped_at_the_repository_limit(repo):
    payload = build_payloads(PayloadSpec(repo, lengths="fixed:500", pool_size=1))[0]
    assert payload.sequence_length == 64


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_text_dataset_is_tokenised_with_the_repository_tokenizer(repo, tmp_path, suffix):
    import pandas as pd

    texts = ["the teacher model", "users complained during the rollout and the team was not happy", "fast"]
    frame = pd.DataFrame({"text": texts * 4, "label": [0, 1, 2] * 4})
    path = tmp_path / f"data{suffix}"
    {".jsonl": lambda: frame.to_json(path, orient="records", lines=True),
     ".csv": lambda: frame.to_csv(path, index=False),
     ".parquet": lambda: frame.to_parquet(path)}[suffix]()  # fmt: skip
    payloads = build_payloads(PayloadSpec(repo, dataset=path, batch_size=2, pool_size=100))
    assert len(payloads) == 6  # 12 rows in batches of 2: every row used once
    from loadtest.repository import ModelRepository

    tokenizer = ModelRepository(repo).load_tokenizer()
    expected = sum(len(tokenizer(t)["input_ids"]) for t in texts * 4)
    assert sum(p.tokens for p in payloads) == expected


def test_pretokenised_dataset_and_dataset_lengths(repo, tmp_path):
    rows = [{"input_ids": [2] + list(range(10, 10 + n)) + [3]} for n in (3, 8, 20)]
    path = tmp_path / "ids.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    payloads = build_payloads(PayloadSpec(repo, dataset=path, pool_size=10))
    assert sorted(p.tokens for p in payloads) == [5, 10, 22]
    synthetic = build_payloads(PayloadSpec(repo, dataset=path, lengths="dataset", pool_size=50))
    assert {p.tokens for p in synthetic} <= {5, 10, 22}


def test_dataset_errors_are_one_line(repo, tmp_path):
    (tmp_path / "x.csv").write_text("body\nhello\n")
    with pytest.raises(LoadtestError, match="--text-column"):
        build_payloads(PayloadSpec(repo, dataset=tmp_path / "x.csv"))
    with pytest.raises(LoadtestError, match="does not exist"):
        build_payloads(PayloadSpec(repo, dataset=tmp_path / "missing.jsonl"))
    with pytest.raises(LoadtestError, match="needs --dataset"):
        build_payloads(PayloadSpec(repo, lengths="dataset"))


def test_model_arrays_follow_each_models_inputs(repo):
    payload = build_payloads(PayloadSpec(repo, lengths="fixed:8", pool_size=1))[0]
    arrays = model_arrays(payload, [("input_ids", "int32"), ("attention_mask", "int64")])
    assert list(arrays) == ["input_ids", "attention_mask"] and arrays["input_ids"].dtype == np.int32
    with pytest.raises(LoadtestError):
        model_arrays(payload, [("pixel_values", "float32")])


# ---- records ----------------------------------------------------------------------------------
def _record(i: int, latency: float) -> Record:
    ok = bool(i % 2)
    return Record(1.7e9 + i, 1.7e9 + i, 1.7e9 + i + latency, latency, latency, "teacher", "http", 1, 12, ok,
                  None if ok else "boom", "steady", "closed", False, "host-1", "SteadyUser")  # fmt: skip


def test_record_schema_is_the_contract():
    assert COLUMNS == ("intended_start", "start", "end", "latency_s", "service_time_s", "model", "protocol",
                       "batch_size", "tokens", "success", "error", "stage", "loop", "late", "worker", "scenario",
                       "ttft_s", "input_tokens", "output_tokens", "token_count_source", "chunks", "chunk_gap_mean_s",
                       "chunk_gap_max_s")  # fmt: skip
    types = {f.name: f.type for f in SCHEMA}
    generative = ("ttft_s", "input_tokens", "output_tokens", "token_count_source", "chunks", "chunk_gap_mean_s")
    assert all(SCHEMA.field(name).nullable for name in generative)  # classifier rows leave them empty
    assert types["latency_s"] == pa.float64() and types["batch_size"] == pa.int32() and types["tokens"] == pa.int64()
    assert types["success"] == pa.bool_() and types["late"] == pa.bool_() and types["error"] == pa.string()
    assert SCHEMA.field("error").nullable


def test_writer_shards_are_atomic_and_complete(tmp_path):
    writer = RecordWriter(tmp_path, worker="host-1", interval=0.05)
    latencies = np.random.default_rng(0).lognormal(-4, 1, size=1000)
    writer.start_background()
    for i, latency in enumerate(latencies[:500]):
        writer.append(_record(i, float(latency)))
    for _ in range(200):  # the background flush writes a shard without close()
        if shard_paths(tmp_path):
            break
        import time

        time.sleep(0.05)
    assert shard_paths(tmp_path), "no shard written by the background flush"
    for i, latency in enumerate(latencies[500:], start=500):
        writer.append(_record(i, float(latency)))
    assert writer.close() == 1000
    assert not list((tmp_path / "records").glob(".*"))  # no temporary file left behind
    table = read_records(tmp_path)
    assert table.schema.equals(SCHEMA)
    assert table.num_rows == 1000
    got = np.sort(table["latency_s"].to_numpy())
    assert np.array_equal(got, np.sort(latencies))  # bit-exact: never rounded
    assert table["error"].null_count == 500


def test_shard_files_are_plain_parquet(tmp_path):
    writer = RecordWriter(tmp_path, worker="w")
    writer.append(_record(1, 0.01))
    path = writer.flush()
    assert path.name == "w-000001.parquet"
    assert pq.read_table(path).num_rows == 1


# ---- run directories --------------------------------------------------------------------------
def test_run_ids_never_collide(tmp_path):
    when = 1_700_000_000.0
    first = create_run_dir(tmp_path, "step", when)
    second = create_run_dir(tmp_path, "step", when)
    assert first.name == new_run_id("step", when) and second.name == first.name + "-2"
    assert first.name.endswith("-step") and len(first.name.split("-")[0]) == 8


def test_claimed_run_dir_is_never_overwritten(tmp_path):
    run = RunDir(claim_run_dir(tmp_path / "r"))
    run.write_manifest({"start": 1})
    assert run.update_manifest(end=2) == {"start": 1, "end": 2}
    with pytest.raises(LoadtestError, match="never overwritten"):
        claim_run_dir(tmp_path / "r")


# ---- stages -----------------------------------------------------------------------------------
def test_durations_and_stage_plans():
    assert parse_duration("1m30s") == 90 and parse_duration("2h") == 7200 and parse_duration("45") == 45
    assert parse_duration("500ms") == 0.5
    with pytest.raises(LoadtestError):
        parse_duration("soon")
    plan = parse_stage_plan("10s:2,20s:4:peak", lambda i, v: f"s{i}")
    assert [(s.duration_s, s.value, s.label) for s in plan] == [(10, 2, "s0"), (20, 4, "peak")]
    assert stage_at(plan, 0)[0] == 0 and stage_at(plan, 10)[0] == 1 and stage_at(plan, 30) is None
    for bad in ("", "10s", "10s:x", "0s:3", "10s:2:a,5s:3:a"):
        with pytest.raises(LoadtestError):
            parse_stage_plan(bad, lambda i, v: f"s{i}")


def test_stage_board_closes_stages_and_notifies():
    seen = []
    board = StageBoard(listeners=[seen.append])
    board.publish("a", value=2, kind="step", when=10.0)
    board.publish("b", rate=50.0, kind="rate", when=20.0)
    board.close(when=30.0)
    assert [r.label for r in seen] == ["a", "b"]
    assert board.stages_for_manifest() == [
        {"name": "a", "start": 10.0, "end": 20.0, "kind": "step", "users": 2, "loop": "closed"},
        {"name": "b", "start": 20.0, "end": 30.0, "kind": "rate", "offered_rate": 50.0, "loop": "open"},
    ]


# ---- options and endpoint ---------------------------------------------------------------------
def test_endpoint_follows_scheme_unless_protocol_given():
    assert parse_endpoint("grpc://10.0.0.1:9001").protocol == "grpc"
    assert parse_endpoint("http://h:1234").address == "h:1234"
    assert parse_endpoint("grpc://h").port == 8001 and parse_endpoint("http://h").port == 8000
    assert parse_endpoint("h:8001", "grpc").protocol == "grpc"
    assert parse_endpoint("https://h").ssl
    with pytest.raises(LoadtestError):
        parse_endpoint("ftp://h")
    with pytest.raises(LoadtestError):
        parse_endpoint("http://h", "carrier-pigeon")


def test_options_table_defaults_and_validation():
    from argparse import Namespace

    flags = [o[0] for o in OPTIONS]
    for wanted in ("--models", "--protocol", "--dataset", "--lengths", "--batch-size", "--arrival-rate", "--stages",
                   "--records-dir", "--metrics-port"):  # fmt: skip
        assert wanted in flags
    assert all(o[1].startswith("LOADTEST_") for o in OPTIONS)
    options = LoadOptions.from_namespace(Namespace())
    assert options.metrics_port == 9646 and options.batch_size == 1 and options.arrival == "constant"
    assert options.triton_metrics("grpc://10.1.2.3:8001") == "http://10.1.2.3:8002/metrics"
    assert options.model_names(type("M", (), {"teacher": "t", "student": "s"})) == ["t", "s"]
    with pytest.raises(LoadtestError, match="--batch-size"):
        LoadOptions.from_namespace(Namespace(batch_size=0))
    with pytest.raises(LoadtestError, match="--arrival"):
        LoadOptions.from_namespace(Namespace(arrival="bursty"))


# ---- client metrics ---------------------------------------------------------------------------
def test_client_metrics_names_labels_and_buckets():
    from prometheus_client import generate_latest

    metrics = ClientMetrics()
    metrics.observe("teacher", "grpc", True, 0.0042, 128)
    metrics.observe("teacher", "grpc", False, 12.0, 128)
    metrics.offered_rate.labels("teacher").set(50)
    text = generate_latest(metrics.registry).decode()
    assert 'loadtest_request_duration_seconds_bucket{le="0.005",model="teacher",outcome="success",protocol="grpc"} 1.0' in text
    assert 'loadtest_requests_total{model="teacher",outcome="failure",protocol="grpc"} 1.0' in text
    assert 'loadtest_tokens_total{model="teacher"} 128.0' in text  # successful requests only
    assert 'loadtest_offered_rate_rps{model="teacher"} 50.0' in text
    assert "loadtest_in_flight_requests" in text and "loadtest_late_sends_total" in text
    assert "loadtest_dropped_sends_total" in text
    assert LATENCY_BUCKETS_S[0] == 0.001 and LATENCY_BUCKETS_S[-1] == 10.0
    assert metrics_port_for(9646, None) == 9646 and metrics_port_for(9646, 0) == 9647 and metrics_port_for(9646, 3) == 9650


# ---- summary ----------------------------------------------------------------------------------
def test_summary_percentiles_are_numpys():
    latencies = np.random.default_rng(3).lognormal(-3, 0.8, size=777)
    rows = [_record(i, float(v)) for i, v in enumerate(latencies)]
    table = pa.Table.from_pylist([{c: getattr(r, c) for c in COLUMNS} for r in rows], schema=SCHEMA)
    (summary,) = summarize_table(table)
    ok = np.array([r.latency_s for r in rows if r.success])  # the analyzer's rule: successful requests only
    for p, got in ((50, summary.p50_s), (95, summary.p95_s), (99, summary.p99_s)):
        assert got == np.percentile(ok, p, method="linear")
        assert summary.percentiles[float(p)] == stats.estimates(ok, (float(p),))[float(p)]  # the same CI as analyze
    assert summary.percentiles[50.0].ci_low < summary.p50_s < summary.percentiles[50.0].ci_high
    assert summary.requests == 777 and summary.failures == 389
    assert math.isnan(latency_percentiles([])[50.0])


# ---- runner command line ----------------------------------------------------------------------
def test_runner_builds_a_headless_command(tmp_path):
    command = build_command(
        scenario_path("open_loop"), "grpc://127.0.0.1:8001", tmp_path,
        {"arrival_rate": 50.0, "models": ["teacher", "student"], "dataset": None},
        users=None, spawn_rate=None, run_time=30, processes=2, extra_args=["--loglevel", "WARNING"], python="py",
    )  # fmt: skip
    assert command[:5] == ["py", "-m", "locust", "-f", str(scenario_path("open_loop"))]
    joined = " ".join(command)
    assert "--headless" in command and "--run-dir " + str(tmp_path) in joined and "-t 30s" in joined
    assert "--arrival-rate 50.0" in joined and "--models teacher,student" in joined and "--dataset" not in joined
    assert "--processes 2" in joined and command[-2:] == ["--loglevel", "WARNING"]
    with pytest.raises(LoadtestError, match="no scenario"):
        scenario_path("nonexistent")


def test_all_scenarios_load_together():
    """``locust -f scenarios/``: every file imports once, no duplicate user classes or options."""
    root = Path(__file__).resolve().parents[1]
    listed = subprocess.run(
        [PY, "-m", "locust", "-f", str(root / "scenarios"), "--list"], capture_output=True, text=True, timeout=120
    )
    assert listed.returncode == 0, listed.stderr[-2000:]
    for user in ("SteadyUser", "StepUser", "SpikeUser", "SoakUser", "OpenLoopDriver", "ABUser", "LLMStreamUser",
                 "LLMOpenLoopDriver"):
        assert user in listed.stdout
