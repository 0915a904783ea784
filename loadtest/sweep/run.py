"""`loadtest sweep`: every model searched in turn with the same settings, into one sweep run directory.

Teacher and student run with identical settings and the same coarse loads, one after the other. The
sweep directory has the layout of any run (manifest.json, records/, metrics/), each step's full Locust
run kept under ``steps/``, so ``loadtest analyze`` reproduces the answer from the raw records.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from loadtest.analysis.capacity import StepResult
from loadtest.sweep.merge import merge_step
from loadtest.sweep.host import HostWatch, speed_note
from loadtest.sweep.search import SearchResult, SweepSettings, disturbed, passes, search
from loadtest.sweep.steps import SweepTarget, judge_step, run_step


@dataclass
class SweepOutcome:
    run_dir: Path
    results: dict[str, SearchResult]


def run_sweep(
    target: SweepTarget,
    settings: SweepSettings,
    models: list[str],
    roles: dict[str, str | None],
    *,
    results_dir: Path = Path("results"),
    run_dir: Path | None = None,
    console=None,
) -> SweepOutcome:
    """Sweep every model in turn with the same settings; write the sweep's run directory."""
    from rich.console import Console

    from loadtest.credentials import redact_url
    from loadtest.rundir import RunDir, create_run_dir

    console = console or Console(stderr=True)
    sweep_dir = Path(run_dir) if run_dir else create_run_dir(results_dir, "sweep")
    sweep_dir.mkdir(parents=True, exist_ok=True)
    rundir = RunDir(sweep_dir)
    base = {
        "run_id": sweep_dir.name, "kind": "sweep", "scenario": "sweep", "host": redact_url(target.host),
        "models": {"teacher": roles.get("teacher"), "student": roles.get("student"), "names": models},
        "sweep": dict(settings.model_dump(), budget_ms=settings.budget_ms, results={}),
        "start": time.time(), "end": None, "stages": [], "dropped": {},
    }
    rundir.write_manifest(base)
    results: dict[str, SearchResult] = {}
    watch = HostWatch(target.host, target.protocol, settings.host_busy_share, settings.host_quiet_wait_s,
                      lambda line: console.print(f"  [dim]{line}[/]"))
    for model in models:
        counter = {"i": 0}

        def measure(load: float, model: str = model) -> StepResult:
            counter["i"] += 1
            step_s = settings.warmup_s + settings.step_duration(load)
            unit = "req/s" if settings.mode == "open" else "users"
            with watch.step() as host, _Ticker(console, f"{model} step {counter['i']}: {load:g} {unit}", step_s + 4):
                step_dir, label, _ = run_step(sweep_dir, target, settings, model, counter["i"], load,
                                              on_drain=lambda line: console.print(f"  [dim]{line}[/]"))
            stage = merge_step(sweep_dir, step_dir, label, model, settings)
            step_manifest = stage.pop("_manifest")
            manifest = rundir.read_manifest()
            manifest["stages"].append({k: v for k, v in stage.items() if k != "dropped"})
            if stage["dropped"]:
                manifest["dropped"].setdefault(model, {})[label] = stage["dropped"]
            manifest.setdefault("versions", step_manifest.get("versions"))
            manifest.setdefault("client_host", step_manifest.get("client_host"))
            manifest["protocol"] = step_manifest.get("protocol")
            manifest.setdefault("settings", step_manifest.get("settings"))  # the repository: the analyzer's footprint
            _keep_peak_memory(manifest, step_manifest.get("serving_footprint"))
            rundir.write_manifest(manifest)
            step = judge_step(step_dir, label, model, settings, load)
            return replace(step, others_share=host.others_share, host_note=host.note, host_speed=host.speed)

        result = search(measure, settings, model, on_step=lambda s, r: _print_step(console, s, r, settings))
        results[model] = result
        manifest = rundir.read_manifest()
        manifest["sweep"]["results"][model] = _result_summary(result, settings)
        rundir.write_manifest(manifest)
        console.print(_result_line(result, settings))
    rundir.update_manifest(end=time.time())
    return SweepOutcome(sweep_dir, results)


