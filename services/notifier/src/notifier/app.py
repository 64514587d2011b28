"""Composition root of the notifier: builds every dependency from the settings."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import socket
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

from fastapi import FastAPI
from faststream.kafka import KafkaBroker
from faststream.kafka.opentelemetry import KafkaTelemetryMiddleware
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from contracts import ORDERS_EVENTS, Channel
from notifier import service
from notifier.adapters.broker import BrokerConnection
from notifier.adapters.metrics import PREFIX, MetricsSampler, NotifierMetrics
from notifier.adapters.outbox_relay import OutboxRelay
from notifier.adapters.schema import assert_schema_current, upgrade_to_head
from notifier.adapters.sms import HttpSmsSender, HttpSmsSettings
from notifier.adapters.smtp import SmtpEmailSender, SmtpSettings
from notifier.adapters.templates import EmailTemplates, TextTemplates
from notifier.adapters.unit_of_work import UnitOfWorkFactory
from notifier.config import Settings, database_role, refuse_dev_secrets
from notifier.domain.communication import RetryPolicy
from notifier.domain.delivery import Sender
from notifier.domain.planning import NotificationRules
from notifier.entrypoints import http, observability
from notifier.entrypoints.consumer import register_event_handlers
from notifier.entrypoints.publications import declare_publications
from notifier.entrypoints.worker import DispatchWorker
from notifier.service import Dispatcher
from pgstatements import ping_when_idle
from servicekit.consumer_lag import ConsumerLagReader
from servicekit.token_verifier import TokenVerifier

log = logging.getLogger(__name__)


def build_engine(settings: Settings) -> AsyncEngine:
    """The engine everything but the migrations runs on, as the runtime role."""
    # hide_parameters: bound values (recipients, message contexts) stay out of error messages
    # and logs.
    engine = create_async_engine(
        settings.database_url.get_secret_value(),
        pool_size=settings.database_pool_size,
        max_overflow=settings.database_pool_overflow,
        pool_timeout=settings.database_pool_wait_seconds,
        # The most recently used connection first: in steady use it never idles into a ping.
        pool_use_lifo=True,
        hide_parameters=True,
    )
    ping_when_idle(engine)
    return engine


def migrate(settings: Settings) -> None:
    """Upgrade the schema to the latest migration, as the database's owner."""
    refuse_dev_secrets(settings, migrating=True)
    upgrade_to_head(settings.migration_database_url.get_secret_value(), database_role(settings))


def build_broker(settings: Settings, metrics: NotifierMetrics) -> KafkaBroker:
    # Idempotent producer with acks=all for the outbox and the DLQ; `graceful_timeout` lets
    # the message in hand finish (and commit its offset) when consuming stops. The telemetry
    # middleware carries the trace in the records' headers, both ways.
    return KafkaBroker(
        settings.kafka_bootstrap_servers,
        enable_idempotence=True,
        acks="all",
        linger_ms=5,
        client_id="notifier",
        graceful_timeout=settings.shutdown_grace_seconds,
        middlewares=(KafkaTelemetryMiddleware(), *metrics.broker_middlewares()),
        logger=logging.getLogger("faststream.access.kafka"),
    )


def build_rules(settings: Settings) -> NotificationRules:
    return NotificationRules(
        statuses=frozenset(settings.notify_statuses),
        on_order_created=settings.notify_on_order_created,
        channels=tuple(settings.notify_channels),
        channel_statuses={Channel.SMS: frozenset(settings.sms_notify_statuses)},
    )


def build_senders(settings: Settings) -> dict[Channel, Sender]:
    """One sender per channel: email always, SMS once a provider is configured."""
    smtp = SmtpSettings(
        host=settings.smtp_host,
        port=settings.smtp_port,
        username=settings.smtp_username,
        password=settings.smtp_password,
        starttls=settings.smtp_starttls,
        use_tls=settings.smtp_use_tls,
        timeout=settings.smtp_timeout_seconds,
        mail_from=settings.mail_from,
        message_id_domain=settings.message_id_domain,
        idle_seconds=settings.smtp_idle_seconds,
        max_sessions=settings.smtp_max_sessions,
    )
    senders: dict[Channel, Sender] = {Channel.EMAIL: SmtpEmailSender(smtp, EmailTemplates())}
    if settings.sms_url:
        senders[Channel.SMS] = HttpSmsSender(
            HttpSmsSettings(
                url=settings.sms_url,
                token=settings.sms_token,
                timeout=settings.sms_timeout_seconds,
            ),
            TextTemplates(),
        )
    missing = set(settings.notify_channels) - senders.keys()
    if missing:
        raise ValueError(f"no sender for the configured channels {sorted(missing)}")
    return senders


def build_dispatcher(
    settings: Settings,
    uow_factory: UnitOfWorkFactory,
    metrics: NotifierMetrics,
    senders: dict[Channel, Sender],
) -> Dispatcher:
    return Dispatcher(
        uow_factory=uow_factory,
        senders=senders,
        policy=RetryPolicy(
            settings.max_attempts, settings.backoff_base_seconds, settings.backoff_max_seconds
        ),
        owner=f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}",
        batch_size=settings.dispatch_batch_size,
        lease=timedelta(seconds=settings.lease_seconds),
        retry_interval=settings.retry_seconds,
        consumer_group=settings.consumer_group,
        outcome_linger=settings.dispatch_outcome_linger_ms / 1000,
        record_send=metrics.record_send,
    )


