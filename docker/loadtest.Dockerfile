# syntax=docker/dockerfile:1
# The load generator's image (Locust master and workers) and loadtest's GPU exporter, for docker-compose.yml.
# Build context: the repository root (docker compose build). Only what load generation needs is
# installed: no torch/transformers/onnx (export and the demo run outside the stack).
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1

WORKDIR /opt/loadtest

# Dependencies first (cached while the source changes). Versions as tested with the repository.
RUN pip install \
      "locust==2.47.0" \
      "tritonclient[http,grpc]==2.73.0" \
      "numpy<2" \
      "tokenizers>=0.19" \
      "pyarrow>=15" \
      "pandas>=2.1" \
      "prometheus-client>=0.20" \
      "nvidia-ml-py>=12" \
      "hdrhistogram>=0.10" \
      "pydantic>=2.5" \
      "pyyaml>=6" \
      "requests>=2.31" \
      "typer>=0.12" \
      "rich>=13"

COPY pyproject.toml README* ./
COPY loadtest ./loadtest
COPY exporters ./exporters
RUN pip install --no-deps . && loadtest --help > /dev/null

# docker-compose.yml mounts ./scenarios over this copy so edits need no rebuild.
COPY scenarios ./scenarios

# 8089 Locust web UI, 5557 master <- workers, 9646 client metrics, 9645 GPU exporter.
EXPOSE 8089 5557 9646 9645
CMD ["locust", "-f", "/opt/loadtest/scenarios", "--help"]
