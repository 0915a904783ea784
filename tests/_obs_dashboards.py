"""Reading the committed Grafana dashboards as a test sees them: every panel query, variables substituted.

The substitution follows Grafana's own rules for a Prometheus datasource: a repeated panel gets one
value of its variable, a multi-value variable becomes a regex alternation, ``$__rate_interval`` is
max(4 x scrape interval, interval + scrape interval), ``$__range``/``$__range_s`` the time range.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DASHBOARD_DIR = REPO / "grafana" / "dashboards"
GRAFANA_GLOBALS = {"__rate_interval", "__interval", "__interval_ms", "__range", "__range_s", "__range_ms"}
GPU_METRIC = re.compile(r"\b(loadtest_gpu_\w+|nv_gpu_\w+|nv_energy_\w+|DCGM_\w+)")
GENERATIVE_METRIC = re.compile(r"\b(loadtest_time_to_first_token_\w+|loadtest_inter_token_latency_\w+|loadtest_output_tokens_\w+)")
TRITON_GPU_METRIC = re.compile(r"\b(nv_gpu_\w+|nv_energy_\w+)")
VARIABLE = re.compile(r"\$\{?(\w+)(?::\w+)?\}?")


@dataclass(frozen=True)
class PanelQuery:
    dashboard: str
    panel: str
    ref: str
    expr: str
    instant: bool
    repeat: str | None  # the variable the panel repeats over, if any

    @property
    def gpu(self) -> bool:
        """Needs GPU metrics (our exporter's, Triton's or DCGM's): no data without a GPU."""
        return bool(GPU_METRIC.search(self.expr))

    @property
    def generative(self) -> bool:
        """Reads the LLM users' metrics: data only during a generative run (test_dashboards_generative_live)."""
        return bool(GENERATIVE_METRIC.search(self.expr))

    @property
    def name(self) -> str:
        return f"{self.dashboard} / {self.panel} / {self.ref}"


def dashboard_files() -> list[Path]:
    return sorted(DASHBOARD_DIR.glob("*.json"))


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def iter_panels(dashboard: dict):
    """Every panel, including those nested in collapsed rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def panel_queries(path: Path) -> list[PanelQuery]:
    dashboard = load(path)
    out = []
    for panel in iter_panels(dashboard):
        for target in panel.get("targets", []):
            out.append(
                PanelQuery(
                    dashboard=dashboard["title"],
                    panel=panel["title"],
                    ref=target["refId"],
                    expr=target["expr"],
                    instant=bool(target.get("instant")) and not target.get("range", False),
                    repeat=panel.get("repeat"),
                )
            )
    return out


def all_queries() -> list[PanelQuery]:
    return [q for path in dashboard_files() for q in panel_queries(path)]


def rate_interval(scrape_interval_s: float = 1.0, interval_s: float = 1.0) -> str:
    """Grafana's ``$__rate_interval`` for a datasource whose scrape interval (timeInterval) is given."""
    return f"{int(max(4 * scrape_interval_s, interval_s + scrape_interval_s))}s"


def substitute(expr: str, values: dict[str, str]) -> str:
    """Replace ``$var`` / ``${var}`` / ``${var:format}`` with ``values[var]``; unknown names stay."""

    def repl(match: re.Match) -> str:
        return values.get(match.group(1), match.group(0))

    return VARIABLE.sub(repl, expr)


def variables_in(expr: str) -> set[str]:
    return {m.group(1) for m in VARIABLE.finditer(expr)}
