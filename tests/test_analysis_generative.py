"""The generative analyzer on hand-built records: TTFT, ITL (several tokens in one chunk), goodput, SLO."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from loadtest.analysis import generative
from loadtest.analysis.generative import SLO, per_request, window_figures
from loadtest.errors import LoadtestError
from loadtest.load.records import RecordWriter
from loadtest.rundir import Record, RunDir


def _record(t0, ttft, e2e, out_tokens, chunks, model="teacher", ok=True, stage="steady", intended_lag=0.0):
    return Record(t0, t0 + intended_lag, t0 + e2e, e2e, e2e - intended_lag, model, "openai-chat", 1, 10, ok,
                  None if ok else "HTTP 500: boom", stage, "open", False, "w", "LLMStreamUser", ttft, 10,
                  out_tokens if ok else None, "server" if ok else None, chunks, None, None)  # fmt: skip


def _frame(records):
    from loadtest.rundir import rows_to_table

    return rows_to_table(records).to_pandas()


def test_itl_counts_tokens_not_chunks():
    """Eight tokens in four chunks: ITL = (E2E - TTFT) / 7, not / 3; one token has no ITL."""
    frame = per_request(_frame([_record(100.0, 0.2, 0.9, 8, 4), _record(101.0, 0.1, 0.1, 1, 1)]))
    assert frame["itl_s"].iloc[0] == pytest.approx(0.7 / 7)
    assert math.isnan(frame["itl_s"].iloc[1])
    assert frame["user_tokens_per_s"].iloc[0] == pytest.approx(10.0)


def test_window_throughput_goodput_and_slo():
    """10 requests over 10 s: tokens/s and requests/s; goodput counts only requests meeting every bound."""
    records = [_record(100.0 + i, 0.1 + 0.1 * (i % 3), 1.0, 11, 11) for i in range(9)]
    records.append(_record(109.0, None, 1.0, None, None, ok=False))
    frame = per_request(_frame(records))
    slo = SLO.parse("ttft_ms=250,itl_ms=100")
    w = window_figures(frame, "teacher", "steady", slo)
    assert w.window_s == pytest.approx(10.0)  # first intended send 100 -> last end 110
    assert w.requests == 10 and w.failures == 1 and w.error_rate == pytest.approx(0.1)
    assert w.requests_per_s == pytest.approx(0.9) and w.output_tokens_per_s == pytest.approx(9 * 11 / 10)
    # TTFTs cycle 0.1, 0.2, 0.3: the 0.3 ones (i = 2, 5, 8) miss 250 ms; ITL = (1 - ttft) / 10 <= 90 ms
    assert w.goodput_rps == pytest.approx(6 / 10) and w.slo_attainment == pytest.approx(6 / 9)
    assert w.p("ttft", 50.0) == pytest.approx(0.2)
    assert w.slo_p95_ok is False  # P95 TTFT 0.3 s > 250 ms
    assert SLO.parse("ttft_ms=400,itl_ms=100").meets(frame).sum() == 9


def test_slo_parsing_errors():
    assert SLO.parse("") is None
    assert SLO.parse("ttft_ms=500, itl_ms=40,e2e_ms=4000") == SLO(500, 40, 4000)
    for bad in ("ttft=5", "ttft_ms=abc", "itl_ms=0", "ttft_ms"):
        with pytest.raises(LoadtestError, match="--slo"):
            SLO.parse(bad)


def test_whole_run_analysis_excludes_warmup_and_tests_significance(tmp_path):
    rng = np.random.default_rng(0)
    records = []
    for model, scale in (("teacher", 2.0), ("student", 1.0)):
        records.append(_record(99.0, 5.0, 9.0, 16, 16, model=model, stage="warmup"))  # must not count
        for i in range(400):
            ttft = float(rng.lognormal(np.log(0.05 * scale), 0.2))
            records.append(_record(100.0 + i * 0.05, ttft, ttft + 15 * 0.01 * scale, 16, 8, model=model))
    writer = RecordWriter(tmp_path, worker="w")
    for r in records:
        writer.append(r)
    writer.close()
    RunDir(tmp_path).write_manifest({"run_id": "t", "workload": "generative", "models":
                                     {"teacher": "teacher", "student": "student"}})  # fmt: skip
    a = generative.compute(tmp_path, SLO(ttft_ms=200, itl_ms=15), resamples=300)
    assert a.warmup_requests == 2 and a.overall["teacher"].requests == 400
    assert a.overall["student"].p("itl", 50.0) == pytest.approx(0.01)
    assert a.overall["teacher"].p("itl", 50.0) == pytest.approx(0.02)
    itl95 = next(s for s in a.significance if s["metric"] == "itl" and s["percentile"] == 95.0)
    assert itl95["significant"] and itl95["verdict"] == "faster"
    comp = generative.comparison_frame(a).set_index("metric")
    assert comp.loc["itl_p50_ms", "student_over_teacher"] == pytest.approx(0.5)
    assert comp.loc["goodput_rps", "teacher"] == 0.0  # ITL 20 ms > 15 ms for every teacher request
    cost = a.costs["student"]
    assert cost.cost_per_1m_output_tokens_usd == pytest.approx(
        cost.usd_per_hour / (a.overall["student"].output_tokens_per_s * 3600) * 1e6)
    from loadtest.analysis.generative_report import write_outputs

    tables, report = write_outputs(a)
    html = open(report).read()
    assert "TTFT CDF" in html and "ITL CDF" in html and "vs throughput" in html and "Per-user" in html
    assert pd.read_csv(f"{tables}/comparison.csv")["metric"].str.contains("ttft_p95_ms").any()


def test_a_classifier_run_is_refused(tmp_path):
    writer = RecordWriter(tmp_path, worker="w")
    writer.append(Record(1.0, 1.0, 1.1, 0.1, 0.1, "m", "http", 1, 10, True, None, "steady", "closed", False, "w", "S"))
    writer.close()
    with pytest.raises(LoadtestError, match="no generative records"):
        generative.compute(tmp_path)


def test_a_sweep_compares_each_model_at_its_best_passing_step(tmp_path):
    """The student is pushed to a rate that overloads it; the comparison must not mix that step in."""
    records = []
    for model, passing, failing in (("teacher", "t-01-10rps", "t-02-20rps"), ("student", "s-01-20rps", "s-02-40rps")):
        for i in range(100):
            records.append(_record(100.0 + i * 0.1, 0.02, 0.3, 16, 16, model=model, stage=passing))
            records.append(_record(200.0 + i * 0.05, 2.0, 2.3, 16, 16, model=model, stage=failing))
    writer = RecordWriter(tmp_path, worker="w")
    for r in records:
        writer.append(r)
    writer.close()
    results = {m: {"best_stage": best, "rate_low": low, "rate_high": 2 * low}
               for m, best, low in (("teacher", "t-01-10rps", 10.0), ("student", "s-01-20rps", 20.0))}
    RunDir(tmp_path).write_manifest({"run_id": "t", "workload": "generative", "kind": "sweep",
                                     "models": {"teacher": "teacher", "student": "student"},
                                     "sweep": {"results": results}})  # fmt: skip
    a = generative.compute(tmp_path, SLO(ttft_ms=250, itl_ms=25), resamples=100)
    assert a.compares_references and a.reference["student"].stage == "s-01-20rps"
    comp = generative.comparison_frame(a).set_index("metric")
    assert comp.loc["ttft_p95_ms", "student"] == pytest.approx(20.0)  # not the overloaded step's 2 s
    assert comp.loc["requests", "student"] == 100
    assert all(s["n_student"] == 100 for s in a.significance)
