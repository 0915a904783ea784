"""Models read from the server, payloads for any datatype, perf_analyzer input data, bad input (no server needed)."""

from __future__ import annotations

import base64
import json
import struct

import numpy as np
import pytest

from loadtest.errors import LoadtestError
from loadtest.load.model_inputs import (
    InputSettings,
    build_model_payloads,
    check_inputs,
    check_shapes_known,
    parse_input_shapes,
    parse_int_range,
)
from loadtest.load.server_models import ServerModel, ServerTensor, build_server_model

HTTP_METADATA = {
    "name": "sum_no_batch",
    "versions": ["1", "2"],
    "platform": "",
    "inputs": [{"name": "INPUT0", "datatype": "INT32", "shape": [-1]}, {"name": "INPUT1", "datatype": "FP32", "shape": [4]}],
    "outputs": [{"name": "SUM", "datatype": "INT64", "shape": [1]}],
}
HTTP_CONFIG = {
    "name": "sum_no_batch",
    "backend": "python",
    "max_batch_size": 0,
    "input": [
        {"name": "INPUT0", "data_type": "TYPE_INT32", "dims": [-1], "optional": False},
        {"name": "INPUT1", "data_type": "TYPE_FP32", "dims": [4], "optional": True},
    ],
    "output": [{"name": "SUM", "data_type": "TYPE_INT64", "dims": [1]}],
    "model_transaction_policy": {"decoupled": False},
    "unknown_future_field": 1,
}


def test_http_json_and_grpc_messages_give_the_same_model():
    from google.protobuf import json_format
    from tritonclient.grpc import model_config_pb2 as mc
    from tritonclient.grpc import service_pb2

    from_http = build_server_model(HTTP_METADATA, HTTP_CONFIG, "1")
    metadata = json_format.ParseDict(HTTP_METADATA, service_pb2.ModelMetadataResponse())
    config = json_format.ParseDict(HTTP_CONFIG, mc.ModelConfig(), ignore_unknown_fields=True)
    from_grpc = build_server_model(metadata, config, "1")
    assert from_http == from_grpc
    assert from_http.platform == "python" and from_http.max_batch_size == 0 and not from_http.batches
    assert from_http.inputs[0] == ServerTensor("INPUT0", "INT32", (-1,), False)
    assert from_http.inputs[1].optional and from_http.versions == ("1", "2")


