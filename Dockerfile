# syntax=docker/dockerfile:1
#
# inference-sidecar container images.
#
#   docker build -t inference-sidecar .                      # `runtime` (the last stage): no torch
#   docker build --target demo -t inference-sidecar:demo .   # adds torch (CPU wheel) for `sidecar demo`
#
# Both run as an unprivileged user (uid 10001), keep their state on the volume
# /var/lib/inference-sidecar, read /etc/inference-sidecar/sidecar.yaml (mount your own
# over it or set SIDECAR_* variables), and listen on 8080 (proxy) and 9180 (admin).
# deploy/ shows them in docker compose and Kubernetes; docs/deploy.md explains.

# Pinned to a patch release and Debian release; pin the digest too (python@sha256:...)
# where builds must be reproducible, and let a bot such as Renovate move it.
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

# --- build: a virtual environment with the sidecar and its dependencies --------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
WORKDIR /src
# Every runtime dependency ships manylinux wheels for CPython 3.11: no compiler needed.
COPY pyproject.toml README.md ./
COPY sidecar ./sidecar
RUN /opt/venv/bin/pip install ".[speed]"

# --- build-demo: the same plus torch, the CPU build --------------------------------
FROM build AS build-demo
# PyPI's Linux torch wheels are CUDA builds (gigabytes); the CPU index has the small one.
# For a GPU demo image, build with TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 or similar.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN /opt/venv/bin/pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}" \
 && /opt/venv/bin/pip install ".[demo,speed]"

# --- base: what both images share --------------------------------------------------
FROM ${PYTHON_IMAGE} AS base
ARG SIDECAR_UID=10001
RUN groupadd --system --gid "${SIDECAR_UID}" sidecar \
 && useradd --system --uid "${SIDECAR_UID}" --gid sidecar --home-dir /var/lib/inference-sidecar \
        --no-create-home --shell /usr/sbin/nologin sidecar \
 && mkdir -p /var/lib/inference-sidecar /etc/inference-sidecar \
 && chown sidecar:sidecar /var/lib/inference-sidecar \
 && chmod 0750 /var/lib/inference-sidecar
COPY deploy/docker/sidecar.yaml /etc/inference-sidecar/sidecar.yaml
# The config is a file, not variables: SIDECAR_* variables would override a mounted file.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SIDECAR_CONFIG=/etc/inference-sidecar/sidecar.yaml
WORKDIR /var/lib/inference-sidecar
# The audit spool, JSON Lines files, checkpoint keys and rule state live here: keep it
# on a volume, or undelivered audit records and the error budget die with the container.
VOLUME ["/var/lib/inference-sidecar"]
EXPOSE 8080 9180
# /-/healthy answers while the process serves (not whether the model server is up: that
# is /-/ready). The admin listener binds 0.0.0.0:9180 in the image's config, which
# includes loopback; if you move it, adjust this or disable it (docker run --no-healthcheck).
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:9180/-/healthy', timeout=2).status != 200)"]
# SIGTERM drains in-flight requests (proxy.drain_timeout, 30 s): give `docker stop` longer (-t 40).
STOPSIGNAL SIGTERM
ENTRYPOINT ["sidecar"]
CMD ["run"]

# --- demo: `sidecar demo` (torch model server, sidecar, traffic) and `sidecar demo-server`
FROM base AS demo
COPY --from=build-demo /opt/venv /opt/venv
USER 10001:10001
CMD ["demo", "--device", "cpu", "--listen", "0.0.0.0:8080", "--admin-listen", "0.0.0.0:9180", \
     "--data-dir", "/var/lib/inference-sidecar"]

# --- runtime: the production image, and the default target (the last stage) ---------
FROM base AS runtime
COPY --from=build /opt/venv /opt/venv
USER 10001:10001
