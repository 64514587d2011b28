"""Composition root of the order service: builds every dependency from the settings."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import AsyncIterator
from datetime import timedelta

from fastapi import FastAPI
from faststream.kafka import KafkaBroker
from faststream.kafka.opentelemetry import KafkaTelemetryMiddleware
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from contracts import ORDERS_COMMANDS
from order.adapters.broker import BrokerConnection
from order.adapters.listening import asyncpg_dsn
from order.adapters.metrics import PREFIX, MetricsSampler, OrderMetrics
from order.adapters.outbox_relay import OutboxRelay
from order.adapters.peer_reads import PeerReadApi
from order.adapters.published_records import PublishedRecords
from order.adapters.schema import assert_schema_current, upgrade_to_head
from order.adapters.telemetry import spans_recorded
from order.adapters.token_cache import KnownTokens
from order.adapters.unit_of_work import UnitOfWorkFactory
from order.config import Settings, database_role, refuse_dev_secrets
from order.entrypoints import admin_page, http, observability, peer_reads, retention
from order.entrypoints.commands import register_command_handlers
from order.entrypoints.publications import declare_publications
from servicekit.consumer_lag import ConsumerLagReader

log = logging.getLogger(__name__)


# The outbox relay's own connections: requests taking every connection of the API's pool (an
# overload) must not hold up announcing what was already committed. One publishes a batch
# (or purges published rows), one reads the backlog for the metrics.
RELAY_POOL_SIZE = 2


def build_engine(settings: Settings) -> AsyncEngine:
    """The engine everything but the migrations runs on, as the runtime role."""
    # No pre-ping (a round trip per checkout): a unit of work whose connection died in the
    # pool is run again (UnitOfWorkFactory.run), the relay retries its batch, and the first
    # such failure invalidates the whole pool. Recycling bounds a connection's age anyway.
    # hide_parameters: bound values (customer details, token digests) stay out of error
    # messages and logs.
    return create_async_engine(
        settings.database_url.get_secret_value(),
        pool_size=settings.database_pool_size,
        max_overflow=settings.database_pool_overflow,
        pool_timeout=settings.database_pool_wait_seconds,
        pool_recycle=1800,
        hide_parameters=True,
    )


def migrate(settings: Settings) -> None:
    """Upgrade the schema to the latest migration, as the database's owner."""
    refuse_dev_secrets(settings, migrating=True)
    upgrade_to_head(settings.migration_database_url.get_secret_value(), database_role(settings))


def build_broker(settings: Settings, metrics: OrderMetrics) -> KafkaBroker:
    # Idempotent producer with acks=all: a retried send can neither duplicate nor reorder.
    # The telemetry middleware carries the trace in the records' headers, both ways.
    return KafkaBroker(
        settings.kafka_bootstrap_servers,
        enable_idempotence=True,
        acks="all",
        linger_ms=5,
        client_id="order-service",
        # On stop, the command in hand may finish (and commit its offset) for this long.
        graceful_timeout=settings.shutdown_grace_seconds,
        middlewares=(KafkaTelemetryMiddleware(), *metrics.broker_middlewares()),
        logger=logging.getLogger("faststream.access.kafka"),
    )


def build_relay_engine(settings: Settings) -> AsyncEngine:
    relay_pool = {"database_pool_size": RELAY_POOL_SIZE, "database_pool_overflow": 0}
    return build_engine(settings.model_copy(update=relay_pool))


def build_relay(settings: Settings, engine: AsyncEngine, metrics: OrderMetrics) -> OutboxRelay:
    # A client of the relay's own: it replaces its producer after a failed send, which must not
    # restart the command consumer.
    kafka = BrokerConnection(build_broker(settings, metrics), settings.relay_retry_seconds)
    published = PublishedRecords(
        settings.kafka_bootstrap_servers, timeout=settings.relay_read_back_timeout_seconds
    )
    return OutboxRelay(
        engine,
        kafka,
        published,
        database_url=settings.database_url.get_secret_value(),
        batch_size=settings.relay_batch_size,
        poll_interval=settings.relay_poll_interval_seconds,
        linger=settings.relay_linger_ms / 1000,
        retry_interval=settings.relay_retry_seconds,
        retention=timedelta(hours=settings.outbox_retention_hours),
        on_acknowledged=lambda topic, count: metrics.outbox_relayed.labels(topic).inc(count),
    )


def build_known_tokens(
    settings: Settings, uow_factory: UnitOfWorkFactory, metrics: OrderMetrics
) -> KnownTokens:
    lookups = {source: metrics.token_lookups.labels(source) for source in ("memory", "database")}
    return KnownTokens(
        lambda token: uow_factory.read(lambda uow: uow.tokens.lookup(token)),
        capacity=settings.token_cache_size,
        check_interval=settings.token_listener_check_seconds,
        count=lambda source: lookups[source].inc(),
    )


