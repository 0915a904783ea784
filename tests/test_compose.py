"""docker-compose.yml: valid against the Compose Specification, naming only files the repository has.

The schema is the Compose Specification's JSON schema (docker/compose-spec.schema.json; its source is
in docker/README.md). ``docker compose config`` runs too where the Compose plugin is installed.
"""

from __future__ import annotations

import glob
import json
import re
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO / "docker-compose.yml"
SCHEMA_FILE = REPO / "docker" / "compose-spec.schema.json"
ENV_EXAMPLE = REPO / ".env.example"
# Written by loadtest itself, not in git: `loadtest export`/`loadtest demo`, and the runs' results.
GENERATED_DIRS = {"model_repository": "loadtest export", "results": None}
BIND = "${BIND_ADDRESS:-127.0.0.1}:"
GPU_SERVICES = {"triton-gpu", "gpu-exporter", "dcgm-exporter"}
INTERPOLATION = re.compile(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}")


def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def schema_errors(document: dict) -> list[str]:
    schema = json.loads(SCHEMA_FILE.read_text())
    assert "draft-07" in schema["$schema"]
    validator = jsonschema.Draft7Validator(schema)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)]


def test_compose_file_matches_the_compose_specification():
    assert schema_errors(compose()) == []


def test_schema_rejects_what_compose_rejects():
    broken = compose()
    broken["services"]["prometheus"]["healthcheck"]["intervall"] = "5s"
    broken["services"]["grafana"]["ports"] = "3000:3000"
    errors = schema_errors(broken)
    assert any("intervall" in e for e in errors), errors
    assert any(e.startswith("services/grafana/ports") for e in errors), errors


def with_defaults(text: str) -> str:
    """Interpolate ``${VAR:-default}`` with its default, as compose does when VAR is unset."""
    return INTERPOLATION.sub(lambda m: m.group(3) if m.group(2) in (":-", "-") else m.group(0), text)


def _host_paths(service: dict) -> list[str]:
    paths = []
    for volume in service.get("volumes", []):
        volume = with_defaults(volume) if isinstance(volume, str) else volume
        source = volume.split(":")[0] if isinstance(volume, str) else volume.get("source", "")
        if source.startswith((".", "/")):
            paths.append(source)
    build = service.get("build")
    if build:
        context = build if isinstance(build, str) else build.get("context", ".")
        paths.append(context)
        if isinstance(build, dict) and "dockerfile" in build:
            paths.append(str(Path(context) / build["dockerfile"]))
    paths += service.get("env_file", []) if isinstance(service.get("env_file"), list) else []
    return paths


def test_every_mounted_or_built_path_exists():
    text = COMPOSE_FILE.read_text()
    for name, service in compose()["services"].items():
        for path in _host_paths(service):
            assert not path.startswith("/"), f"{name}: {path} is outside the repository"
            relative = Path(path)
            top = relative.parts[0] if relative.parts else "."
            if top in GENERATED_DIRS:
                command = GENERATED_DIRS[top]
                assert command is None or command in text, f"docker-compose.yml says which command writes {top}/"
                continue
            assert (REPO / relative).exists(), f"{name}: {path} does not exist in the repository"


def test_dockerfile_copies_only_existing_files():
    for service in compose()["services"].values():
        build = service.get("build")
        if not isinstance(build, dict):
            continue
        dockerfile = REPO / build["context"] / build["dockerfile"]
        for line in dockerfile.read_text().splitlines():
            if line.startswith("COPY "):
                sources = [s for s in line.split()[1:-1] if not s.startswith("--")]
                for source in sources:
                    matches = glob.glob(str(REPO / build["context"] / source))
                    if "*" in source:
                        continue  # a wildcard may match nothing as long as another source does
                    assert matches, f"{dockerfile.name}: COPY {source} names nothing in the repository"
        assert (dockerfile.parent / f"{dockerfile.name}.dockerignore").exists()


def test_ports_bind_to_localhost_unless_told_otherwise():
    for name, service in compose()["services"].items():
        for port in service.get("ports", []):
            assert isinstance(port, str) and port.startswith(BIND), f"{name}: {port}"


