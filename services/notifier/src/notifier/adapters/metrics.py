"""The notifier's Prometheus metrics, in a registry of the app's own (so several apps can live
in one process, as in the tests).

Counts and latencies of consumed and published messages come from faststream's Prometheus
middleware (`notifier_received_*`, `notifier_published_*`). Gauges that need the database or
Kafka are refreshed by a periodic task (`MetricsSampler`), never while a scrape waits."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from faststream import BaseMiddleware
from faststream.kafka.prometheus import KafkaPrometheusMiddleware
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from servicekit.consumer_lag import ConsumerLagReader

log = logging.getLogger(__name__)

PREFIX = "notifier"
DLQ_SUFFIX = ".dlq"


class NotifierMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.outbox_backlog = Gauge(
            f"{PREFIX}_outbox_backlog", "Outbox rows Kafka has not acknowledged yet", registry=r
        )
        self.outbox_oldest_age = Gauge(
            f"{PREFIX}_outbox_oldest_age_seconds",
            "Age of the oldest outbox row Kafka has not acknowledged yet (0 when none)",
            registry=r,
        )
        self.outbox_relayed = Counter(
            f"{PREFIX}_outbox_relayed", "Outbox rows Kafka acknowledged", ["topic"], registry=r
        )
        self.communications = Gauge(
            f"{PREFIX}_communications",
            "Communications now in each unfinished status (queued, sending, failed, dead)",
            ["status"],
            registry=r,
        )
        self.sends = Counter(
            f"{PREFIX}_sends",
            "Send attempts by channel and outcome (sent, failed, dead)",
            ["channel", "outcome"],
            registry=r,
        )
        self.send_duration = Histogram(
            f"{PREFIX}_send_duration_seconds",
            "How long handing a communication to its provider took",
            ["channel"],
            registry=r,
        )
        self.consumer_lag = Gauge(
            f"{PREFIX}_consumer_lag",
            "Messages of a partition the consumer group has not committed yet",
            ["group", "topic", "partition"],
            registry=r,
        )
        self.dead_letters = Counter(
            f"{PREFIX}_dead_letters",
            "Messages published to a dead-letter topic",
            ["topic"],
            registry=r,
        )
        self.sample_failures = Counter(
            f"{PREFIX}_metrics_sample_failures",
            "Refreshes of sampled gauges that failed (their value is then stale)",
            ["sample"],
            registry=r,
        )

    def broker_middlewares(self) -> tuple[Any, ...]:
        """faststream middlewares counting this service's Kafka traffic into the registry."""
        return (
            KafkaPrometheusMiddleware(
                registry=self.registry, app_name=PREFIX, metrics_prefix=PREFIX
            ),
            functools.partial(DeadLetterCount, counter=self.dead_letters),
        )

    def record_send(self, channel: str, outcome: str, seconds: float) -> None:
        self.sends.labels(channel, outcome).inc()
        self.send_duration.labels(channel).observe(seconds)

    def set_communications(self, counts: Mapping[str, int]) -> None:
        for status, count in counts.items():
            self.communications.labels(status).set(count)

    async def sample_consumer_lag(self, reader: ConsumerLagReader) -> None:
        for lag in await reader.read():
            self.consumer_lag.labels(reader.group, lag.topic, str(lag.partition)).set(lag.lag)


class DeadLetterCount(BaseMiddleware):
    """Counts each message published to a `<topic>.dlq`, labelled with that topic."""

    def __init__(self, msg: Any, /, *, context: Any, counter: Counter) -> None:
        super().__init__(msg, context=context)
        self._counter = counter

    async def publish_scope(self, call_next: Callable[[Any], Awaitable[Any]], cmd: Any) -> Any:
        result = await call_next(cmd)
        destination = str(getattr(cmd, "destination", ""))
        if destination.endswith(DLQ_SUFFIX):
            self._counter.labels(destination).inc()
        return result


class MetricsSampler:
    """Refreshes the sampled gauges every `interval` seconds until cancelled. A failing sample
    (Kafka or the database down) is counted and leaves its gauges at their last value."""

    def __init__(
        self,
        samples: Mapping[str, Callable[[], Awaitable[None]]],
        failures: Counter,
        interval: float,
        on_stop: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._samples = samples
        self._failures = failures
        self._interval = interval
        self._on_stop = on_stop

    async def sample_once(self) -> None:
        for name, sample in self._samples.items():
            try:
                await sample()
            except Exception:
                self._failures.labels(name).inc()
                log.debug("metrics sample %s failed", name, exc_info=True)

    async def run(self) -> None:
        try:
            while True:
                await self.sample_once()
                await asyncio.sleep(self._interval)
        finally:
            if self._on_stop is not None:
                await self._on_stop()
