"""A few hundred generated records, poison and valid, on the real `orders.commands` topic with
the order service consuming: each poison record ends on `orders.commands.dlq` with its
reason, each valid command is answered on `orders.command-results`, and the consumer keeps
going to the end of the topic."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer
from hypothesis import HealthCheck, Phase, given, settings
from pydantic import ValidationError

from contracts import (
    ORDERS_COMMAND_RESULTS,
    ORDERS_COMMANDS,
    DeadLetter,
    dlq_topic,
    order_command_adapter,
)
from devstack import infra
from devstack.waiting import wait_until
from order.config import Settings as OrderSettings
from tests.fuzz.cases import (
    HUGE_UNKNOWN_TYPE,
    NUL_FLOOD,
    Fed,
    assert_keeps_the_record,
    consumer_record,
    fed_values,
    record_headers,
    record_keys,
)
from tests.fuzz.topics import TopicTail, committed

RECORDS = 300
# The broker takes records up to about 1 MiB, and Kafka clients refuse to send one without
# key and value: neither ever reaches a consumer.
MAX_PUBLISHED_BYTES = 1_000_000


@dataclass(frozen=True)
class Sent:
    fed: Fed
    key: bytes | None
    headers: list[tuple[str, bytes | None]]
    # The command it is, by the contract; None for poison.
    command_id: str | None
    partition: int = -1
    offset: int = -1

    @property
    def position(self) -> tuple[int, int]:
        return (self.partition, self.offset)

    def size(self) -> int:
        headers = sum(len(name.encode()) + len(value or b"") for name, value in self.headers)
        return len(self.fed.value or b"") + len(self.key or b"") + headers


def command_id_of(value: bytes | None) -> str | None:
    try:
        return str(order_command_adapter.validate_json(value or b"").command_id)
    except ValidationError:
        return None


@pytest.fixture(scope="module")
def generated_records() -> list[Sent]:
    """Hypothesis's records for the topic, about RECORDS of them, each command only once (a
    repeated command_id is answered once, by design). Drawn before the service runs, whose
    Kafka client would otherwise use `random` while Hypothesis generates."""
    drawn: list[Sent] = [Sent(poison, None, [], None) for poison in (NUL_FLOOD, HUGE_UNKNOWN_TYPE)]

    @settings(
        max_examples=RECORDS,
        phases=[Phase.generate],
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(fed=fed_values(ORDERS_COMMANDS), key=record_keys, headers=record_headers)
    def collect(fed: Fed, key: bytes | None, headers: list[tuple[str, bytes | None]]) -> None:
        drawn.append(Sent(fed, key, headers, command_id_of(fed.value)))

    collect()
    commands: set[str] = set()
    kept = []
    for sent in drawn:
        unsendable = sent.size() > MAX_PUBLISHED_BYTES or sent.fed.value is sent.key is None
        if unsendable or sent.command_id in commands:
            continue
        if sent.command_id is not None:
            commands.add(sent.command_id)
        kept.append(sent)
    return kept


async def answered_in(database: infra.TestDatabases) -> set[str]:
    """The command ids whose results the consumer's own service stored and published."""
    connection = await asyncpg.connect(database.dsn("order"))
    try:
        rows = await connection.fetch(
            "SELECT payload->>'command_id' AS command_id FROM outbox"
            " WHERE topic = $1 AND published_at IS NOT NULL",
            ORDERS_COMMAND_RESULTS,
        )
    finally:
        await connection.close()
    return {row["command_id"] for row in rows}


async def test_generated_poison_and_commands_are_each_dead_lettered_or_answered(
    generated_records: list[Sent],
    order_command_consumer: OrderSettings,
    kafka_bootstrap: str,
    command_databases: infra.TestDatabases,
) -> None:
    group = order_command_consumer.commands_consumer_group
    dlq = await TopicTail.open(kafka_bootstrap, dlq_topic(ORDERS_COMMANDS))
    results = await TopicTail.open(kafka_bootstrap, ORDERS_COMMAND_RESULTS)
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka_bootstrap, acks="all", linger_ms=5, max_request_size=2**21
    )
    await producer.start()
    try:
        deliveries = [
            await producer.send(ORDERS_COMMANDS, s.fed.value, key=s.key, headers=s.headers)
            for s in generated_records
        ]
        metadata = await asyncio.gather(*deliveries)
    finally:
        await producer.stop()
    sent = [
        Sent(s.fed, s.key, s.headers, s.command_id, m.partition, m.offset)
        for s, m in zip(generated_records, metadata, strict=True)
    ]
    poison = {s.position: s for s in sent if s.command_id is None}
    commands = {s.command_id: s for s in sent if s.command_id is not None}
    ends: dict[int, int] = {}
    for s in sent:
        ends[s.partition] = max(ends.get(s.partition, 0), s.offset + 1)

    def letters() -> dict[tuple[int, int], list[DeadLetter]]:
        mine: dict[tuple[int, int], list[DeadLetter]] = {}
        for record in dlq.records:
            letter = DeadLetter.model_validate_json(record.value)
            if letter.consumer_group == group:
                mine.setdefault((letter.partition, letter.offset), []).append(letter)
        return mine

    def unstorable() -> set[str]:
        dead = letters()
        return {
            command_id
            for command_id, s in commands.items()
            if any(letter.reason.startswith("unstorable:") for letter in dead.get(s.position, []))
        }

    async def outstanding() -> dict[str, Any]:
        """What is still missing: letters, answers, results on the topic, consumed offsets."""
        await dlq.poll()
        await results.poll()
        stored = await answered_in(command_databases)
        on_topic = {json.loads(record.value)["command_id"] for record in results.records}
        consumed = await committed(kafka_bootstrap, group)
        return {
            "poison without a letter": len(poison.keys() - letters().keys()),
            "commands unanswered": len(commands.keys() - stored - unstorable()),
            "answers not on the topic": len(stored & commands.keys() - on_topic),
            "partitions behind": sum(consumed.get(p, -1) < end for p, end in ends.items()),
        }

    try:
        await wait_until(
            outstanding,
            lambda missing: not any(missing.values()),
            within=60,
            what="a dead letter or result for every record, and the consumer at the end",
        )
    finally:
        await dlq.consumer.stop()
        await results.consumer.stop()

    dead = letters()
    for position, s in poison.items():
        (letter,) = dead[position]
        original = consumer_record(
            ORDERS_COMMANDS, s.fed.value, s.key, s.headers, s.offset, s.partition
        )
        assert_keeps_the_record(letter, original, group)
    stored = await answered_in(command_databases)
    for command_id, s in commands.items():
        if command_id in stored:
            assert s.position not in dead, (s.fed.kind, dead[s.position])
        else:
            (letter,) = dead[s.position]
            assert letter.reason.startswith("unstorable:"), (s.fed.kind, letter.reason)
    # Both kinds were fed, so neither check above passed for want of cases.
    assert poison
    assert commands.keys() & stored
