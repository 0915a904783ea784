"""``loadtest gate``: a release decision from a run's figures and a YAML policy, as an exit status.

A policy holds threshold rules on any quality figure (``quality/metrics.csv``, overall or per slice) or
serving figure (``tables/comparison.csv``: P95, QPS at budget, cost …), and regression rules against a
baseline run. Each rule may select several slices; every selected figure is one check. A figure that is
missing is "not measured" and fails, unless the rule is ``optional``. Numerical health is built in: any
NaN/Inf output of either model fails the gate whatever the policy says. See ``examples/gate.yaml``.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from loadtest.analysis.metric_registry import METRICS
from loadtest.errors import LoadtestError
from loadtest.quality.fairness import FAIRNESS_METRICS
from loadtest.quality.genscoring import GENERATIVE_METRICS, SUBSET_METRICS
from loadtest.quality.scoring import QUALITY_METRICS
from loadtest.quality.slices import OVERALL

# comparison.csv metric -> higher is better? (None: neither; cannot be a regression rule)
SERVING_METRICS: dict[str, bool | None] = {m.name: m.higher_is_better for m in METRICS.values()}
KNOWN_METRICS = {
    **{k: v[0] for k, v in QUALITY_METRICS.items()},
    **{k: v[0] for k, v in GENERATIVE_METRICS.items()},
    **{k: v[0] for k, v in FAIRNESS_METRICS.items()},
    **SERVING_METRICS,
}


def _check_metric(name: str) -> str:
    if name not in KNOWN_METRICS:
        close = difflib.get_close_matches(name, list(KNOWN_METRICS), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else f" (known: {', '.join(sorted(KNOWN_METRICS))})"
        raise ValueError(f"unknown metric '{name}'{hint}")
    return name


def _as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


class _Rule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    metric: str = Field(description="a quality metric (metrics.csv) or a serving metric (comparison.csv)")
    model: Literal["student", "teacher"] = "student"
    slice: str | list[str] = Field(
        OVERALL,
        description="'overall', a slice name (every value), 'name=value', '*' (every slice), or a list of these",
    )
    optional: bool = Field(False, description="a missing figure passes as 'not measured' instead of failing")
    note: str = ""

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, value: str) -> str:
        return _check_metric(value)

    @model_validator(mode="after")
    def _serving_overall(self):
        if self.metric in SERVING_METRICS and _as_list(self.slice) != [OVERALL]:
            raise ValueError(f"'{self.metric}' is a serving figure: it has no slices (leave 'slice' out)")
        return self


class ThresholdRule(_Rule):
    """``min``/``max`` on a figure; ``ratio: true`` applies them to student / teacher instead;
    ``vs_overall: true`` to each slice's figure minus the overall one (a slice that loses more than the
    whole set: the aggregate hides it)."""

    min: float | None = Field(None, allow_inf_nan=False)
    max: float | None = Field(None, allow_inf_nan=False)
    ratio: bool = Field(False, description="compare student / teacher rather than the model's own value")
    vs_overall: bool = Field(False, description="compare each slice's figure minus the same figure overall")

    @model_validator(mode="after")
    def _bounds(self):
        if self.min is None and self.max is None:
            raise ValueError("a rule needs 'min' or 'max'")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}")
        if self.vs_overall:
            if self.ratio:
                raise ValueError("give 'ratio' or 'vs_overall', not both")
            if self.metric in SERVING_METRICS:
                raise ValueError(f"'{self.metric}' is a serving figure: it has no slices to compare with overall")
            if _as_list(self.slice) == [OVERALL]:
                raise ValueError("'vs_overall' compares slices with overall: give 'slice' (e.g. \"*\")")
        return self


class RegressionRule(_Rule):
    """Fails when the figure is worse than the baseline run's by more than the allowance."""

    max_worsening: float | None = Field(None, ge=0, allow_inf_nan=False, description="allowed worsening, in the metric's own units")
    max_worsening_pct: float | None = Field(None, ge=0, allow_inf_nan=False, description="allowed worsening, % of the baseline value")

    @model_validator(mode="after")
    def _direction(self):
        if KNOWN_METRICS[self.metric] is None:
            raise ValueError(f"'{self.metric}' has no better direction: it cannot be a regression rule")
        if self.max_worsening is not None and self.max_worsening_pct is not None:
            raise ValueError("give max_worsening or max_worsening_pct, not both")
        return self