def test_batching_model_drops_the_batch_dimension_and_reads_decoupled_and_ensemble_steps():
    metadata = {"name": "e", "versions": ["3"], "platform": "ensemble",
                "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1, 1]}],
                "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 2]}]}  # fmt: skip
    config = {"name": "e", "platform": "ensemble", "max_batch_size": 8,
              "input": [{"name": "text", "data_type": "TYPE_STRING", "dims": [1]}],
              "model_transaction_policy": {"decoupled": True},
              "ensemble_scheduling": {"step": [{"model_name": "tok"}, {"model_name": "clf"}]}}  # fmt: skip
    model = build_server_model(metadata, config)
    assert model.inputs[0].dims == (1,) and model.outputs[0].dims == (2,)
    assert model.decoupled and model.ensemble_steps == ("tok", "clf") and model.batches


def _model(*inputs, max_batch_size=8, name="m") -> ServerModel:
    return ServerModel(name, "1", ("1",), "python", tuple(inputs), (ServerTensor("out", "FP32", (1,)),), max_batch_size)


def test_synthetic_payloads_fill_every_datatype_with_the_right_shape():
    model = _model(
        ServerTensor("input_ids", "INT64", (-1,)),
        ServerTensor("attention_mask", "INT64", (-1,)),
        ServerTensor("image", "FP16", (3, -1, -1)),
        ServerTensor("flag", "BOOL", (1,)),
        ServerTensor("code", "UINT8", (2,)),
        ServerTensor("text", "BYTES", (1,)),
        ServerTensor("maybe", "FP32", (1,), optional=True),
    )
    settings = InputSettings(shapes={"image": (3, 4, 5)}, batch_size=2, pool_size=3, lengths="fixed:7", int_range=(5, 9))
    payloads = build_model_payloads(model, settings)
    assert len(payloads) == 3
    arrays = payloads[0].arrays
    assert arrays["input_ids"].shape == (2, 7) and arrays["input_ids"].dtype == np.int64
    assert arrays["input_ids"].min() >= 5 and arrays["input_ids"].max() < 9
    assert (arrays["attention_mask"] == 1).all() and payloads[0].tokens == 14
    assert arrays["image"].shape == (2, 3, 4, 5) and arrays["image"].dtype == np.float16
    assert arrays["flag"].dtype == bool and arrays["code"].dtype == np.uint8
    assert arrays["text"].shape == (2, 1) and isinstance(arrays["text"][0, 0], bytes)
    assert "maybe" not in arrays  # optional inputs are left out


def test_a_model_without_batching_gets_its_dims_exactly():
    model = _model(ServerTensor("INPUT0", "INT32", (-1,)), ServerTensor("INPUT1", "FP32", (4,)), max_batch_size=0)
    payload = build_model_payloads(model, InputSettings(pool_size=2, lengths="fixed:5"))[0]
    assert payload.arrays["INPUT0"].shape == (5,) and payload.arrays["INPUT1"].shape == (4,) and payload.batch_size == 1


def test_dataset_text_goes_into_bytes_inputs(tmp_path):
    dataset = tmp_path / "d.jsonl"
    dataset.write_text("\n".join(json.dumps({"text": f"row {i}"}) for i in range(5)))
    model = _model(ServerTensor("text", "BYTES", (1,)))
    payloads = build_model_payloads(model, InputSettings(dataset=dataset, batch_size=2, pool_size=4))
    sent = {t for p in payloads for t in p.arrays["text"].ravel()}
    assert sent <= {f"row {i}".encode() for i in range(5)} and len(sent) >= 4


@pytest.mark.parametrize(
    "model, settings, expected",
    [
        (_model(ServerTensor("x", "BF16", (4,))), InputSettings(), "model 'm' input 'x' is BF16, a datatype loadtest cannot send (it sends BOOL, BYTES, FP16"),
        (_model(ServerTensor("x", "FP32", (16,))), InputSettings(shapes={"x": (8,)}), "model 'm' input 'x' has static dims [16]; --input-shape may only set its variable (-1) dims"),
        (_model(ServerTensor("x", "FP32", (-1, 3))), InputSettings(shapes={"x": (8,)}), "model 'm' input 'x' has dims [-1, 3] (batch dimension excluded): give 2 dims"),
        (_model(ServerTensor("x", "FP32", (4,)), max_batch_size=0), InputSettings(batch_size=2), "model 'm' has max_batch_size 0 (no batch dimension); use --batch-size 1"),
        (_model(ServerTensor("x", "FP32", (4,)), max_batch_size=4), InputSettings(batch_size=8), "--batch-size 8 exceeds model 'm' max_batch_size 4"),
    ],
)  # fmt: skip
def test_bad_inputs_are_one_line_naming_model_input_and_fix(model, settings, expected):
    with pytest.raises(LoadtestError) as error:
        check_inputs(model, settings)
    assert expected in str(error.value) and "\n" not in str(error.value)


def test_input_shape_for_no_loaded_model_names_the_inputs():
    with pytest.raises(LoadtestError, match=r"--input-shape IMAGE: no loaded model has an input 'IMAGE' \(inputs: m: x\)"):
        check_shapes_known([_model(ServerTensor("x", "FP32", (4,)))], InputSettings(shapes={"IMAGE": (3,)}))


@pytest.mark.parametrize("text", ["IMAGE", "IMAGE:", "IMAGE:3,x", ":3", "IMAGE:0"])
def test_input_shape_syntax(text):
    with pytest.raises(LoadtestError, match="use NAME:d1,d2"):
        parse_input_shapes(text)


def test_input_shape_and_int_range_parse():
    assert parse_input_shapes("IMAGE:3,224,224 ids:16;x:1") == {"IMAGE": (3, 224, 224), "ids": (16,), "x": (1,)}
    assert parse_int_range("") == (0, 100) and parse_int_range("-5:5") == (-5, 5)
    with pytest.raises(LoadtestError, match="HI > LO"):
        parse_int_range("5:5")


# ---- perf_analyzer's --input-data ----------------------------------------------------------------
def _write(tmp_path, document) -> object:
    path = tmp_path / "input.json"
    path.write_text(json.dumps(document))
    return path


def test_perf_analyzer_file_with_lists_content_shape_and_b64(tmp_path):
    raw = np.arange(4, dtype=np.float32).tobytes()
    strings = b"".join(struct.pack("<I", len(s)) + s for s in [b"hello"])
    document = {"data": [
        {"INPUT0": [1, 2, 3], "INPUT1": {"b64": base64.b64encode(raw).decode()}, "TEXT": {"b64": base64.b64encode(strings).decode()}},
        {"INPUT0": {"content": [4, 5, 6, 7, 8, 9], "shape": [6]}, "INPUT1": [0.5, 0.5, 0.5, 0.5], "TEXT": ["bye"]},
    ], "validation_data": []}  # fmt: skip
    model = _model(ServerTensor("INPUT0", "INT32", (-1,)), ServerTensor("INPUT1", "FP32", (4,)),
                   ServerTensor("TEXT", "BYTES", (1,)), max_batch_size=0)  # fmt: skip
    payloads = build_model_payloads(model, InputSettings(input_data=_write(tmp_path, document)))
    assert len(payloads) == 2
    assert payloads[0].arrays["INPUT0"].tolist() == [1, 2, 3] and payloads[1].arrays["INPUT0"].shape == (6,)
    assert payloads[0].arrays["INPUT1"].tolist() == [0, 1, 2, 3] and payloads[0].arrays["TEXT"].tolist() == [b"hello"]
    assert payloads[1].arrays["TEXT"].tolist() == [b"bye"]


def test_perf_analyzer_steps_are_stacked_into_batches(tmp_path):
    document = {"data": [[{"x": [i, i]} for i in range(3)], [{"x": [9, 9]}]]}  # two sequence streams, flattened
    model = _model(ServerTensor("x", "INT64", (2,)))
    payloads = build_model_payloads(model, InputSettings(input_data=_write(tmp_path, document), batch_size=2))
    assert [p.arrays["x"].tolist() for p in payloads] == [[[0, 0], [1, 1]], [[2, 2], [9, 9]]]


@pytest.mark.parametrize(
    "document, expected",
    [
        ({"data": [{"y": [1, 2]}]}, "step 0 names ['y'], not inputs of model 'm' (its inputs: x)"),
        ({"data": [{"x": [1, 2], "z": [1]}]}, "step 0 names ['z'], not inputs of model 'm'"),
        ({"data": [{"x": {"content": [1, 2, 3], "shape": [3]}}]}, "input 'x': shape [3] does not fit the model's dims [2]"),
        ({"data": [{"x": [1, 2, 3]}]}, "input 'x': 3 values do not fill shape [2]"),
        ({"data": [{"x": ["a", "b"]}]}, "input 'x': values are not INT64"),
        ({"rows": []}, "(perf_analyzer format)"),
    ],
)  # fmt: skip
def test_input_data_that_does_not_fit_the_model(tmp_path, document, expected):
    model = _model(ServerTensor("x", "INT64", (2,)))
    with pytest.raises(LoadtestError) as error:
        build_model_payloads(model, InputSettings(input_data=_write(tmp_path, document)))
    assert expected in str(error.value) and "\n" not in str(error.value)


def test_input_data_variable_dims_need_a_shape(tmp_path):
    model = _model(ServerTensor("x", "INT64", (-1, -1)))
    path = _write(tmp_path, {"data": [{"x": [1, 2, 3, 4]}]})
    with pytest.raises(LoadtestError, match=r"has variable dims \[-1, -1\]: give a \"shape\" in the file or --input-shape x:d1,d2"):
        build_model_payloads(model, InputSettings(input_data=path))
    payload = build_model_payloads(model, InputSettings(input_data=path, shapes={"x": (2, 2)}))[0]
    assert payload.arrays["x"].shape == (1, 2, 2)


# ---- pre-flight without a server -----------------------------------------------------------------
def test_preflight_names_a_closed_port_and_an_unknown_host():
    from loadtest.load.preflight import check_server
    from loadtest.endpoint import parse_endpoint
    from loadtest.serving.ports import free_port

    port = free_port()
    with pytest.raises(LoadtestError, match=rf"cannot reach Triton at http://127.0.0.1:{port} \(connection refused\).*--wait-ready"):
        check_server(parse_endpoint(f"http://127.0.0.1:{port}"))
    with pytest.raises(LoadtestError, match="unknown host 'no-such-host.invalid'; check --host"):
        check_server(parse_endpoint("grpc://no-such-host.invalid:8001"))


def test_preflight_waits_and_then_says_how_long(monkeypatch):
    from loadtest.load import preflight
    from loadtest.endpoint import parse_endpoint
    from loadtest.serving.ports import free_port

    slept, said = [], []
    port = free_port()
    with pytest.raises(LoadtestError, match="cannot reach"):
        preflight.check_server(parse_endpoint(f"http://127.0.0.1:{port}"), wait_ready_s=0.2,
                               on_wait=said.append, sleep=lambda s: (slept.append(s), __import__("time").sleep(0.05)))  # fmt: skip
    assert slept and len(said) == 1 and "waiting for Triton" in said[0]
