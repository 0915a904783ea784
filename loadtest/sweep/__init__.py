"""The capacity search (`loadtest sweep`), beside ``load/`` and ``analysis/``: it drives the load generator
step by step and judges each step by the analyzer's rules.

``search`` (the MLPerf-style search over loads), ``steps`` (one Locust run per step, judged), ``merge``
(the steps merged into one run directory), ``run`` (every model in turn). Never imports Locust.
"""

from __future__ import annotations

from loadtest.sweep.merge import merge_step
from loadtest.sweep.run import SweepOutcome, run_sweep
from loadtest.sweep.search import SearchResult, SweepSettings, passes, search
from loadtest.sweep.steps import SweepTarget, judge_step, run_step

__all__ = ["SearchResult", "SweepOutcome", "SweepSettings", "SweepTarget", "judge_step", "merge_step", "passes",
           "run_step", "run_sweep", "search"]
