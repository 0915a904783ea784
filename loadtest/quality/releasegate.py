"""A run's release gate as a demo shows it: each slice's drop beside the overall drop, and a verdict that
names the slices breaking the policy.

``loadtest gate`` answers a CI job with an exit status; a person reading a demo needs to *see* why: the
aggregate can look fine while one slice (a rare intent, a customer segment) loses far more. This module
evaluates a policy (by default the one the generative demo ships, ``loadtest/data/gate-generative-demo.yaml``)
over a run's quality results, writes the checks and the per-slice drops beside them (``quality/gate.json``,
``tables/slice_drops.csv``, ``tables/gate_checks.csv``, ``tables/gate_verdict.txt``) for report.html, and prints both.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from loadtest.errors import LoadtestError
from loadtest.quality.gate import GateReport, evaluate_gate, format_value, load_policy
from loadtest.quality.slices import OVERALL

DEMO_POLICY = Path(__file__).resolve().parent.parent / "data" / "gate-generative-demo.yaml"
GATE_FILE = "gate.json"
SLICE_DROPS_FILE = "slice_drops.csv"
GATE_CHECKS_FILE = "gate_checks.csv"
GATE_VERDICT_FILE = "gate_verdict.txt"


@dataclass
class ReleaseGate:
    report: GateReport
    policy: Path
    slice_drops: pd.DataFrame
    verdict: str

    @property
    def passed(self) -> bool:
        return self.report.passed


def _label(name: str, value) -> str:
    return OVERALL if name == OVERALL else f"{name}={value}"


def slice_drops(table: pd.DataFrame) -> pd.DataFrame:
    """Per slice: both models' score, the student's paired drop with its interval, and the drop minus the overall drop.

    Sorted with overall first, then the slices that lose most beyond overall.
    """
    score, drop_metric = "chrf", "chrf_drop"
    drops = table[(table["metric"] == drop_metric) & (table["model"] == "student")]
    overall = drops[drops["slice"] == OVERALL]
    if drops.empty or overall.empty:
        return pd.DataFrame(columns=["slice", "n", f"teacher_{score}", f"student_{score}", drop_metric, "ci_low", "ci_high", "over_overall", "unstable"])
    base = float(overall.iloc[0]["value"])
    scores = table[table["metric"] == score].set_index(["model", "slice", "slice_value"])["value"]
    rows = []
    for _, r in drops.iterrows():
        key = (r["slice"], r["slice_value"])
        value = float(r["value"]) if pd.notna(r["value"]) else math.nan
        rows.append({
            "slice": _label(*key),
            "n": int(r["n"]),
            f"teacher_{score}": float(scores.get(("teacher", *key), math.nan)),
            f"student_{score}": float(scores.get(("student", *key), math.nan)),
            drop_metric: value,
            "ci_low": float(r["ci_low"]) if pd.notna(r["ci_low"]) else math.nan,
            "ci_high": float(r["ci_high"]) if pd.notna(r["ci_high"]) else math.nan,
            "over_overall": value - base,
            "unstable": bool(r["unstable"]),
        })
    frame = pd.DataFrame(rows)
    is_overall = frame["slice"] == OVERALL
    return pd.concat([frame[is_overall], frame[~is_overall].sort_values("over_overall", ascending=False, na_position="last")], ignore_index=True)


def _relative(check) -> bool:
    return check.limit.lstrip("≤≥ ").startswith("overall")


def _describe(check) -> str:
    if _relative(check):
        raw, _, overall = check.detail.split(";")[0].removeprefix("slice ").partition(" vs overall ")
        return (f"{check.slice} (n={check.n}) {check.metric} {raw} against {overall} overall "
                f"({'+' if (check.value or 0) >= 0 else ''}{format_value(check.value)}; limit {check.limit.lstrip('≤≥ ')})")
    where = f" on {check.slice}" if check.slice != OVERALL else ""
    return f"{check.metric} ({check.model}){where}: {format_value(check.value)} vs {check.limit}" + (f" — {check.detail}" if check.status == "fail" and check.value is None else "")


def gate_verdict(report: GateReport, policy_name: str, drops: pd.DataFrame | None = None) -> str:
    """One paragraph: PASS/FAIL, and which slices lose more than overall beyond the policy (named first)."""
    failures = report.failures
    warned = [c for c in report.checks if c.status == "warn"]
    head = f"Gate ({policy_name}): "
    if failures:
        slices = sorted((c for c in failures if _relative(c)), key=lambda c: -abs(c.value or 0.0))
        others = [c for c in failures if not _relative(c)]
        parts = []
        if slices:
            parts.append(f"{len(slices)} slice(s) lose more than overall beyond the policy: " + "; ".join(_describe(c) for c in slices[:5])
                         + (f"; +{len(slices) - 5} more" if len(slices) > 5 else ""))
        if others:
            parts.append(("also failed: " if slices else "") + "; ".join(_describe(c) for c in others[:4])
                         + (f"; +{len(others) - 4} more" if len(others) > 4 else ""))
        text = head + f"FAIL ({len(failures)} of {len(report.checks)} checks) — " + ". ".join(parts) + "."
    else:
        text = head + f"PASS ({len(report.checks)} checks, none failed)."
        if drops is not None and len(drops) > 1:
            worst = drops.iloc[1]
            text += (f" The slice that loses most, {worst['slice']} (n={worst['n']}), drops {worst['chrf_drop']:.1f} chrF points against "
                     f"{drops.iloc[0]['chrf_drop']:.1f} overall: within the policy.")
    if warned:
        text += " Warned, too few prompts to decide: " + "; ".join(_describe(c) for c in warned[:3]) + (f"; +{len(warned) - 3} more" if len(warned) > 3 else "") + "."
    return text


def run_release_gate(run_dir: Path, policy: Path | None = None, console=None) -> ReleaseGate:
    """Evaluate ``policy`` (default: the generative demo's) on a run's quality results; write and print the outcome."""
    from loadtest.quality import results as store

    run_dir = Path(run_dir)
    policy = Path(policy) if policy is not None else DEMO_POLICY
    table = store.read_metrics(run_dir)
    if table is None:
        raise LoadtestError(f"{run_dir} has no quality results to gate (quality/metrics.csv): run the quality evaluation first")
    report = evaluate_gate(run_dir, load_policy(policy), policy_name=str(policy))
    drops = slice_drops(table)
    verdict = gate_verdict(report, policy.name, drops)
    outcome = ReleaseGate(report, policy, drops, verdict)
    _write(run_dir, outcome)
    if console is not None:
        print_release_gate(outcome, console)
    return outcome


def _write(run_dir: Path, outcome: ReleaseGate) -> None:
    from loadtest.quality.results import quality_dir

    payload = {**outcome.report.to_dict(), "policy_name": outcome.policy.name, "verdict": outcome.verdict,
               "slice_drops": json.loads(outcome.slice_drops.to_json(orient="records"))}
    (quality_dir(run_dir) / GATE_FILE).write_text(json.dumps(payload, indent=2, default=str) + "\n")
    tables = run_dir / "tables"
    tables.mkdir(parents=True, exist_ok=True)
    outcome.slice_drops.to_csv(tables / SLICE_DROPS_FILE, index=False)
    (tables / GATE_VERDICT_FILE).write_text(outcome.verdict + "\n")
    pd.DataFrame([c.__dict__ for c in outcome.report.checks]).to_csv(tables / GATE_CHECKS_FILE, index=False)


def read_release_gate(run_dir: Path) -> dict | None:
    """``quality/gate.json`` of a run, when a release gate was run on it."""
    from loadtest.quality.results import quality_dir

    path = quality_dir(Path(run_dir)) / GATE_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LoadtestError(f"{path} is not valid JSON ({exc}): rerun the gate") from None


def print_release_gate(outcome: ReleaseGate, console) -> None:
    """The per-slice drops (with the gate's status of each slice) and the verdict."""
    from rich.markup import escape
    from rich.table import Table

    statuses: dict[str, str] = {}
    for check in outcome.report.checks:
        if _relative(check) and check.metric == "chrf_drop":
            statuses[check.slice] = check.status
    table = Table(title="chrF drop per slice (teacher − student, against the references) vs overall", title_justify="left")
    for name, justify in (("slice", "left"), ("n", "right"), ("teacher chrF", "right"), ("student chrF", "right"),
                          ("drop [95 % CI]", "right"), ("drop − overall", "right"), ("gate", "left")):
        table.add_column(name, justify=justify, no_wrap=name != "slice")
    styles = {"pass": "green", "fail": "bold red", "warn": "yellow"}
    for _, r in outcome.slice_drops.iterrows():
        status = statuses.get(r["slice"], "")
        ci = f" [{r['ci_low']:.1f}, {r['ci_high']:.1f}]" if math.isfinite(r["ci_low"]) else ""
        table.add_row(
            escape(r["slice"]) + (" (unstable)" if r["unstable"] else ""), str(r["n"]), f"{r['teacher_chrf']:.1f}", f"{r['student_chrf']:.1f}", f"{r['chrf_drop']:.1f}{ci}",
            "" if r["slice"] == OVERALL else f"{r['over_overall']:+.1f}",
            f"[{styles.get(status, 'white')}]{status.upper()}[/]" if status else "",
        )
    console.print(table)
    style = "bold green" if outcome.passed else "bold red"
    console.print(f"[{style}]{escape(outcome.verdict)}[/]", highlight=False)