class GatePolicy(BaseModel):
    """A gate policy file (YAML)."""

    model_config = ConfigDict(extra="forbid")

    description: str = ""
    unstable_slices: Literal["enforce", "warn"] = Field(
        "enforce", description="'warn': a failing check on a slice below the minimum n warns instead of failing"
    )
    rules: list[ThresholdRule] = Field(default_factory=list)
    regression: list[RegressionRule] = Field(default_factory=list)


def load_policy(path: Path | str) -> GatePolicy:
    """Read and validate a policy; a typo is one line naming where it is."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise LoadtestError(f"gate policy {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise LoadtestError(f"gate policy {path} is not UTF-8 text: give the YAML policy itself") from None
    except yaml.YAMLError as exc:
        raise LoadtestError(f"gate policy {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if data is None:
        raise LoadtestError(f"gate policy {path} is empty")
    if not isinstance(data, dict):
        raise LoadtestError(f"gate policy {path}: expected a mapping with 'rules' (and 'regression')")
    try:
        policy = GatePolicy.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "policy"
        message = first["msg"].removeprefix("Value error, ")
        extra = f" ({len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
        raise LoadtestError(f"gate policy {path}: {where}: {message}{extra}") from None
    if not policy.rules and not policy.regression:
        raise LoadtestError(f"gate policy {path} has no rules")
    return policy


# ---- evaluation ------------------------------------------------------------------------------------


@dataclass
class Check:
    """One figure checked against one rule."""

    kind: str  # "threshold", "regression", "built-in"
    metric: str
    model: str
    slice: str  # "overall" or "name=value"
    n: int | None
    unstable: bool
    value: float | None
    limit: str
    status: str  # "pass", "fail", "warn", "not measured", "skipped"
    detail: str = ""


@dataclass
class GateReport:
    run: str
    policy: str
    baseline: str | None
    checks: list[Check]

    @property
    def passed(self) -> bool:
        return not any(c.status == "fail" for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if c.status == "fail"]

    def to_dict(self) -> dict:
        return {"run": self.run, "policy": self.policy, "baseline": self.baseline, "passed": self.passed, "checks": [asdict(c) for c in self.checks]}


@dataclass
class _Figure:
    slice: str
    value: float | None
    n: int | None
    unstable: bool
    key: tuple
    raw: float | None = None  # vs_overall: the slice's own figure (value is raw − overall)
    overall: float | None = None


def _label(slice_name: str, slice_value: str) -> str:
    return OVERALL if slice_name == OVERALL else f"{slice_name}={slice_value}"


def _select(table: pd.DataFrame, selectors: list[str]) -> pd.DataFrame:
    masks = []
    for selector in selectors:
        selector = selector.strip()
        if selector == "*":
            masks.append(pd.Series(True, index=table.index))
        elif "=" in selector:
            name, value = (s.strip() for s in selector.split("=", 1))
            masks.append((table["slice"] == name) & (table["slice_value"].astype(str).str.lower() == value.lower()))
        else:
            masks.append(table["slice"] == selector)
    mask = masks[0]
    for other in masks[1:]:
        mask = mask | other
    return table[mask]


def _finite(value) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _quality_figures(table: pd.DataFrame | None, rule: _Rule, ratio: bool = False) -> list[_Figure] | str:
    if table is None:
        return "no quality results in this run (run `loadtest eval`)"
    rows = _select(table[table["metric"] == rule.metric], _as_list(rule.slice))
    if ratio:
        student = rows[rows["model"] == "student"].set_index(["slice", "slice_value"])
        teacher = rows[rows["model"] == "teacher"].set_index(["slice", "slice_value"])
        if student.empty or teacher.empty:
            return f"'{rule.metric}' has no teacher and student figures to divide"
        figures = []
        for key, srow in student.iterrows():
            trow = teacher.loc[key] if key in teacher.index else None
            s, t = _finite(srow["value"]), _finite(trow["value"]) if trow is not None else None
            value = s / t if s is not None and t not in (None, 0.0) else None
            figures.append(_Figure(_label(*key), value, int(srow["n"]), bool(srow["unstable"]), key))
        return figures
    rows = rows[rows["model"] == rule.model]
    if rows.empty:
        return f"no '{rule.metric}' figure for the {rule.model} on slice {rule.slice!r}"
    return [
        _Figure(_label(r["slice"], r["slice_value"]), _finite(r["value"]), int(r["n"]), bool(r["unstable"]), (r["slice"], r["slice_value"]))
        for _, r in rows.iterrows()
    ]


def _serving_figures(comparison: pd.DataFrame | None, rule: _Rule, ratio: bool = False) -> list[_Figure] | str:
    if comparison is None:
        return "tables/comparison.csv not found: serving figures not measured (run the load test and `loadtest analyze`)"
    rows = comparison[comparison["metric"] == rule.metric]
    if rows.empty:
        return f"'{rule.metric}' is not in tables/comparison.csv"
    row = rows.iloc[0]
    if ratio:
        value = _finite(row.get("student_over_teacher"))
        if value is None:
            s, t = _finite(row.get("student")), _finite(row.get("teacher"))
            value = s / t if s is not None and t not in (None, 0.0) else None
    else:
        value = _finite(row.get(rule.model))
    return [_Figure(OVERALL, value, None, False, (OVERALL, "all"))]


def _figures(rule: _Rule, tables: dict, ratio: bool = False) -> list[_Figure] | str:
    if rule.metric in SERVING_METRICS:
        return _serving_figures(tables.get("comparison"), rule, ratio)
    return _quality_figures(tables.get("metrics"), rule, ratio)


def _fmt(value: float | None) -> str:
    if value is None:
        return "—"
    if value != 0 and (abs(value) >= 1e4 or abs(value) < 1e-3):
        return f"{value:.3g}"
    return f"{value:.4g}"


def _outcome(ok: bool, figure: _Figure, policy: GatePolicy) -> str:
    if ok:
        return "pass"
    return "warn" if figure.unstable and policy.unstable_slices == "warn" else "fail"


def _missing(rule: _Rule, kind: str, model: str, why: str, limit: str) -> Check:
    status = "not measured" if rule.optional else "fail"
    detail = why + (" (optional rule)" if rule.optional else "")
    slice_text = ", ".join(_as_list(rule.slice))
    return Check(kind, rule.metric, model, slice_text, None, False, None, limit, status, detail)


def _signed(value: float) -> str:
    return f"+ {_fmt(value)}" if value >= 0 else f"− {_fmt(-value)}"


def _limit_text(rule: ThresholdRule) -> str:
    if rule.vs_overall:
        parts = ([f"≥ overall {_signed(rule.min)}"] if rule.min is not None else []) + ([f"≤ overall {_signed(rule.max)}"] if rule.max is not None else [])
    else:
        parts = ([f"≥ {_fmt(rule.min)}"] if rule.min is not None else []) + ([f"≤ {_fmt(rule.max)}"] if rule.max is not None else [])
    return " and ".join(parts)


def _relative_to_overall(rule: ThresholdRule, tables: dict, figures: list[_Figure]) -> list[_Figure] | str:
    """Each slice's figure minus the overall figure (the overall row itself is not a slice: dropped)."""
    overall = _quality_figures(tables.get("metrics"), rule.model_copy(update={"slice": OVERALL}))
    if isinstance(overall, str) or overall[0].value is None:
        return f"no overall '{rule.metric}' figure to compare the slices with"
    base = overall[0].value
    return [
        _Figure(f.slice, None if f.value is None else f.value - base, f.n, f.unstable, f.key, f.value, base)
        for f in figures
        if f.slice != OVERALL
    ]


