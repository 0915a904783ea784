"""The run-directory contract: one schema (Arrow, pandas, Record derived), shards, manifest, one host parser."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from loadtest.endpoint import parse_endpoint
from loadtest.errors import LoadtestError
from loadtest.rundir import (
    COLUMNS,
    PANDAS_DTYPES,
    RECORD_COLUMNS,
    SCHEMA,
    Record,
    RunDir,
    read_manifest,
    read_records,
    records_frame,
    rows_to_table,
    write_shard,
)


def _row(i: int, ok: bool = True) -> Record:
    return Record(1.0 + i, 1.0 + i, 1.5 + i, 0.5, 0.5, "teacher", "http", 1, 8, ok, None if ok else "boom",
                  "steady", "closed", False, "w-1", "SteadyUser")  # fmt: skip


def test_every_view_of_the_schema_derives_from_one_table():
    names = tuple(c.name for c in RECORD_COLUMNS)
    assert COLUMNS == names == Record._fields == tuple(PANDAS_DTYPES)
    assert [f.nullable for f in SCHEMA] == [c.nullable for c in RECORD_COLUMNS]
    assert PANDAS_DTYPES["batch_size"] == "int32" and PANDAS_DTYPES["error"] == "string"
    assert PANDAS_DTYPES["success"] == "bool" and PANDAS_DTYPES["latency_s"] == "float64"


def test_records_round_trip_with_their_dtypes(tmp_path):
    (tmp_path / "records").mkdir()
    write_shard(tmp_path / "records", "w-000001.parquet", rows_to_table([_row(0), _row(1, ok=False)]))
    table = read_records(tmp_path)
    assert table.schema.equals(SCHEMA) and table.num_rows == 2
    frame = records_frame(table)
    assert {c: str(frame[c].dtype) for c in frame.columns} == PANDAS_DTYPES
    assert frame["error"].isna().tolist() == [True, False]


def test_a_shard_without_a_nullable_column_reads_back_as_nulls(tmp_path):
    folder = tmp_path / "records"
    folder.mkdir()
    table = rows_to_table([_row(0)]).drop_columns(["error"])
    pq.write_table(table, folder / "old.parquet")
    back = read_records(tmp_path)
    assert back.schema.equals(SCHEMA) and back["error"].null_count == 1


def test_a_shard_without_a_required_column_is_one_line(tmp_path):
    folder = tmp_path / "records"
    folder.mkdir()
    pq.write_table(rows_to_table([_row(0)]).drop_columns(["latency_s"]), folder / "bad.parquet")
    with pytest.raises(LoadtestError, match="lacks column.*latency_s"):
        read_records(tmp_path)
    (folder / "bad.parquet").write_text("not parquet")
    with pytest.raises(LoadtestError, match="not a readable Parquet"):
        read_records(tmp_path)


def test_no_shards_is_an_empty_table(tmp_path):
    assert read_records(tmp_path).num_rows == 0 and read_records(tmp_path).schema.equals(SCHEMA)


def test_manifest_round_trip_and_bad_json(tmp_path):
    run = RunDir(tmp_path)
    assert run.read_manifest() == {}
    run.write_manifest({"a": 1})
    assert run.update_manifest(b=2) == {"a": 1, "b": 2} == json.loads((tmp_path / "manifest.json").read_text())
    (tmp_path / "manifest.json").write_text("{")
    with pytest.raises(LoadtestError, match="not valid JSON"):
        read_manifest(tmp_path)


@pytest.mark.parametrize(
    ("host", "protocol", "address", "ssl"),
    [("http://h:1", "http", "h:1", False), ("https://h", "http", "h:8000", True), ("grpc://h", "grpc", "h:8001", False),
     ("grpcs://h:9", "grpc", "h:9", True), ("h:5", "http", "h:5", False)],
)  # fmt: skip
def test_one_host_parser(host, protocol, address, ssl):
    endpoint = parse_endpoint(host)
    assert (endpoint.protocol, endpoint.address, endpoint.ssl) == (protocol, address, ssl)
    assert endpoint.metrics_url == f"http://h:8002/metrics"


def test_the_quality_client_accepts_tls_hosts():
    from loadtest.quality.client import TritonEvaluator

    with TritonEvaluator("grpcs://127.0.0.1:1") as evaluator:
        assert evaluator.endpoint.ssl and evaluator.protocol == "grpc"
    with pytest.raises(LoadtestError, match="scheme must be"):
        TritonEvaluator("ftp://h")


def test_one_model_spec_for_load_and_quality():
    from loadtest.load.server_models import ServerModel, ServerTensor
    from loadtest.modelspec import ModelSpec
    from loadtest.quality.client import served_model

    def tensor(name, datatype, dims):
        return ServerTensor(name, datatype, tuple(dims))

    model = ServerModel("m", "1", ("1",), "onnxruntime_onnx",
                        (tensor("input_ids", "INT64", [-1]), tensor("attention_mask", "INT64", [-1])),
                        (tensor("pooled", "FP32", [4, 2]), tensor("logits", "FP32", [4])), 8)  # fmt: skip
    spec = served_model(model)
    assert isinstance(spec, ModelSpec) and spec.primary_output == "logits" and spec.max_batch_size == 8
    assert spec.input_names == ("input_ids", "attention_mask") and not spec.takes_text
    text = ServerModel("t", "1", ("1",), "ensemble", (tensor("TEXT", "BYTES", [1]),), (tensor("logits", "FP32", [4]),), 8)
    assert served_model(text).takes_text
