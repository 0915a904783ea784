"""Load shapes driven by a stage plan: step, spike, soak (users) and a rate plan (open loop).

Each shape reads ``--stages DURATION:VALUE[:LABEL],...`` or, without it, derives a default plan from
``-u`` (peak users) and ``-t`` (total time): that is why ``use_common_options`` is on. Every stage
change is published (``LoadProcess.publish_stage``, the process state taken from the runner's
environment): rows carry the stage label, the master forwards it to workers, and Triton's metrics are
snapshotted at the boundary.

The classes here are abstract; a scenario file subclasses the one it wants (``class StepLoad(StepShape):
pass``). With several shapes loaded (``locust -f scenarios/``) none runs unless ``--shape NAME`` picks
one (by class name or kind) or the web UI's ``--class-picker`` is used.
"""

from __future__ import annotations

import math

from locust import LoadTestShape

from loadtest.load import lifecycle  # noqa: F401  (registers the test's listeners: run dir, records, metrics)
from loadtest.load.options import load_options
from loadtest.load.process import LoadProcess, process_of
from loadtest.load.stages import Stage, parse_stage_plan, stage_at


class StagePlanShape(LoadTestShape):
    """Holds each stage's value for its duration; stops the test when the plan ends."""

    abstract = True
    use_common_options = True
    kind = "plan"
    default_run_time_s: float | None = 120.0

    def __init__(self) -> None:
        super().__init__()
        self._plan: list[Stage] | None = None
        self._published: int | None = None

    @property
    def process(self) -> LoadProcess:
        """The process state lifecycle attached to the runner's environment."""
        process = process_of(self.runner.environment)
        if process is None:
            raise RuntimeError("loadtest's lifecycle listeners did not initialise this process")
        return process

    def reset_time(self) -> None:
        super().reset_time()
        self._plan = None
        self._published = None

    # ---- plan ---------------------------------------------------------------------------------
    def label(self, index: int, value: float) -> str:
        return f"{self.kind}-{index + 1}-u{value:g}"

    def default_plan(self, peak_users: int, run_time_s: float | None) -> list[Stage]:
        raise NotImplementedError

    def plan(self) -> list[Stage]:
        if self._plan is None:
            environment = self.runner.environment
            options = load_options(environment)
            if options.stages:
                self._plan = parse_stage_plan(options.stages, self.label)
            else:
                parsed = environment.parsed_options
                users = int(getattr(parsed, "num_users", None) or 1)
                run_time = getattr(parsed, "run_time", None) or self.default_run_time_s
                self._plan = self.default_plan(max(users, 1), float(run_time) if run_time else None)
        return self._plan

    # ---- ticking ------------------------------------------------------------------------------
    def users_for(self, stage: Stage) -> int:
        return int(round(stage.value))

    def rate_for(self, stage: Stage) -> float | None:
        return None

    def spawn_rate(self, users: int) -> float:
        """-r when given, else fast enough to reach a stage's users within about a second."""
        return float(self.process.user_spawn_rate or max(users, 1))

    def tick(self):
        found = stage_at(self.plan(), self.get_run_time())
        if found is None:
            return None
        index, stage = found
        if self._published != index:
            self._published = index
            self.process.publish_stage(
                self.runner, stage.label, value=stage.value, rate=self.rate_for(stage), kind=self.kind
            )
        users = self.users_for(stage)
        return users, self.spawn_rate(users)


class StepShape(StagePlanShape):
    """Raise concurrency in equal steps (default: 4 steps up to -u over -t, 2 min without -t)."""

    abstract = True
    kind = "step"

    def default_plan(self, peak_users, run_time_s):
        levels = sorted({max(1, math.ceil(peak_users * k / 4)) for k in range(1, 5)})
        each = (run_time_s or 120.0) / len(levels)
        return [Stage(each, float(u), self.label(i, u)) for i, u in enumerate(levels)]


class SpikeShape(StagePlanShape):
    """Baseline, a sudden spike to -u users, then recovery at baseline (40 % / 20 % / 40 % of -t)."""

    abstract = True
    kind = "spike"
    default_run_time_s = 60.0

    def default_plan(self, peak_users, run_time_s):
        base = max(1, peak_users // 4)
        total = run_time_s or 60.0
        return [
            Stage(0.4 * total, float(base), "baseline"),
            Stage(0.2 * total, float(peak_users), "spike"),
            Stage(0.4 * total, float(base), "recovery"),
        ]

    def spawn_rate(self, users: int) -> float:
        return float(self.process.user_spawn_rate or max(users * 10, 1))  # a spike arrives at once


class SoakShape(StagePlanShape):
    """-u users for a long time (default 30 min), labelled in windows so drift shows window to window."""

    abstract = True
    kind = "soak"
    default_run_time_s = 1800.0
    windows = 6

    def label(self, index, value):
        return f"soak-{index + 1:02d}"

    def default_plan(self, peak_users, run_time_s):
        total = run_time_s or self.default_run_time_s
        return [Stage(total / self.windows, float(peak_users), self.label(i, peak_users)) for i in range(self.windows)]


class RatePlanShape(StagePlanShape):
    """Open loop: -u drivers (default 1) throughout; each stage's value is the arrival rate per model."""

    abstract = True
    kind = "rate"
    default_run_time_s = None  # without -t or --stages: --arrival-rate until stopped

    def label(self, index, value):
        return f"rate-{index + 1}-{value:g}rps"

    def default_plan(self, peak_users, run_time_s):
        rate = load_options(self.runner.environment).arrival_rate
        return [Stage(run_time_s or math.inf, rate, self.label(0, rate))]

    def users_for(self, stage):
        return max(int(getattr(self.runner.environment.parsed_options, "num_users", None) or 1), 1)

    def rate_for(self, stage):
        return stage.value
