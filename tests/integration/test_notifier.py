"""The notifier against the session's real Kafka and PostgreSQL and a real SMTP server
(aiosmtpd, writing each accepted message to a maildir): one email per event however often it
is delivered, poison messages dead-lettered without stopping, sends retried through an SMTP
outage, every outcome announced on notifications.events."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from faststream.kafka import KafkaBroker
from sqlalchemy import func, insert, literal_column, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts import (
    NOTIFICATIONS_EVENTS,
    ORDERS_EVENTS,
    Channel,
    OrderCreated,
    OrderStatus,
    OrderStatusChanged,
    dlq_topic,
)
from devstack import infra
from devstack.processes import free_port, migrate, run_checked, service_env, service_process
from devstack.smtp_sink import MaildirHandler, read_messages
from devstack.waiting import wait_until
from notifier import service
from notifier.adapters.broker import BrokerConnection
from notifier.adapters.metrics import NotifierMetrics
from notifier.adapters.outbox_relay import OutboxRelay, Relayed
from notifier.adapters.schema import SchemaBehind
from notifier.adapters.smtp import SmtpEmailSender
from notifier.adapters.tables import communication_events, outbox
from notifier.adapters.unit_of_work import UnitOfWorkFactory
from notifier.app import build_app, build_dispatcher, build_engine, build_rules, build_senders
from notifier.app import migrate as migrate_in_process
from notifier.config import Settings
from notifier.domain.communication import Communication, CommunicationStatus, Lease
from notifier.domain.planning import template_context
from tests.integration.conftest import (
    MESSAGE_ID_DOMAIN,
    TokenIssuer,
    TopicReader,
    commit_one_then_two_back_to_back,
    consumer_group_at_end,
    notifier_settings,
    running_notifier,
    serving,
)
from tests.integration.notifier_support import (
    SHOP,
    SmtpSink,
    communications,
    customer_for,
    message_id,
    publish,
    status_changed,
    wait_for_mail,
    wait_for_statuses,
)
from tests.integration.read_api_auth import (
    TOKEN_CACHE_SECONDS,
    check_openapi,
    check_read_api_auth,
    check_token_cache,
    check_unreachable_order_service,
    get_without_token,
)

# --- fixtures: an SMTP sink that can go down, the notifier in this process, topic readers ---


@pytest.fixture(scope="module")
def smtp_sink(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SmtpSink]:
    sink = SmtpSink(tmp_path_factory.mktemp("mail"), free_port())
    sink.start()
    yield sink
    sink.stop()


@pytest.fixture(scope="module")
async def notifier_api(
    kafka_bootstrap: str,
    databases: infra.TestDatabases,
    smtp_sink: SmtpSink,
    token_issuer: TokenIssuer,
) -> AsyncIterator[httpx.AsyncClient]:
    """The notifier (consumer, dispatcher, relay and HTTP API) running in this process; the
    client reads with a viewer token."""
    settings = notifier_settings(
        databases,
        kafka_bootstrap,
        smtp_sink.port,
        order_service_url=token_issuer.url,
        token_cache_seconds=TOKEN_CACHE_SECONDS,
    )
    async with running_notifier(settings, token_issuer.as_viewer()) as (client, _):
        yield client


# --- helpers ------------------------------------------------------------------------------


def confirmation_email(event: OrderStatusChanged, recipient: str) -> Communication:
    """The email the notifier queues for a confirmed order, as it queues it."""
    return Communication.queue(
        event_id=event.event_id,
        order_id=event.order_id,
        channel=Channel.EMAIL,
        template="order_confirmed",
        recipient=recipient,
        context=template_context(event),
        now=datetime.now(UTC),
    )


# --- tests --------------------------------------------------------------------------------


async def test_an_event_delivered_ten_times_sends_one_email(
    notifier_api: httpx.AsyncClient, smtp_sink: SmtpSink, producer: AIOKafkaProducer
) -> None:
    order_id = uuid4()
    confirmed = status_changed(order_id, OrderStatus.CONFIRMED, 2)
    for _ in range(10):
        await publish(producer, order_id, confirmed)
    # Same key, so the same partition: once this one is mailed, all ten were handled.
    preparing = status_changed(order_id, OrderStatus.PREPARING, 3, OrderStatus.CONFIRMED)
    await publish(producer, order_id, preparing)

    recipient = customer_for(order_id).email
    assert recipient is not None
    await wait_for_mail(smtp_sink, recipient, 2)
    items = await wait_for_statuses(notifier_api, order_id, ["sent", "sent"])

    mailed = sorted(m["Message-ID"] for m in smtp_sink.messages_to(recipient))
    assert mailed == sorted([message_id(confirmed), message_id(preparing)])
    # Recorded from one batch, the two share a creation time, so either may be listed first.
    by_event = {i["event_id"]: i for i in items}
    assert {event: i["template"] for event, i in by_event.items()} == {
        str(confirmed.event_id): "order_confirmed",
        str(preparing.event_id): "order_preparing",
    }
    first = by_event[str(confirmed.event_id)]
    assert first["provider_message_id"] == message_id(confirmed)
    assert (first["attempts"], first["last_error"], first["channel"]) == (1, None, "email")
    assert first["recipient"] == recipient
    assert first["sent_at"] is not None
    assert datetime.fromisoformat(first["sent_at"]) <= datetime.now(UTC)


async def test_two_events_send_two_emails_with_distinct_keys_and_announce_each_outcome(
    notifier_api: httpx.AsyncClient,
    smtp_sink: SmtpSink,
    producer: AIOKafkaProducer,
    read_topic: Any,
) -> None:
    announcements = await read_topic(NOTIFICATIONS_EVENTS)
    order_id = uuid4()
    ready = status_changed(order_id, OrderStatus.READY, 4, OrderStatus.PREPARING)
    cancelled = status_changed(order_id, OrderStatus.CANCELLED, 5, OrderStatus.READY)
    await publish(producer, order_id, ready)
    await publish(producer, order_id, cancelled)

    recipient = customer_for(order_id).email
    assert recipient is not None
    mail = await wait_for_mail(smtp_sink, recipient, 2)
    items = await wait_for_statuses(notifier_api, order_id, ["sent", "sent"])

    assert len({i["dedupe_key"] for i in items}) == 2
    assert {m["Message-ID"] for m in mail} == {
        f"<{i['dedupe_key']}@{MESSAGE_ID_DOMAIN}>" for i in items
    }
    cancellation = mail[[m["Message-ID"] for m in mail].index(message_id(cancelled))]
    text = cancellation.get_body(("plain",))
    assert text is not None
    assert "cancelled" in text.get_content()
    assert "Ann O'Neil" in text.get_content()

    values = await announcements.values_for(str(order_id), 4)
    outcomes = sorted((v["type"], v["dedupe_key"]) for v in values)
    assert outcomes == sorted(
        (kind, i["dedupe_key"])
        for i in items
        for kind in ("CommunicationQueued", "CommunicationSent")
    )
    sent = [v for v in values if v["type"] == "CommunicationSent"]
    assert {v["provider_message_id"] for v in sent} == {m["Message-ID"] for m in mail}

    page = await notifier_api.get("/communications", params={"order_id": str(order_id), "limit": 1})
    assert [i["id"] for i in page.json()["items"]] == [items[0]["id"]]
    rest = await notifier_api.get(
        "/communications",
        params={"order_id": str(order_id), "limit": 1, "cursor": page.json()["next_cursor"]},
    )
    assert [i["id"] for i in rest.json()["items"]] == [items[1]["id"]]
    assert rest.json()["next_cursor"] is None


JSON_LABEL = [("content-type", b"application/json")]


@pytest.mark.parametrize(
    ("poison", "headers", "reason_part"),
    [
        (b"\x00\xffnot json at all", None, "invalid message"),
        (b"not json, though labelled so", JSON_LABEL, "Invalid JSON"),
        (
            b'{"type": "OrderTeleported", "order_id": "x"}',
            None,
            "does not match any of the expected tags",
        ),
        (b'{"type": "OrderStatusChanged", "order_id": "not-a-uuid"}', None, "order_id"),
        (b"{}", [("trace", b"\xff\xfe")], "type"),
        (None, None, "unstorable"),
    ],
    ids=[
        "not-json",
        "not-json-labelled-json",
        "unknown-type",
        "schema-invalid",
        "binary-header",
        "unstorable-nul",
    ],
)
async def test_a_malformed_message_is_dead_lettered_and_the_next_one_is_still_sent(
    notifier_api: httpx.AsyncClient,
    smtp_sink: SmtpSink,
    producer: AIOKafkaProducer,
    read_topic: Any,
    poison: bytes | None,
    headers: list[tuple[str, bytes]] | None,
    reason_part: str,
) -> None:
    dead_letters = await read_topic(dlq_topic(ORDERS_EVENTS))
    order_id = uuid4()
    if poison is None:  # valid by the contract, refused by PostgreSQL (a NUL in a text)
        nul = status_changed(order_id, OrderStatus.READY, 4).model_copy(update={"reason": "\u0000"})
        poison = nul.model_dump_json().encode()
    await publish(producer, order_id, poison, headers)
    # A field this consumer does not know is ignored, not a reason to dead-letter.
    valid = status_changed(order_id, OrderStatus.CONFIRMED, 2)
    await publish(
        producer,
        order_id,
        valid.model_dump_json().replace("{", '{"gift_wrap":true,', 1).encode(),
        [("trace", b"\xff")],
    )

    recipient = customer_for(order_id).email
    assert recipient is not None
    mail = await wait_for_mail(smtp_sink, recipient, 1)
    assert [m["Message-ID"] for m in mail] == [message_id(valid)]

    (letter,) = await dead_letters.values_for(str(order_id), 1)
    assert letter["type"] == "DeadLetter"
    assert reason_part in letter["reason"]
    assert letter["payload"] == poison.decode("utf-8", errors="replace")
    assert (letter["source_topic"], letter["key"]) == (ORDERS_EVENTS, str(order_id))
    assert letter["partition"] >= 0
    assert letter["offset"] >= 0
    assert letter["consumer_group"].startswith("notifier-it-")


async def test_order_created_sends_nothing_by_default(
    notifier_api: httpx.AsyncClient, smtp_sink: SmtpSink, producer: AIOKafkaProducer
) -> None:
    order_id = uuid4()
    created = OrderCreated(
        order_id=order_id,
        status=OrderStatus.PENDING,
        version=1,
        customer=customer_for(order_id),
        actor=SHOP,
    )
    await publish(producer, order_id, created)
    confirmed = status_changed(order_id, OrderStatus.CONFIRMED, 2)
    await publish(producer, order_id, confirmed)

    recipient = customer_for(order_id).email
    assert recipient is not None
    await wait_for_statuses(notifier_api, order_id, ["sent"])
    assert [m["Message-ID"] for m in smtp_sink.messages_to(recipient)] == [message_id(confirmed)]


async def test_with_smtp_down_a_send_fails_and_is_retried_until_delivered_once(
    notifier_api: httpx.AsyncClient,
    smtp_sink: SmtpSink,
    producer: AIOKafkaProducer,
    read_topic: Any,
) -> None:
    announcements = await read_topic(NOTIFICATIONS_EVENTS)
    order_id = uuid4()
    delivered = status_changed(order_id, OrderStatus.DELIVERED, 6, OrderStatus.OUT_FOR_DELIVERY)
    smtp_sink.stop()
    try:
        await publish(producer, order_id, delivered)
        (failed,) = await wait_until(
            lambda: communications(notifier_api, order_id),
            lambda items: (
                len(items) == 1 and items[0]["status"] == "failed" and items[0]["attempts"] >= 2
            ),
            within=60,
            what="a communication failed twice",
        )
        assert "refused" in failed["last_error"] or "Connect" in failed["last_error"]
        assert failed["sent_at"] is None
        # Backing off: the next attempt is scheduled after the failure, not at once.
        failed_at = datetime.fromisoformat(failed["updated_at"])
        assert datetime.fromisoformat(failed["next_attempt_at"]) > failed_at
        values = await announcements.values_for(str(order_id), 3)
        assert [v["type"] for v in values[:3]] == [
            "CommunicationQueued",
            "CommunicationFailed",
            "CommunicationFailed",
        ]
    finally:
        smtp_sink.start()

    recipient = customer_for(order_id).email
    assert recipient is not None
    (item,) = await wait_for_statuses(notifier_api, order_id, ["sent"])
    assert item["attempts"] >= 3
    assert (item["last_error"], item["next_attempt_at"]) == (None, None)
    mail = smtp_sink.messages_to(recipient)
    assert [m["Message-ID"] for m in mail] == [message_id(delivered)]
    values = await announcements.values_for(str(order_id), item["attempts"] + 1)
    assert values[-1]["type"] == "CommunicationSent"
    assert values[-1]["attempts"] == item["attempts"]


async def test_a_template_that_cannot_render_ends_dead_with_the_reason_and_a_dead_letter(
    notifier_api: httpx.AsyncClient, databases: infra.TestDatabases, read_topic: Any
) -> None:
    order_id = uuid4()
    engine = build_engine(Settings(database_url=databases.urls["notifier"]))
    try:
        async with UnitOfWorkFactory(engine, on_outbox_commit=lambda: None)() as uow:
            await uow.communications.add_new(
                [
                    Communication.queue(
                        event_id=uuid4(),
                        order_id=order_id,
                        channel=Channel.EMAIL,
                        template="order_teleported",
                        recipient="ann@example.com",
                        context={"order_id": str(order_id)},
                        now=datetime.now(UTC),
                    )
                ]
            )
    finally:
        await engine.dispose()

    (item,) = await wait_for_statuses(notifier_api, order_id, ["dead"])
    assert "order_teleported" in item["last_error"]
    assert item["attempts"] == 1
    assert (await notifier_api.get("/health/live")).status_code == 200

    dead_letters = await read_topic(dlq_topic(NOTIFICATIONS_EVENTS))
    (letter,) = await dead_letters.values_for(str(order_id), 1)
    assert (letter["type"], letter["reason"]) == ("DeadLetter", item["last_error"])
    payload = json.loads(letter["payload"])
    assert (payload["id"], payload["dedupe_key"]) == (item["id"], item["dedupe_key"])
    assert payload["status"] == "dead"


def notifier_cli(databases: infra.TestDatabases, *args: str) -> str:
    """`python -m notifier ARGS` as an operator runs it; its output."""
    return run_checked(
        [sys.executable, "-m", "notifier", *args],
        {"NOTIFIER_DATABASE_URL": databases.urls["notifier"]},
        f"notifier {' '.join(args)}",
    )


async def test_the_cli_lists_a_dead_communication_and_replays_it_once(
    notifier_api: httpx.AsyncClient,
    databases: infra.TestDatabases,
    smtp_sink: SmtpSink,
    read_topic: Any,
) -> None:
    order_id = uuid4()
    confirmed = status_changed(order_id, OrderStatus.CONFIRMED, 2)
    recipient = customer_for(order_id).email
    assert recipient is not None
    queued = confirmation_email(confirmed, recipient)
    dead = replace(queued, status=CommunicationStatus.DEAD, attempts=8, last_error="gave up")
    engine = build_engine(Settings(database_url=databases.urls["notifier"]))
    try:
        async with UnitOfWorkFactory(engine, on_outbox_commit=lambda: None)() as uow:
            await uow.communications.add_new([dead])
    finally:
        await engine.dispose()

    listed = await asyncio.to_thread(notifier_cli, databases, "dead", "list")
    assert f"{dead.id}\t{order_id}\t{recipient}\t8\tgave up" in listed.splitlines()
    replayed = await asyncio.to_thread(
        notifier_cli, databases, "dead", "replay", "--id", str(dead.id)
    )
    assert replayed.splitlines() == [f"replayed {dead.id}", "1 replayed"]
    mail = await wait_for_mail(smtp_sink, recipient, 1)
    assert [m["Message-ID"] for m in mail] == [message_id(confirmed)]
    (item,) = await wait_for_statuses(notifier_api, order_id, ["sent"])
    assert (item["attempts"], item["replays"], item["dedupe_key"]) == (1, 1, dead.dedupe_key)

    again = await asyncio.to_thread(notifier_cli, databases, "dead", "replay", "--id", str(dead.id))
    assert again.splitlines() == ["0 replayed"]
    announcements = await read_topic(NOTIFICATIONS_EVENTS)
    values = await announcements.values_for(str(order_id), 2)
    assert [v["type"] for v in values] == ["CommunicationQueued", "CommunicationSent"]
    assert len(smtp_sink.messages_to(recipient)) == 1
    assert str(dead.id) not in await asyncio.to_thread(notifier_cli, databases, "dead", "list")


async def test_a_recipient_who_opted_out_gets_nothing_and_the_skip_is_recorded(
    notifier_api: httpx.AsyncClient,
    databases: infra.TestDatabases,
    smtp_sink: SmtpSink,
    producer: AIOKafkaProducer,
    read_topic: Any,
) -> None:
    order_id = uuid4()
    recipient = customer_for(order_id).email
    assert recipient is not None
    # Stored normalised: the opt-out covers the address however it is written.
    shouted = f"  {recipient.upper()} "
    added = await asyncio.to_thread(
        notifier_cli, databases, "opt-out", "add", "--channel", "email", "--recipient", shouted
    )
    assert added.strip() == "add: done"
    await publish(producer, order_id, status_changed(order_id, OrderStatus.CONFIRMED, 2))
    (skipped,) = await wait_for_statuses(notifier_api, order_id, ["skipped"])
    assert (skipped["last_error"], skipped["attempts"]) == ("recipient opted out", 0)
    announcements = await read_topic(NOTIFICATIONS_EVENTS)
    (announced,) = await announcements.values_for(str(order_id), 1)
    assert (announced["type"], announced["reason"]) == (
        "CommunicationSkipped",
        "recipient opted out",
    )

    removed = await asyncio.to_thread(
        notifier_cli, databases, "opt-out", "remove", "--channel", "email", "--recipient", recipient
    )
    assert removed.strip() == "remove: done"
    preparing = status_changed(order_id, OrderStatus.PREPARING, 3, OrderStatus.CONFIRMED)
    await publish(producer, order_id, preparing)
    # Same partition, so once the second is mailed the first was long decided: never mailed.
    mail = await wait_for_mail(smtp_sink, recipient, 1)
    await wait_for_statuses(notifier_api, order_id, ["skipped", "sent"])
    assert [m["Message-ID"] for m in mail] == [message_id(preparing)]


async def test_with_kafka_unreachable_the_api_serves_and_readiness_says_why(
    databases: infra.TestDatabases,
    smtp_sink: SmtpSink,
    notifier_api: httpx.AsyncClient,
    token_issuer: TokenIssuer,
) -> None:
    settings = notifier_settings(
        databases,
        f"127.0.0.1:{free_port()}",
        smtp_sink.port,
        order_service_url=token_issuer.url,
    )
    async with serving(build_app(settings), headers=token_issuer.as_viewer()) as client:
        assert (await client.get("/health/live")).status_code == 200
        ready = await client.get("/health/ready")
        assert ready.status_code == 503
        error = ready.json()["error"]
        assert (error["code"], error["details"]) == ("not_ready", {})
        assert "kafka" in error["message"]
        listed = await client.get("/communications", params={"limit": 1})
        assert listed.status_code == 200
        assert set(listed.json()) == {"items", "next_cursor"}


async def test_the_api_answers_bad_requests_in_the_error_shape(
    notifier_api: httpx.AsyncClient,
) -> None:
    for params in ({"order_id": "nope"}, {"cursor": "garbage"}, {"limit": 0}):
        response = await notifier_api.get("/communications", params=params)
        assert response.status_code == 422, params
        assert set(response.json()["error"]) == {"code", "message", "details"}
    missing = await notifier_api.get("/nowhere")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"


async def test_the_service_refuses_a_database_whose_schema_is_behind(
    kafka_bootstrap: str,
) -> None:
    created = infra.create_test_databases("behind")
    try:
        settings = Settings(
            database_url=created.urls["notifier"], kafka_bootstrap_servers=kafka_bootstrap
        )
        app = build_app(settings)
        with pytest.raises(SchemaBehind, match="migrate"):
            async with app.router.lifespan_context(app):
                pass
    finally:
        infra.drop_test_databases(created)


async def test_as_a_process_it_migrates_serves_and_stops_cleanly_on_sigterm(
    kafka_bootstrap: str,
    producer: AIOKafkaProducer,
    tmp_path: Path,
) -> None:
    # A sink and a group at the topic's end of its own: the module's notifier also mails this
    # test's event, and a group from the start would mail every earlier test's again.
    smtp_sink = SmtpSink(tmp_path / "mail", free_port())
    smtp_sink.start()
    created = infra.create_test_databases("proc")
    port = free_port()
    env = service_env(
        "notifier",
        database=created.services["notifier"],
        kafka_bootstrap_servers=kafka_bootstrap,
        http_port=port,
        extra={
            "NOTIFIER_SMTP_PORT": str(smtp_sink.port),
            "NOTIFIER_CONSUMER_GROUP": await consumer_group_at_end(
                kafka_bootstrap, f"notifier-proc-{uuid4().hex[:8]}"
            ),
            "NOTIFIER_MESSAGE_ID_DOMAIN": MESSAGE_ID_DOMAIN,
        },
    )
    process = service_process("notifier", env, port, tmp_path)
    try:
        await asyncio.to_thread(migrate, "notifier", env)
        await asyncio.to_thread(process.start)
        order_id = uuid4()
        ready = status_changed(order_id, OrderStatus.READY, 4)
        await publish(producer, order_id, ready)
        recipient = customer_for(order_id).email
        assert recipient is not None
        mail = await wait_for_mail(smtp_sink, recipient, 1)
        assert [m["Message-ID"] for m in mail] == [message_id(ready)]

        await asyncio.to_thread(process.stop)
        assert process.popen is not None
        # uvicorn finishes the shutdown, then re-raises the signal it caught.
        assert process.popen.returncode in (0, -signal.SIGTERM), process.tail()
        assert "notifier stopped" in process.tail()
        assert "Application shutdown complete" in process.tail()
    finally:
        process.kill()
        smtp_sink.stop()
        infra.drop_test_databases(created)


async def test_a_permanently_failing_address_ends_dead_after_the_attempts_and_replays_once(
    kafka_bootstrap: str,
    producer: AIOKafkaProducer,
    read_topic: Any,
    tmp_path: Path,
    token_issuer: TokenIssuer,
) -> None:
    handler = MaildirHandler(tmp_path / "mail")
    sink = Controller(handler, hostname="127.0.0.1", port=free_port())
    sink.start()
    own = infra.create_test_databases("refused")
    settings = notifier_settings(
        own, kafka_bootstrap, sink.port, max_attempts=3, order_service_url=token_issuer.url
    )
    dead_letters = await read_topic(dlq_topic(NOTIFICATIONS_EVENTS))
    order_id = uuid4()
    event = status_changed(order_id, OrderStatus.CONFIRMED, 2)
    recipient = customer_for(order_id).email
    assert recipient is not None
    handler.refused.add(recipient)
    try:
        async with running_notifier(settings, token_issuer.as_viewer()) as (api, _):
            await publish(producer, order_id, event)

            (item,) = await wait_for_statuses(api, order_id, ["dead"])
            assert item["attempts"] == 3
            assert "450" in item["last_error"]
            (letter,) = await dead_letters.values_for(str(order_id), 1)
            assert json.loads(letter["payload"])["id"] == item["id"]
            assert [m for m in read_messages(handler.maildir) if m["To"] == recipient] == []

            handler.refused.clear()  # the mailbox works again: the operator replays
            replayed = await asyncio.to_thread(notifier_cli, own, "dead", "replay", "--all")
            assert replayed.splitlines()[-1] == "1 replayed"
            (item,) = await wait_for_statuses(api, order_id, ["sent"])
            again = await asyncio.to_thread(notifier_cli, own, "dead", "replay", "--all")
            assert again.splitlines() == ["0 replayed"]
            sent = [m for m in read_messages(handler.maildir) if m["To"] == recipient]
            assert [m["Message-ID"] for m in sent] == [message_id(event)]
    finally:
        sink.stop()
        infra.drop_test_databases(own)


# --- who may read -------------------------------------------------------------------------


async def test_reading_needs_a_valid_token_of_the_order_service(
    notifier_api: httpx.AsyncClient, token_issuer: TokenIssuer
) -> None:
    await check_read_api_auth(notifier_api, token_issuer, ["/communications"])
    for open_path in ("/health/live", "/health/ready"):
        assert (await get_without_token(notifier_api, open_path)).status_code == 200


async def test_a_valid_answer_is_cached_for_the_configured_time(
    notifier_api: httpx.AsyncClient, token_issuer: TokenIssuer
) -> None:
    await check_token_cache(notifier_api, token_issuer, "/communications")


async def test_with_the_order_service_unreachable_reading_is_503_not_500(
    databases: infra.TestDatabases, smtp_sink: SmtpSink, notifier_api: httpx.AsyncClient
) -> None:
    # Kafka unreachable too: this notifier has no consumer to start, only its read API.
    settings = notifier_settings(
        databases,
        f"127.0.0.1:{free_port()}",
        smtp_sink.port,
        order_service_url=f"http://127.0.0.1:{free_port()}",
    )
    async with serving(build_app(settings)) as client:
        await check_unreachable_order_service(client, "/communications")


def test_the_openapi_document_declares_the_bearer_scheme_on_every_read() -> None:
    check_openapi(build_app(Settings()).openapi(), {"/communications"})


class SessionsSeen(MaildirHandler):
    """Also keeps the client's address and port of each accepted message: messages that came
    over one SMTP session share them."""

    def __init__(self, maildir: Path) -> None:
        super().__init__(maildir)
        self.peers: list[object] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.peers.append(session.peer)
        return await super().handle_DATA(server, session, envelope)


@pytest.mark.parametrize(
    ("idle_seconds", "max_sessions", "at_once", "sessions"),
    [
        (30.0, 50, False, 1),  # one after another: one session carries them all
        (0.0, 50, False, 3),  # a session idle too long is not reused
        (30.0, 50, True, 3),  # sent at once: a session each
        (30.0, 1, True, 1),  # sent at once, one session allowed: they wait for it in turn
    ],
)
async def test_smtp_sessions_are_reused_while_fresh_and_never_more_than_allowed(
    tmp_path: Path, idle_seconds: float, max_sessions: int, at_once: bool, sessions: int
) -> None:
    handler = SessionsSeen(tmp_path)
    server = Controller(handler, hostname="127.0.0.1", port=free_port())
    server.start()
    settings = Settings(
        smtp_port=server.port,
        smtp_timeout_seconds=2.0,
        smtp_idle_seconds=idle_seconds,
        smtp_max_sessions=max_sessions,
    )
    sender = build_senders(settings)[Channel.EMAIL]
    assert isinstance(sender, SmtpEmailSender)

    def email_to(recipient: str) -> Communication:
        return confirmation_email(status_changed(uuid4(), OrderStatus.CONFIRMED, 2), recipient)

    recipients = [f"session-{number}@example.com" for number in range(3)]
    try:
        if at_once:
            await asyncio.gather(*(sender.send(email_to(r)) for r in recipients))
        else:
            for recipient in recipients:
                await sender.send(email_to(recipient))
    finally:
        await sender.aclose()
        server.stop()

    assert sorted(m["To"] for m in read_messages(tmp_path)) == recipients
    assert len(set(handler.peers)) == sessions


@pytest.fixture
async def own_engine(kafka_bootstrap: str) -> AsyncIterator[AsyncEngine]:
    """An engine on a notifier database of the test's own, migrated: no other notifier's relay
    publishes or purges its outbox."""
    created = infra.create_test_databases("notifier_relay")
    settings = Settings(
        database_url=created.urls["notifier"],
        migration_database_url=created.migration_urls["notifier"],
        kafka_bootstrap_servers=kafka_bootstrap,
    )
    await asyncio.to_thread(migrate_in_process, settings)
    engine = build_engine(settings)
    yield engine
    await engine.dispose()
    infra.drop_test_databases(created)


async def test_commits_right_behind_the_one_that_woke_the_relay_share_its_batch(
    kafka_bootstrap: str, own_engine: AsyncEngine
) -> None:
    batches: list[int] = []
    relay = OutboxRelay(
        own_engine,
        BrokerConnection(KafkaBroker(kafka_bootstrap), retry_interval=0.2),
        batch_size=10,
        poll_interval=60,  # only a wake-up starts a batch
        retry_interval=0.2,
        retention=timedelta(days=1),
        linger=0.5,
        on_acknowledged=lambda topic, count: batches.append(count),
    )
    running = asyncio.create_task(relay.run())

    async def committed(name: str) -> None:
        async with own_engine.begin() as connection:
            await connection.execute(
                insert(outbox).values(
                    event_id=uuid4(), topic=NOTIFICATIONS_EVENTS, key=name, payload={"n": name}
                )
            )
        relay.wake.set()  # as the unit of work does on the commit of an outbox row

    try:
        await commit_one_then_two_back_to_back(committed, batches)
    finally:
        await relay.stop(running, grace=5)

    assert batches == [1, 2]


async def test_a_keys_rows_share_a_batch_each_sent_once_the_one_before_is_acknowledged(
    kafka_bootstrap: str,
    own_engine: AsyncEngine,
    read_topic: Callable[[str], Awaitable[TopicReader]],
) -> None:
    kafka = BrokerConnection(KafkaBroker(kafka_bootstrap), retry_interval=0.2)
    relay = OutboxRelay(
        own_engine,
        kafka,
        batch_size=10,
        poll_interval=60,
        retry_interval=0.2,
        retention=timedelta(days=1),
    )
    order, refused, other = (str(uuid4()) for _ in range(3))
    rows = [
        (order, {"n": 1}),
        (refused, {"pad": "x" * 2_000_000}),  # over the producer's request size: refused
        (order, {"n": 2}),
        (refused, {"n": 2}),
        (other, {"n": 1}),
        (order, {"n": 3}),
    ]
    async with own_engine.begin() as connection:
        for key, payload in rows:
            await connection.execute(
                insert(outbox).values(
                    event_id=uuid4(), topic=NOTIFICATIONS_EVENTS, key=key, payload=payload
                )
            )

    async def unpublished() -> list[tuple[str, Any]]:
        async with own_engine.connect() as connection:
            query = select(outbox.c.key, outbox.c.payload).where(outbox.c.published_at.is_(None))
            return [(row.key, row.payload.get("n")) for row in await connection.execute(query)]

    events = await read_topic(NOTIFICATIONS_EVENTS)
    await kafka.connect()
    try:
        # The first wave: the first row of each key; the refused one stops the batch there.
        assert await relay.publish_batch() == Relayed(acknowledged=2, failed=1, more_waiting=True)
        assert sorted(await unpublished(), key=str) == sorted(
            [(order, 2), (order, 3), (refused, None), (refused, 2)], key=str
        )
        await kafka.renew()  # as the relay does after a failed send
        async with own_engine.begin() as connection:
            await connection.execute(
                update(outbox).where(outbox.c.key == refused).values(published_at=func.now())
            )
        # One batch now sends the order's next two rows, one after the other.
        assert await relay.publish_batch() == Relayed(acknowledged=2, failed=0)
    finally:
        await kafka.broker.stop()
    values = await events.values_for(order, 3)
    assert [value["n"] for value in values] == [1, 2, 3]
    assert await events.values_for(other, 1) == [{"n": 1}]
    assert not [r for r in events.records if r.key == refused.encode()]


class SlowFor(MaildirHandler):
    """Takes `seconds` to accept a message to `slow`, at once any other."""

    def __init__(self, maildir: Path, slow: str, seconds: float) -> None:
        super().__init__(maildir)
        self._slow, self._seconds = slow, seconds

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self._slow in envelope.rcpt_tos:
            await asyncio.sleep(self._seconds)
        return await super().handle_DATA(server, session, envelope)


@pytest.mark.parametrize(
    ("linger_ms", "transactions"),
    [
        (1000, 1),  # the fast send's outcome waits for the slow one's: stored together
        (0, 2),  # each stored as its send finished
    ],
)
async def test_a_rounds_outcomes_finished_within_the_linger_share_one_transaction(
    tmp_path: Path, own_engine: AsyncEngine, linger_ms: int, transactions: int
) -> None:
    server = Controller(
        SlowFor(tmp_path, "slow@example.com", 0.3), hostname="127.0.0.1", port=free_port()
    )
    server.start()
    settings = Settings(
        smtp_port=server.port, notify_channels=[Channel.EMAIL], dispatch_outcome_linger_ms=linger_ms
    )
    uow_factory = UnitOfWorkFactory(own_engine, on_outbox_commit=lambda: None)
    senders = build_senders(settings)
    email = senders[Channel.EMAIL]
    assert isinstance(email, SmtpEmailSender)
    dispatcher = build_dispatcher(settings, uow_factory, NotifierMetrics(), senders)
    confirmed = status_changed(uuid4(), OrderStatus.CONFIRMED, 2)
    queued = [confirmation_email(confirmed, r) for r in ("fast@example.com", "slow@example.com")]
    async with uow_factory() as uow:
        await uow.communications.add_new(queued)
    try:
        assert await dispatcher.dispatch_due() == 2
    finally:
        await email.aclose()
        server.stop()

    table = communication_events.c
    async with own_engine.connect() as connection:
        stored = (await connection.execute(select(table.status, literal_column("xmin")))).all()
    assert [status for status, _ in stored] == ["sent", "sent"]
    assert len({xmin for _, xmin in stored}) == transactions


async def test_what_recording_claims_is_leased_to_its_dispatcher_until_the_lease_runs_out(
    own_engine: AsyncEngine,
) -> None:
    settings = Settings(notify_channels=[Channel.EMAIL])
    uow_factory = UnitOfWorkFactory(own_engine, on_outbox_commit=lambda: None)
    dispatcher = build_dispatcher(settings, uow_factory, NotifierMetrics(), {})
    rules = build_rules(settings)
    events: list[service.TracedEvent] = [
        (status_changed(uuid4(), OrderStatus.CONFIRMED, 2), {}) for _ in range(3)
    ]
    claim = dispatcher.new_claim(2)

    recorded = await service.record_communications(uow_factory, events, rules, claim)
    assert len(recorded.claimed) == 2
    assert recorded.queued == 1
    assert [c.status for c in recorded.claimed] == ["sending", "sending"]

    table = communication_events.c
    async with own_engine.connect() as connection:
        rows = {
            row.id: row
            for row in await connection.execute(
                select(table.id, table.status, table.attempts, table.lease_owner, table.lease_until)
            )
        }
        announced = (await connection.execute(select(outbox.c.payload))).scalars().all()
    claimed = {c.id for c in recorded.claimed}
    assert len(rows) == 3
    assert {
        (row.status, row.attempts, row.lease_owner, row.lease_until)
        for id_, row in rows.items()
        if id_ in claimed
    } == {("sending", 1, dispatcher.owner, claim.lease.until)}
    (queued,) = rows.keys() - claimed
    assert (rows[queued].status, rows[queued].attempts, rows[queued].lease_owner) == (
        "queued",
        0,
        None,
    )
    # Each is announced as recorded, claimed at once or not.
    assert sorted((p["type"], p["attempts"]) for p in announced) == [("CommunicationQueued", 0)] * 3

    # Delivered again: nothing recorded, nothing claimed.
    again = await service.record_communications(
        uow_factory, events, rules, dispatcher.new_claim(10)
    )
    assert (again.claimed, again.queued) == ([], 0)

    # Another replica's claim takes the queued one, not those leased to this dispatcher...
    lease = timedelta(hours=1)  # outlasts the test: what it takes here stays taken
    now = datetime.now(UTC)
    async with uow_factory() as uow:
        taken = await uow.communications.claim_due(Lease("another-replica", now + lease), now, 10)
    assert [c.id for c in taken] == [queued]
    # ...until their lease has run out: their dispatcher is taken to have died.
    after_lease = claim.lease.until + timedelta(seconds=1)
    async with uow_factory() as uow:
        taken = await uow.communications.claim_due(
            Lease("another-replica", after_lease + lease), after_lease, 10
        )
    assert {c.id for c in taken} == claimed
    assert {c.attempts for c in taken} == {2}


async def test_the_relay_purges_rows_published_past_the_retention_oldest_first_in_batches(
    kafka_bootstrap: str, own_engine: AsyncEngine
) -> None:
    relay = OutboxRelay(
        own_engine,
        BrokerConnection(KafkaBroker(kafka_bootstrap), retry_interval=0.2),
        batch_size=10,
        poll_interval=60,
        retry_interval=0.2,
        retention=timedelta(hours=1),
        purge_batch=2,
    )
    # Row name → hours since it was published (None: not yet).
    published: dict[str, int | None] = {"waiting": None, "recent": 0, "a": 2, "b": 4, "c": 3}
    now = datetime.now(UTC)

    async def remaining() -> list[str]:
        async with own_engine.connect() as connection:
            return sorted((await connection.scalars(select(outbox.c.key))).all())

    async with own_engine.begin() as connection:
        for name, hours in published.items():
            await connection.execute(
                insert(outbox).values(
                    event_id=uuid4(),
                    topic=NOTIFICATIONS_EVENTS,
                    key=name,
                    payload={},
                    published_at=None if hours is None else now - timedelta(hours=hours),
                )
            )
    assert await relay.purge_published() == 2
    assert await remaining() == ["a", "recent", "waiting"]  # the two oldest went first
    assert await relay.purge_published() == 1
    assert await relay.purge_published() == 0
    assert await remaining() == ["recent", "waiting"]
