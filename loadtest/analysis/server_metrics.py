"""Triton's side of the story: server-side latency split, executed batch size, GPU power and energy.

Triton exports cumulative counters (``nv_inference_*_duration_us``, request/inference/execution counts,
``nv_energy_consumption``) and power gauges; our NVML exporter adds ``loadtest_gpu_*``. A window's figures
are counter *deltas* between two samples bracketing it (docs/method.md). Samples come either from the
``metrics/<unix_ms>-<label>.prom`` snapshots saved during the run, or from range queries on a Prometheus
that scraped the run; both become the same list of ``Snapshot`` objects, so one code path computes both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from loadtest.rundir import SNAPSHOT_NAME, snapshot_paths

DURATION_COUNTERS = {
    "queue": "nv_inference_queue_duration_us",
    "compute_input": "nv_inference_compute_input_duration_us",
    "compute_infer": "nv_inference_compute_infer_duration_us",
    "compute_output": "nv_inference_compute_output_duration_us",
    "request": "nv_inference_request_duration_us",
}
SUCCESS = "nv_inference_request_success"
INFERENCES = "nv_inference_count"
EXECUTIONS = "nv_inference_exec_count"
ENERGY_COUNTERS_J = ("loadtest_gpu_energy_joules_total", "nv_energy_consumption")  # preferred first
POWER_GAUGES_W = ("loadtest_gpu_power_watts", "nv_gpu_power_usage")
MODEL_METRICS = (*DURATION_COUNTERS.values(), SUCCESS, INFERENCES, EXECUTIONS)
PROMETHEUS_LABEL = "prometheus"  # Snapshots built from a Prometheus's periodic scrapes
# Labels that identify one GPU across both sources (Triton: gpu_uuid; our exporter: uuid / gpu).
GPU_KEYS = ("gpu_uuid", "uuid", "gpu")


@dataclass
class Snapshot:
    """Every sample of one scrape: metric sample name -> list of (labels, value)."""

    time_s: float
    label: str
    samples: dict[str, list[tuple[dict[str, str], float]]] = field(default_factory=dict)

    def model_total(self, metric: str, model: str) -> float | None:
        """Sum over versions (and scrape targets) of one model's counter; None when absent."""
        rows = [v for labels, v in self.samples.get(metric, []) if labels.get("model") == model]
        return float(sum(rows)) if rows else None

    def per_gpu(self, metric: str) -> dict[str, float]:
        out: dict[str, float] = {}
        for labels, value in self.samples.get(metric, []):
            key = next((labels[k] for k in GPU_KEYS if k in labels), "") + "|" + labels.get("instance", "")
            out[key] = value
        return out


def parse_snapshot_text(text: str, time_s: float, label: str) -> Snapshot:
    """Parse Prometheus text exposition with prometheus_client's own parser."""
    from prometheus_client.parser import text_string_to_metric_families

    snap = Snapshot(time_s, label)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            entry = (dict(sample.labels), float(sample.value))
            snap.samples.setdefault(sample.name, []).append(entry)
            # the parser renames counters to OpenMetrics style (`x` -> `x_total`); keep the exposition name too
            if family.type == "counter" and sample.name == family.name + "_total":
                snap.samples.setdefault(family.name, []).append(entry)
    return snap


def read_snapshots(run_dir: Path) -> tuple[list[Snapshot], list[str]]:
    """All ``metrics/<unix_ms>-<label>.prom`` files of a run, in time order, and notes on skipped ones."""
    notes: list[str] = []
    snaps: list[Snapshot] = []
    for path in snapshot_paths(run_dir):
        match = SNAPSHOT_NAME.match(path.name)
        if not match:
            notes.append(f"metrics snapshot {path.name} ignored: name is not <unix_ms>-<label>.prom")
            continue
        try:
            snaps.append(parse_snapshot_text(path.read_text(), int(match.group(1)) / 1000.0, match.group(2)))
        except (ValueError, OSError) as exc:
            notes.append(f"metrics snapshot {path.name} ignored: {str(exc).splitlines()[0][:120]}")
    snaps.sort(key=lambda s: s.time_s)
    return snaps, notes