def _threshold_checks(rule: ThresholdRule, tables: dict, policy: GatePolicy) -> list[Check]:
    model = "student/teacher" if rule.ratio else rule.model
    limit = _limit_text(rule)
    figures = _figures(rule, tables, rule.ratio)
    if not isinstance(figures, str) and rule.vs_overall:
        figures = _relative_to_overall(rule, tables, figures)
    if isinstance(figures, str):
        return [_missing(rule, "threshold", model, figures, limit)]
    checks = []
    for figure in figures:
        if figure.value is None and figure.n == 0 and rule.metric in SUBSET_METRICS:
            why = f"no {SUBSET_METRICS[rule.metric]} in this slice"
            checks.append(Check("threshold", rule.metric, model, figure.slice, 0, figure.unstable, None, limit, "skipped", why))
            continue
        if figure.value is None:
            why = f"no value (n={figure.n})" if figure.n is not None else "no value"
            missing = _missing(rule, "threshold", model, why, limit)
            missing.slice, missing.n, missing.unstable = figure.slice, figure.n, figure.unstable
            if missing.status == "fail" and figure.unstable and policy.unstable_slices == "warn":
                missing.status = "warn"
            checks.append(missing)
            continue
        ok = (rule.min is None or figure.value >= rule.min) and (rule.max is None or figure.value <= rule.max)
        detail = rule.note
        if rule.vs_overall:
            detail = f"slice {_fmt(figure.raw)} vs overall {_fmt(figure.overall)}" + (f"; {detail}" if detail else "")
        if figure.unstable:
            detail = (detail + "; " if detail else "") + "unstable: slice below the minimum n"
        checks.append(Check("threshold", rule.metric, model, figure.slice, figure.n, figure.unstable, figure.value, limit, _outcome(ok, figure, policy), detail))
    return checks