def test_grafana_admin_password_comes_from_the_environment_and_nobody_is_anonymous():
    environment = compose()["services"]["grafana"]["environment"]
    assert environment["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD:?")
    assert environment["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert environment["GF_USERS_ALLOW_SIGN_UP"] == "false"
    assert not any("ANONYMOUS_ORG_ROLE" in key for key in environment)
    home = environment["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (REPO / "grafana" / "dashboards" / Path(home).name).exists()


def test_every_service_has_a_healthcheck():
    for name, service in compose()["services"].items():
        assert service.get("healthcheck", {}).get("test"), name


def test_gpu_services_sit_behind_the_gpu_profile_and_reserve_gpus():
    services = compose()["services"]
    assert services["triton"]["profiles"] == ["cpu"]
    assert "deploy" not in services["triton"]
    assert services["triton-gpu"]["networks"]["default"]["aliases"] == ["triton"]
    for name in GPU_SERVICES:
        assert services[name]["profiles"] == ["gpu"], name
        (device,) = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    for name, service in services.items():
        if name not in GPU_SERVICES | {"triton"}:
            assert "profiles" not in service, f"{name} starts with every profile"


def test_triton_serves_the_repository_and_locust_runs_the_scenarios():
    services = compose()["services"]
    assert "./model_repository:/models:ro" in services["triton"]["volumes"]
    assert "--model-repository=/models" in services["triton"]["command"]
    for name in ("locust-master", "locust-worker"):
        assert "./scenarios:/opt/loadtest/scenarios:ro" in services[name]["volumes"]
        assert "/opt/loadtest/scenarios" in services[name]["command"]
    assert "--master" in services["locust-master"]["command"]
    assert "--worker" in services["locust-worker"]["command"]
    assert "container_name" not in services["locust-worker"], "workers must scale"
    assert any(p.endswith(":8089") for p in services["locust-master"]["ports"]), "the web UI is published"


def test_prometheus_scrapes_the_services_compose_defines():
    services = compose()["services"]
    names = set(services) | {a for s in services.values() for a in _aliases(s)}
    config = yaml.safe_load((REPO / "prometheus" / "prometheus.yml").read_text())
    for job in config["scrape_configs"]:
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                assert target.rsplit(":", 1)[0] in names, target
        for dns in job.get("dns_sd_configs", []):
            for name in dns["names"]:
                assert name in services, name
    assert services["locust-worker"]["environment"]["LOADTEST_METRICS_PORT"] == "9646"


def _aliases(service: dict) -> list[str]:
    networks = service.get("networks") or {}
    if isinstance(networks, list):
        return []
    return [a for n in networks.values() if n for a in n.get("aliases", [])]


def test_env_example_documents_every_variable_compose_reads():
    text = COMPOSE_FILE.read_text()
    example = {line.split("=", 1)[0] for line in ENV_EXAMPLE.read_text().splitlines() if re.match(r"^\w+=", line)}
    used = {m.group(1) for m in INTERPOLATION.finditer(text)}
    missing = used - example
    assert not missing, f".env.example lacks {sorted(missing)}"
    required = {m.group(1) for m in INTERPOLATION.finditer(text) if m.group(2) in (":?", "?")}
    assert required == {"GRAFANA_ADMIN_PASSWORD"}
    assert "COMPOSE_PROFILES" in example


@pytest.mark.skipif(shutil.which("docker") is None, reason="no docker CLI")
def test_docker_compose_config_accepts_the_file():
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip("the docker CLI here has no Compose plugin (docker compose version failed)")
    env = {"GRAFANA_ADMIN_PASSWORD": "not-a-secret", "PATH": "/usr/bin:/bin:/usr/local/bin"}
    for profile in ("cpu", "gpu"):
        result = subprocess.run(
            ["docker", "compose", "-f", str(COMPOSE_FILE), "--profile", profile, "config", "--quiet"],
            capture_output=True, text=True, timeout=60, env=env, cwd=REPO,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
