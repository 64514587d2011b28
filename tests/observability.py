"""Helpers for the observability tests: recording the spans this test process makes with the
OpenTelemetry SDK, reading JSON log lines. (A Prometheus exposition: devstack.metrics.)"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter


def record_spans() -> InMemorySpanExporter:
    """An exporter receiving every span ended in this process from now on. The global tracer
    provider can be set once per process, so a later caller adds to the same provider."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


def json_lines(path: Path) -> Iterator[dict[str, Any]]:
    """Each line of a log file as the JSON object it must be (a log line or an exported span);
    a line that is not one fails with the line in the message."""
    for line in path.read_text(errors="replace").splitlines():
        if line.strip():
            try:
                parsed = json.loads(line)
            except json.JSONDecodeError as error:
                raise AssertionError(f"not a JSON line in {path.name}: {line!r}") from error
            assert isinstance(parsed, dict), line
            yield parsed
