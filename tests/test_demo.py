"""`loadtest demo`, the Quickstart's first command, end to end on this machine: nothing stubbed.

The quick demo builds its own pair in a fresh cache (about 40 s), exports it, serves it on a real
embedded Triton, drives Locust at both models, evaluates quality through the served models and analyzes.
The checks are the ones issues #2 and #6 name: a run directory with records, the table (CSV) and
report.html; the rare-class slice losing more than the aggregate and the report saying so; a strict gate
failing on that slice and a lenient one passing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _loadtest(*args: str, cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "loadtest.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "COLUMNS": "200"},
    )


def _only_run_dir(results: Path) -> Path:
    runs = [p for p in results.iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    work = tmp_path_factory.mktemp("demo")
    proc = _loadtest("demo", "--quick", "--cache-dir", str(work / "cache"), cwd=work, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return _only_run_dir(work / "results"), proc


def test_quick_demo_writes_records_tables_and_report(quick_demo):
    run_dir, proc = quick_demo
    records = pd.concat(pd.read_parquet(p) for p in sorted((run_dir / "records").glob("*.parquet")))
    assert {"teacher", "student"} <= set(records["model"])
    assert records["success"].all() and (records["latency_s"] > 0).all()
    latency = pd.read_csv(run_dir / "tables" / "latency.csv")
    for col in ("p50_ms", "p95_ms", "p99_ms", "achieved_qps"):
        assert col in latency.columns
    assert {"teacher", "student"} <= set(latency["model"])
    report = (run_dir / "report.html").read_text()
    assert report.count("<svg") >= 3  # latency curves, CDFs, quality plots
    assert "Teacher vs student" in proc.stdout and "Quality through the served models" in proc.stdout
    # the server's own noise (DCGM without a GPU, the shutdown signal) stays out of the terminal
    assert "Failed to initialize NVML" not in proc.stdout + proc.stderr
    assert "Signal (2) received" not in proc.stdout + proc.stderr


def test_quick_demo_shows_the_rare_class_gap(quick_demo):
    """The demo corpus is built so the student loses more on the rare class than overall; the report says so."""
    run_dir, proc = quick_demo
    metrics = pd.read_csv(run_dir / "quality" / "metrics.csv")

    def drop(slice_name: str, value: str) -> float:
        row = metrics[(metrics.model == "student") & (metrics.metric == "accuracy_drop")
                      & (metrics.slice == slice_name) & (metrics.slice_value.astype(str) == value)]
        return float(row["value"].iloc[0])

    assert drop("rare_class", "True") > drop("overall", "all") + 0.05
    findings = json.loads((run_dir / "quality" / "summary.json").read_text())["findings"]
    gaps = [f for f in findings if f["kind"] == "coverage_gap" and f["evidence"]["slice"] == "rare_class"]
    assert gaps, findings
    assert "coverage gap: rare_class=True" in (run_dir / "report.html").read_text()
    assert "coverage gap: rare_class=True" in proc.stdout


def test_quick_demo_reviews_fairness_across_customer_segments(quick_demo):
    """The demo corpus carries a customer segment; the demo evaluates with it as the group column."""
    run_dir, _ = quick_demo
    fairness = json.loads((run_dir / "quality" / "summary.json").read_text())["fairness"]
    assert fairness["column"] == "segment" and set(fairness["groups"]) == {"retail", "small_business", "premier"}
    metrics = pd.read_csv(run_dir / "quality" / "metrics.csv")
    widening = metrics[(metrics.metric == "group_gap_widening") & (metrics.model == "student")].iloc[0]
    assert widening["value"] == pytest.approx(fairness["student_gap"] - fairness["teacher_gap"])
    assert "Fairness across &#x27;segment&#x27; groups" in (run_dir / "report.html").read_text()


def test_gate_on_the_demo_run(quick_demo, tmp_path):
    run_dir, _ = quick_demo
    strict = _loadtest("gate", str(run_dir), "--policy", str(ROOT / "examples" / "gate.yaml"), cwd=tmp_path, timeout=120)
    assert strict.returncode == 1, strict.stdout + strict.stderr
    failing = [line for line in strict.stdout.splitlines() if line.startswith("│ FAIL")]
    assert any("rare_class=True" in line for line in failing), strict.stdout

    lenient = tmp_path / "lenient.yaml"
    lenient.write_text(yaml.safe_dump({"rules": [
        {"metric": "agreement", "min": 0.5},
        {"metric": "accuracy_drop", "slice": "rare_class=True", "max": 0.9},
        {"metric": "nonfinite_outputs", "max": 0},
    ]}))
    ok = _loadtest("gate", str(run_dir), "--policy", str(lenient), cwd=tmp_path, timeout=120)
    assert ok.returncode == 0, ok.stdout + ok.stderr


@pytest.mark.slow
def test_default_demo_sweeps_both_models(tmp_path):
    """The default demo (about 7 minutes with a fresh pair): a sweep gives each model a bounded QPS at budget."""
    proc = _loadtest("demo", "--cache-dir", str(tmp_path / "cache"), cwd=tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run_dir = _only_run_dir(tmp_path / "results")
    capacity = pd.read_csv(run_dir / "tables" / "capacity.csv").set_index("model")
    for model in ("teacher", "student"):
        assert capacity.loc[model, "qps_at_budget"] > 0
        assert pd.notna(capacity.loc[model, "load_high"]), "the sweep must find where the budget breaks"


def test_quick_demo_shows_progress_and_reconciles_when_piped(quick_demo):
    """Captured output is not a terminal (as in `make demo | tee log`): progress still prints, line by line."""
    _run_dir, proc = quick_demo
    pair_lines = [line for line in proc.stdout.splitlines() if line.startswith("demo pair:")]
    assert len(pair_lines) >= 3, proc.stdout[:3000]  # the build's stages, not one final line
    assert any(line.startswith("export + parity:") for line in proc.stdout.splitlines())
    assert "reconciliation: records" in proc.stdout
