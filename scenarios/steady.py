"""Steady closed loop: -u users, each sending one request after another to the models in turn.

    locust -f scenarios/steady.py --headless -u 8 -t 2m --host http://127.0.0.1:8000
"""

from loadtest.load import TritonUser


class SteadyUser(TritonUser):
    """Closed loop, no think time: concurrency = users; latency = end - start."""
