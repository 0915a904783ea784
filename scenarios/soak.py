"""Soak: constant load for a long time, labelled in windows so drift (leaks, throttling) shows.

    locust -f scenarios/soak.py --headless -u 8 -t 30m --host http://127.0.0.1:8000
"""

from loadtest.load import SoakShape, TritonUser


class SoakUser(TritonUser):
    """Closed-loop user held constant by the soak shape."""


class SoakLoad(SoakShape):
    """Default plan: -u users for -t (30 min without it) in 6 labelled windows (or --stages)."""
