"""`analyze_run` on synthetic run directories with known ground truth (records in the exact schema)."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from _analysis_synth import SynthModel, default_pair, write_run

from loadtest.analysis import analyze_run
from loadtest.analysis.analyze import compute
from loadtest.analysis.capacity import BELOW_OFFERED
from loadtest.analysis.costs import cost_per_million_tokens, cost_per_thousand_requests, load_cost_book
from loadtest.analysis.plan import plan, replicas_needed
from loadtest.analysis.records import ALL_STAGES
from loadtest.analysis.views import all_views
from loadtest.errors import LoadtestError

CONTRACT_METRICS = [
    "requests", "achieved_qps", "tokens_per_s", "p50_ms", "p95_ms", "p99_ms", "error_rate", "mean_batch_size",
    "server_queue_ms", "server_compute_infer_ms", "qps_at_budget", "tokens_per_s_at_budget",
    "cost_per_1m_tokens_usd", "cost_per_1k_requests_usd", "energy_per_1m_tokens_j",
]  # fmt: skip

HAND_COSTS = """
prices_as_of: "2026-11-23"
default_instance: hand
instances:
  - name: hand
    provider: test
    usd_per_accelerator_hour: 1.8
    accelerator: test GPU
    accelerators: 2
"""


@pytest.fixture(scope="module")
def gpu_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("gpu") / "run"
    truth = write_run(run_dir, default_pair(), budget_ms=50.0, gpu_power=True, shards=3)
    analysis = analyze_run(run_dir, instance="aws-g5.xlarge")
    return run_dir, truth, analysis


def test_every_percentile_equals_numpy_on_the_raw_latencies(gpu_run):
    run_dir, truth, _ = gpu_run
    latency = pd.read_csv(run_dir / "tables" / "latency.csv")
    checked = 0
    for row in latency.to_dict("records"):
        if row["stage"] == ALL_STAGES:
            raw = np.concatenate([v for (m, _), v in truth.latencies.items() if m == row["model"]])
        else:
            raw = truth.latencies[(row["model"], row["stage"])]
        assert row["successes"] == raw.size
        assert row["max_ms"] == pytest.approx(raw.max() * 1000, rel=1e-12)
        for p, key in ((50, "p50"), (90, "p90"), (95, "p95"), (99, "p99"), (99.9, "p999")):
            if isinstance(row[f"{key}_note"], str) and row[f"{key}_note"]:
                assert math.isnan(row[f"{key}_ms"])  # CI cannot be formed: not reported as a number
                continue
            assert row[f"{key}_ms"] == pytest.approx(np.percentile(raw, p, method="linear") * 1000, rel=1e-12)
            assert row[f"{key}_ci_low_ms"] <= row[f"{key}_ms"] <= row[f"{key}_ci_high_ms"]
            checked += 1
    assert checked > 40


def test_records_from_every_shard_are_used(gpu_run):
    run_dir, truth, analysis = gpu_run
    assert len(list((run_dir / "records").glob("*.parquet"))) == 3
    whole = analysis.latency[analysis.latency["stage"] == ALL_STAGES].set_index("model")
    for model in ("teacher", "student"):
        expected = sum(v.size for (m, _), v in truth.latencies.items() if m == model)
        assert whole.at[model, "successes"] == expected


def test_server_side_split_comes_from_counter_deltas(gpu_run):
    _, truth, analysis = gpu_run
    rows = analysis.latency.set_index(["model", "stage"])
    for (model, stage), queue_us in truth.queue_us.items():
        assert rows.at[(model, stage), "server_queue_ms"] == pytest.approx(queue_us / 1000, rel=1e-4)
        assert rows.at[(model, stage), "server_compute_infer_ms"] == pytest.approx(
            truth.infer_us[(model, stage)] / 1000, rel=1e-4
        )
        assert rows.at[(model, stage), "mean_batch_size"] == pytest.approx(2.0)


def test_capacity_is_the_best_counted_step_within_budget(gpu_run):
    _, _, analysis = gpu_run
    for model in ("teacher", "student"):
        cap = analysis.capacity[model]
        mine = [s for s in analysis.steps if s.model == model]
        passing = [s for s in mine if s.counted and s.latency_ms <= 50.0]
        assert cap.qps_at_budget == max(s.achieved_qps for s in passing)
        assert cap.load_low < cap.load_high
        above = [s for s in mine if s.load == cap.load_high]
        assert above and all(s.latency_ms > 50.0 or not s.counted for s in above)
    # the saturated step (offered above capacity) never counts: backlog drifts and answers fall short
    saturated = [s for s in analysis.steps if s.offered_rate in (120, 300)]
    assert saturated and not any(s.counted for s in saturated)
    assert all(any(r.code == BELOW_OFFERED and "scheduled sends" in r.text for r in s.reasons) for s in saturated)


def test_comparison_csv_follows_the_contract(gpu_run):
    run_dir, _, analysis = gpu_run
    table = pd.read_csv(run_dir / "tables" / "comparison.csv")
    assert list(table.columns) == ["metric", "unit", "teacher", "student", "student_over_teacher", "saving_pct"]
    assert set(CONTRACT_METRICS) <= set(table["metric"])
    row = table.set_index("metric").loc["qps_at_budget"]
    assert row["teacher"] == pytest.approx(analysis.capacity["teacher"].qps_at_budget)
    assert row["saving_pct"] == pytest.approx((1 - row["student"] / row["teacher"]) * 100)
    assert pd.isna(table.set_index("metric").at["p999_ms", "teacher"])  # too few samples: left empty
    for name in ("latency", "capacity", "cost", "comparison", "significance", "steps"):
        assert (run_dir / "tables" / f"{name}.csv").is_file()
        assert len(pd.read_parquet(run_dir / "tables" / f"{name}.parquet")) > 0
    summary = (run_dir / "tables" / "summary.md").read_text()
    assert "| Cost per 1M tokens |" in summary and "**Verdict.**" in summary


def test_measured_gpu_energy_per_token(gpu_run):
    _, truth, analysis = gpu_run
    for model in ("teacher", "student"):
        cost = analysis.costs[model]
        assert not cost.energy_is_estimate and cost.energy_method.startswith("counter nv_energy_consumption")
        # energy over the at-budget step: power there x measured time / tokens answered in it
        step = next(s for s in analysis.steps if s.model == model and s.achieved_qps == analysis.capacity[model].qps_at_budget)
        expected = cost.energy_j / (step.tokens_per_s * step.duration_s) * 1e6
        assert cost.energy_per_1m_tokens_j == pytest.approx(expected, rel=0.01)
        assert cost.co2e_g_per_1m_tokens == pytest.approx(cost.energy_per_1m_tokens_j / 3.6e6 * 475)
    assert analysis.power is not None and analysis.power.source == "nv_gpu_power_usage"


def test_cost_per_million_tokens_hand_checked(tmp_path, gpu_run):
    assert cost_per_million_tokens(3.6, 1000.0) == pytest.approx(1.0)  # $3.60/h, 1000 tokens/s: $1 per 1M
    assert cost_per_thousand_requests(3.6, 10.0) == pytest.approx(0.1)
    run_dir, _, _ = gpu_run
    costs = tmp_path / "costs.yaml"
    costs.write_text(HAND_COSTS)
    analysis = compute(run_dir, cost_file=costs, bootstrap_resamples=100)
    for model, cap in analysis.capacity.items():
        c = analysis.costs[model]
        assert c.usd_per_hour == pytest.approx(3.6)  # 2 accelerators x $1.80
        assert c.cost_per_1m_tokens_usd == pytest.approx(3.6 / (cap.tokens_per_s_at_budget * 3600) * 1e6)
        assert c.cost_per_1k_requests_usd == pytest.approx(3.6 / (cap.qps_at_budget * 3600) * 1e3)


def test_cpu_run_energy_is_a_labelled_estimate(tmp_path):
    run_dir = tmp_path / "cpu"
    write_run(run_dir, default_pair(), budget_ms=50.0)
    analysis = compute(run_dir, bootstrap_resamples=200)  # default instance: the CPU-only entry
    for model, c in analysis.costs.items():
        assert c.energy_is_estimate and "estimate" in c.energy_method
        assert c.energy_per_1m_tokens_j == pytest.approx(35.0 / analysis.capacity[model].tokens_per_s_at_budget * 1e6)
    labels = [row[0] for v in all_views(analysis) if v.key == "comparison" for row in v.rows]
    assert "Energy per 1M tokens (estimate)" in labels


def test_baseline_deltas(tmp_path, gpu_run):
    run_dir, _, analysis = gpu_run
    slower = tmp_path / "slower"
    write_run(slower, [SynthModel("teacher", 80.0, [20, 40, 60, 80, 90, 120]),
                       SynthModel("student", 180.0, [50, 100, 150, 200, 225, 300])], budget_ms=50.0, seed=7)
    current = analyze_run(slower, baseline=run_dir)
    deltas = pd.read_csv(slower / "tables" / "baseline.csv").set_index(["role", "metric"])
    base_t = analysis.comparison.set_index("metric").at["qps_at_budget", "teacher"]
    cur_t = current.comparison.set_index("metric").at["qps_at_budget", "teacher"]
    assert deltas.at[("teacher", "qps_at_budget"), "change_pct"] == pytest.approx((cur_t / base_t - 1) * 100)
    assert set(current.baseline.p95_changes) == {"teacher", "student"}
    assert "vs baseline" in (slower / "report.html").read_text()


def test_plan_replicas_and_monthly_cost(gpu_run):
    _, _, analysis = gpu_run
    rows = {r.role: r for r in plan(analysis, peak_qps=1000.0, headroom=1.3)}
    for role, r in rows.items():
        qps = analysis.capacity[role].qps_at_budget
        assert r.replicas == math.ceil(1000 * 1.3 / qps) == replicas_needed(1000, 1.3, qps)
        assert r.monthly_usd == pytest.approx(r.replicas * 1.006 * 730)
    assert rows["student"].replicas < rows["teacher"].replicas
    with pytest.raises(LoadtestError, match="headroom"):
        plan(analysis, peak_qps=10, headroom=0.5)


# ---- what a user can get wrong: one clear line each ------------------------------------------------


def test_missing_and_empty_run_directories(tmp_path):
    with pytest.raises(LoadtestError, match="does not exist"):
        compute(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LoadtestError, match="no request records"):
        compute(tmp_path / "empty")


def test_records_with_only_failures(tmp_path):
    write_run(tmp_path / "failed", default_pair(), all_fail=True)
    with pytest.raises(LoadtestError, match=r"all \d+ recorded requests failed.*synthetic failure") as exc:
        compute(tmp_path / "failed")
    assert "\n" not in str(exc.value)


def test_cost_file_typo_names_the_field(tmp_path):
    bad = tmp_path / "costs.yaml"
    bad.write_text(HAND_COSTS.replace("usd_per_accelerator_hour", "usd_per_acelerator_hour"))
    with pytest.raises(LoadtestError) as exc:
        load_cost_book(bad)
    message = str(exc.value)
    assert "instances[0].usd_per_acelerator_hour" in message and "did you mean usd_per_accelerator_hour" in message
    assert "\n" not in message
    book = load_cost_book(None)
    with pytest.raises(LoadtestError, match="did you mean aws-g5.xlarge"):
        book.instance("aws-g5.xlarg")


def test_shipped_cost_file_is_valid_and_dated():
    book = load_cost_book(None)
    assert book.prices_as_of and "on-demand" in book.price_basis
    cpu = book.instance(book.default_instance)
    assert cpu.accelerators == 0 and cpu.declared_power_w
    assert all(i.accelerators >= 1 and i.board_power_w for i in book.instances if i.name != cpu.name)


def test_cli_prints_one_line_errors(tmp_path):
    bad = tmp_path / "costs.yaml"
    bad.write_text("prices_as_of: x\ndefault_instance: a\ninstances:\n  - name: a\n    provider: p\n"
                   "    usd_per_hr: 1\n    accelerator: none\n    accelerators: 0\n")
    run_dir = tmp_path / "run"
    write_run(run_dir, default_pair())
    for args, needle in (
        (["analyze", str(tmp_path / "missing")], "does not exist"),
        (["analyze", str(run_dir), "--cost-file", str(bad)], "usd_per_hr"),
    ):
        result = subprocess.run([sys.executable, "-m", "loadtest.cli", *args], capture_output=True, text=True,
                                timeout=120)
        assert result.returncode == 2, result.stderr
        assert needle in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert "Traceback" not in result.stderr


def test_views_never_show_nan(gpu_run):
    _, _, analysis = gpu_run
    for view in all_views(analysis):
        for row in view.rows:
            assert not any("nan" in cell.lower() for cell in row), (view.key, row)


def test_terminal_tables(gpu_run):
    from rich.console import Console

    from loadtest.analysis import render_terminal

    console = Console(record=True, width=200)
    render_terminal(gpu_run[2], console)
    text = console.export_text()
    for needle in ("Teacher vs student", "QPS at P95 ≤ 50 ms", "Cost per 1M tokens", "Triton queue", "significant"):
        assert needle in text
