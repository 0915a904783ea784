"""The Grafana "Teacher vs Student" dashboard, built from one list of panels.

Why generated: every time-series panel must exist once per model, side by side, with the same
queries, units and legends; writing that by hand drifts. ``grafana/dashboards/teacher-vs-student.json``
is :func:`teacher_vs_student` dumped by :func:`dump_dashboard`; a test keeps the committed file equal
to it, and the integration test runs every query of the committed file against a live Prometheus.

Queries use only metrics proven against a live run: the client metrics of ``loadtest.load``
(``loadtest_*``), Triton's ``nv_*`` counters, and the GPU exporter's ``loadtest_gpu_*`` (plus
Triton's ``nv_gpu_*`` / ``nv_energy_consumption`` where Triton has GPUs).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

DASHBOARD_UID = "loadtest-teacher-vs-student"
DASHBOARD_TITLE = "Teacher vs Student"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
DEFAULT_BUDGET_MS = 100
SCHEMA_VERSION = 39

M = 'model=~"$model"'
SUCCESS = f'{M}, outcome="success"'
RI = "$__rate_interval"


def _rate(metric: str, selector: str = M, by: str = "model") -> str:
    return f"sum by ({by}) (rate({metric}{{{selector}}}[{RI}]))"


def _per_request_seconds(duration_metric: str) -> str:
    """Mean of a Triton cumulative microsecond counter per successful request, in seconds (docs/method.md)."""
    return f"{_rate(duration_metric)} / {_rate('nv_inference_request_success')} / 1e6"


def _quantile(q: float) -> str:
    buckets = f"loadtest_request_duration_seconds_bucket{{{SUCCESS}}}"
    return f"histogram_quantile({q}, sum by (le, model) (rate({buckets}[{RI}])))"


def _zero_if_absent(expr: str) -> str:
    """A counter series that appears only on its first event shows 0, not "no data", before that."""
    return f'({expr}) or ({_rate("loadtest_requests_total")} * 0)'


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str
    instant: bool = False


@dataclass(frozen=True)
class Panel:
    """One dashboard panel; ``per_model`` panels repeat over ``$model`` side by side."""

    title: str
    description: str
    unit: str
    queries: tuple[Query, ...]
    per_model: bool = True
    kind: str = "timeseries"  # or "stat"
    stack: bool = False
    budget_line: bool = False
    overrides: tuple[dict, ...] = field(default_factory=tuple)


BUDGET = Query(f"vector($budget / 1000)", "latency budget ($budget ms)")


def _histogram_quantile(q: float, metric: str) -> str:
    return f"histogram_quantile({q}, sum by (le, model) (rate({metric}_bucket{{{M}}}[{RI}])))"


# Generative (LLM) runs: the streaming users' TTFT/ITL histograms and output-token counter.
GENERATIVE = [
    Panel(
        "Time to first token P50 / P95",
        "Generative runs: time to the first chunk carrying output text (open loop: from the intended send "
        "time), from the client histogram (5 ms - 60 s buckets); the budget ($budget ms) as the TTFT SLO line.",
        "s",
        (
            Query(_histogram_quantile(0.5, "loadtest_time_to_first_token_seconds"), "TTFT P50 {{model}}"),
            Query(_histogram_quantile(0.95, "loadtest_time_to_first_token_seconds"), "TTFT P95 {{model}}"),
            BUDGET,
        ),
        budget_line=True,
    ),
    Panel(
        "Inter-token latency P50 / P95",
        "Generative runs: (E2E - TTFT) / (output tokens - 1) per request, from the client histogram "
        "(0.5 ms - 2 s buckets); 1 / ITL is the tokens/s one user sees.",
        "s",
        (
            Query(_histogram_quantile(0.5, "loadtest_inter_token_latency_seconds"), "ITL P50 {{model}}"),
            Query(_histogram_quantile(0.95, "loadtest_inter_token_latency_seconds"), "ITL P95 {{model}}"),
        ),
    ),
    Panel(
        "Output tokens/s",
        "Generative runs: output tokens of successful requests per second (the server's usage counts where "
        "it sends them, never chunks), with successful requests/s.",
        "short",
        (
            Query(_rate("loadtest_output_tokens_total"), "output tokens/s {{model}}"),
            Query(_rate("loadtest_requests_total", SUCCESS), "requests/s {{model}}"),
        ),
    ),
]

AT_A_GLANCE: tuple[Panel, ...] = (
    Panel(
        "Achieved QPS (range)",
        "Successful requests per second over the dashboard's time range, per model (client side).",
        "reqps",
        (
            Query(
                f'sum by (model) (increase(loadtest_requests_total{{{M}, outcome="success"}}[$__range])) / $__range_s',
                "{{model}}",
                instant=True,
            ),
        ),
        per_model=False,
        kind="stat",
    ),
    Panel(
        "Client P95 latency (range)",
        "P95 of successful requests over the dashboard's time range, from the client histogram "
        "(bucket-interpolated; the analyzer's figures come from raw records).",
        "s",
        (
            Query(
                "histogram_quantile(0.95, sum by (le, model) "
                f'(increase(loadtest_request_duration_seconds_bucket{{{M}, outcome="success"}}[$__range])))',
                "{{model}}",
                instant=True,
            ),
        ),
        per_model=False,
        kind="stat",
    ),
    Panel(
        "Tokens/s (range)",
        "Input tokens (sum of the attention mask) of successful requests per second over the range.",
        "short",
        (
            Query(
                f"sum by (model) (increase(loadtest_tokens_total{{{M}}}[$__range])) / $__range_s",
                "{{model}}",
                instant=True,
            ),
        ),
        per_model=False,
        kind="stat",
    ),
    Panel(
        "Mean executed batch (range)",
        "Samples per executed batch at Triton over the range: dynamic batching at work.",
        "short",
        (
            Query(
                f"sum by (model) (increase(nv_inference_count{{{M}}}[$__range])) / "
                f"sum by (model) (increase(nv_inference_exec_count{{{M}}}[$__range]))",
                "{{model}}",
                instant=True,
            ),
        ),
        per_model=False,
        kind="stat",
    ),
)

PER_MODEL: tuple[Panel, ...] = (
    Panel(
        "Achieved QPS and offered rate",
        "Client-side successful requests/s, the open-loop target arrival rate (absent in closed loop), "
        "and what Triton counted as successful.",
        "reqps",
        (
            Query(_rate("loadtest_requests_total", SUCCESS), "achieved {{model}}"),
            Query(f"sum by (model) (loadtest_offered_rate_rps{{{M}}})", "offered {{model}}"),
            Query(_rate("nv_inference_request_success"), "Triton success {{model}}"),
        ),
    ),
    Panel(
        "Client latency P50 / P95 / P99",
        "Percentiles of successful requests from the client histogram (1 ms - 10 s buckets, interpolated), "
        "with the latency budget ($budget ms) as a dashed red line.",
        "s",
        (
            Query(_quantile(0.5), "P50 {{model}}"),
            Query(_quantile(0.95), "P95 {{model}}"),
            Query(_quantile(0.99), "P99 {{model}}"),
            BUDGET,
        ),
        budget_line=True,
    ),
    Panel(
        "Triton queue vs compute time per request",
        "Triton's server-side split (mean per successful request, from cumulative microsecond counters): "
        "time in the scheduler queue, then input copy, inference and output copy, stacked.",
        "s",
        (
            Query(_per_request_seconds("nv_inference_queue_duration_us"), "queue {{model}}"),
            Query(_per_request_seconds("nv_inference_compute_input_duration_us"), "compute input {{model}}"),
            Query(_per_request_seconds("nv_inference_compute_infer_duration_us"), "compute infer {{model}}"),
            Query(_per_request_seconds("nv_inference_compute_output_duration_us"), "compute output {{model}}"),
        ),
        stack=True,
    ),
    Panel(
        "Mean executed batch size",
        "Samples per batch Triton executed (nv_inference_count / nv_inference_exec_count).",
        "short",
        (Query(f"{_rate('nv_inference_count')} / {_rate('nv_inference_exec_count')}", "batch {{model}}"),),
    ),
    Panel(
        "Tokens/s",
        "Input tokens (sum of the attention mask) sent per second by the load generators.",
        "short",
        (Query(_rate("loadtest_tokens_total"), "tokens/s {{model}}"),),
    ),
    Panel(
        "Failures and missed sends",
        "Failed requests/s seen by clients and by Triton (by reason); open-loop sends that left late "
        "or never left (coordinated-omission bookkeeping, docs/method.md).",
        "reqps",
        (
            Query(
                _zero_if_absent(_rate("loadtest_requests_total", f'{M}, outcome="failure"')),
                "client failures {{model}}",
            ),
            Query(_rate("nv_inference_request_failure", M, by="model, reason"), "Triton {{reason}} {{model}}"),
            Query(_zero_if_absent(_rate("loadtest_late_sends_total")), "late sends {{model}}"),
            Query(_zero_if_absent(_rate("loadtest_dropped_sends_total")), "dropped sends {{model}}"),
        ),
    ),
    Panel(
        "In flight",
        "Requests sent and not yet answered (clients) and requests waiting at Triton.",
        "short",
        (
            Query(f"sum by (model) (loadtest_in_flight_requests{{{M}}})", "client in flight {{model}}"),
            Query(f"sum by (model) (nv_inference_pending_request_count{{{M}}})", "Triton pending {{model}}"),
        ),
    ),
    Panel(
        "Energy per 1k requests",
        "All GPU energy over the interval divided by this model's successful requests, x1000. Exact when "
        "the model runs alone on the GPUs (one model per test step); with both loaded at once each model "
        "is charged the whole GPU energy, an upper bound.",
        "joule",
        (
            Query(
                f"1000 * sum(rate(loadtest_gpu_energy_joules_total[{RI}])) / on() group_right() "
                + _rate("loadtest_requests_total", SUCCESS),
                "exporter {{model}}",
            ),
            Query(
                f"1000 * sum(rate(nv_energy_consumption[{RI}])) / on() group_right() "
                f"{_rate('nv_inference_request_success')}",
                "Triton {{model}}",
            ),
        ),
    ),
)

SHARED: tuple[Panel, ...] = (
    Panel(
        "GPU power",
        "Board power per GPU from loadtest gpu-exporter (NVML) and from Triton; both models share the GPUs.",
        "watt",
        (
            Query("loadtest_gpu_power_watts", "GPU {{gpu}} {{name}}"),
            Query("nv_gpu_power_usage", "Triton {{gpu_uuid}}"),
        ),
        per_model=False,
    ),
    Panel(
        "GPU utilisation",
        "Fraction of time a kernel ran, per GPU (NVML via gpu-exporter; Triton's nv_gpu_utilization).",
        "percentunit",
        (
            Query("loadtest_gpu_utilization_ratio", "GPU {{gpu}} {{name}}"),
            Query("nv_gpu_utilization", "Triton {{gpu_uuid}}"),
        ),
        per_model=False,
    ),
    Panel(
        "GPU memory used",
        "Device memory in use per GPU.",
        "bytes",
        (
            Query("loadtest_gpu_memory_used_bytes", "GPU {{gpu}} {{name}}"),
            Query("nv_gpu_memory_used_bytes", "Triton {{gpu_uuid}}"),
        ),
        per_model=False,
    ),
    Panel(
        "Triton host CPU",
        "CPU utilisation of Triton's host (nv_cpu_utilization, 0-1): what bounds a CPU-only server.",
        "percentunit",
        (Query("nv_cpu_utilization", "Triton CPU {{instance}}"),),
        per_model=False,
    ),
)


def _timeseries_field_config(panel: Panel) -> dict:
    custom: dict = {
        "drawStyle": "line",
        "lineWidth": 1,
        "fillOpacity": 20 if panel.stack else 0,
        "showPoints": "never",
        "spanNulls": False,
        "stacking": {"mode": "normal" if panel.stack else "none", "group": "A"},
    }
    overrides = list(panel.overrides)
    if panel.budget_line:
        overrides.append(
            {
                "matcher": {"id": "byFrameRefID", "options": "BUDGET"},
                "properties": [
                    {"id": "color", "value": {"mode": "fixed", "fixedColor": "red"}},
                    {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}},
                    {"id": "custom.lineWidth", "value": 2},
                ],
            }
        )
    return {
        "defaults": {"unit": panel.unit, "custom": custom, "color": {"mode": "palette-classic"}},
        "overrides": overrides,
    }


def _targets(panel: Panel) -> list[dict]:
    targets = []
    for i, query in enumerate(panel.queries):
        ref = "BUDGET" if query is BUDGET else chr(ord("A") + i)
        targets.append(
            {
                "refId": ref,
                "datasource": DATASOURCE,
                "expr": query.expr,
                "legendFormat": query.legend,
                "range": not query.instant,
                "instant": query.instant,
                "editorMode": "code",
            }
        )
    return targets


def _panel_json(panel: Panel, panel_id: int, x: int, y: int, w: int, h: int) -> dict:
    out: dict = {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "targets": _targets(panel),
    }
    if panel.kind == "stat":
        out["fieldConfig"] = {
            "defaults": {"unit": panel.unit, "color": {"mode": "palette-classic"}, "decimals": 3},
            "overrides": [],
        }
        out["options"] = {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "orientation": "vertical",
            "textMode": "value_and_name",
            "colorMode": "value",
            "graphMode": "none",
            "justifyMode": "auto",
        }
    else:
        out["fieldConfig"] = _timeseries_field_config(panel)
        out["options"] = {
            "legend": {"displayMode": "table", "placement": "bottom", "showLegend": True, "calcs": ["mean", "max"]},
            "tooltip": {"mode": "multi", "sort": "none"},
        }
    if panel.per_model:
        out["repeat"] = "model"
        out["repeatDirection"] = "h"
        out["maxPerRow"] = 2
    return out


def _row(title: str, panel_id: int, y: int) -> dict:
    return {
        "id": panel_id,
        "type": "row",
        "title": title,
        "collapsed": False,
        "gridPos": {"x": 0, "y": y, "w": 24, "h": 1},
        "panels": [],
    }


def _templating(default_budget_ms: int) -> dict:
    return {
        "list": [
            {
                "name": "datasource",
                "label": "Prometheus",
                "type": "datasource",
                "query": "prometheus",
                "current": {"text": "Prometheus", "value": "prometheus"},
                "hide": 0,
                "refresh": 1,
                "regex": "",
            },
            {
                "name": "model",
                "label": "Model",
                "type": "query",
                "datasource": DATASOURCE,
                "definition": "label_values(nv_inference_request_success, model)",
                "query": {"query": "label_values(nv_inference_request_success, model)", "refId": "models"},
                "multi": True,
                "includeAll": True,
                "current": {"text": ["All"], "value": ["$__all"]},
                "refresh": 2,
                "sort": 1,
                "hide": 0,
                "regex": "",
            },
            {
                "name": "budget",
                "label": "Latency budget (ms)",
                "type": "textbox",
                "query": str(default_budget_ms),
                "current": {"text": str(default_budget_ms), "value": str(default_budget_ms)},
                "hide": 0,
            },
        ]
    }


def teacher_vs_student(default_budget_ms: int = DEFAULT_BUDGET_MS) -> dict:
    """The dashboard model (Grafana JSON as a dict)."""
    panels: list[dict] = []
    next_id = 1
    y = 0

    def add_row(title: str) -> None:
        nonlocal next_id, y
        panels.append(_row(title, next_id, y))
        next_id += 1
        y += 1

    add_row("Teacher vs Student at a glance (dashboard time range)")
    width = 24 // len(AT_A_GLANCE)
    for i, panel in enumerate(AT_A_GLANCE):
        panels.append(_panel_json(panel, next_id, i * width, y, width, 5))
        next_id += 1
    y += 5
    add_row("Per model, side by side ($model)")
    for panel in PER_MODEL:
        panels.append(_panel_json(panel, next_id, 0, y, 12, 8))
        next_id += 1
        y += 8
    add_row("Generative serving: LLM runs (--api) ($model)")
    for panel in GENERATIVE:
        panels.append(_panel_json(panel, next_id, 0, y, 12, 8))
        next_id += 1
        y += 8
    add_row("GPUs and hosts (shared by both models)")
    for i, panel in enumerate(SHARED):
        panels.append(_panel_json(panel, next_id, (i % 2) * 12, y, 12, 8))
        next_id += 1
        if i % 2 == 1 or i == len(SHARED) - 1:
            y += 8
    return {
        "uid": DASHBOARD_UID,
        "title": DASHBOARD_TITLE,
        "description": "Live view of a loadtest run: the teacher and the student side by side "
        "(client latency and throughput, Triton's server-side split, GPU power and energy).",
        "tags": ["loadtest", "triton", "distillation"],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "refresh": "5s",
        "time": {"from": "now-15m", "to": "now"},
        "timepicker": {"refresh_intervals": ["1s", "5s", "10s", "30s", "1m"]},
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "weekStart": "",
        "links": [],
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "templating": _templating(default_budget_ms),
        "panels": panels,
    }


def dump_dashboard(dashboard: dict) -> str:
    return json.dumps(dashboard, indent=2, ensure_ascii=False) + "\n"


# File name under grafana/dashboards/ -> builder; provisioning loads every file there.
DASHBOARD_FILES = {"teacher-vs-student.json": teacher_vs_student}
