"""Triton's (and the GPU exporter's) /metrics text saved into the run directory at stage boundaries.

Why snapshots and not only Prometheus: a run directory must explain its own numbers without a
Prometheus next to it; counters read at each stage boundary give the server-side split (queue,
compute) and energy per stage. Both texts go in one file: their metric families do not overlap
(``nv_*`` vs the exporter's), so the file stays valid Prometheus text. A failed fetch is never fatal:
the analyzer then lacks the server-side split and says so. Never imports Locust or gevent.
"""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

from loadtest.rundir import RunDir, write_snapshot

SNAPSHOT_TIMEOUT_S = 5.0


def fetch_text(url: str, warn: Callable[[str, str], None] | None = None) -> str | None:
    """The body of ``url``, or None (with one warning per URL through ``warn(key, message)``)."""
    try:
        with urllib.request.urlopen(url, timeout=SNAPSHOT_TIMEOUT_S) as response:
            return response.read().decode("utf-8", errors="replace")
    except Exception as exc:  # noqa: BLE001  never fatal (see the module docstring)
        if warn is not None:
            warn(f"fetch:{url}", f"loadtest: cannot fetch metrics from {url} ({exc}); snapshots skipped")
        return None


def snapshot_metrics(run: RunDir | None, urls: Sequence[str | None], label: str,
                     warn: Callable[[str, str], None] | None = None) -> Path | None:  # fmt: skip
    """Save the texts of ``urls`` as ``metrics/<unix_ms>-<label>.prom``; None when nothing was fetched."""
    urls = [u for u in urls if u]
    if run is None or not urls:
        return None
    when = time.time()  # the boundary's time, not the time the slowest fetch returned
    texts = [text for text in (fetch_text(u, warn) for u in urls) if text is not None]
    if not texts:
        return None
    try:
        return write_snapshot(run.path, label, "\n".join(t.rstrip("\n") for t in texts) + "\n", when)
    except OSError as exc:  # a full disk: the analyzer then lacks this snapshot, and the log says why
        if warn is not None:
            warn(f"snapshot-write:{exc.errno}", f"loadtest: cannot write a metrics snapshot ({exc.strerror or exc})")
        return None
