"""Step load: concurrency raised in stages, each stage labelled in the records.

    locust -f scenarios/step.py --headless -u 16 -t 4m --host http://127.0.0.1:8000
    locust -f scenarios/step.py --headless --stages 30s:2,30s:4,30s:8,30s:16 --host grpc://127.0.0.1:8001
"""

from loadtest.load import StepShape, TritonUser


class StepUser(TritonUser):
    """Closed-loop user the step shape adds and removes."""


class StepLoad(StepShape):
    """Default plan: 4 equal steps up to -u over -t (or --stages DURATION:USERS[:LABEL],...)."""
