"""Steps and the QPS a model sustains within a latency budget.

A *step* is one stage of one model (a shape stage, or a sweep step). It *counts* only when it ran long
enough, with enough requests after warm-up, few errors, achieved >= 95 % of the offered rate (open loop),
and a stable percentile and throughput across consecutive windows (perf_analyzer's stability windows).
QPS at budget B is the highest achieved QPS among counted steps whose percentile is <= B; the interval up
to the first failing offered load above it says how precisely that is known (docs/method.md). The sweep uses
exactly these rules to decide its steps, so `loadtest analyze` on a sweep run reproduces its answer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field

from loadtest.analysis import stats
from loadtest.analysis.records import RunData, StageInfo, completed_within, stage_frames, window_of


class StepRules(BaseModel):
    """When a step's measurement counts (shared by `loadtest sweep` and `loadtest analyze`)."""

    min_duration_s: float = Field(5.0, gt=0, description="measured time after warm-up")
    min_requests: int = Field(100, ge=1, description="successful requests after warm-up")
    max_error_rate: float = Field(0.01, ge=0, le=1)
    min_achieved_ratio: float = Field(0.95, gt=0, le=1, description="achieved / offered, open loop")
    stability_windows: int = Field(3, ge=1)
    stability_threshold: float = Field(
        0.25, gt=0, description="relative rise across windows (latency) or spread (throughput) that, beyond noise, is unstable"
    )

    def effective_min_requests(self, percentile: float) -> int:
        """At least enough requests for the percentile's CI to exist."""
        return max(self.min_requests, stats.min_samples_for_ci(percentile))


# Why a step does not count (StepReason.code); each rule of StepRules has one.
TOO_SHORT = "too_short"  # ran less than the minimum duration
TOO_FEW = "too_few"  # fewer successful requests than the percentile needs
ERRORS = "errors"  # error rate above the limit
BELOW_OFFERED = "below_offered"  # open loop: answered less than the share of the offered load
UNSTABLE = "unstable"  # throughput not stable across windows
NO_CI = "no_ci"  # the percentile's CI cannot be formed
FAILED = "failed"  # the step's run itself failed (every request failed, nothing recorded)
REASON_WORDS = {UNSTABLE: "unstable", TOO_SHORT: "short", TOO_FEW: "too few requests", ERRORS: "errors",
                BELOW_OFFERED: "below offered", NO_CI: "no CI", FAILED: "failed"}  # fmt: skip


@dataclass(frozen=True)
class StepReason:
    """One reason a step does not count: a code the search decides on, and the words a reader sees."""

    code: str  # one of the constants above
    text: str

    def __str__(self) -> str:
        return self.text


@dataclass
class StepResult:
    """One model's figures in one step, and whether the step counts."""

    model: str
    stage: str
    loop: str
    offered_rate: float | None
    users: int | None
    duration_s: float
    requests: int
    successes: int
    error_rate: float
    achieved_qps: float
    tokens_per_s: float
    percentile: float
    latency_ms: float  # the chosen percentile
    ci_low_ms: float
    ci_high_ms: float
    window_latency_ms: list[float] = field(default_factory=list)
    window_qps: list[float] = field(default_factory=list)
    stability_percentile: float | None = None  # the percentile the windows were compared on
    drifting: bool = False  # the windows' percentile rises window after window (see _drifting)
    counted: bool = False
    reasons: list[StepReason] = field(default_factory=list)  # why it does not count
    # share of the machine's CPU that other processes took while the step ran (loadtest.load.host_cpu);
    # None when not measured (no /proc, or a step judged from records alone)
    others_share: float | None = None
    host_note: str = ""
    # the machine's speed just before the step, relative to the sweep's first step (loadtest.load.host_cpu.speed_probe)
    host_speed: float | None = None

    @property
    def load(self) -> float:
        """The load this step was driven at: offered rate (open loop) or users (closed loop)."""
        if self.offered_rate is not None:
            return self.offered_rate
        if self.users is not None:
            return float(self.users)
        return self.achieved_qps

    def drifts_past(self, budget_ms: float) -> bool:
        """Latency climbing window after window and already beyond the budget in the last window.

        A rising percentile only matters against a budget: a step whose latency creeps up but stays within
        the budget to its end held that budget for the whole step (judging drift alone failed sound steps
        at random on a busy 2-core machine, and made the sweep's answer depend on luck). One that ends
        beyond the budget would not hold it for longer, even if its whole-step percentile still does.
        """
        return self.drifting and bool(self.window_latency_ms) and self.window_latency_ms[-1] > budget_ms

    def within(self, budget_ms: float) -> bool:
        return self.counted and self.latency_ms <= budget_ms and not self.drifts_past(budget_ms)

    def why_not_within(self, budget_ms: float) -> str:
        """The reasons this step does not count, or does not hold the budget; empty when it does."""
        why = [reason.text for reason in self.reasons]
        if self.drifts_past(budget_ms):
            rise = self.window_latency_ms[-1] / self.window_latency_ms[0] - 1
            why.append(
                f"P{self.stability_percentile:g} drifting upward across {len(self.window_latency_ms)} windows "
                f"(+{rise:.0%}) to {self.window_latency_ms[-1]:.3g} ms in the last, beyond the budget"
            )
        return "; ".join(why)


