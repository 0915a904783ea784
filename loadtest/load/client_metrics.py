"""Client-side Prometheus metrics of one load-generator process.

Why our own: Locust core has no Prometheus endpoint, and its percentiles are bucketed. Each process
exposes its own registry (a scrape target per process; sum over ``instance`` in PromQL), so nothing
is averaged before Prometheus sees it. Names and labels are a contract (docs/architecture.md,
"Client metrics"); the latency histogram's buckets cover 1 ms to 10 s.

Never imports Locust or gevent: ``wsgi_app()`` is served by whatever server the caller runs.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app

DEFAULT_METRICS_PORT = 9646
# 1 ms .. 10 s, about three buckets per decade (1-2-5) plus the steps a latency budget usually sits on.
LATENCY_BUCKETS_S = (
    0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1,
    0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0,
)  # fmt: skip

# Time to first token: 5 ms .. 60 s; inter-token latency: 0.5 ms .. 2 s (per-user decode speed).
TTFT_BUCKETS_S = (
    0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5,
    10.0, 15.0, 20.0, 30.0, 60.0,
)  # fmt: skip
ITL_BUCKETS_S = (
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15,
    0.2, 0.3, 0.5, 1.0, 2.0,
)  # fmt: skip


def metrics_port_for(base_port: int, worker_index: int | None) -> int:
    """The port a process serves on: ``base`` for a standalone or master process, ``base + 1 + i`` for worker i."""
    return base_port if worker_index is None else base_port + 1 + worker_index


class ClientMetrics:
    """The metrics of docs/architecture.md in a registry of their own (one per process)."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self._series: dict[tuple[str, str, bool], tuple] = {}
        self._in_flight: dict[str, object] = {}
        r = self.registry
        self.request_duration = Histogram(
            "loadtest_request_duration_seconds",
            "Client-side request latency (open loop: from the intended send time).",
            ["model", "protocol", "outcome"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.requests = Counter(
            "loadtest_requests", "Requests completed, by outcome.", ["model", "protocol", "outcome"], registry=r
        )
        self.tokens = Counter(
            "loadtest_tokens", "Input tokens (attention-mask sum) of successful requests.", ["model"], registry=r
        )
        self.in_flight = Gauge(
            "loadtest_in_flight_requests", "Requests sent and not yet answered.", ["model"], registry=r
        )
        self.offered_rate = Gauge(
            "loadtest_offered_rate_rps",
            "Open loop: the arrival rate this process is asked to offer (sum over processes = the target).",
            ["model"],
            registry=r,
        )
        self.late_sends = Counter(
            "loadtest_late_sends", "Open-loop sends that left later than the tolerance after their intended time.",
            ["model"], registry=r,
        )  # fmt: skip
        self.dropped_sends = Counter(
            "loadtest_dropped_sends", "Open-loop sends that never left before their stage ended.", ["model"], registry=r
        )
        self.ttft = Histogram(
            "loadtest_time_to_first_token_seconds",
            "Generative: time to the first chunk carrying output text (open loop: from the intended send time).",
            ["model", "protocol"],
            buckets=TTFT_BUCKETS_S,
            registry=r,
        )
        self.itl = Histogram(
            "loadtest_inter_token_latency_seconds",
            "Generative: (E2E - TTFT) / (output tokens - 1) of each successful request with two or more tokens.",
            ["model", "protocol"],
            buckets=ITL_BUCKETS_S,
            registry=r,
        )
        self.output_tokens = Counter(
            "loadtest_output_tokens", "Generative: output tokens of successful requests.", ["model"], registry=r
        )

        self.backoff_seconds = Counter(
            "loadtest_backoff_seconds", "Seconds closed-loop users waited after connection errors (backoff).",
            registry=r,
        )

    def _children(self, model: str, protocol: str, success: bool) -> tuple:
        """The labelled series one request updates, looked up once per (model, protocol, outcome).

        ``labels()`` takes a lock and builds a key on every call; on the per-request path that was a
        measurable share of the client's CPU, so the children are kept (prometheus-client's own advice).
        """
        key = (model, protocol, success)
        found = self._series.get(key)
        if found is None:
            outcome = "success" if success else "failure"
            found = (self.request_duration.labels(model, protocol, outcome), self.requests.labels(model, protocol, outcome),
                     self.tokens.labels(model))
            self._series[key] = found
        return found

    def observe(self, model: str, protocol: str, success: bool, latency_s: float, tokens: int) -> None:
        """Account one completed request (called once per row written)."""
        duration, requests, tokens_total = self._children(model, protocol, success)
        duration.observe(latency_s)
        requests.inc()
        if success:
            tokens_total.inc(tokens)

    def in_flight_for(self, model: str):
        """The in-flight gauge of one model (kept, like ``_children``)."""
        found = self._in_flight.get(model)
        if found is None:
            found = self._in_flight[model] = self.in_flight.labels(model)
        return found

    def observe_generation(self, model: str, protocol: str, ttft_s: float | None, itl_s: float | None,
                           output_tokens: int | None) -> None:  # fmt: skip
        """Account the token figures of one successful generative request."""
        if ttft_s is not None:
            self.ttft.labels(model, protocol).observe(ttft_s)
        if itl_s is not None:
            self.itl.labels(model, protocol).observe(itl_s)
        if output_tokens:
            self.output_tokens.labels(model).inc(output_tokens)

    def wsgi_app(self):
        """A WSGI app serving this registry in the Prometheus text format (for ``/metrics``)."""
        return make_wsgi_app(self.registry)
