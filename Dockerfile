# The service's image. Two stages: uv installs the locked dependencies into /app/.venv; the final image holds that
# environment and the source only, and runs as an unprivileged user.
#
#   docker build -t delivery:latest .
#   docker build -t delivery:latest --build-arg BASE_IMAGE=delivery-offline/python:3.11 \
#     --secret id=ca_bundle,src=/etc/ssl/certs/ca-certificates.crt .
#
# BASE_IMAGE: any Python 3.11 image with pip (python:3.11-slim by default; deploy/offline/ builds one from Debian's
# packages). ca_bundle (optional build secret): the certificate authorities that pip and uv trust while downloading,
# for a network whose proxy presents its own authority; it is mounted for the downloading steps only and is in
# no layer of the image.
#
# Layers: the dependencies are installed from pyproject.toml and uv.lock alone, and the project is installed
# editable (a path to /app/src), so a change in src/ rebuilds only the final image's source layer.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PYTHON_DOWNLOADS=never PIP_DISABLE_PIP_VERSION_CHECK=1
RUN --mount=type=secret,id=ca_bundle \
    if [ -s /run/secrets/ca_bundle ]; then export PIP_CERT=/run/secrets/ca_bundle; fi; \
    pip install --no-cache-dir 'uv>=0.9'
WORKDIR /app
COPY pyproject.toml uv.lock ./
# The project's own metadata (its name, version and the `delivery` command) comes from pyproject.toml; an empty
# package stands in for src/ here, so that this layer does not depend on the source.
RUN --mount=type=secret,id=ca_bundle \
    if [ -s /run/secrets/ca_bundle ]; then export SSL_CERT_FILE=/run/secrets/ca_bundle; fi; \
    mkdir -p src/delivery && touch src/delivery/__init__.py README.md \
    && uv sync --frozen --no-dev --no-cache \
    && rm -rf src README.md

# The source, compiled to bytecode here: the final image's user cannot write next to it.
FROM build AS source
COPY src ./src
RUN python -m compileall -q src

FROM ${BASE_IMAGE}
RUN useradd --create-home --uid 10001 app \
    && mkdir -p /var/lib/delivery/metrics && chown app /var/lib/delivery/metrics
WORKDIR /app
COPY --from=build /app/.venv /app/.venv
COPY --from=source /app/src /app/src
ENV PATH=/app/.venv/bin:$PATH PYTHONUNBUFFERED=1 HOST=0.0.0.0 PORT=8000
USER app
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
CMD ["delivery", "serve"]