def build_sampler(
    settings: Settings, metrics: OrderMetrics, connection: BrokerConnection, relay: OutboxRelay
) -> MetricsSampler:
    lag = ConsumerLagReader(
        settings.kafka_bootstrap_servers, settings.commands_consumer_group, [ORDERS_COMMANDS]
    )

    async def outbox() -> None:
        backlog = await relay.backlog()
        metrics.outbox_backlog.set(backlog.rows)
        metrics.outbox_oldest_age.set(backlog.oldest_age_seconds)

    async def kafka() -> None:
        metrics.kafka_up.set(await connection.check(within=settings.kafka_check_seconds))

    async def consumer_lag() -> None:
        await metrics.sample_consumer_lag(lag)

    return MetricsSampler(
        {"outbox": outbox, "kafka": kafka, "consumer_lag": consumer_lag},
        metrics.sample_failures,
        settings.metrics_interval_seconds,
        on_stop=lag.close,
    )


def build_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    engine = build_engine(settings)
    uow_factory = UnitOfWorkFactory(engine, settings.database_wait_seconds)
    metrics = OrderMetrics()
    known_tokens = build_known_tokens(settings, uow_factory, metrics)
    broker = build_broker(settings, metrics)
    register_command_handlers(broker, uow_factory, settings)
    declare_publications(broker)
    connection = BrokerConnection(broker, settings.relay_retry_seconds)
    relay_engine = build_relay_engine(settings)
    relay = build_relay(settings, relay_engine, metrics)
    sampler = build_sampler(settings, metrics, connection, relay)
    notifier_reads = PeerReadApi(
        "notifier", settings.notifier_service_url, timeout=settings.peer_timeout_seconds
    )
    audit_reads = PeerReadApi(
        "audit", settings.audit_service_url, timeout=settings.peer_timeout_seconds
    )

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # Building the app (for its documents) needs no secrets; starting it does.
        refuse_dev_secrets(settings)
        await assert_schema_current(engine)
        tasks = [
            asyncio.create_task(connection.connect(), name="kafka-connect"),
            asyncio.create_task(sampler.run(), name="metrics-sampler"),
            asyncio.create_task(
                retention.forget_expired_idempotency_keys_every(
                    settings.idempotency_purge_interval_seconds,
                    uow_factory,
                    timedelta(hours=settings.idempotency_retention_hours),
                ),
                name="idempotency-retention",
            ),
        ]
        if settings.token_cache_size:
            keep_current = known_tokens.keep_current(
                asyncpg_dsn(settings.database_url.get_secret_value())
            )
            tasks.append(asyncio.create_task(keep_current, name="token-listener"))
        relaying = (
            asyncio.create_task(relay.run(), name="outbox-relay")
            if settings.relay_in_process
            else None
        )
        try:
            # What startup built (modules, the app, its schemas) lives as long as the process:
            # frozen (its garbage collected first), a full collection no longer walks it.
            # Walking it paused the event loop for 130-170 ms a few times a minute.
            gc.collect()
            gc.freeze()
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            # Stop consuming (the command in hand finishes and commits its offset), then let
            # the relay mark the batch it has in flight.
            await broker.stop()
            if relaying is not None:
                await relay.stop(relaying, settings.shutdown_grace_seconds)
            await notifier_reads.aclose()
            await audit_reads.aclose()
            await engine.dispose()
            await relay_engine.dispose()

    app = FastAPI(
        title="Order service",
        version="0.1.0",
        description="Orders and their status lifecycle. Every change is validated, stored with "
        "its outbox event in one transaction, and announced on Kafka `orders.events`.",
        lifespan=lifespan,
    )
    app.state.engine = engine
    app.state.uow_factory = uow_factory
    app.state.known_tokens = known_tokens
    app.state.kafka = connection
    app.state.metrics = metrics
    http.install_error_handlers(app)
    app.include_router(http.router)
    peer_reads.install(app, notifier=notifier_reads, audit=audit_reads)
    admin_page.install(app)
    observability.install(app, metrics.registry, PREFIX, record_spans=spans_recorded())
    return app


async def run_relay(settings: Settings) -> None:
    """The outbox relay on its own (`python -m order relay`), for running it apart from the
    HTTP API; it stops on SIGTERM or SIGINT."""
    refuse_dev_secrets(settings)
    engine = build_relay_engine(settings)
    # Its counters go nowhere: this process serves no /metrics (the API's process reports the
    # outbox backlog from the database either way).
    relay = build_relay(settings, engine, OrderMetrics())
    await assert_schema_current(engine)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    relaying = asyncio.create_task(relay.run())
    try:
        await stop.wait()
    finally:
        await relay.stop(relaying, settings.shutdown_grace_seconds)
        await engine.dispose()
