# The router alone; Triton and other backends run elsewhere (see compose.yaml).
# An untested example: adapt and test it before use.
#
#   docker build -t airouter .
#   docker run -p 3000:3000 -e AIROUTER_API_KEY=sk-mine -e TRITON_GRPC_URL=triton:8001 airouter
#
# The default config is deploy/backends.toml; mount your own at /etc/airouter/backends.toml.
# Listening on 0.0.0.0 needs client keys (server.api_keys or [keys.*]) or
# server.allow_unauthenticated = true: the router refuses to start otherwise.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN groupadd --system --gid 10001 airouter \
    && useradd --system --uid 10001 --gid airouter --no-create-home --shell /usr/sbin/nologin airouter

WORKDIR /src
COPY pyproject.toml README.md ./
COPY airouter ./airouter
# The source tree by path (./); its dependencies' versions are pyproject.toml's ranges.
RUN pip install "./[triton,otel]" && rm -rf /src

COPY deploy/backends.toml /etc/airouter/backends.toml

# Numeric, so a runtime can tell the user is not root without reading /etc/passwd
# (Kubernetes' runAsNonRoot).
USER 10001:10001
WORKDIR /
EXPOSE 3000
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s \
    CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:3000/health/live', timeout=2)"]
CMD ["airouter", "--config", "/etc/airouter/backends.toml", "--host", "0.0.0.0"]