def query_prometheus(url: str, start: float, end: float, *, timeout_s: float = 15.0) -> list[Snapshot]:
    """The raw samples a Prometheus scraped over [start, end] (epoch seconds), as Snapshots.

    One range-vector query (``{__name__=~"..."}[Ns]`` evaluated at the end) returns every scrape with its
    own timestamp, so windows are bracketed by real scrape times rather than by evaluation steps whose
    values may be a scrape interval old. Series from several targets are merged by carrying each one's
    latest sample forward, so per-model totals add up across Triton instances.
    """
    from loadtest.observability import prometheus

    pad = 30.0
    span = int(math.ceil(end - start + 2 * pad))
    names = "|".join((*MODEL_METRICS, *ENERGY_COUNTERS_J, *POWER_GAUGES_W))
    series = []
    for item in prometheus.query(url, f'{{__name__=~"{names}"}}[{span}s]', at=end + pad, timeout_s=timeout_s):
        labels = dict(item.labels)
        name = labels.pop("__name__", "")
        points = sorted(item.points)
        if name and points:
            series.append((name, labels, points))
    times = sorted({t for _, _, points in series for t, _ in points})
    snaps = []
    cursor = [0] * len(series)
    for t in times:
        snap = Snapshot(t, PROMETHEUS_LABEL)
        for i, (name, labels, points) in enumerate(series):
            while cursor[i] + 1 < len(points) and points[cursor[i] + 1][0] <= t:
                cursor[i] += 1
            if points[cursor[i]][0] <= t:
                snap.samples.setdefault(name, []).append((labels, points[cursor[i]][1]))
        snaps.append(snap)
    return snaps


@dataclass(frozen=True)
class ServerSplit:
    """Triton's averages over a window: where a request's server time went, and how full batches were."""

    window_start: float
    window_end: float
    requests: int
    queue_ms: float | None
    compute_input_ms: float | None
    compute_infer_ms: float | None
    compute_output_ms: float | None
    request_ms: float | None
    mean_batch_size: float | None


def tight_limit(start: float, end: float) -> float:
    """How much longer than a window a bracketing sample pair may be and still describe that window."""
    return max(2.0, 0.1 * (end - start))


def bracket(
    snaps: list[Snapshot], start: float, end: float, slack_s: float = 0.5, max_excess_s: float | None = None
) -> tuple[Snapshot, Snapshot] | None:
    """Two samples bracketing [start, end]: the pair whose counter deltas describe that window.

    Saved snapshots are taken *at* stage boundaries, a few milliseconds after the boundary itself, so for
    them the sample nearest each boundary within ``slack_s`` is the right one. Prometheus scrapes are
    periodic: there the window must lie inside the pair (latest scrape at or before the start, earliest at
    or after the end), or requests between a boundary and a late scrape would go missing.
    With ``max_excess_s``, a pair spanning much more than the window (other stages, idle time) is refused.
    """
    events = [s for s in snaps if s.label != PROMETHEUS_LABEL]
    periodic = [s for s in snaps if s.label == PROMETHEUS_LABEL]
    nearest = (
        min((s for s in events if s.time_s <= start + slack_s), key=lambda s: abs(s.time_s - start), default=None),
        min((s for s in events if s.time_s >= end - slack_s), key=lambda s: abs(s.time_s - end), default=None),
    )
    enclosing = (
        max((s for s in periodic if s.time_s <= start), key=lambda s: s.time_s, default=None),
        min((s for s in periodic if s.time_s >= end), key=lambda s: s.time_s, default=None),
    )
    for first, last in (nearest, enclosing):
        if first is None or last is None or last.time_s <= first.time_s:
            continue
        if max_excess_s is not None and (last.time_s - first.time_s) - (end - start) > max_excess_s:
            continue
        return first, last
    return None


