"""The notifier scaled out: two real notifier processes in one consumer group share the six
partitions of orders.events, 1,000 events give exactly 1,000 emails (by Message-ID) at a real
SMTP sink process; and with one replica SIGKILLed mid-run and restarted, still every one of
the 1,000, none lost. Short leases let a killed replica's claims expire fast."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from email.parser import BytesHeaderParser
from pathlib import Path
from uuid import uuid4

import pytest
from aiokafka import AIOKafkaProducer

from contracts import ORDERS_EVENTS, Channel, Customer, OrderStatus, OrderStatusChanged
from devstack import infra
from devstack.processes import (
    Process,
    free_port,
    migrate,
    service_env,
    service_process,
    smtp_sink_process,
)
from devstack.waiting import wait_until
from notifier.domain.dedupe import dedupe_key
from tests.integration.conftest import consumer_group_at_end
from tests.integration.notifier_support import SHOP

EVENTS = 1_000
DOMAIN = "scale.backbone.local"


class Maildir:
    """The sink's mail by recipient domain; reads each file's headers once (files appear
    whole, by rename, and never change)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen: dict[Path, tuple[str, str]] = {}
        self._parser = BytesHeaderParser()

    def message_ids_to(self, domain: str) -> list[str]:
        for file in self.path.glob("*.eml"):
            if file not in self._seen:
                headers = self._parser.parsebytes(file.read_bytes())
                self._seen[file] = (str(headers["To"]), str(headers["Message-ID"]))
        return [mid for to, mid in self._seen.values() if to.endswith(f"@{domain}")]


@pytest.fixture(scope="module")
def scale_databases() -> Iterator[infra.TestDatabases]:
    created = infra.create_test_databases("scale")
    yield created
    infra.drop_test_databases(created)


@pytest.fixture(scope="module")
def mail(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Maildir, int]]:
    logs = tmp_path_factory.mktemp("scale-logs")
    maildir = tmp_path_factory.mktemp("scale-mail")
    port = free_port()
    sink = smtp_sink_process(port, maildir, logs)
    sink.start()
    yield Maildir(maildir), port
    sink.stop()


def notifier_env(
    databases: infra.TestDatabases, kafka_bootstrap: str, smtp_port: int, group: str, port: int
) -> dict[str, str]:
    return service_env(
        "notifier",
        database=databases.services["notifier"],
        kafka_bootstrap_servers=kafka_bootstrap,
        http_port=port,
        extra={
            "NOTIFIER_SMTP_PORT": str(smtp_port),
            "NOTIFIER_CONSUMER_GROUP": group,
            "NOTIFIER_MESSAGE_ID_DOMAIN": DOMAIN,
            "NOTIFIER_SMTP_TIMEOUT_SECONDS": "2",
            "NOTIFIER_LEASE_SECONDS": "4",
            "NOTIFIER_DISPATCH_BATCH_SIZE": "50",
            "NOTIFIER_DISPATCH_POLL_INTERVAL_SECONDS": "0.2",
            "NOTIFIER_OUTBOX_POLL_INTERVAL_SECONDS": "0.2",
            "NOTIFIER_BACKOFF_BASE_SECONDS": "0.2",
            "NOTIFIER_BACKOFF_MAX_SECONDS": "1",
            "NOTIFIER_MAX_ATTEMPTS": "100",
            "NOTIFIER_RETRY_SECONDS": "0.5",
            "NOTIFIER_SHUTDOWN_GRACE_SECONDS": "2",
        },
    )


async def publish_events(producer: AIOKafkaProducer, domain: str) -> set[str]:
    """EVENTS status changes, each to its own order and recipient; their expected Message-IDs."""
    expected = set()
    sent = []
    for n in range(EVENTS):
        order_id = uuid4()
        event = OrderStatusChanged(
            order_id=order_id,
            from_status=OrderStatus.PENDING,
            to_status=OrderStatus.CONFIRMED,
            version=2,
            actor=SHOP,
            customer=Customer(name=f"Customer {n}", email=f"c{n}@{domain}"),
        )
        key = dedupe_key(event.event_id, Channel.EMAIL, "order_confirmed", f"c{n}@{domain}")
        expected.add(f"<{key}@{DOMAIN}>")
        sent.append(
            await producer.send(
                ORDERS_EVENTS, event.model_dump_json().encode(), key=str(order_id).encode()
            )
        )
    await asyncio.gather(*sent)
    return expected


async def start_replicas(env_for: dict[str, dict[str, str]], log_dir: Path) -> dict[str, Process]:
    replicas = {
        name: service_process("notifier", env, int(env["NOTIFIER_HTTP_PORT"]), log_dir, name)
        for name, env in env_for.items()
    }
    await asyncio.gather(*(asyncio.to_thread(p.start) for p in replicas.values()))
    return replicas


async def wait_for_all(maildir: Maildir, domain: str, expected: set[str], within: float) -> None:
    async def probe() -> set[str]:
        return set(maildir.message_ids_to(domain))

    await wait_until(
        probe, lambda ids: ids >= expected, within=within, what=f"{EVENTS} emails", interval=0.5
    )


@pytest.mark.timeout(240)
async def test_two_replicas_send_each_of_a_thousand_emails_exactly_once_even_through_a_sigkill(
    kafka_bootstrap: str,
    scale_databases: infra.TestDatabases,
    mail: tuple[Maildir, int],
    producer: AIOKafkaProducer,
    tmp_path: Path,
) -> None:
    maildir, smtp_port = mail
    await asyncio.to_thread(
        migrate, "notifier", notifier_env(scale_databases, kafka_bootstrap, smtp_port, "-", 0)
    )
    group = await consumer_group_at_end(kafka_bootstrap, f"notifier-scale-{uuid4().hex[:8]}")
    envs = {
        name: notifier_env(scale_databases, kafka_bootstrap, smtp_port, group, free_port())
        for name in ("notifier-a", "notifier-b")
    }
    replicas = await start_replicas(envs, tmp_path)
    try:
        # Run 1: both replicas up throughout.
        quiet = f"r1-{uuid4().hex[:8]}.example.com"
        expected = await publish_events(producer, quiet)
        await wait_for_all(maildir, quiet, expected, within=90)
        mailed = maildir.message_ids_to(quiet)
        assert len(mailed) == EVENTS
        assert set(mailed) == expected

        # Run 2: one replica dies mid-run (no shutdown, leases held) and comes back.
        crash = f"r2-{uuid4().hex[:8]}.example.com"
        expected = await publish_events(producer, crash)
        await wait_until(
            lambda: maildir.message_ids_to(crash),
            lambda ids: len(ids) >= EVENTS // 4,
            within=60,
            what="a quarter of the emails",
            interval=0.2,
        )
        victim = replicas["notifier-a"]
        await asyncio.to_thread(victim.kill)
        assert len(set(maildir.message_ids_to(crash))) < EVENTS, "killed too late to matter"
        await asyncio.to_thread(victim.start)
        await wait_for_all(maildir, crash, expected, within=90)
        mailed = maildir.message_ids_to(crash)
        # A send cut off between the server's acceptance and its record may go out again,
        # under the same Message-ID: the customer's mail system sees one message.
        assert set(mailed) == expected
    finally:
        for process in replicas.values():
            await asyncio.to_thread(process.kill)
