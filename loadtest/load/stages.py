"""Stage plans and the process-wide "current stage": which label every request row carries.

Why a board: the shape that decides stages runs in one process (the master, or the only process),
while rows are written by every worker; the board is the one place each process reads the label
(and, for open loop, the target arrival rate) from. Shapes publish to it, the master forwards what it
publishes to workers, and lifecycle listeners snapshot Triton's metrics when it changes. Plans are
plain text so they fit an option or an environment variable: ``30s:4,30s:8,1m:16:peak``.
Never imports Locust or gevent.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from loadtest.bounds import MAX_ARRIVAL_RATE, MAX_RUN_TIME_S, MAX_STAGES
from loadtest.errors import LoadtestError

MAX_STAGE_VALUE = MAX_ARRIVAL_RATE  # users (bounded lower by Locust itself) or requests/s per model

STEADY = "steady"
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|h|m|s)?", re.IGNORECASE)
_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, None: 1.0}


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``1m30s``, ``2h``, ``500ms`` -> seconds."""
    text = str(text).strip()
    pos, total = 0, 0.0
    for match in _DURATION_RE.finditer(text):
        if match.start() != pos or not match.group(0):
            break
        total += float(match.group(1)) * _UNITS[(match.group(2) or "").lower() or None]
        pos = match.end()
    if pos != len(text) or not text:
        raise LoadtestError(f"'{text}' is not a duration (examples: 30s, 2m, 1h30m, 90)")
    return total


@dataclass(frozen=True)
class Stage:
    """One stage of a plan: hold ``value`` (users, or requests/s per model) for ``duration_s``."""

    duration_s: float
    value: float
    label: str


def parse_stage_plan(text: str, default_label: Callable[[int, float], str]) -> list[Stage]:
    """``DURATION:VALUE[:LABEL],...``; labels default to ``default_label(index, value)``."""
    stages = []
    for i, item in enumerate(p.strip() for p in str(text).split(",") if p.strip()):
        parts = item.split(":")
        if len(parts) not in (2, 3):
            raise LoadtestError(f"stage '{item}': use DURATION:VALUE or DURATION:VALUE:LABEL (e.g. 30s:8:peak)")
        duration = parse_duration(parts[0])
        try:
            value = float(parts[1])
        except ValueError:
            raise LoadtestError(f"stage '{item}': '{parts[1]}' is not a number") from None
        if not (0 < duration <= MAX_RUN_TIME_S) or not (0 <= value <= MAX_STAGE_VALUE):
            raise LoadtestError(
                f"stage '{item}': the duration must be > 0 and <= 7 days, the value finite, >= 0 and "
                f"<= {MAX_STAGE_VALUE:g} (users or requests/s per model)"
            )
        label = parts[2].strip() if len(parts) == 3 and parts[2].strip() else default_label(i, value)
        stages.append(Stage(duration, value, label))
    if not stages:
        raise LoadtestError("the stage plan is empty: give DURATION:VALUE[:LABEL],... e.g. 30s:4,30s:8")
    if len(stages) > MAX_STAGES:
        raise LoadtestError(f"the stage plan has {len(stages)} stages; at most {MAX_STAGES}")
    labels = [s.label for s in stages]
    if len(set(labels)) != len(labels):
        raise LoadtestError(f"stage labels must be unique, got {', '.join(labels)}")
    return stages


def stage_at(stages: list[Stage], elapsed_s: float) -> tuple[int, Stage] | None:
    """The stage running ``elapsed_s`` after the start, or None once the plan is over."""
    end = 0.0
    for i, stage in enumerate(stages):
        end += stage.duration_s
        if elapsed_s < end:
            return i, stage
    return None


@dataclass
class StageRecord:
    label: str
    start: float  # epoch seconds
    end: float | None = None
    value: float | None = None  # users (closed-loop shapes) or requests/s (rate plan)
    kind: str = STEADY  # shape kind that published it
    rate: float | None = None  # open loop: requests/s per model for the whole test


@dataclass
class StageBoard:
    """The current stage label, the open-loop rate override and the number of open-loop drivers.

    ``version`` changes on every publish so that open-loop drivers notice a new stage even when a
    label repeats. ``listeners`` are called with the new StageRecord (snapshots, forwarding).
    """

    label: str = STEADY
    rate: float | None = None  # open loop: requests/s per model for the whole test, None = --arrival-rate
    version: int = 0
    drivers: int | None = None  # open-loop drivers in the whole test (None until spawning completes)
    history: list[StageRecord] = field(default_factory=list)
    listeners: list[Callable[[StageRecord], None]] = field(default_factory=list)

    def publish(self, label: str, *, rate: float | None = None, value: float | None = None, kind: str = STEADY,
                when: float | None = None, notify: bool = True) -> StageRecord:  # fmt: skip
        now = time.time() if when is None else when
        if self.history and self.history[-1].end is None:
            self.history[-1].end = now
        record = StageRecord(label, now, None, value, kind, rate)
        self.history.append(record)
        self.label, self.rate = label, rate
        self.version += 1
        if notify:
            for listener in list(self.listeners):
                listener(record)
        return record

    def close(self, when: float | None = None) -> None:
        if self.history and self.history[-1].end is None:
            self.history[-1].end = time.time() if when is None else when

    def reset(self) -> None:
        """Back to the default stage for a new test (listeners stay)."""
        self.label, self.rate, self.drivers = STEADY, None, None
        self.version += 1
        self.history = []

    def stages_for_manifest(self) -> list[dict]:
        """Stages as the analyzer reads them: name, start/end (epoch s), users or offered_rate, loop."""
        out = []
        for r in self.history:
            item: dict = {"name": r.label, "start": r.start, "end": r.end, "kind": r.kind}
            if r.rate is not None:
                item.update(offered_rate=r.rate, loop="open")
            elif r.value is not None:
                item.update(users=int(round(r.value)), loop="closed")
            out.append(item)
        return out
