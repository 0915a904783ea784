# syntax=docker/dockerfile:1
# The load generator's image (Locust master and workers) and loadtest's GPU exporter, for docker-compose.yml.
# Build context: the repository root (docker compose build). Only what load generation needs is
# installed: loadtest's core dependencies (pyproject.toml [project] dependencies), plus nvidia-ml-py for
# the GPU exporter; no torch/transformers/onnx/PyTriton (export, serving and the demo run outside the stack).
# tests/test_install.py builds a virtualenv from exactly the list below and runs a scenario with it.
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1

WORKDIR /opt/loadtest

# Dependencies first (cached while the source changes), pinned by constraints.txt: the versions the
# test suite last passed with. Keep this list equal to pyproject's core list (a test checks it).
COPY constraints.txt ./
RUN pip install -c constraints.txt \
      "locust>=2.43" \
      "tritonclient[http,grpc]>=2.60" \
      "numpy<2" \
      "tokenizers>=0.19" \
      "pandas>=2.1" \
      "pyarrow>=15,<24" \
      "scipy>=1.11" \
      "matplotlib>=3.8" \
      "prometheus-client>=0.20" \
      "pydantic>=2.5" \
      "pyyaml>=6" \
      "requests>=2.31" \
      "typer>=0.12" \
      "rich>=13" \
      "nvidia-ml-py>=12"

COPY pyproject.toml README* ./
COPY loadtest ./loadtest
COPY exporters ./exporters
RUN pip install --no-deps . && loadtest --help > /dev/null

# docker-compose.yml mounts ./scenarios over this copy so edits need no rebuild.
COPY scenarios ./scenarios

# 8089 Locust web UI, 5557 master <- workers, 9646 client metrics, 9645 GPU exporter.
EXPOSE 8089 5557 9646 9645
CMD ["locust", "-f", "/opt/loadtest/scenarios", "--help"]