def server_split(
    snaps: list[Snapshot], model: str, start: float, end: float, *, tight: bool = True
) -> ServerSplit | None:
    """Per-request averages from counter deltas; None when no sample pair brackets the window.

    ``tight`` (per stage) refuses a pair that also spans other stages of the same model; a whole-run
    row accepts any pair, since the counters are per model.
    """
    pair = bracket(snaps, start, end, max_excess_s=tight_limit(start, end) if tight else None)
    if pair is None:
        return None
    a, b = pair

    def delta(metric: str) -> float | None:
        x, y = a.model_total(metric, model), b.model_total(metric, model)
        if x is None or y is None or y < x:  # absent, or the server restarted in between
            return None
        return y - x

    n = delta(SUCCESS)
    if not n:
        return None
    per_request = {}
    for key, metric in DURATION_COUNTERS.items():
        d = delta(metric)
        per_request[key] = None if d is None else d / n / 1000.0
    inferences, executions = delta(INFERENCES), delta(EXECUTIONS)
    batch = inferences / executions if inferences is not None and executions else None
    return ServerSplit(
        a.time_s, b.time_s, int(n), per_request["queue"], per_request["compute_input"],
        per_request["compute_infer"], per_request["compute_output"], per_request["request"], batch,
    )


@dataclass(frozen=True)
class PowerSeries:
    """Total GPU power over time (summed over GPUs) from whichever source the run has."""

    source: str  # metric name used
    times_s: list[float]
    watts: list[float]


def power_series(snaps: list[Snapshot]) -> PowerSeries | None:
    for metric in POWER_GAUGES_W:
        points = [(s.time_s, sum(s.per_gpu(metric).values())) for s in snaps if s.per_gpu(metric)]
        if len(points) >= 1:
            return PowerSeries(metric, [t for t, _ in points], [w for _, w in points])
    return None


@dataclass(frozen=True)
class EnergyMeasurement:
    """Energy over a window, with how it was obtained."""

    joules: float
    method: str  # "counter <metric>" or "integrated <metric>"
    window_start: float
    window_end: float


def energy(snaps: list[Snapshot], start: float, end: float) -> EnergyMeasurement | None:
    """GPU energy over [start, end]: cumulative counter delta if present, else trapezoid of power samples."""
    pair = bracket(snaps, start, end, max_excess_s=tight_limit(start, end))
    if pair is not None:
        a, b = pair
        for metric in ENERGY_COUNTERS_J:
            ea, eb = a.per_gpu(metric), b.per_gpu(metric)
            common = set(ea) & set(eb)
            if common and all(eb[k] >= ea[k] for k in common):
                joules = sum(eb[k] - ea[k] for k in common)
                # scale the bracketing pair's energy to the window itself (mean power x window)
                span = b.time_s - a.time_s
                joules *= (end - start) / span if span > 0 else 1.0
                return EnergyMeasurement(joules, f"counter {metric}", start, end)
    series = power_series([s for s in snaps if start - 0.5 <= s.time_s <= end + 0.5])
    if series is not None and len(series.times_s) >= 2:
        import numpy as np

        joules = float(np.trapz(series.watts, series.times_s))  # numpy < 2 (PyTriton's pin)
        covered = series.times_s[-1] - series.times_s[0]
        if covered > 0:
            joules *= (end - start) / covered
            return EnergyMeasurement(joules, f"integrated {series.source}", start, end)
    return None


def has_gpu_metrics(snaps: list[Snapshot]) -> bool:
    return any(s.samples.get(m) for s in snaps for m in (*ENERGY_COUNTERS_J, *POWER_GAUGES_W))


def snapshot_span(snaps: list[Snapshot]) -> tuple[float, float]:
    return (snaps[0].time_s, snaps[-1].time_s) if snaps else (math.nan, math.nan)


def models_seen(snaps: list[Snapshot]) -> set[str]:
    seen: set[str] = set()
    for s in snaps:
        for labels, _ in s.samples.get(SUCCESS, []):
            if "model" in labels:
                seen.add(labels["model"])
    return seen
