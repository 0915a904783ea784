"""Open loop: a fixed (or Poisson) arrival rate that keeps its schedule when the server slows.

Latency runs from each request's intended send time; late and dropped sends are counted, so a stall
shows in the percentiles (no coordinated omission). -u is the number of drivers (1 is plenty per
process); --arrival-rate is requests/s per model for the whole test.

    locust -f scenarios/open_loop.py --headless -t 1m --arrival-rate 50 --host http://127.0.0.1:8000
    locust -f scenarios/open_loop.py --headless --stages 30s:20,30s:40,30s:80 --arrival poisson --host ...
"""

from loadtest.load import OpenLoopUser, RatePlanShape


class OpenLoopDriver(OpenLoopUser):
    """Sends to every model on one schedule: the same requests at the same intended times."""


class ArrivalRatePlan(RatePlanShape):
    """--arrival-rate until -t (or --stages DURATION:RATE[:LABEL],... for a rate sweep in one run)."""
