# shadowroute service image. Built by docker-compose.yml; usable on its own:
#   docker build -t shadowroute .
#   docker run --rm shadowroute --help
FROM python:3.11-slim

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
