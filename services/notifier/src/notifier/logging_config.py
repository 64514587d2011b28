"""Logs as one JSON object per line (python-json-logger), each carrying the service, the trace
and span of the work it belongs to and, where known, the caller's correlation id; or plain text
for local reading. Every logger, uvicorn's and faststream's included, goes through the root
handler configured here."""

from __future__ import annotations

import contextlib
import logging
import logging.config
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any, Literal

from opentelemetry import trace

LogFormat = Literal["json", "text"]

# The X-Correlation-ID of the request, or the correlation id of the message, being handled.
correlation_id: ContextVar[str | None] = ContextVar("correlation_id", default=None)


@contextlib.contextmanager
def correlated(value: str | None) -> Iterator[None]:
    """Log lines written inside carry `value` as their correlation id. Reset on leaving, since
    a consumer handles one message after another in the same task."""
    token = correlation_id.set(value or None)
    try:
        yield
    finally:
        correlation_id.reset(token)


class TraceContextFilter(logging.Filter):
    """Adds `trace_id`, `span_id` (W3C hex) and `correlation_id` to a record when known."""

    def filter(self, record: logging.LogRecord) -> bool:
        span_context = trace.get_current_span().get_span_context()
        if span_context.is_valid:
            record.trace_id = trace.format_trace_id(span_context.trace_id)
            record.span_id = trace.format_span_id(span_context.span_id)
        if (value := correlation_id.get()) is not None:
            record.correlation_id = value
        return True


def logging_config(service: str, log_format: LogFormat, level: str) -> dict[str, Any]:
    formatters: dict[str, Any] = {
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": ["levelname", "name", "message"],
            "rename_fields": {"levelname": "level", "name": "logger"},
            "static_fields": {"service": service},
            "timestamp": True,
        },
        "text": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
    }
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"trace_context": {"()": TraceContextFilter}},
        "formatters": {log_format: formatters[log_format]},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": log_format,
                "filters": ["trace_context"],
            }
        },
        "root": {"level": level.upper(), "handlers": ["stderr"]},
        # faststream gives its own loggers a coloured handler and stops them propagating;
        # they are sent through the root handler like every other logger.
        "loggers": {
            name: {"handlers": [], "propagate": True}
            for name in ("faststream", "faststream.access", "uvicorn", "uvicorn.error")
        },
    }


def configure_logging(service: str, log_format: LogFormat = "json", level: str = "INFO") -> None:
    logging.config.dictConfig(logging_config(service, log_format, level))
    logging.captureWarnings(True)  # Python's warnings as log lines too, not bare text
