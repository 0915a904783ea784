"""The serving figures a run is judged on: name, unit, direction, label and where each comes from.

Why one registry: the comparison table (``tables/comparison.csv``), the terminal/HTML views and the
regression gate's accepted serving metrics all derive from ``METRICS``; when each kept its own list
they disagreed (the gate refused figures the table carried, a direction differed). To add a figure,
``register`` it (or add a line below) and fill it where its ``source`` says:

- ``footprint``: an attribute of the model's ``Footprint`` (parameters, size, FLOPs, memory);
- ``latency``: a column of the model's reference latency row (``analyze`` builds it from the records);
- ``capacity``: an attribute of the model's ``Capacity`` (QPS at the latency budget);
- ``cost``: an attribute of the model's ``CostFigures``.

Definitions of each figure: docs/method.md. Never imports pandas or the analyzer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Direction = Literal["higher", "lower", "neither"]
Source = Literal["footprint", "latency", "capacity", "cost"]


@dataclass(frozen=True)
class Metric:
    """One comparable figure. ``direction``: which way is better (``neither``: descriptive only)."""

    name: str
    unit: str  # count | MB | FLOPs | req/s | tokens/s | ms | fraction | requests/batch | USD | J | g
    direction: Direction
    label: str
    source: Source = "latency"
    estimate_when_energy_estimated: bool = False  # label gets "(estimate)" when power was not measured

    @property
    def higher_is_better(self) -> bool | None:
        return {"higher": True, "lower": False}.get(self.direction)


METRICS: dict[str, Metric] = {}


def register(metric: Metric) -> Metric:
    """Add a figure (kept in registration order, the order of every table); a name is registered once."""
    if metric.name in METRICS:
        raise ValueError(f"metric {metric.name!r} is already registered")
    METRICS[metric.name] = metric
    return metric


for _metric in (
    # resource footprint first (loadtest.analysis.footprint): the KPI tables of a distillation review start here
    Metric("parameters", "count", "lower", "Parameters", "footprint"),
    Metric("size_on_disk_mb", "MB", "lower", "Size on disk", "footprint"),
    Metric("flops_per_request", "FLOPs", "lower", "FLOPs per request", "footprint"),
    Metric("flops_per_token", "FLOPs", "lower", "FLOPs per token", "footprint"),
    Metric("peak_rss_mb", "MB", "lower", "Peak serving memory (RSS)", "footprint"),
    Metric("nonfinite_outputs", "count", "lower", "Non-finite outputs", "footprint"),
    Metric("requests", "count", "neither", "Requests"),
    Metric("achieved_qps", "req/s", "higher", "Achieved QPS"),
    Metric("tokens_per_s", "tokens/s", "higher", "Tokens/s"),
    Metric("p50_ms", "ms", "lower", "P50 latency"),
    Metric("p90_ms", "ms", "lower", "P90 latency"),
    Metric("p95_ms", "ms", "lower", "P95 latency"),
    Metric("p99_ms", "ms", "lower", "P99 latency"),
    Metric("p999_ms", "ms", "lower", "P99.9 latency"),
    Metric("max_ms", "ms", "lower", "Max latency"),
    Metric("error_rate", "fraction", "lower", "Error rate"),
    # larger executed batches are neither good nor bad by themselves: they trade queueing for throughput
    Metric("mean_batch_size", "requests/batch", "neither", "Mean executed batch"),
    Metric("server_queue_ms", "ms", "lower", "Triton queue"),
    Metric("server_compute_input_ms", "ms", "lower", "Triton compute input"),
    Metric("server_compute_infer_ms", "ms", "lower", "Triton compute infer"),
    Metric("server_compute_output_ms", "ms", "lower", "Triton compute output"),
    Metric("qps_at_budget", "req/s", "higher", "QPS at budget", "capacity"),
    Metric("tokens_per_s_at_budget", "tokens/s", "higher", "Tokens/s at budget", "capacity"),
    Metric("cost_per_1m_tokens_usd", "USD", "lower", "Cost per 1M tokens", "cost"),
    Metric("cost_per_1k_requests_usd", "USD", "lower", "Cost per 1k requests", "cost"),
    Metric("energy_per_1m_tokens_j", "J", "lower", "Energy per 1M tokens", "cost", True),
    Metric("co2e_g_per_1m_tokens", "g", "lower", "CO2e per 1M tokens", "cost", True),
):
    register(_metric)


def label(name: str) -> str:
    """The display label of a figure (its name when unregistered)."""
    metric = METRICS.get(name)
    return metric.label if metric else name


def higher_is_better(name: str) -> bool | None:
    """True/False for a registered figure with a direction, None otherwise."""
    metric = METRICS.get(name)
    return metric.higher_is_better if metric else None
