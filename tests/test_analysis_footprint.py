"""Resource footprint rows: parameters, size, FLOPs counted from the graph, serving memory, non-finite outputs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from analyzer_scale import write_synthetic_run  # noqa: E402

from loadtest.analysis.analyze import compute  # noqa: E402
from loadtest.analysis.footprint import count_flops, nonfinite_counts  # noqa: E402
from loadtest.rundir import NONFINITE_ERROR, SCHEMA  # noqa: E402

HIDDEN, LABELS = 8, 3


def _model(path: Path, width: int) -> int:
    """ids [B, S] -> embedding-like MatMul [B, S, width] -> Gemm over the first token -> logits; returns params.

    FLOPs at batch 1 and S tokens: MatMul 2*S*HIDDEN*width, Gemm 2*width*LABELS (+ a 1x1 Conv 2*S*width*width).
    """
    rng = np.random.default_rng(width)
    w1 = numpy_helper.from_array(rng.standard_normal((HIDDEN, width)).astype(np.float32), "w1")
    wc = numpy_helper.from_array(rng.standard_normal((width, width, 1)).astype(np.float32), "wc")
    w2 = numpy_helper.from_array(rng.standard_normal((width, LABELS)).astype(np.float32), "w2")
    consts = [numpy_helper.from_array(np.array(v, dtype=np.int64), n) for n, v in
              (("ax", [2]), ("perm_start", [0]), ("perm_end", [1]), ("shape", [-1, width]))]
    nodes = [
        helper.make_node("Cast", ["input_ids"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["f", "ax"], ["f3"]),
        helper.make_node("Expand", ["f3", "hid"], ["x"]),                      # [B, S, HIDDEN]
        helper.make_node("MatMul", ["x", "w1"], ["h"]),                         # [B, S, width]
        helper.make_node("Transpose", ["h"], ["ht"], perm=[0, 2, 1]),           # [B, width, S]
        helper.make_node("Conv", ["ht", "wc"], ["c"]),                          # [B, width, S]
        helper.make_node("Slice", ["c", "perm_start", "perm_end", "ax"], ["first"]),  # [B, width, 1]
        helper.make_node("Reshape", ["first", "shape"], ["pooled"]),            # [B, width]
        helper.make_node("Gemm", ["pooled", "w2"], ["logits"]),                 # [B, LABELS]
    ]
    hid = numpy_helper.from_array(np.array([1, 1, HIDDEN], dtype=np.int64), "hid")
    graph = helper.make_graph(
        nodes, "m", [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "sequence"])
                     for n in ("input_ids", "attention_mask")],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", LABELS])],
        initializer=[w1, wc, w2, hid, *consts])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return HIDDEN * width + width * width + width * LABELS


def _flops(width: int, seq: int) -> float:
    return 2.0 * seq * HIDDEN * width + 2.0 * seq * width * width + 2.0 * width * LABELS


@pytest.mark.parametrize("seq", [1, 7, 64])
def test_flops_are_counted_from_the_graph(tmp_path, seq):
    _model(tmp_path / "m.onnx", 16)
    assert count_flops(tmp_path / "m.onnx", seq) == _flops(16, seq)


def test_footprint_rows_in_comparison_terminal_and_report(tmp_path):
    repo = tmp_path / "repo"
    params = {"teacher": _model(repo / "teacher" / "1" / "model.onnx", 32),
              "student": _model(repo / "student" / "1" / "model.onnx", 8)}
    (repo / "loadtest.json").write_text(json.dumps({"teacher": "teacher", "student": "student"}))
    (repo / "export_manifest.json").write_text(json.dumps({"models": {
        m: {"file": f"{m}/1/model.onnx", "file_size_bytes": 2_000_000 if m == "teacher" else 500_000,
            "parameter_count": params[m]} for m in params}}))
    run = tmp_path / "run"
    write_synthetic_run(run, 20_000, shard_rows=2_000, seed=5)
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["settings"] = {"repository": str(repo)}
    manifest["serving_footprint"] = {"teacher": {"peak_rss_bytes": 400e6, "processes": 2},
                                     "student": {"peak_rss_bytes": 100e6, "processes": 2}}
    (run / "manifest.json").write_text(json.dumps(manifest))
    # three student answers held NaN: recorded by the client as failures with the non-finite error text
    table = pd.concat([pq.read_table(p).to_pandas() for p in sorted((run / "records").glob("*.parquet"))])
    rows = table[(table["model"] == "student") & (table["stage"] == "step-3")].head(3).copy()
    assert len(rows) == 3
    rows["success"], rows["error"] = False, f"{NONFINITE_ERROR}: NaN or Inf in logits"
    pq.write_table(pa.Table.from_pandas(rows, schema=SCHEMA, preserve_index=False), run / "records" / "nan.parquet")

    a = compute(run, bootstrap_resamples=100)
    cmp = a.comparison.set_index("metric")
    assert a.footprints["teacher"].flops_sequence_length == round(float(table.loc[table["model"] == "teacher", "tokens"]
                                                                         .mean()))  # the run's mean (16..127)
    assert cmp.loc["parameters", "teacher"] == params["teacher"]
    assert cmp.loc["parameters", "student"] == params["student"]
    assert cmp.loc["size_on_disk_mb", "teacher"] == 2.0 and cmp.loc["size_on_disk_mb", "saving_pct"] == 75.0
    for role, width in (("teacher", 32), ("student", 8)):
        fp = a.footprints[role]
        assert cmp.loc["flops_per_request", role] == _flops(width, fp.flops_sequence_length)
        assert cmp.loc["flops_per_token", role] == _flops(width, fp.flops_sequence_length) / fp.flops_sequence_length
    assert cmp.loc["peak_rss_mb", "teacher"] == 400.0 and cmp.loc["peak_rss_mb", "student_over_teacher"] == 0.25
    assert cmp.loc["nonfinite_outputs", "student"] == 3 and cmp.loc["nonfinite_outputs", "teacher"] == 0
    assert list(a.comparison["metric"][:6]) == ["parameters", "size_on_disk_mb", "flops_per_request",
                                                "flops_per_token", "peak_rss_mb", "nonfinite_outputs"]

    from loadtest.analysis.outputs import write_outputs
    from loadtest.analysis.terminal import render_terminal
    from rich.console import Console

    write_outputs(a)
    csv = pd.read_csv(run / "tables" / "comparison.csv").set_index("metric")
    assert csv.loc["flops_per_token", "student"] == pytest.approx(cmp.loc["flops_per_token", "student"])
    html = (run / "report.html").read_text()
    assert "FLOPs per token" in html and "Peak serving memory" in html and "Non-finite outputs" in html
    console = Console(record=True, width=200)
    render_terminal(a, console)
    text = console.export_text()
    assert "FLOPs per token" in text and "Parameters" in text


def test_nonfinite_counts_read_categorical_and_plain_errors():
    frame = pd.DataFrame({"model": ["a", "a", "b", "b"],
                          "error": [None, f"{NONFINITE_ERROR}: NaN", f"{NONFINITE_ERROR}: Inf", "HTTP 500"]})
    assert nonfinite_counts(frame) == {"a": 1, "b": 1}
    frame["error"] = frame["error"].astype("category")
    assert nonfinite_counts(frame) == {"a": 1, "b": 1}


def test_missing_repository_leaves_figures_empty_and_says_why(tmp_path):
    run = tmp_path / "run"
    write_synthetic_run(run, 5_000, shard_rows=2_000, seed=6)
    a = compute(run, bootstrap_resamples=100)
    cmp = a.comparison.set_index("metric")
    assert np.isnan(cmp.loc["flops_per_token", "teacher"]) and np.isnan(cmp.loc["peak_rss_mb", "student"])
    assert cmp.loc["nonfinite_outputs", "teacher"] == 0
    assert any("footprint of teacher" in n and "not found" in n for n in a.notes)
