# syntax=docker/dockerfile:1
# Code-location image for cost_pipeline on Kubernetes (Dagster Helm chart, dagster-user-deployments).
# Everything is installed at BUILD time from PyPI; nothing is downloaded when a pod starts: the DuckDB
# extensions (ducklake, postgres, httpfs) come from their pip wheels, which pyproject.toml already pins.
#
# Build from the project root:   docker build -t REGISTRY/cost-pipeline:TAG .
# The same image serves the code location (`dagster code-server start`) and runs every launched run:
# the K8sRunLauncher starts run pods from it (`dagster api execute_run ...`), so it also carries
# dagster-k8s (the run launcher class named in the instance's dagster.yaml) and dagster-postgres
# (the instance storage).

ARG PYTHON_IMAGE=python:3.11-slim

# ---- build stage: a virtualenv with the project and its pinned Dagster family -----------------------
FROM ${PYTHON_IMAGE} AS build

# Dagster core and its libraries move in lockstep: dagster-k8s 0.29.27 and dagster-postgres 0.29.27
# require dagster==1.13.27 exactly (their wheel metadata), the release the project's own venv runs.
# Bump all of these together.
ARG DAGSTER_VERSION=1.13.27
ARG DAGSTER_LIBS_VERSION=0.29.27

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# pyproject.toml names README.md as the readme, so setuptools needs it to build the wheel.
COPY pyproject.toml setup.cfg README.md ./
COPY cost_pipeline ./cost_pipeline

# The last line fails the build, not the first pod, if a DuckDB extension wheel or the code location
# does not import (importing cost_pipeline.definitions has no side effects and needs no env).
# A regular (non-editable) install: the package lands in site-packages and /src is not needed later.
# Every dependency has a manylinux wheel for CPython 3.11 (duckdb, pyarrow, pandas, psycopg2-binary,
# matplotlib, uvloop, ...), so no compiler is needed.
RUN pip install --upgrade pip \
 && pip install . \
        "dagster==${DAGSTER_VERSION}" \
        "dagster-webserver==${DAGSTER_VERSION}" \
        "dagster-k8s==${DAGSTER_LIBS_VERSION}" \
        "dagster-postgres==${DAGSTER_LIBS_VERSION}" \
        "dagster-duckdb==${DAGSTER_LIBS_VERSION}" \
        "dagster-duckdb-pandas==${DAGSTER_LIBS_VERSION}" \
 && pip check \
 && python -c "import duckdb_extension_ducklake, duckdb_extension_postgres, duckdb_extension_httpfs, dagster_k8s, dagster_postgres; import cost_pipeline.definitions"

# ---- runtime stage -----------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}

# DAGSTER_HOME: the chart sets it (and mounts the instance's dagster.yaml) in run pods; this default only
# matters when the image is run by hand. COST_PIPELINE_COSTS: costs.toml ships in the image; point the
# variable at a mounted ConfigMap to override it without a rebuild.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    DAGSTER_HOME=/opt/dagster/dagster_home \
    COST_PIPELINE_COSTS=/opt/cost_pipeline/costs.toml

# Non-root, with a numeric UID so Kubernetes' runAsNonRoot can verify it.
RUN groupadd --system --gid 10001 app \
 && useradd --system --uid 10001 --gid app --home-dir /opt/cost_pipeline --shell /usr/sbin/nologin app \
 && mkdir -p /opt/cost_pipeline /opt/dagster/dagster_home \
 && chown -R app:app /opt/cost_pipeline /opt/dagster/dagster_home

COPY --from=build /opt/venv /opt/venv
WORKDIR /opt/cost_pipeline
# workspace.yaml is for running the image by hand (`dagster dev`); on Kubernetes the chart writes the
# webserver's workspace. costs.toml is read by every run (COST_PIPELINE_COSTS above).
COPY --chown=app:app costs.toml workspace.yaml ./

USER 10001:10001
EXPOSE 4000

# No ENTRYPOINT: the chart replaces the container's args with
#   dagster code-server start -h 0.0.0.0 -p <port> <codeServerArgs...>   (deploy/k8s/values.yaml)
# and the run launcher replaces them with `dagster api execute_run ...`; an ENTRYPOINT would be
# prepended to both. `dagster code-server start` (rather than `dagster api grpc`) loads the code in a
# subprocess it can restart, so "Reload" in the UI works without restarting the pod.
CMD ["dagster", "code-server", "start", "-h", "0.0.0.0", "-p", "4000", "-m", "cost_pipeline.definitions"]
