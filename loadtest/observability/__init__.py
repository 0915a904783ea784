"""Observability: GPU power/energy through NVML, the GPU exporter, Prometheus and Grafana configuration.

Modules: ``gpu`` (GPU readings), ``energy`` (energy per window), ``exporter`` (Prometheus endpoint),
``prometheus`` (scrape jobs, rendered config, queries), ``dashboards`` (Grafana dashboard), ``commands`` (CLI).
Never imports Locust or gevent.
"""
