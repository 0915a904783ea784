"""Spike: a baseline, a sudden jump to -u users, then recovery; shows queueing and how fast it drains.

    locust -f scenarios/spike.py --headless -u 32 -t 1m --host http://127.0.0.1:8000
"""

from loadtest.load import SpikeShape, TritonUser


class SpikeUser(TritonUser):
    """Closed-loop user the spike shape adds and removes."""


class SpikeLoad(SpikeShape):
    """Default plan: baseline (-u/4) 40 %, spike (-u) 20 %, recovery 40 % of -t (or --stages)."""
