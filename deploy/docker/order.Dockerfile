# syntax=docker/dockerfile:1
# The order service: HTTP API, command consumer and (in-process) outbox relay.
# Build from the repository root: docker build -f deploy/docker/order.Dockerfile -t order-backbone/order .
# Run: docker run order-backbone/order [serve|migrate|...]  (arguments go to `python -m order`)

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
COPY --from=ghcr.io/astral-sh/uv:0.13.9 /uv /usr/local/bin/uv
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON=/usr/local/bin/python3.11 \
    UV_PROJECT_ENVIRONMENT=/app/.venv
WORKDIR /app

# Third-party dependencies from the lock file alone: this layer is rebuilt only when uv.lock changes.
RUN --mount=type=cache,target=/root/.cache/uv \
    --mount=type=bind,source=uv.lock,target=uv.lock \
    --mount=type=bind,source=pyproject.toml,target=pyproject.toml \
    uv sync --frozen --no-dev --no-install-workspace --package order

# The service and the workspace packages it shares (contracts, pgstatements, servicekit).
# They stay editable installs on purpose: a service finds its Alembic migrations beside its
# source tree (order.adapters.schema), so the tree keeps the repository's layout under /app.
COPY pyproject.toml uv.lock ./
COPY contracts contracts
COPY libs/pgstatements libs/pgstatements
COPY libs/servicekit libs/servicekit
COPY services/order services/order
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --package order \
    && python -m compileall -q contracts/src libs/pgstatements/src libs/servicekit/src services/order/src services/order/migrations

FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin app
# Owned by root: the app user may read its code but not change it.
COPY --from=builder /app /app
WORKDIR /app
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    ORDER_HTTP_HOST=0.0.0.0 \
    ORDER_HTTP_PORT=8000
USER 10001:10001
EXPOSE 8000
# Healthy means ready: the database and the broker answer (there is no separate readiness in Docker).
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health/ready' % os.environ['ORDER_HTTP_PORT'], timeout=4)"]
ENTRYPOINT ["python", "-m", "order"]
CMD ["serve"]