def build_sampler(
    settings: Settings,
    metrics: NotifierMetrics,
    uow_factory: UnitOfWorkFactory,
    relay: OutboxRelay,
) -> MetricsSampler:
    lag = ConsumerLagReader(
        settings.kafka_bootstrap_servers, settings.consumer_group, [ORDERS_EVENTS]
    )

    async def outbox() -> None:
        backlog = await relay.backlog()
        metrics.outbox_backlog.set(backlog.rows)
        metrics.outbox_oldest_age.set(backlog.oldest_age_seconds)

    async def communications() -> None:
        metrics.set_communications(await service.count_unfinished(uow_factory))

    async def consumer_lag() -> None:
        await metrics.sample_consumer_lag(lag)

    return MetricsSampler(
        {"outbox": outbox, "communications": communications, "consumer_lag": consumer_lag},
        metrics.sample_failures,
        settings.metrics_interval_seconds,
        on_stop=lag.close,
    )


def build_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    engine = build_engine(settings)
    metrics = NotifierMetrics()
    broker = build_broker(settings, metrics)
    connection = BrokerConnection(broker, settings.retry_seconds)
    # The relay has a Kafka client of its own: it replaces its producer after a failed send,
    # which must not restart the consumer.
    relay = OutboxRelay(
        engine,
        BrokerConnection(build_broker(settings, metrics), settings.retry_seconds),
        batch_size=settings.outbox_batch_size,
        poll_interval=settings.outbox_poll_interval_seconds,
        linger=settings.outbox_linger_ms / 1000,
        retry_interval=settings.retry_seconds,
        retention=timedelta(hours=settings.outbox_retention_hours),
        on_acknowledged=lambda topic, count: metrics.outbox_relayed.labels(topic).inc(count),
    )
    uow_factory = UnitOfWorkFactory(engine, on_outbox_commit=relay.wake.set)
    sampler = build_sampler(settings, metrics, uow_factory, relay)
    senders = build_senders(settings)
    worker = DispatchWorker(
        build_dispatcher(settings, uow_factory, metrics, senders),
        poll_interval=settings.dispatch_poll_interval_seconds,
        retry_interval=settings.retry_seconds,
        rounds=settings.dispatch_rounds,
    )
    token_verifier = TokenVerifier(
        settings.order_service_url,
        timeout=settings.order_service_timeout_seconds,
        cache_seconds=settings.token_cache_seconds,
    )
    register_event_handlers(
        broker,
        uow_factory,
        build_rules(settings),
        consumer_group=settings.consumer_group,
        batch_size=settings.consume_batch_size,
        wait_ms=settings.consume_wait_ms,
        retry_seconds=settings.retry_seconds,
        worker=worker,
    )
    declare_publications(broker)

    async def close_clients() -> None:
        await token_verifier.aclose()
        for sender in senders.values():
            if isinstance(sender, HttpSmsSender | SmtpEmailSender):
                await sender.aclose()

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            # Building the app (for its documents) needs no secrets; starting it does.
            refuse_dev_secrets(settings)
            await assert_schema_current(engine)
        except Exception:
            await close_clients()
            await engine.dispose()
            raise
        connect = asyncio.create_task(connection.connect(), name="kafka-connect")
        relaying = asyncio.create_task(relay.run(), name="outbox-relay")
        dispatching = asyncio.create_task(worker.run(), name="dispatcher")
        sampling = asyncio.create_task(sampler.run(), name="metrics-sampler")
        try:
            # What startup built (modules, the app, its schemas) lives as long as the process:
            # frozen (its garbage collected first), a full collection no longer walks it.
            # Walking it paused the event loop for 130-170 ms a few times a minute.
            gc.collect()
            gc.freeze()
            yield
        finally:
            sampling.cancel()
            await asyncio.gather(sampling, return_exceptions=True)
            # Stop consuming (the message in hand finishes), then let the sends in flight
            # finish and release what is still claimed; the outbox keeps what is unpublished.
            connect.cancel()
            await asyncio.gather(connect, return_exceptions=True)
            await broker.stop()
            await worker.stop(dispatching, settings.shutdown_grace_seconds)
            await relay.stop(relaying, settings.shutdown_grace_seconds)
            await close_clients()
            await engine.dispose()
            log.info("notifier stopped")

    app = FastAPI(
        title="Notifier",
        version="0.1.0",
        description="Customer email and SMS for order status changes from `orders.events`, "
        "exactly once per event, channel, template and recipient; outcomes on "
        "`notifications.events`, dead communications also on `notifications.events.dlq`.",
        lifespan=lifespan,
    )
    app.state.engine = engine
    app.state.uow_factory = uow_factory
    app.state.token_verifier = token_verifier
    app.state.kafka = connection
    app.state.metrics = metrics
    http.install_error_handlers(app)
    app.include_router(http.router)
    observability.install(app, metrics.registry, PREFIX)
    return app