def _regression_checks(rule: RegressionRule, tables: dict, baseline: dict | None, policy: GatePolicy) -> list[Check]:
    higher_better = KNOWN_METRICS[rule.metric]
    if rule.max_worsening_pct is not None:
        allowance_text = f"{rule.max_worsening_pct:g} %"
    else:
        allowance_text = _fmt(rule.max_worsening or 0.0)
    limit = f"{'≥' if higher_better else '≤'} baseline {'−' if higher_better else '+'} {allowance_text}"
    if baseline is None:
        return [Check("regression", rule.metric, rule.model, ", ".join(_as_list(rule.slice)), None, False, None, limit, "skipped", "no --baseline given")]
    figures = _figures(rule, tables)
    if isinstance(figures, str):
        return [_missing(rule, "regression", rule.model, figures, limit)]
    base_figures = _figures(rule, baseline)
    base_by_key = {} if isinstance(base_figures, str) else {f.key: f for f in base_figures}
    checks = []
    for figure in figures:
        base = base_by_key.get(figure.key)
        if figure.value is None and figure.n == 0 and rule.metric in SUBSET_METRICS:
            checks.append(Check("regression", rule.metric, rule.model, figure.slice, 0, figure.unstable, None, limit, "skipped", f"no {SUBSET_METRICS[rule.metric]} in this slice"))
            continue
        if figure.value is None or base is None or base.value is None:
            why = "no value in this run" if figure.value is None else "not in the baseline run"
            missing = _missing(rule, "regression", rule.model, why, limit)
            missing.slice, missing.n, missing.unstable, missing.value = figure.slice, figure.n, figure.unstable, figure.value
            checks.append(missing)
            continue
        worsening = (base.value - figure.value) if higher_better else (figure.value - base.value)
        allowed = abs(base.value) * rule.max_worsening_pct / 100 if rule.max_worsening_pct is not None else (rule.max_worsening or 0.0)
        ok = worsening <= allowed + 1e-12
        detail = f"baseline {_fmt(base.value)}, change {_fmt(figure.value - base.value)}"
        if figure.unstable:
            detail += "; unstable: slice below the minimum n"
        checks.append(
            Check("regression", rule.metric, rule.model, figure.slice, figure.n, figure.unstable, figure.value, limit, _outcome(ok, figure, policy), detail)
        )
    return checks


