"""A/B: teacher and student get the same requests at the same moments, under the same load, in one run.

    locust -f scenarios/ab.py --headless -u 8 -t 2m --host http://127.0.0.1:8000
"""

from loadtest.load import ABTritonUser


class ABUser(ABTritonUser):
    """Closed loop: each payload goes to every model at once; the user waits for all answers."""