def _drifting(ests: list[stats.PercentileEstimate], threshold: float) -> bool:
    """The percentile rises window after window, by more than ``threshold`` and beyond sampling noise.

    This is what an unsustainable load looks like (the backlog, hence latency, keeps growing). Plain
    window-to-window spread is not used: queueing makes short windows of a stationary load differ by far
    more than independent-sample CIs allow, so it would reject sustainable steps at random.
    Windows without a CI cannot show a real change, so they never make a step unstable on their own.
    """
    if len(ests) < 2 or not all(e.ci_ok for e in ests):
        return False
    values = [e.value for e in ests]
    rising = all(b > a for a, b in zip(values, values[1:]))
    return rising and values[-1] > values[0] * (1 + threshold) and ests[-1].ci_low > ests[0].ci_high


def _spread(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    if len(finite) < len(values) or not finite or min(finite) <= 0:
        return math.inf
    return max(finite) / min(finite) - 1.0


def step_result(
    frame: pd.DataFrame, model: str, stage: str, info: StageInfo | None, rules: StepRules, percentile: float,
    dropped: int = 0,
) -> StepResult:
    """Figures and the counting decision for one model's records in one stage (warm-up already dropped).

    Open loop, "achieved >= 95 % of offered" compares answers within the window with the sends the schedule
    made in it (records plus dropped sends): with Poisson arrivals, comparing with rate x duration would
    fail sound steps on arrival noise alone.
    """
    scheduled = len(frame) + dropped
    start, end = window_of(frame, info)
    duration = max(end - start, 1e-9)
    success = frame["success"].to_numpy()
    lat = frame["latency_s"].to_numpy()[success]
    done_mask = completed_within(frame, end).to_numpy()
    done_end = frame["end"].to_numpy()[done_mask]
    done_tokens = float(frame["tokens"].to_numpy()[done_mask].sum())
    est = stats.estimate(lat, percentile)
    loop = str(frame["loop"].iloc[0]) if len(frame) else (info.loop if info and info.loop else "open")
    offered = info.offered_rate if info else None
    result = StepResult(
        model=model,
        stage=stage,
        loop=loop,
        offered_rate=offered if loop == "open" else None,
        users=info.users if info else None,
        duration_s=duration,
        requests=len(frame),
        successes=int(lat.size),
        error_rate=(1 - lat.size / len(frame)) if len(frame) else math.nan,
        achieved_qps=done_end.size / duration,
        tokens_per_s=done_tokens / duration,
        percentile=percentile,
        latency_ms=est.value * 1000,
        ci_low_ms=est.ci_low * 1000,
        ci_high_ms=est.ci_high * 1000,
    )
    # stability: equal consecutive windows of the measured period, by intended send time
    k = rules.stability_windows
    unstable_latency = unstable_qps = False
    if k > 1 and lat.size:
        edges = np.linspace(start, end, k + 1)
        sent = frame["intended_start"].to_numpy()[success]
        which = np.clip(np.searchsorted(edges, sent, side="right") - 1, 0, k - 1)
        parts = [lat[which == i] for i in range(k)]
        # judge the chosen percentile where every window can bound it, else the median
        p_stab = percentile if all(x.size >= stats.min_samples_for_ci(percentile) for x in parts) else 50.0
        ests = [stats.estimate(x, p_stab) for x in parts]
        result.window_latency_ms = [e.value * 1000 for e in ests]
        counts = [int(((done_end > edges[i]) & (done_end <= edges[i + 1])).sum()) for i in range(k)]
        result.window_qps = [c / (edges[i + 1] - edges[i]) for i, c in enumerate(counts)]
        unstable_latency = _drifting(ests, rules.stability_threshold)
        unstable_qps = _spread(result.window_qps) > rules.stability_threshold and (
            max(counts) - min(counts) > 3 * math.sqrt(max(counts) + min(counts))
        )
        result.stability_percentile = p_stab
    reasons = result.reasons
    if duration < rules.min_duration_s:
        reasons.append(StepReason(TOO_SHORT, f"ran {duration:.1f} s < {rules.min_duration_s:g} s"))
    need = rules.effective_min_requests(percentile)
    if result.successes < need:
        reasons.append(StepReason(TOO_FEW, f"{result.successes} requests < {need}"))
    if result.error_rate > rules.max_error_rate:
        reasons.append(StepReason(ERRORS, f"error rate {result.error_rate:.1%} > {rules.max_error_rate:.1%}"))
    if offered and loop == "open" and done_end.size < rules.min_achieved_ratio * scheduled:
        reasons.append(StepReason(
            BELOW_OFFERED,
            f"answered {done_end.size} of {scheduled} scheduled sends in the window (< {rules.min_achieved_ratio:.0%}; "
            f"{result.achieved_qps:.1f}/s at {offered:g}/s offered)",
        ))  # fmt: skip
    result.drifting = unstable_latency  # judged against the budget: StepResult.drifts_past
    if unstable_qps:
        reasons.append(StepReason(UNSTABLE, f"throughput unstable across {k} windows (spread {_spread(result.window_qps):.0%})"))
    if not math.isfinite(result.ci_low_ms) or not math.isfinite(result.ci_high_ms):
        if not any(r.code == TOO_FEW for r in reasons):
            reasons.append(StepReason(NO_CI, f"P{percentile:g} CI cannot be formed"))
    result.counted = not reasons
    return result


def run_steps(run: RunData, rules: StepRules, percentile: float) -> list[StepResult]:
    """Every (model, stage) pair of a run as a step, in the order the stages ran."""
    frames = stage_frames(run)
    first: dict[str, float] = {}
    for (_, stage), frame in frames.items():
        first[stage] = min(first.get(stage, math.inf), float(frame["intended_start"].min()))
    out: list[StepResult] = []
    for stage in sorted(first, key=first.get):
        info = run.stages.get(stage)
        for model in run.models:
            frame = frames.get((model, stage))
            if frame is None:
                continue
            out.append(step_result(frame, model, stage, info, rules, percentile, run.dropped.get((model, stage), 0)))
    return out


@dataclass(frozen=True)
class Capacity:
    """QPS and tokens/s at a latency budget for one model, with how precisely the budget point is known."""

    model: str
    budget_ms: float
    percentile: float
    qps_at_budget: float | None  # achieved QPS of the best counted passing step
    tokens_per_s_at_budget: float | None
    latency_at_budget_ms: float | None
    load_low: float | None  # highest passing load (offered rate or users)
    load_high: float | None  # lowest failing load above it; None when never reached
    load_unit: str  # "req/s offered" or "users"
    steps_counted: int
    steps_total: int
    resolution_pct: float | None  # half-width of [low, high] relative to its midpoint
    note: str

    @property
    def known(self) -> bool:
        return self.qps_at_budget is not None


def capacity_at_budget(steps: list[StepResult], model: str, budget_ms: float, percentile: float) -> Capacity:
    """Highest achieved QPS among counted steps within budget, and the interval to the first failure above."""
    mine = [s for s in steps if s.model == model]
    counted = [s for s in mine if s.counted]
    passing = [s for s in counted if s.within(budget_ms)]
    unit = "users" if any(s.loop == "closed" for s in mine) else "req/s offered"
    if not passing:
        if not mine:
            note = "no steps for this model"
        elif not counted:
            note = "no step counted: " + _summarise_reasons(mine)
        else:
            low = min(counted, key=lambda s: s.load)
            note = f"P{percentile:g} exceeds {budget_ms:g} ms even at the lowest counted load ({low.load:g} {unit})"
        return Capacity(model, budget_ms, percentile, None, None, None, None, None, unit, len(counted), len(mine), None, note)
    best = max(passing, key=lambda s: s.achieved_qps)
    # a step "fails" at a load when it did not count for reasons other than too short/too few, or exceeded
    failing = [
        s.load for s in mine
        if s.load > best.load and (not s.counted and _failed_by_load(s) or s.counted and not s.within(budget_ms))
    ]
    high = min(failing) if failing else None
    resolution = (high - best.load) / (high + best.load) * 100 if high else None
    if high is None:
        note = "the highest load tested stayed within budget: capacity is at least this"
    else:
        note = f"between {best.load:g} and {high:g} {unit} (±{resolution:.1f} %)"
    return Capacity(
        model, budget_ms, percentile, best.achieved_qps, best.tokens_per_s, best.latency_ms,
        best.load, high, unit, len(counted), len(mine), resolution, note,
    )


def _summarise_reasons(steps: list[StepResult]) -> str:
    """'3 unstable, 1 below 95 % of offered' rather than every reason of every step."""
    kinds = dict.fromkeys(REASON_WORDS.values(), 0)
    for s in steps:
        for r in s.reasons:
            kinds[REASON_WORDS[r.code]] += 1
    return ", ".join(f"{n} {k}" for k, n in kinds.items() if n)


def _failed_by_load(step: StepResult) -> bool:
    """Not counted because the server could not keep up (errors, shortfall, instability), not a short step."""
    return any(r.code not in (TOO_SHORT, TOO_FEW) for r in step.reasons)
