"""Helpers for the observability tests: reading a Prometheus exposition, recording the spans
this test process makes with the OpenTelemetry SDK."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families


class Scrape:
    """One `/metrics` answer, parsed."""

    def __init__(self, text: str) -> None:
        self.samples = [
            (sample.name, sample.labels, sample.value)
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        ]

    def values(self, name: str, **labels: str) -> list[float]:
        """The values of every sample called `name` whose labels include `labels`."""
        return [
            value
            for sample, sample_labels, value in self.samples
            if sample == name and labels.items() <= sample_labels.items()
        ]

    def value(self, name: str, **labels: str) -> float | None:
        """The sum over the matching samples; None when there is none."""
        found = self.values(name, **labels)
        return sum(found) if found else None

    def labels_of(self, name: str) -> list[dict[str, str]]:
        return [labels for sample, labels, _ in self.samples if sample == name]

    def __repr__(self) -> str:
        # What a failed wait saw, without the `_created` timestamps.
        seen = [f"{n}{labels}={v}" for n, labels, v in self.samples if "_created" not in n]
        return f"Scrape({len(self.samples)} samples: {seen[:60]})"


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
