# syntax=docker/dockerfile:1
# Build: the locked dependencies and the project, installed with uv into /app/.venv.
FROM python:3.11-slim AS build
RUN pip install --no-cache-dir 'uv>=0.9'
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PYTHON_DOWNLOADS=never
WORKDIR /app
COPY pyproject.toml uv.lock ./
RUN uv sync --frozen --no-dev --no-install-project
COPY README.md alembic.ini ./
COPY src ./src
RUN uv sync --frozen --no-dev --no-editable

# Run: the virtual environment only, as an unprivileged user; no compilers, no uv.
FROM python:3.11-slim
RUN useradd --create-home --uid 10001 app \
    && mkdir -p /var/lib/delivery/metrics && chown app /var/lib/delivery/metrics
WORKDIR /app
COPY --from=build /app/.venv /app/.venv
ENV PATH=/app/.venv/bin:$PATH PYTHONUNBUFFERED=1 HOST=0.0.0.0 PORT=8000
USER app
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
CMD ["delivery", "serve"]
