"""Every consumer's own parse path, fed thousands of generated records: valid messages,
mutated ones and junk. Each record becomes the right contract or a dead letter that keeps
the original and says why; nothing else comes out and nothing raises.

A record goes through what faststream runs for the subscriber (its parser, wrapped in the
service's `parse_with_text_headers`; the service's `undecoded`), then the handler's own
steps: the topic's adapter, `describe_invalid` and `letter_for`. Publishing
the letter is left to the real-broker test next door."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from faststream.kafka.message import KafkaAckableMessage
from faststream.kafka.parser import AioKafkaBatchParser
from hypothesis import example, given
from hypothesis import strategies as st
from pydantic import TypeAdapter

from audit.adapters import broker as audit_broker
from audit.entrypoints import consumer as audit_consumer
from contracts import (
    ORDERS_COMMANDS,
    ORDERS_EVENTS,
    DeadLetter,
    Message,
)
from notifier.adapters import broker as notifier_broker
from notifier.entrypoints import consumer as notifier_consumer
from order.adapters import broker as order_broker
from order.entrypoints import commands as order_commands
from servicekit.dead_letters import letter_for
from tests.fuzz.cases import (
    HUGE_UNKNOWN_TYPE,
    NUL_FLOOD,
    TOPIC_CONTRACTS,
    Fed,
    Record,
    assert_keeps_the_record,
    cases,
    consumer_record,
    fed_values,
    header_names,
    huge_text,
    record_headers,
    record_keys,
)

# What faststream builds for a subscriber with NACK_ON_ERROR (see its KafkaSubscriber).
BATCH_PARSER = AioKafkaBatchParser(msg_class=KafkaAckableMessage, regex=None)

offsets = st.integers(min_value=0, max_value=2**40)


async def taken_alone(
    record: Record,
    parse_with_text_headers: Callable[..., Awaitable[Any]],
    undecoded: Callable[[Any], Awaitable[Any]],
    parse: Callable[[Any], tuple[Sequence[tuple[Record, Message]], Sequence[tuple[Record, str]]]],
    consumer_group: str,
) -> Message | DeadLetter:
    """The record's outcome as a service's batch handler sees it, in a batch of its own."""
    message = await parse_with_text_headers((record,), BATCH_PARSER.parse_batch)
    assert await undecoded(message) == [record.value or b""]
    parsed, rejected = parse(message.raw_message)
    if rejected:
        ((taken, reason),) = rejected
        return letter_for(taken, reason, consumer_group)
    ((_, taken_as),) = parsed
    return taken_as


async def order_takes(record: Record) -> Message | DeadLetter:
    return await taken_alone(
        record,
        order_broker.parse_with_text_headers,
        order_broker.undecoded,
        order_commands.parse,
        "order-commands",
    )


async def notifier_takes(record: Record) -> Message | DeadLetter:
    return await taken_alone(
        record,
        notifier_broker.parse_with_text_headers,
        notifier_broker.undecoded,
        notifier_consumer.parse,
        "notifier",
    )


async def audit_takes(records: tuple[Record, ...]) -> dict[int, Message | DeadLetter]:
    """Each record's outcome, by offset, as the audit's batch handler sees them."""
    message = await audit_broker.parse_with_text_headers(records, BATCH_PARSER.parse_batch)
    assert await audit_broker.undecoded(message) == [record.value or b"" for record in records]
    parsed, rejected = audit_consumer._parse(message.raw_message)
    taken: dict[int, Message | DeadLetter] = {r.offset: m for r, m in parsed}
    for record, reason in rejected:
        taken[record.offset] = letter_for(record, reason, "audit")
    assert len(taken) == len(records), "a record neither parsed nor rejected"
    return taken


def assert_taken_as_expected(
    fed: Fed, record: Record, taken: Message | DeadLetter, consumer_group: str
) -> None:
    if isinstance(taken, DeadLetter):
        assert fed.expect != "accepted", (fed.kind, taken.reason)
        if fed.mention is not None:
            assert fed.mention in taken.reason, (fed.kind, taken.reason)
        assert_keeps_the_record(taken, record, consumer_group)
    else:
        assert fed.expect != "dead", (fed.kind, taken)
        assert type(taken) in TOPIC_CONTRACTS[record.topic]
        if fed.message is not None:
            assert taken == fed.message


@given(fed=fed_values(ORDERS_COMMANDS), key=record_keys, headers=record_headers, offset=offsets)
@example(fed=NUL_FLOOD, key=None, headers=[], offset=0)
@example(fed=HUGE_UNKNOWN_TYPE, key=b"k", headers=[("trace", b"\xff")], offset=1)
@cases(weight=4)
async def test_order_command_consumer_takes_or_dead_letters_every_record(
    fed: Fed, key: bytes | None, headers: list[tuple[str, bytes | None]], offset: int
) -> None:
    record = consumer_record(ORDERS_COMMANDS, fed.value, key, headers, offset)

    assert_taken_as_expected(fed, record, await order_takes(record), "order-commands")


@given(fed=fed_values(ORDERS_EVENTS), key=record_keys, headers=record_headers, offset=offsets)
@example(fed=NUL_FLOOD, key=None, headers=[], offset=0)
@cases(weight=3)
async def test_notifier_event_consumer_takes_or_dead_letters_every_record(
    fed: Fed, key: bytes | None, headers: list[tuple[str, bytes | None]], offset: int
) -> None:
    record = consumer_record(ORDERS_EVENTS, fed.value, key, headers, offset)

    assert_taken_as_expected(fed, record, await notifier_takes(record), "notifier")


audited_topics = st.sampled_from(sorted(audit_consumer.AUDITED_TOPICS))
batches = st.lists(
    st.tuples(
        audited_topics.flatmap(lambda topic: st.tuples(st.just(topic), fed_values(topic))),
        record_keys,
        record_headers,
    ),
    min_size=1,
    max_size=5,
)


@given(batch=batches)
@cases(weight=2)
async def test_audit_batch_consumer_takes_or_dead_letters_every_record(
    batch: list[tuple[tuple[str, Fed], bytes | None, list[tuple[str, bytes | None]]]],
) -> None:
    records = tuple(
        consumer_record(topic, fed.value, key, headers, offset)
        for offset, ((topic, fed), key, headers) in enumerate(batch)
    )

    taken = await audit_takes(records)

    for record, ((_, fed), _, _) in zip(records, batch, strict=True):
        assert_taken_as_expected(fed, record, taken[record.offset], "audit")


@given(
    topic=st.text(min_size=1, max_size=249),
    partition=st.integers(min_value=0, max_value=2**31 - 1),
    offset=offsets,
    key=record_keys | huge_text(1_000, 200_000).map(str.encode),
    value=st.none() | st.binary(max_size=300) | huge_text().map(str.encode),
    headers=record_headers
    | st.lists(st.tuples(header_names, huge_text(1_000, 200_000).map(str.encode))),
    reason=st.text(min_size=1) | st.text(min_size=1).map(lambda text: text * 50_000),
)
@example(
    topic="orders.commands",
    partition=0,
    offset=0,
    key=b"\x00" * 300_000,
    value=b"\x00" * 300_000,
    headers=[("h", b"\x00" * 300_000), ("i", b"\xff" * 100_000)],
    reason="\x00" * 100_000,
)
@example(  # a blank reason still gives a letter that says why
    topic="orders.events", partition=1, offset=2, key=None, value=b"{}", headers=[], reason=" "
)
@cases(weight=2)
def test_a_dead_letter_keeps_what_fits_of_any_record(
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    headers: list[tuple[str, bytes | None]],
    reason: str,
) -> None:
    letter = DeadLetter.of_record(
        topic=topic,
        partition=partition,
        offset=offset,
        key=key,
        value=value,
        headers=headers,
        reason=reason,
        consumer_group="fuzz",
    )

    record = consumer_record(topic, value, key, headers, offset, partition)
    assert_keeps_the_record(letter, record, "fuzz")


def test_the_audit_parses_with_the_topic_contracts_the_fuzzers_assume() -> None:
    adapters: dict[str, TypeAdapter[Any]] = audit_consumer.AUDITED_TOPICS
    assert set(adapters) == set(TOPIC_CONTRACTS) - {ORDERS_COMMANDS}
