"""What the HTTP side adds for operators: a server span per request (OpenTelemetry), request
metrics and `/metrics` (prometheus-fastapi-instrumentator), and one JSON log line per request
carrying its trace and the caller's X-Correlation-ID."""

from __future__ import annotations

import logging
import time

from fastapi import FastAPI
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from prometheus_client import CollectorRegistry
from prometheus_fastapi_instrumentator import Instrumentator
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from notifier.logging_config import correlated

log = logging.getLogger("notifier.http")

# Probes and scrapes: frequent, and no one's request.
UNOBSERVED_PATHS = ("/health/live", "/health/ready", "/metrics")


class RequestLog:
    """ASGI middleware: runs each request under its X-Correlation-ID and logs it once done."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in UNOBSERVED_PATHS:
            await self.app(scope, receive, send)
            return
        status = 500  # what the server answers if the app fails before responding
        started = time.perf_counter()

        async def send_and_note_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        with correlated(Headers(scope=scope).get("x-correlation-id")):
            try:
                await self.app(scope, receive, send_and_note_status)
            finally:
                log.info(
                    "%s %s %d",
                    scope["method"],
                    scope["path"],
                    status,
                    extra={
                        "http_method": scope["method"],
                        "http_path": scope["path"],
                        "http_status": status,
                        "duration_ms": round((time.perf_counter() - started) * 1000, 1),
                    },
                )


def install(app: FastAPI, registry: CollectorRegistry, metric_namespace: str) -> None:
    app.add_middleware(RequestLog)
    Instrumentator(registry=registry, excluded_handlers=list(UNOBSERVED_PATHS)).instrument(
        app, metric_namespace=metric_namespace
    ).expose(app, include_in_schema=False)
    # One server span per request; the ASGI receive/send spans inside it add only volume.
    FastAPIInstrumentor.instrument_app(
        app,
        excluded_urls=",".join(f"{path}$" for path in UNOBSERVED_PATHS),
        exclude_spans=["receive", "send"],
    )
