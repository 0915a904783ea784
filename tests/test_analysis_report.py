"""report.html: self-contained (opens offline), carries the plots and tables, and renders in Chromium.

The screenshot test needs a Chromium binary (`apt-get install chromium`); it skips when there is none.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from _analysis_synth import default_pair, write_run

from loadtest.analysis import analyze_run

CHROMIUM = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser"),
                             shutil.which("google-chrome")) if p), None)
TEACHER_RGB, STUDENT_RGB = (0x3B, 0x5B, 0x92), (0xE8, 0x74, 0x3B)


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("report") / "run"
    write_run(run_dir, default_pair(), budget_ms=50.0, gpu_power=True)
    try:  # the quality section, when the quality package is there to write its results
        from _quality_synthetic import synthetic_results
        from _quality_synthetic import write_run as write_quality_run

        write_quality_run(run_dir, synthetic_results(n=600, resamples=50))
    except ImportError:
        pass
    analyze_run(run_dir, instance="aws-g5.xlarge")
    return run_dir / "report.html"


def test_report_is_self_contained(report):
    html = report.read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>")
    assert "<script" not in html.lower() and "<link" not in html.lower() and "@import" not in html
    external = re.findall(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", html, flags=re.I)
    assert not external, external
    assert html.count("<svg") >= 4  # latency-throughput, CDF, bars, power
    for heading in ("Teacher vs student", "Capacity at the latency budget", "Cost, energy and carbon",
                    "Latency per model and stage", "Client vs Triton server-side split", "How these numbers"):
        assert heading in html


def test_report_includes_the_quality_section_when_present(report):
    pytest.importorskip("loadtest.quality.report")
    assert 'id="quality"' in report.read_text(encoding="utf-8")


@pytest.mark.skipif(CHROMIUM is None, reason="needs chromium (apt-get install chromium)")
def test_report_renders_in_headless_chromium_with_its_plots(report, tmp_path):
    from PIL import Image

    png = tmp_path / "report.png"
    profile = tmp_path / "profile"
    result = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", f"--screenshot={png}", "--window-size=1400,3000", report.as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert png.is_file(), result.stderr[-2000:]
    import numpy as np

    image = Image.open(png).convert("RGB")
    assert image.size == (1400, 3000)
    # the plots are drawn: many pixels in each model's colour within the page's first 1,800 px (the curves)
    top = np.asarray(image)[:1800].astype(int)

    def near(ref):
        return int((np.abs(top - np.array(ref)).max(axis=2) <= 12).sum())

    teacher, student = near(TEACHER_RGB), near(STUDENT_RGB)
    assert teacher > 5000 and student > 5000, (teacher, student)
    # and it is not a page of one colour (an error page or a blank render)
    small = np.asarray(image.resize((140, 300))).reshape(-1, 3)
    assert len({tuple(px) for px in small}) > 200
