"""Grafana dashboards and provisioning: generated = committed, structurally valid, PromQL that parses.

That every query returns data is proven against a live run in test_dashboards_live.py.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from _obs_dashboards import GRAFANA_GLOBALS, REPO, all_queries, dashboard_files, iter_panels, load, rate_interval
from _obs_dashboards import substitute, variables_in
from _obs_prometheus import PROMTOOL
from loadtest.observability.dashboards import DASHBOARD_FILES, dump_dashboard

PROVISIONING = REPO / "grafana" / "provisioning"
TIMESERIES_KINDS = {"timeseries", "stat", "row"}


def test_committed_dashboards_are_the_generated_ones():
    assert {p.name for p in dashboard_files()} == set(DASHBOARD_FILES)
    for name, build in DASHBOARD_FILES.items():
        committed = (REPO / "grafana" / "dashboards" / name).read_text()
        assert committed == dump_dashboard(build()), f"regenerate {name} with: python -m loadtest.observability"


@pytest.mark.parametrize("path", dashboard_files(), ids=lambda p: p.name)
def test_dashboard_is_a_valid_grafana_model(path: Path):
    dashboard = load(path)
    for key in ("uid", "title", "schemaVersion", "panels", "templating", "time"):
        assert key in dashboard, key
    assert len(dashboard["uid"]) <= 40, "Grafana limits uids to 40 characters"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert {"datasource", "model", "budget"} <= set(variables)
    assert variables["model"]["multi"] and variables["model"]["includeAll"]
    ids = [p["id"] for p in iter_panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    for panel in iter_panels(dashboard):
        assert panel["type"] in TIMESERIES_KINDS, panel["type"]
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["fieldConfig"]["defaults"]["unit"], f"{panel['title']} has a unit"
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
        if "repeat" in panel:
            assert panel["repeat"] in variables and panel["repeatDirection"] == "h"
        for target in panel["targets"]:
            assert target["expr"].strip()
            unknown = variables_in(target["expr"]) - set(variables) - GRAFANA_GLOBALS
            assert not unknown, f"{panel['title']}: unknown variables {unknown}"


def test_dashboard_shows_what_the_issue_asks():
    titles = " | ".join(p["title"].lower() for path in dashboard_files() for p in iter_panels(load(path)))
    for needed in ("qps", "offered", "p50", "p95", "p99", "queue", "compute", "batch", "failures",
                   "in flight", "gpu power", "gpu utilisation", "gpu memory", "energy per 1k", "tokens/s"):  # fmt: skip
        assert needed in titles, needed
    latency = next(
        p for path in dashboard_files() for p in iter_panels(load(path)) if p["title"].startswith("Client latency")
    )
    assert any("$budget" in t["expr"] for t in latency["targets"]), "the latency budget is drawn"
    assert latency.get("repeat") == "model", "each model side by side"


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (apt-get install prometheus)")
def test_every_query_is_valid_promql(tmp_path):
    """promtool parses every expression (as recording rules), variables substituted as Grafana would."""
    values = {"model": "teacher|student", "budget": "100", "__rate_interval": rate_interval(),
              "__range": "300s", "__range_s": "300"}  # fmt: skip
    rules = [{"record": f"loadtest:check_{i}", "expr": substitute(q.expr, values)} for i, q in enumerate(all_queries())]
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(rules)} rules found" in result.stdout


def test_datasource_provisioning_matches_dashboards_and_compose():
    config = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())
    assert config["apiVersion"] == 1
    (source,) = config["datasources"]
    assert source["type"] == "prometheus" and source["access"] == "proxy"
    assert source["url"] == "http://prometheus:9090", "the compose service"
    assert source["jsonData"]["timeInterval"] == "1s", "= the scrape interval, for $__rate_interval"
    for path in dashboard_files():
        variable = next(v for v in load(path)["templating"]["list"] if v["name"] == "datasource")
        assert variable["current"]["value"] == source["uid"]


def test_dashboard_provisioning_points_at_the_mounted_folder():
    config = yaml.safe_load((PROVISIONING / "dashboards" / "loadtest.yml").read_text())
    assert config["apiVersion"] == 1
    (provider,) = config["providers"]
    assert provider["type"] == "file"
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./grafana/dashboards:{provider['options']['path']}:ro" in mounts
    assert "./grafana/provisioning:/etc/grafana/provisioning:ro" in mounts
