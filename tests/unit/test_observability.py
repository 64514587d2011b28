"""Observability logic without I/O: consumer lag arithmetic, exporter selection from
OTEL_TRACES_EXPORTER, the JSON log line, the periodic sampler, per-record audit spans, the
caller's trace carried without spans."""

from __future__ import annotations

import io
import json
import logging
import logging.config
from typing import Any, cast

import httpx
import pytest
from aiokafka import ConsumerRecord, TopicPartition
from fastapi import FastAPI
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.sdk.resources import SERVICE_NAME
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from prometheus_client import CollectorRegistry, Counter

from audit.adapters.telemetry import record_key, span_per_record
from order.adapters.metrics import MetricsSampler
from order.adapters.telemetry import (
    attached,
    current_trace_context,
    service_resource,
    span_exporters,
    span_line,
)
from order.entrypoints import observability
from order.logging_config import correlated, logging_config
from servicekit.consumer_lag import PartitionLag, lag_of
from tests.observability import record_spans

TOPIC = "orders.commands"


def test_lag_is_the_end_minus_the_committed_offset_or_the_first_offset_without_a_commit() -> None:
    p0, p1, p2 = (TopicPartition(TOPIC, p) for p in range(3))
    lags = lag_of(
        ends={p0: 10, p1: 7, p2: 5},
        committed={p0: 4, p1: -1},  # p1: asked for, never committed; p2: not even asked for
        beginnings={p1: 2, p2: 5},
    )
    assert lags == [PartitionLag(TOPIC, 0, 6), PartitionLag(TOPIC, 1, 5), PartitionLag(TOPIC, 2, 0)]


def test_a_commit_beyond_the_end_seen_is_no_negative_lag() -> None:
    # The end offsets are read after the commits; a commit in between must not read as -1.
    partition = TopicPartition(TOPIC, 0)
    (lag,) = lag_of(ends={partition: 3}, committed={partition: 4}, beginnings={})
    assert lag.lag == 0


def test_exporters_are_chosen_by_name_and_an_unknown_name_is_refused() -> None:
    assert span_exporters("") == []
    assert span_exporters("none") == []
    exporters = span_exporters(" console , otlp ")
    assert [type(e) for e in exporters] == [ConsoleSpanExporter, OTLPSpanExporter]
    with pytest.raises(ValueError, match="zipkin"):
        span_exporters("zipkin")


def test_a_span_is_one_json_line_even_with_the_bytes_attributes_faststream_sets() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    with (
        tracer.start_as_current_span("parent"),
        tracer.start_as_current_span("orders.events publish") as span,
    ):
        span.set_attribute("messaging.kafka.message.key", b"order-1")
    child = next(s for s in exporter.get_finished_spans() if s.name == "orders.events publish")
    line = span_line(child)
    assert line.endswith("\n")
    assert "\n" not in line[:-1]
    shape = json.loads(line)
    assert shape["attributes"]["messaging.kafka.message.key"] == "order-1"
    assert shape["context"]["trace_id"] == f"0x{span.get_span_context().trace_id:032x}"
    assert child.parent is not None
    assert shape["parent_id"] == f"0x{child.parent.span_id:016x}"
    assert shape["kind"] == "SpanKind.INTERNAL"
    assert shape["end_time"] > shape["start_time"]


def test_the_service_is_named_by_default_and_by_otel_service_name_when_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    assert service_resource("order").attributes[SERVICE_NAME] == "order"
    monkeypatch.setenv("OTEL_SERVICE_NAME", "order-eu-1")
    assert service_resource("order").attributes[SERVICE_NAME] == "order-eu-1"


def test_the_trace_context_survives_being_stored_and_attached_again() -> None:
    tracer = TracerProvider().get_tracer("test")
    assert current_trace_context() == {}
    with tracer.start_as_current_span("change") as change:
        stored = current_trace_context()
    with attached(stored), tracer.start_as_current_span("publish") as publish:
        pass
    parent = cast(ReadableSpan, publish).parent
    assert publish.get_span_context().trace_id == change.get_span_context().trace_id
    assert parent is not None
    assert parent.span_id == change.get_span_context().span_id


