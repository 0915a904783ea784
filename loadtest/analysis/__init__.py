"""Analyzer: raw records and Triton metrics -> latency, capacity, cost, comparison tables and report.html.

Never imports Locust. The public names are loaded lazily so that importing ``loadtest.analysis.commands``
(done for every ``loadtest --help``) pulls in neither pandas nor scipy nor matplotlib.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from loadtest.analysis.analyze import analyze_run
    from loadtest.analysis.result import Analysis
    from loadtest.analysis.terminal import render_terminal

__all__ = ["Analysis", "analyze_run", "render_terminal"]


def __getattr__(name: str) -> Any:
    if name == "Analysis":
        from loadtest.analysis.result import Analysis

        return Analysis
    if name == "analyze_run":
        from loadtest.analysis.analyze import analyze_run

        return analyze_run
    if name == "render_terminal":
        from loadtest.analysis.terminal import render_terminal

        return render_terminal
    raise AttributeError(f"module 'loadtest.analysis' has no attribute {name!r}")
