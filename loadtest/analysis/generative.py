"""Generative serving figures from a run's records: TTFT, ITL, E2E, tokens/s, goodput under an SLO, cost, energy.

Definitions (docs/method.md, "Generative serving"): per request, TTFT and E2E from the records
(open loop: from the intended send time), ITL = (E2E - TTFT) / (output tokens - 1) for two or more
tokens, per-user tokens/s = 1 / ITL. Per window: output tokens/s = sum of output tokens of the requests
completed in it / its length (likewise input and total tokens, requests/s); goodput = successful
requests/s that meet every SLO bound at once; SLO attainment = goodput / achieved requests/s. Percentiles
and their 95 % CIs come from ``stats`` (order statistics); teacher vs student differences from its
bootstrap test. Warm-up requests (stage ``warmup``) never enter a figure. Never imports Locust.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from loadtest.analysis import stats
from loadtest.errors import LoadtestError

WARMUP_STAGE = "warmup"
ALL = "(all)"
PERCENTILES = (50.0, 90.0, 95.0, 99.0)
LATENCY_METRICS = ("ttft", "itl", "e2e")


@dataclass(frozen=True)
class SLO:
    """Per-request bounds in milliseconds; a bound left None is not checked."""

    ttft_ms: float | None = None
    itl_ms: float | None = None
    e2e_ms: float | None = None

    @classmethod
    def parse(cls, text: str | None) -> SLO | None:
        """``ttft_ms=500,itl_ms=50[,e2e_ms=4000]`` (None for an empty text)."""
        if not text or not text.strip():
            return None
        values: dict[str, float] = {}
        for part in text.split(","):
            name, sep, value = part.strip().partition("=")
            name = name.strip().lower()
            if not sep or name not in ("ttft_ms", "itl_ms", "e2e_ms"):
                raise LoadtestError(f"--slo '{text}': use ttft_ms=N,itl_ms=N[,e2e_ms=N] (got '{part.strip()}')")
            try:
                number = float(value)
            except ValueError:
                raise LoadtestError(f"--slo: '{value}' is not a number of milliseconds") from None
            if not number > 0:
                raise LoadtestError(f"--slo: {name} must be > 0 ms, got {value}")
            values[name] = number
        return cls(**values)

    def describe(self) -> str:
        parts = [f"{n.split('_')[0].upper()} ≤ {v:g} ms" for n, v in
                 (("ttft_ms", self.ttft_ms), ("itl_ms", self.itl_ms), ("e2e_ms", self.e2e_ms)) if v is not None]  # fmt: skip
        return ", ".join(parts)

    def meets(self, frame: pd.DataFrame) -> pd.Series:
        """Per request: succeeded and within every bound (a request without ITL, one token, meets the ITL bound;
        a whole answer's first token arrives with it, so its TTFT is its E2E)."""
        ok = frame["success"].astype(bool).copy()
        if self.ttft_ms is not None:
            ok &= frame["ttft_or_e2e_s"] * 1000.0 <= self.ttft_ms
        if self.itl_ms is not None:
            ok &= frame["itl_s"].isna() | (frame["itl_s"] * 1000.0 <= self.itl_ms)
        if self.e2e_ms is not None:
            ok &= frame["latency_s"] * 1000.0 <= self.e2e_ms
        return ok


def per_request(frame: pd.DataFrame) -> pd.DataFrame:
    """Records with the derived per-request columns: itl_s, per-user tokens/s, ttft_or_e2e_s."""
    out = frame.copy()
    osl = out["output_tokens"].astype("float64")
    ttft = out["ttft_s"].astype("float64")
    itl = (out["latency_s"] - ttft) / (osl - 1)
    out["itl_s"] = itl.where((osl >= 2) & ttft.notna() & out["success"].astype(bool))
    out["user_tokens_per_s"] = 1.0 / out["itl_s"].where(out["itl_s"] > 0)
    out["ttft_or_e2e_s"] = ttft.fillna(out["latency_s"])
    return out


@dataclass
class WindowFigures:
    """One model in one window (a stage, or the whole run after warm-up)."""

    model: str
    stage: str
    requests: int
    failures: int
    window_s: float
    offered_rate: float | None
    requests_per_s: float
    output_tokens_per_s: float
    input_tokens_per_s: float
    total_tokens_per_s: float
    output_tokens_total: int
    mean_output_tokens: float
    mean_tokens_per_chunk: float | None
    token_count_source: str
    percentiles: dict[str, dict[float, stats.PercentileEstimate]]  # ttft/itl/e2e/user_tps -> p -> estimate
    goodput_rps: float | None = None
    slo_attainment: float | None = None
    slo_p95_ok: bool | None = None  # P95 TTFT and P95 ITL (and P95 E2E) within the SLO

    @property
    def error_rate(self) -> float:
        return self.failures / self.requests if self.requests else math.nan

    def p(self, metric: str, q: float) -> float:
        est = self.percentiles.get(metric, {}).get(q)
        return est.value if est is not None else math.nan

    @property
    def user_tokens_per_s_p50(self) -> float:
        return self.p("user_tps", 50.0)


def window_figures(frame: pd.DataFrame, model: str, stage: str, slo: SLO | None,
                   offered_rate: float | None = None) -> WindowFigures | None:  # fmt: skip
    """Figures of one model's requests in one window (warm-up already removed)."""
    if frame.empty:
        return None
    start = float(frame["intended_start"].min())
    end = float(frame["end"].max())
    window = max(end - start, 1e-9)
    ok = frame[frame["success"].astype(bool)]
    out_tokens = int(ok["output_tokens"].fillna(0).sum())
    in_tokens = int(ok["input_tokens"].fillna(0).sum())
    chunks = ok["chunks"].astype("float64")
    streamed = ok[chunks > 0]
    tokens_per_chunk = (float(streamed["output_tokens"].sum() / streamed["chunks"].sum())
                        if not streamed.empty and ok["ttft_s"].notna().any() else None)  # fmt: skip
    sources = sorted(set(ok["token_count_source"].dropna().astype(str)))
    pct = {
        "ttft": stats.estimates(ok["ttft_s"].dropna().to_numpy(float), PERCENTILES),
        "itl": stats.estimates(ok["itl_s"].dropna().to_numpy(float), PERCENTILES),
        "e2e": stats.estimates(ok["latency_s"].to_numpy(float), PERCENTILES),
        "user_tps": stats.estimates(ok["user_tokens_per_s"].dropna().to_numpy(float), PERCENTILES),
    }
    figures = WindowFigures(
        model=model, stage=stage, requests=len(frame), failures=int((~frame["success"].astype(bool)).sum()),
        window_s=window, offered_rate=offered_rate, requests_per_s=len(ok) / window,
        output_tokens_per_s=out_tokens / window, input_tokens_per_s=in_tokens / window,
        total_tokens_per_s=(out_tokens + in_tokens) / window, output_tokens_total=out_tokens,
        mean_output_tokens=float(ok["output_tokens"].mean()) if len(ok) else math.nan,
        mean_tokens_per_chunk=tokens_per_chunk, token_count_source="+".join(sources) or "none", percentiles=pct,
    )  # fmt: skip
    if slo is not None:
        good = int(slo.meets(frame).sum())
        figures.goodput_rps = good / window
        figures.slo_attainment = good / len(ok) if len(ok) else 0.0
        checks = []
        if slo.ttft_ms is not None:
            checks.append(figures.p("ttft", 95.0) * 1000 <= slo.ttft_ms if pct["ttft"][95.0].n else False)
        if slo.itl_ms is not None:
            checks.append(figures.p("itl", 95.0) * 1000 <= slo.itl_ms if pct["itl"][95.0].n else False)
        if slo.e2e_ms is not None:
            checks.append(figures.p("e2e", 95.0) * 1000 <= slo.e2e_ms if pct["e2e"][95.0].n else False)
        figures.slo_p95_ok = all(checks)
    return figures


@dataclass
class Costing:
    instance: str
    usd_per_hour: float
    basis: str  # which tokens/s the cost is computed at
    cost_per_1m_output_tokens_usd: float | None
    cost_per_1m_total_tokens_usd: float | None
    energy_per_output_token_j: float | None
    energy_method: str
    energy_is_estimate: bool


@dataclass
class GenerativeAnalysis:
    run_dir: Path
    manifest: dict
    records: pd.DataFrame  # per_request() of every non-warm-up record
    slo: SLO | None
    teacher: str | None
    student: str | None
    models: list[str]
    overall: dict[str, WindowFigures]  # model -> whole run after warm-up
    stages: dict[str, list[WindowFigures]]  # model -> per stage (several stages: a rate plan or a sweep)
    reference: dict[str, WindowFigures] = field(default_factory=dict)  # where cost is computed
    costs: dict[str, Costing] = field(default_factory=dict)
    significance: list[dict] = field(default_factory=list)
    warmup_requests: int = 0
    notes: list[str] = field(default_factory=list)

    def role(self, model: str) -> str:
        return "teacher" if model == self.teacher else "student" if model == self.student else "other"

    @property
    def compares_references(self) -> bool:
        """A sweep compares each model at its best passing step: its whole run mixes in the steps that failed
        (a faster model is pushed to higher rates, so its whole-run latencies would look worse)."""
        swept = (self.manifest.get("sweep") or {}).get("results") or {}
        return bool(self.teacher and self.student and self.teacher in swept and self.student in swept
                    and self.reference.get(self.teacher) is not None and self.reference.get(self.student) is not None
                    and ALL not in (self.reference[self.teacher].stage, self.reference[self.student].stage))

    def compared(self, model: str) -> WindowFigures:
        """The figures the teacher/student comparison uses for ``model``."""
        return self.reference[model] if self.compares_references else self.overall[model]


def load_generative_records(run_dir: Path) -> tuple[dict, pd.DataFrame]:
    from loadtest.rundir import read_manifest, read_records

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise LoadtestError(f"run directory {run_dir} does not exist")
    manifest = read_manifest(run_dir)
    try:
        frame = read_records(run_dir).to_pandas()
    except Exception as exc:  # a corrupt shard is named, not a traceback
        raise LoadtestError(f"{run_dir}: records could not be read: {str(exc).splitlines()[0]}") from None
    if frame.empty:
        raise LoadtestError(f"{run_dir} has no records")
    if frame["output_tokens"].isna().all() and frame["success"].any():
        raise LoadtestError(f"{run_dir} holds no generative records (no output tokens): use it with loadtest analyze")
    return manifest, frame


def is_generative_run(run_dir: Path) -> bool:
    from loadtest.rundir import read_manifest

    return read_manifest(Path(run_dir)).get("workload") == "generative"


def _offered(manifest: dict, stage: str) -> float | None:
    for item in manifest.get("stages") or []:
        if item.get("name") == stage and item.get("offered_rate") is not None:
            return float(item["offered_rate"])
    return None


def compute(run_dir: Path, slo: SLO | None = None, *, cost_file: Path | None = None, instance: str | None = None,
            resamples: int = 2000) -> GenerativeAnalysis:  # fmt: skip
    """Every figure of a generative run (raises LoadtestError for an unusable run directory)."""
    manifest, raw = load_generative_records(Path(run_dir))
    warm = raw["stage"] == WARMUP_STAGE
    frame = per_request(raw[~warm])
    if frame.empty:
        raise LoadtestError(f"{run_dir}: every request was a warm-up request; run longer or lower --warmup-requests")
    roles = manifest.get("models") or {}
    teacher, student = roles.get("teacher"), roles.get("student")
    found = list(pd.unique(frame["model"].astype(str)))
    models = [m for m in (teacher, student) if m in found] + sorted(m for m in found if m not in (teacher, student))
    analysis = GenerativeAnalysis(Path(run_dir), manifest, frame, slo, teacher if teacher in found else None,
                                  student if student in found else None, models, {}, {},
                                  warmup_requests=int(warm.sum()))  # fmt: skip
    for model in models:
        mine = frame[frame["model"] == model]
        analysis.overall[model] = window_figures(mine, model, ALL, slo)
        per_stage = []
        for stage in pd.unique(mine["stage"].astype(str)):
            figures = window_figures(mine[mine["stage"] == stage], model, stage, slo, _offered(manifest, stage))
            if figures is not None:
                per_stage.append(figures)
        analysis.stages[model] = per_stage
        analysis.reference[model] = reference_window(analysis, model)
    analysis.costs = {m: costing(analysis, m, cost_file, instance) for m in models}
    if analysis.teacher and analysis.student:
        compared = frame
        if analysis.compares_references:  # a sweep: each model at its capacity, not its overload steps mixed in
            compared = frame[((frame["model"] == analysis.teacher)
                              & (frame["stage"] == analysis.reference[analysis.teacher].stage))
                             | ((frame["model"] == analysis.student)
                                & (frame["stage"] == analysis.reference[analysis.student].stage))]  # fmt: skip
        analysis.significance = significance(compared, analysis.teacher, analysis.student, resamples)
    return analysis


def reference_window(a: GenerativeAnalysis, model: str) -> WindowFigures:
    """Where cost is computed: a sweep's best passing step; else, with an SLO and several stages, the stage with
    the most output tokens/s whose P95s meet the SLO with few errors and its offered rate achieved (the capacity
    under the SLO); else the whole run."""
    swept = ((a.manifest.get("sweep") or {}).get("results") or {}).get(model) or {}
    best = next((s for s in a.stages.get(model, []) if s.stage == swept.get("best_stage")), None)
    if best is not None and a.slo is not None:
        return best
    stages = [s for s in a.stages.get(model, []) if s.slo_p95_ok and s.error_rate <= 0.01
              and (s.offered_rate is None or s.requests_per_s >= 0.9 * s.offered_rate)]  # fmt: skip
    if a.slo is not None and len(a.stages.get(model, [])) > 1 and stages:
        return max(stages, key=lambda s: s.output_tokens_per_s)
    return a.overall[model]


def costing(a: GenerativeAnalysis, model: str, cost_file: Path | None, instance: str | None) -> Costing:
    from loadtest.analysis import server_metrics as sm
    from loadtest.analysis.costs import cost_per_million_tokens, load_cost_book

    book = load_cost_book(cost_file)
    inst = book.instance(instance)
    ref = a.reference[model]
    basis = (f"stage {ref.stage}: the highest output tokens/s meeting the SLO at P95" if ref.stage != ALL
             else "the whole run's measured output tokens/s")  # fmt: skip
    per_out = cost_per_million_tokens(inst.hourly_usd, ref.output_tokens_per_s) if ref.output_tokens_per_s else None
    per_total = cost_per_million_tokens(inst.hourly_usd, ref.total_tokens_per_s) if ref.total_tokens_per_s else None
    energy_j, method, estimate = None, "no power measured and no declared wattage for this instance", False
    mine = a.records[(a.records["model"] == model) & ((a.records["stage"] == ref.stage) | (ref.stage == ALL))]
    start, end = float(mine["intended_start"].min()), float(mine["end"].max())
    others = a.records[(a.records["model"] != model)]
    shared = not others.empty and float(others["intended_start"].min()) < end and float(others["end"].max()) > start
    snaps, _ = sm.read_snapshots(a.run_dir)
    if sm.has_gpu_metrics(snaps):
        if shared:
            method = "not attributable: another model was under load at the same time"
        else:
            measured = sm.energy(snaps, start, end)
            if measured is not None:
                energy_j, method = measured.joules, measured.method
            else:
                method = "GPU power present but no samples bracket the window"
    elif inst.declared_power_w:
        # a declared wattage is the machine's draw, like its price: W / output tokens/s
        energy_j = inst.declared_power_w * ref.window_s
        method, estimate = f"declared {inst.declared_power_w:g} W (estimate)", True
    per_token = energy_j / (ref.output_tokens_per_s * ref.window_s) if energy_j and ref.output_tokens_per_s else None
    return Costing(inst.name, inst.hourly_usd, basis, per_out, per_total, per_token, method, estimate)


def significance(frame: pd.DataFrame, teacher: str, student: str, resamples: int) -> list[dict]:
    """Bootstrap tests of the P95 (and P50) differences of TTFT, ITL and E2E, student - teacher."""
    ok = frame[frame["success"].astype(bool)]
    rows = []
    for metric, column in (("ttft", "ttft_s"), ("itl", "itl_s"), ("e2e", "latency_s")):
        t = ok.loc[ok["model"] == teacher, column].dropna().to_numpy(float)
        s = ok.loc[ok["model"] == student, column].dropna().to_numpy(float)
        for p in (50.0, 95.0):
            test = stats.percentile_difference(s, t, p=p, resamples=resamples)
            rows.append({"metric": metric, "percentile": p, "teacher_ms": stats.percentile(t, p) * 1000,
                         "student_ms": stats.percentile(s, p) * 1000, "difference_ms": test.difference_s * 1000,
                         "ci_low_ms": test.ci_low_s * 1000, "ci_high_ms": test.ci_high_s * 1000,
                         "significant": test.significant, "verdict": test.verdict, "n_teacher": len(t),
                         "n_student": len(s)})  # fmt: skip
    return rows


# ---- tables ---------------------------------------------------------------------------------------
def figures_of(w: WindowFigures, c: Costing | None = None) -> dict[str, float]:
    """One model's headline figures, by the comparison table's metric names."""
    out = {
        "requests": w.requests, "error_rate": w.error_rate, "requests_per_s": w.requests_per_s,
        "output_tokens_per_s": w.output_tokens_per_s, "total_tokens_per_s": w.total_tokens_per_s,
        "user_tokens_per_s_p50": w.user_tokens_per_s_p50, "mean_output_tokens": w.mean_output_tokens,
    }  # fmt: skip
    for metric in LATENCY_METRICS:
        for q in (50.0, 95.0, 99.0):
            out[f"{metric}_p{q:g}_ms"] = w.p(metric, q) * 1000
    if w.goodput_rps is not None:
        out["goodput_rps"] = w.goodput_rps
        out["slo_attainment"] = w.slo_attainment
    if c is not None:
        out["cost_per_1m_output_tokens_usd"] = c.cost_per_1m_output_tokens_usd
        out["cost_per_1m_total_tokens_usd"] = c.cost_per_1m_total_tokens_usd
        out["energy_per_output_token_j"] = c.energy_per_output_token_j
    return {k: (math.nan if v is None else float(v)) for k, v in out.items()}


UNITS = {"requests": "count", "error_rate": "ratio", "requests_per_s": "req/s", "output_tokens_per_s": "tok/s",
         "total_tokens_per_s": "tok/s", "user_tokens_per_s_p50": "tok/s", "mean_output_tokens": "tokens",
         "goodput_rps": "req/s", "slo_attainment": "ratio", "cost_per_1m_output_tokens_usd": "USD",
         "cost_per_1m_total_tokens_usd": "USD", "energy_per_output_token_j": "J"}  # fmt: skip


def comparison_frame(a: GenerativeAnalysis) -> pd.DataFrame:
    """Teacher vs student per figure (docs/architecture.md's comparison.csv columns): whole runs, or for a sweep
    each model's best passing step (``GenerativeAnalysis.compares_references``)."""
    if not (a.teacher and a.student):
        return pd.DataFrame(columns=["metric", "unit", "teacher", "student", "student_over_teacher", "saving_pct"])
    t = figures_of(a.compared(a.teacher), a.costs.get(a.teacher))
    s = figures_of(a.compared(a.student), a.costs.get(a.student))
    rows = []
    for metric in t:
        tv, sv = t[metric], s.get(metric, math.nan)
        ratio = sv / tv if tv and math.isfinite(tv) and math.isfinite(sv) else math.nan
        rows.append({"metric": metric, "unit": UNITS.get(metric, "ms"), "teacher": tv, "student": sv,
                     "student_over_teacher": ratio,
                     "saving_pct": (1 - ratio) * 100 if math.isfinite(ratio) else math.nan})  # fmt: skip
    return pd.DataFrame(rows)


def percentile_frame(a: GenerativeAnalysis) -> pd.DataFrame:
    rows = []
    for model in a.models:
        for w in [a.overall[model], *a.stages[model]]:
            for metric, ests in w.percentiles.items():
                for q, e in ests.items():
                    rows.append({"model": model, "stage": w.stage, "metric": metric, "percentile": q, "n": e.n,
                                 "value": e.value, "ci_low": e.ci_low, "ci_high": e.ci_high, "ci_ok": e.ci_ok,
                                 "unit": "tok/s" if metric == "user_tps" else "s"})  # fmt: skip
    return pd.DataFrame(rows)


def summary_frame(a: GenerativeAnalysis) -> pd.DataFrame:
    rows = []
    for model in a.models:
        for w in [a.overall[model], *a.stages[model]]:
            row = {"model": model, "role": a.role(model), "stage": w.stage, "offered_rate": w.offered_rate,
                   "window_s": w.window_s, "failures": w.failures, "token_count_source": w.token_count_source,
                   "mean_tokens_per_chunk": w.mean_tokens_per_chunk, "slo_p95_ok": w.slo_p95_ok}  # fmt: skip
            row.update(figures_of(w, a.costs.get(model) if w.stage == ALL else None))
            rows.append(row)
    return pd.DataFrame(rows)