def _keep_peak_memory(manifest: dict, step_footprint) -> None:
    """Each step measured the serving processes' memory; the sweep keeps every model's highest peak."""
    if not isinstance(step_footprint, dict):
        return
    kept = manifest.setdefault("serving_footprint", {})
    for model, seen in step_footprint.items():
        if isinstance(seen, dict) and (seen.get("peak_rss_bytes") or 0) >= (kept.get(model, {}).get("peak_rss_bytes") or 0):
            kept[model] = seen


def _result_summary(result: SearchResult, settings: SweepSettings) -> dict:
    best = result.best
    return {
        "qps_at_budget": best.achieved_qps if best else None,
        "tokens_per_s_at_budget": best.tokens_per_s if best else None,
        "load_low": best.load if best else None,
        "load_high": result.failing_load,
        "resolution_pct": result.resolution * 100 if result.resolution is not None else None,
        "steps": len(result.steps),
        "stopped": result.stopped,
        "step_results": [dict(asdict(s), reasons="; ".join(r.text for r in s.reasons)) for s in result.steps],
    }


def _result_line(result: SearchResult, settings: SweepSettings) -> str:
    unit = "req/s" if settings.mode == "open" else "users"
    if result.best is None:
        return f"[bold red]{result.model}[/]: no load met P{settings.percentile:g} ≤ {settings.budget_ms:g} ms ({result.stopped})"
    high = f"{result.failing_load:g}" if result.failing_load is not None else "?"
    res = f" (±{result.resolution * 100:.1f} %)" if result.resolution is not None else ""
    return (f"[bold green]{result.model}[/]: {result.best.achieved_qps:,.1f} req/s at P{settings.percentile:g} "
            f"{result.best.latency_ms:.3g} ms; capacity between {result.best.load:g} and {high} {unit}{res} — "
            f"{result.stopped}, {len(result.steps)} steps")


def _print_step(console, step: StepResult, result: SearchResult, settings: SweepSettings) -> None:
    ok = passes(step, settings.budget_ms)
    mark = "[green]pass[/]" if ok else "[red]fail[/]"
    ci = (f" [{step.ci_low_ms:.3g}, {step.ci_high_ms:.3g}]"
          if math.isfinite(step.ci_low_ms) and math.isfinite(step.ci_high_ms) else "")
    why_text = step.why_not_within(settings.budget_ms)
    if disturbed(step, settings):
        why_text = "; ".join(t for t in (why_text, f"host busy: {step.host_note}") if t)
    why_text = "; ".join(t for t in (why_text, speed_note(step.host_speed)) if t)
    why = f" [dim]({why_text})[/]" if why_text else ""
    interval = ""
    if result.best is not None:
        high = f"{result.failing_load:g}" if result.failing_load is not None else "…"
        interval = f"  interval [{result.best.load:g}, {high}]"
    console.print(
        f"  {step.stage}: {step.achieved_qps:,.1f} req/s, P{settings.percentile:g} {step.latency_ms:.3g} ms{ci}, "
        f"errors {step.error_rate:.1%} → {mark}{why}{interval}", highlight=False,
    )


class _Ticker:
    """A live progress bar over one step's expected duration while its Locust process runs."""

    def __init__(self, console, description: str, expected_s: float) -> None:
        self.console, self.description, self.expected_s = console, description, expected_s
        self._stop = threading.Event()

    def __enter__(self) -> "_Ticker":
        from rich.progress import BarColumn, TextColumn, TimeElapsedColumn

        from loadtest.console import make_progress

        self.progress = make_progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                                      console=self.console, transient=True)
        self.progress.start()
        self.task = self.progress.add_task(self.description, total=self.expected_s)
        started = time.monotonic()

        def tick() -> None:
            while not self._stop.wait(0.25):
                self.progress.update(self.task, completed=min(time.monotonic() - started, self.expected_s))

        self.thread = threading.Thread(target=tick, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self.thread.join(timeout=1)
        self.progress.stop()
