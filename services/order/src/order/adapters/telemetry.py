"""OpenTelemetry tracing, configured from the standard `OTEL_*` environment variables.

`OTEL_TRACES_EXPORTER` is a comma-separated list of `otlp` (OTLP over HTTP; endpoint from
`OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`), `console` (one JSON
object per span and line on stdout) and `none`. Unset means `none`, unlike the SDK's own
auto-configuration: a service started locally should not retry a collector that is not there.
`OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES` name the service; the batch processor reads
`OTEL_BSP_*`.

A trace crosses Kafka as W3C `traceparent`/`tracestate` headers. Through the outbox it crosses
as the same headers stored with the outbox row: `current_trace_context()` captures them in the
transaction of the change, `attached()` continues them when the row is published."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

from opentelemetry import context, propagate, trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace import SpanContext

EXPORTERS_VARIABLE = "OTEL_TRACES_EXPORTER"


def _span_context(span_context: SpanContext) -> dict[str, str]:
    return {
        "trace_id": f"0x{trace.format_trace_id(span_context.trace_id)}",
        "span_id": f"0x{trace.format_span_id(span_context.span_id)}",
    }


def _iso(nanoseconds: int | None) -> str | None:
    if nanoseconds is None:
        return None
    return datetime.fromtimestamp(nanoseconds / 1e9, UTC).isoformat()


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def span_line(span: ReadableSpan) -> str:
    """A span as one JSON line, shaped like the SDK's `to_json`, which cannot encode the bytes
    attributes faststream sets (Kafka keys); bytes are written as text."""
    shape: dict[str, Any] = {
        "name": span.name,
        "context": _span_context(span.context) if span.context else None,
        "kind": str(span.kind),
        "parent_id": f"0x{trace.format_span_id(span.parent.span_id)}" if span.parent else None,
        "start_time": _iso(span.start_time),
        "end_time": _iso(span.end_time),
        "status": {
            "status_code": span.status.status_code.name,
            "description": span.status.description,
        },
        "attributes": dict(span.attributes or {}),
        "events": [
            {"name": e.name, "timestamp": _iso(e.timestamp), "attributes": dict(e.attributes or {})}
            for e in span.events
        ],
        "links": [
            {"context": _span_context(link.context), "attributes": dict(link.attributes or {})}
            for link in span.links
        ],
        "resource": {"attributes": dict(span.resource.attributes)},
    }
    return json.dumps(shape, default=_text) + "\n"


def span_exporters(names: str) -> list[SpanExporter]:
    """The exporters `OTEL_TRACES_EXPORTER` names; an unknown name is refused, not ignored."""
    exporters: list[SpanExporter] = []
    for name in filter(None, (part.strip().lower() for part in names.split(","))):
        if name == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporters.append(OTLPSpanExporter())
        elif name == "console":
            # A line-buffered stream of its own on stdout: each span reaches the file in one
            # write, whole, however the log lines on stderr interleave with it.
            stdout = open(sys.stdout.fileno(), "w", buffering=1, closefd=False)  # noqa: SIM115
            exporters.append(ConsoleSpanExporter(out=stdout, formatter=span_line))
        elif name != "none":
            raise ValueError(f"{EXPORTERS_VARIABLE}: unknown exporter {name!r}")
    return exporters


def service_resource(default_name: str) -> Resource:
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: default_name}))
    return resource


def configure_tracing(default_service_name: str) -> TracerProvider | None:
    """Install the process's tracer provider, if any exporter is configured. Once per process:
    the global provider cannot be replaced."""
    exporters = span_exporters(os.environ.get(EXPORTERS_VARIABLE, "none"))
    if not exporters:
        return None
    provider = TracerProvider(resource=service_resource(default_service_name))
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return provider


def spans_recorded() -> bool:
    """Whether a tracer provider is installed (by `configure_tracing`, or by whoever runs the
    service); until one is, every span is a no-op that only carries its parent's context."""
    return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


def shutdown_tracing(provider: TracerProvider | None) -> None:
    """Export the spans still buffered (on a clean stop)."""
    if provider is not None:
        provider.shutdown()


def current_trace_context() -> dict[str, str]:
    """The current trace context as W3C headers (empty outside any trace)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


@contextlib.contextmanager
def attached(headers: Mapping[str, str]) -> Iterator[None]:
    """Continue the trace that `headers` carry (stored or received) for the block."""
    token = context.attach(propagate.extract(headers))
    try:
        yield
    finally:
        context.detach(token)


def tracer() -> trace.Tracer:
    return trace.get_tracer("order")