def _builtin_checks(tables: dict) -> list[Check]:
    """Numerical health: any NaN/Inf output fails, whatever the policy says (only when quality was measured)."""
    table = tables.get("metrics")
    if table is None:
        return []
    checks = []
    for model in ("teacher", "student"):
        rows = table[(table["metric"] == "nonfinite_outputs") & (table["model"] == model) & (table["slice"] == OVERALL)]
        value = _finite(rows.iloc[0]["value"]) if not rows.empty else None
        n = int(rows.iloc[0]["n"]) if not rows.empty else None
        if value is None:
            checks.append(Check("built-in", "nonfinite_outputs", model, OVERALL, n, False, None, "= 0", "fail", "not measured"))
        else:
            checks.append(Check("built-in", "nonfinite_outputs", model, OVERALL, n, False, value, "= 0", "pass" if value == 0 else "fail", "numerical health"))
    return checks


def load_tables(run_dir: Path) -> dict:
    """The figures a gate reads from one run: ``metrics`` (quality) and ``comparison`` (serving)."""
    from loadtest.quality import results as store

    return {"metrics": store.read_metrics(run_dir), "comparison": store.read_comparison(run_dir)}


def recorded_baseline(run_dir: Path) -> Path | None:
    """The baseline run ``loadtest eval --baseline`` recorded for this run, when it still exists."""
    from loadtest.quality import results as store

    summary = store.read_summary(run_dir) or {}
    recorded = (summary.get("baseline") or {}).get("run")
    return Path(recorded) if recorded and Path(recorded).is_dir() else None


def _check_same_frozen_set(run_dir: Path, baseline_dir: Path) -> None:
    """Regression rules compare figures of the same examples only: refuse two different frozen sets."""
    from loadtest.quality import results as store

    ours = (store.read_summary(run_dir) or {}).get("frozen_set_sha256")
    theirs = (store.read_summary(baseline_dir) or {}).get("frozen_set_sha256")
    if ours and theirs and ours != theirs:
        raise LoadtestError(
            f"baseline {baseline_dir} was evaluated on a different frozen set than {run_dir} (content SHA-256 {theirs[:12]}… vs {ours[:12]}…)"
        )


def evaluate_gate(run_dir: Path, policy: GatePolicy, baseline_dir: Path | None = None, policy_name: str = "") -> GateReport:
    """Every check of the policy on a run (and its baseline): the gate's verdict."""
    tables = load_tables(run_dir)
    baseline_dir = baseline_dir if baseline_dir is not None else recorded_baseline(run_dir)
    if baseline_dir is not None:
        _check_same_frozen_set(run_dir, baseline_dir)
    baseline = load_tables(baseline_dir) if baseline_dir is not None else None
    if tables["metrics"] is None and tables["comparison"] is None:
        raise LoadtestError(f"{run_dir} has neither quality results (quality/metrics.csv) nor serving results (tables/comparison.csv)")
    checks = _builtin_checks(tables)
    for rule in policy.rules:
        checks += _threshold_checks(rule, tables, policy)
    for rule in policy.regression:
        checks += _regression_checks(rule, tables, baseline, policy)
    return GateReport(str(run_dir), policy_name, str(baseline_dir) if baseline_dir is not None else None, checks)


def format_value(value: float | None) -> str:
    return _fmt(value)