async def test_without_recorded_spans_a_request_still_runs_in_its_callers_trace() -> None:
    app = FastAPI()

    @app.get("/context")
    async def trace_context() -> dict[str, str]:
        return current_trace_context()

    observability.install(app, CollectorRegistry(), "test", record_spans=False)
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    caller = f"00-{trace_id}-b7ad6b7169203331-01"
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://order") as client:
        traced = await client.get("/context", headers={"traceparent": caller, "tracestate": "a=1"})
        untraced = await client.get("/context")

    assert traced.json()["traceparent"].split("-")[1] == trace_id
    assert traced.json()["tracestate"] == "a=1"
    assert "traceparent" not in untraced.json()
    layers = []
    layer = app.middleware_stack
    while layer is not None:
        layers.append(type(layer))
        layer = getattr(layer, "app", None)
    assert observability.CallerTrace in layers
    assert OpenTelemetryMiddleware not in layers  # no span machinery that would record nothing


def log_to(stream: io.StringIO, log_format: Any) -> logging.Logger:
    config = logging_config("order", log_format, "INFO")
    config["handlers"]["stderr"]["stream"] = stream
    config["loggers"] = {}
    logging.config.dictConfig(config)
    return logging.getLogger("order.test")


@pytest.fixture
def restore_logging() -> Any:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("restore_logging")
def test_a_json_log_line_carries_service_trace_span_and_correlation_id() -> None:
    stream = io.StringIO()
    log = log_to(stream, "json")
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("work") as span, correlated("req-7"):
        log.info("order %s confirmed", "o-1", extra={"version": 2})
    log.warning("outside")
    inside, outside = (json.loads(line) for line in stream.getvalue().splitlines())
    assert inside["message"] == "order o-1 confirmed"
    assert inside["level"] == "INFO"
    assert inside["logger"] == "order.test"
    assert inside["service"] == "order"
    assert inside["version"] == 2
    assert inside["correlation_id"] == "req-7"
    assert inside["trace_id"] == format(span.get_span_context().trace_id, "032x")
    assert inside["span_id"] == format(span.get_span_context().span_id, "016x")
    assert "timestamp" in inside
    assert outside["level"] == "WARNING"
    assert "trace_id" not in outside
    assert "correlation_id" not in outside


@pytest.mark.usefixtures("restore_logging")
def test_text_logs_are_one_plain_line() -> None:
    stream = io.StringIO()
    log_to(stream, "text").info("hello")
    (line,) = stream.getvalue().splitlines()
    assert line.endswith(" INFO order.test hello")


async def test_a_failing_sample_is_counted_and_the_others_still_run() -> None:
    failures = Counter("failures", "", ["sample"], registry=CollectorRegistry())
    ran: list[str] = []

    async def broken() -> None:
        raise ConnectionError("kafka down")

    async def fine() -> None:
        ran.append("fine")

    sampler = MetricsSampler({"broken": broken, "fine": fine}, failures, interval=1.0)
    await sampler.sample_once()
    await sampler.sample_once()
    assert ran == ["fine", "fine"]
    assert failures.labels("broken")._value.get() == 2


def record(offset: int, headers: list[tuple[str, bytes]]) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        topic="orders.events",
        partition=0,
        offset=offset,
        timestamp=0,
        timestamp_type=0,
        key=b"k",
        value=b"{}",
        checksum=None,
        serialized_key_size=1,
        serialized_value_size=2,
        headers=headers,
    )


def test_each_traced_record_of_a_batch_gets_a_span_in_its_own_trace() -> None:
    spans = record_spans()
    trace_id, parent_id = "a" * 32, "b" * 16
    traced = record(1, [("traceparent", f"00-{trace_id}-{parent_id}-01".encode())])
    untraced = record(2, [("content-type", b"application/json")])
    started: list[Any] = []

    def fail_in_batch() -> None:
        with span_per_record([traced, untraced]) as spans_by_record:
            started.extend(spans_by_record)
            raise RuntimeError("database down")

    with pytest.raises(RuntimeError):
        fail_in_batch()
    assert started == [record_key(traced)]
    (span,) = [s for s in spans.get_finished_spans() if s.name == "orders.events audit"]
    assert format(span.context.trace_id, "032x") == trace_id
    assert span.parent is not None
    assert format(span.parent.span_id, "016x") == parent_id
    assert span.status.status_code is StatusCode.ERROR
    spans.shutdown()
