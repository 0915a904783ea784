"""The generative demo: its capacity verdict, and the quick form end to end (build, export, serve, sweep, quality)."""

from __future__ import annotations

import io
import json
from types import SimpleNamespace

from loadtest.analysis.generative import SLO
from loadtest.gendemo import GenDemoOptions, capacity_verdict, run_generative_demo


def _result(low, high):
    return SimpleNamespace(best=SimpleNamespace(rate=low) if low is not None else None, failing_rate=high)


def test_capacity_verdict_gives_the_ratio_and_its_interval_from_the_brackets():
    slo = SLO(ttft_ms=250, itl_ms=25)
    line = capacity_verdict(_result(4.0, 5.0), _result(8.0, 10.0), slo)
    assert "2.00× the teacher's arrival rate (more)" in line and "[1.60×, 2.50×]" in line
    assert "open" in capacity_verdict(_result(4.0, None), _result(8.0, None), slo)
    assert "no capacity for the teacher" in capacity_verdict(_result(None, 1.0), _result(8.0, 10.0), slo)


def test_quick_generative_demo_end_to_end(gen_pair, tmp_path):
    from rich.console import Console

    options = GenDemoOptions.quick_preset(repository=tmp_path / "repo", results=tmp_path / "results",
                                          cache_dir=gen_pair.root.parent.parent)
    run_dir = run_generative_demo(options, console=Console(file=io.StringIO(), width=140))
    manifest = json.loads((run_dir / "manifest.json").read_text())
    results = manifest["sweep"]["results"]
    assert set(results) == {"teacher", "student"} and all(r["steps"] for r in results.values())
    steps = [step for r in results.values() for step in r["steps"]]  # each step saw the host (loadtest.sweep.host)
    assert all(step["others_share"] is not None and step["host_speed"] > 0 for step in steps)
    assert steps[0]["host_speed"] == 1.0
    assert (run_dir / "report.html").is_file() and (run_dir / "tables" / "capacity_verdict.txt").is_file()
    assert (run_dir / "tables" / "capacity_verdict.txt").read_text().startswith("Verdict:")
    summary = json.loads((run_dir / "quality" / "summary.json").read_text())
    assert summary["task"] == "text-generation"
    export = json.loads((tmp_path / "repo" / "export_manifest.json").read_text())
    assert all(m["parity"]["passed"] for m in export["models"].values())


def test_search_starts_where_it_is_told_and_brackets_from_there():
    """A chained start (the student at the teacher's capacity) climbs and bisects from that rate; a start above
    capacity halves down to a passing rate first."""
    from loadtest.analysis.generative_sweep import GenerativeSweepSettings, Step, search

    settings = GenerativeSweepSettings(slo=SLO(ttft_ms=250, itl_ms=25), start=2.0, max_steps=10)

    def measure(rate):
        return Step("m", f"m-{rate:g}", rate, None, rate <= 50.0, [] if rate <= 50.0 else ["P95 TTFT"])

    chained = search(measure, settings, "m", start=20.0)
    assert [s.rate for s in chained.steps][:3] == [20.0, 40.0, 80.0]
    assert chained.best.rate <= 50.0 < chained.failing_rate and chained.resolution <= settings.tolerance
    high = search(measure, settings, "m", start=120.0)
    assert [s.rate for s in high.steps][:3] == [120.0, 60.0, 30.0] and high.best.rate <= 50.0 < high.failing_rate


def test_an_overloaded_failure_is_retried_under_the_rate_it_delivered():
    from loadtest.analysis.generative_sweep import GenerativeSweepSettings, Step, search

    settings = GenerativeSweepSettings(slo=SLO(ttft_ms=250, itl_ms=25), start=10.0, max_steps=10)

    def measure(rate):
        delivered = SimpleNamespace(requests_per_s=min(rate, 45.0))
        return Step("m", f"m-{rate:g}", rate, delivered, rate <= 42.0, [] if rate <= 42.0 else ["P95 TTFT"])

    result = search(measure, settings, "m")
    assert [s.rate for s in result.steps][:4] == [10.0, 20.0, 40.0, 80.0]
    assert result.steps[4].rate == 42.8  # 95 % of the 45 req/s it delivered, not of the 80 offered


def test_a_failure_the_hosts_neighbours_disturbed_is_measured_again():
    from loadtest.analysis.generative_sweep import GenerativeSweepSettings, Step, search

    settings = GenerativeSweepSettings(slo=SLO(ttft_ms=250, itl_ms=25), start=10.0, max_steps=12)
    busy = {40.0}

    def measure(rate):
        delivered = SimpleNamespace(requests_per_s=min(rate, 60.0))
        if rate in busy:  # others took half the machine: fails once, then passes when measured again
            busy.discard(rate)
            return Step("m", f"m-{rate:g}", rate, delivered, False, ["P95 TTFT"], others_share=0.5)
        return Step("m", f"m-{rate:g}", rate, delivered, rate <= 50.0, [] if rate <= 50.0 else ["P95 TTFT"], others_share=0.0)

    result = search(measure, settings, "m")
    rates = [s.rate for s in result.steps]
    assert rates[:4] == [10.0, 20.0, 40.0, 40.0] and rates.count(80.0) == 1  # an undisturbed failure is not
    assert result.best.rate >= 40.0
