"""What the fuzzers feed: Hypothesis strategies for every contract and for the Kafka records
consumers are fed; and what they expect back.

The strategies are `st.builds` over the models with one strategy per constrained field:
Hypothesis cannot infer pydantic's constraints (`from_type` draws the `default_factory`
sentinels and ignores `pattern`), and `hypothesis-jsonschema`, the schema-driven route, is
unmaintained and fails on current Hypothesis. `test_every_contract_has_a_strategy` keeps
this table complete as contracts are added.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Literal, TypeAlias

from aiokafka import ConsumerRecord
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from contracts import (
    NOTIFICATIONS_EVENTS,
    ORDERS_COMMAND_RESULTS,
    ORDERS_COMMANDS,
    ORDERS_EVENTS,
    Actor,
    ChangeOrderStatus,
    Channel,
    CommandAccepted,
    CommandRejected,
    CommunicationDead,
    CommunicationFailed,
    CommunicationQueued,
    CommunicationSent,
    CommunicationSkipped,
    CreateOrder,
    Customer,
    DeadLetter,
    Message,
    OrderCreated,
    OrderStatus,
    OrderStatusChanged,
)

# --- how many cases ----------------------------------------------------------------------
# `fuzz` keeps `make test` fast (a few thousand cases over all properties); `chaos` is ten
# times that, for `FUZZ_PROFILE=chaos`. No deadline: a case with a megabyte string may take
# longer than the default 200 ms on a busy machine without anything being wrong.
settings.register_profile(
    "fuzz",
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.register_profile("chaos", parent=settings.get_profile("fuzz"), max_examples=1000)
PROFILE = settings.get_profile(os.environ.get("FUZZ_PROFILE", "fuzz"))


def cases(weight: float = 1.0) -> settings:
    """The profile's settings, with `weight` times its number of cases."""
    return settings(PROFILE, max_examples=max(1, int(PROFILE.max_examples * weight)))


# --- field values ------------------------------------------------------------------------


def bounded_text(min_size: int = 0, max_size: int = 60) -> st.SearchStrategy[str]:
    """Any Unicode text (NUL and astral characters included) within a contract's bounds."""
    return st.text(min_size=min_size, max_size=max_size)


# RFC 3339 offsets are whole minutes, so these are the offsets a JSON message can carry.
offsets = st.integers(min_value=-(24 * 60 - 1), max_value=24 * 60 - 1).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)
aware_datetimes = st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=offsets | st.just(UTC)
)
optional_text = st.none() | bounded_text()

actors = st.builds(Actor, id=bounded_text(1, 200), role=bounded_text(0, 50))
customers = st.builds(
    Customer,
    name=bounded_text(1, 200),
    email=st.none() | st.emails(),
    phone=st.none() | st.from_regex(r"\A\+?[0-9 ()-]{5,32}\Z"),
)
statuses = st.sampled_from(OrderStatus)
envelope = {
    "event_id": st.uuids(),
    "occurred_at": aware_datetimes,
    "correlation_id": st.none() | bounded_text(0, 200),
    "schema_version": st.integers(),
}


def communication(
    model: type[BaseModel], **extra: st.SearchStrategy[Any]
) -> st.SearchStrategy[Any]:
    return st.builds(
        model,
        communication_id=st.uuids(),
        dedupe_key=bounded_text(),
        order_id=st.uuids(),
        source_event_id=st.uuids(),
        channel=st.sampled_from(Channel),
        template=bounded_text(),
        recipient=bounded_text(),
        attempts=st.integers(),
        **envelope,
        **extra,
    )


CONTRACTS: dict[type[Message], st.SearchStrategy[Any]] = {
    CreateOrder: st.builds(
        CreateOrder,
        schema_version=st.integers(),
        command_id=st.uuids(),
        order_id=st.uuids(),
        customer=customers,
        actor=actors,
        issued_at=aware_datetimes,
        correlation_id=st.none() | bounded_text(0, 200),
    ),
    ChangeOrderStatus: st.builds(
        ChangeOrderStatus,
        schema_version=st.integers(),
        command_id=st.uuids(),
        order_id=st.uuids(),
        status=statuses,
        reason=st.none() | bounded_text(0, 1000),
        expected_version=st.none() | st.integers(min_value=1),
        actor=actors,
        issued_at=aware_datetimes,
        correlation_id=st.none() | bounded_text(0, 200),
    ),
    CommandAccepted: st.builds(
        CommandAccepted,
        command_id=st.uuids(),
        order_id=st.uuids(),
        actor=actors,
        version=st.integers(),
        **envelope,
    ),
    CommandRejected: st.builds(
        CommandRejected,
        command_id=st.uuids(),
        order_id=st.none() | st.uuids(),
        actor=actors,
        code=bounded_text(),
        reason=bounded_text(),
        current_status=st.none() | statuses,
        requested_status=st.none() | statuses,
        **envelope,
    ),
    OrderCreated: st.builds(
        OrderCreated,
        order_id=st.uuids(),
        status=statuses,
        version=st.integers(min_value=1),
        customer=customers,
        actor=actors,
        **envelope,
    ),
    OrderStatusChanged: st.builds(
        OrderStatusChanged,
        order_id=st.uuids(),
        from_status=statuses,
        to_status=statuses,
        version=st.integers(min_value=1),
        actor=actors,
        reason=optional_text,
        customer=customers,
        **envelope,
    ),
    CommunicationQueued: communication(CommunicationQueued),
    CommunicationSent: communication(CommunicationSent, provider_message_id=optional_text),
    CommunicationFailed: communication(CommunicationFailed, error=bounded_text()),
    CommunicationDead: communication(CommunicationDead, error=bounded_text()),
    CommunicationSkipped: communication(CommunicationSkipped, reason=bounded_text()),
    DeadLetter: st.builds(
        DeadLetter,
        schema_version=st.integers(),
        source_topic=bounded_text(),
        partition=st.integers(),
        offset=st.integers(),
        key=optional_text,
        payload=bounded_text(max_size=300),
        headers=st.dictionaries(bounded_text(), bounded_text(), max_size=4),
        reason=bounded_text(),
        consumer_group=bounded_text(),
        dead_lettered_at=aware_datetimes,
    ),
}

# The contracts each topic carries, as its consumers validate them.
TOPIC_CONTRACTS: dict[str, tuple[type[Message], ...]] = {
    ORDERS_COMMANDS: (CreateOrder, ChangeOrderStatus),
    ORDERS_COMMAND_RESULTS: (CommandAccepted, CommandRejected),
    ORDERS_EVENTS: (OrderCreated, OrderStatusChanged),
    NOTIFICATIONS_EVENTS: (
        CommunicationQueued,
        CommunicationSent,
        CommunicationFailed,
        CommunicationDead,
        CommunicationSkipped,
    ),
}
KNOWN_TYPES = {model.model_fields["type"].default for model in CONTRACTS}


def valid_message(topic: str) -> st.SearchStrategy[Any]:
    return st.one_of(*(CONTRACTS[model] for model in TOPIC_CONTRACTS[topic]))


def json_document(message: BaseModel) -> dict[str, Any]:
    """The message as its JSON object, the way producers write it."""
    document: dict[str, Any] = json.loads(message.model_dump_json())
    return document


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=8,
)


@st.composite
def huge_text(draw: st.DrawFn, min_size: int = 100_000, max_size: int = 900_000) -> str:
    """A long string, built by repetition: drawing a megabyte character by character would be
    slow and would trip Hypothesis's data-size limit."""
    chunk = draw(st.text(min_size=1, max_size=8))
    size = draw(st.integers(min_value=min_size, max_value=max_size))
    return (chunk * (size // len(chunk) + 1))[:size]


# Values that sit just outside what a contract allows, or far outside.
out_of_range: st.SearchStrategy[Any] = st.sampled_from(
    [0, -1, 2**31, 2**63, -(2**63) - 1, 10**100, 1.5, True, "", " ", "\x00", [], {}, None]
) | st.text(min_size=201, max_size=1100)

# --- Kafka records -----------------------------------------------------------------------

header_names = st.text(max_size=20)
# Header values as Kafka carries them: any bytes, including none at all.
header_values = st.none() | st.binary(max_size=40) | st.text(max_size=20).map(str.encode)
record_headers = st.lists(st.tuples(header_names, header_values), max_size=5)
record_keys = st.none() | st.binary(max_size=40) | st.uuids().map(lambda u: str(u).encode())


def consumer_record(
    topic: str,
    value: bytes | None,
    key: bytes | None,
    headers: list[tuple[str, bytes | None]],
    offset: int,
    partition: int = 0,
) -> ConsumerRecord[bytes, bytes]:
    """A record as aiokafka hands it to faststream."""
    return ConsumerRecord(
        topic=topic,
        partition=partition,
        offset=offset,
        timestamp=1_700_000_000_000 + offset,
        timestamp_type=0,
        key=key,
        value=value,
        checksum=None,
        serialized_key_size=len(key or b""),
        serialized_value_size=len(value or b""),
        headers=headers,
    )


# --- what consumers are fed --------------------------------------------------------------


@dataclass(frozen=True)
class Fed:
    """A record value and what its consumer must make of it: `accepted` as the topic's
    contract (equal to `message` when that is given), `dead`-lettered (naming `mention` in
    the reason when that is given), or `either` of the two."""

    kind: str
    value: bytes | None
    expect: Literal["accepted", "dead", "either"]
    message: Message | None = None
    mention: str | None = None


def required_keys(model: type[BaseModel]) -> set[str]:
    """The keys a JSON message of `model` cannot do without: its required fields, and `type`,
    the discriminator every topic's consumer needs."""
    return {"type"} | {
        field.alias or name for name, field in model.model_fields.items() if field.is_required()
    }


def _encoded(document: Any) -> bytes:
    return json.dumps(document, ensure_ascii=False).encode()


@st.composite
def fed_values(draw: st.DrawFn, topic: str) -> Fed:
    """A valid message of `topic`, or one of its mutations, or no message at all."""
    message = draw(valid_message(topic))
    document = json_document(message)
    serialized = message.model_dump_json().encode()
    key = draw(st.sampled_from(sorted(document)))
    own_types = {model.model_fields["type"].default for model in TOPIC_CONTRACTS[topic]}
    mutation = draw(
        st.sampled_from(
            [
                "valid",
                "field dropped",
                "wrong type",
                "out of range",
                "NUL bytes",
                "huge string",
                "not UTF-8",
                "not JSON",
                "no value",
                "JSON but not an object",
                "truncated",
                "unknown type",
                "another topic's type",
                "schema_version changed",
            ]
        )
    )
    if mutation == "valid":
        return Fed(mutation, serialized, "accepted", message)
    if mutation == "field dropped":
        del document[key]
        if key in required_keys(type(message)):
            return Fed(f"{mutation}: {key}", _encoded(document), "dead", mention=key)
        return Fed(f"{mutation}: {key}", _encoded(document), "accepted")
    if mutation in ("wrong type", "out of range", "huge string", "schema_version changed"):
        if mutation == "schema_version changed":
            key = "schema_version"
        document[key] = draw(
            {
                "wrong type": json_values,
                "out of range": out_of_range,
                "huge string": huge_text(),
                "schema_version changed": json_values | out_of_range,
            }[mutation]
        )
        return Fed(f"{mutation}: {key}", _encoded(document), "either")
    if mutation == "NUL bytes":
        texts = sorted(k for k, v in document.items() if isinstance(v, str))
        key = draw(st.sampled_from(texts))
        at = draw(st.integers(min_value=0, max_value=len(document[key])))
        document[key] = document[key][:at] + "\x00" * draw(st.integers(1, 3)) + document[key][at:]
        return Fed(f"{mutation}: {key}", _encoded(document), "either")
    if mutation == "not UTF-8":
        at = draw(st.integers(min_value=0, max_value=len(serialized)))
        # A continuation byte without its lead, or a byte UTF-8 never uses.
        junk = draw(
            st.sampled_from([b"\x80", b"\xbf", b"\xc0\xaf", b"\xfe", b"\xff", b"\xed\xa0\x80"])
        )
        return Fed(mutation, serialized[:at] + junk + serialized[at:], "dead")
    if mutation == "not JSON":
        value = draw(st.binary(max_size=200) | huge_text().map(str.encode))
        return Fed(mutation, value, "dead")
    if mutation == "no value":  # a tombstone
        return Fed(mutation, None, "dead")
    if mutation == "JSON but not an object":
        return Fed(
            mutation, _encoded(draw(json_values.filter(lambda v: not isinstance(v, dict)))), "dead"
        )
    if mutation == "truncated":
        return Fed(mutation, serialized[: draw(st.integers(0, len(serialized) - 1))], "dead")
    if mutation == "unknown type":
        document["type"] = draw(
            (st.text() | huge_text(1_000, 300_000) | json_values).filter(
                lambda tag: not (isinstance(tag, str) and tag in KNOWN_TYPES)
            )
        )
        return Fed(mutation, _encoded(document), "dead", mention="type")
    # Another topic's valid message: well-formed, but not a contract this topic carries.
    other = draw(st.sampled_from(sorted(set(TOPIC_CONTRACTS) - {topic})))
    foreign = draw(valid_message(other) | CONTRACTS[DeadLetter])
    assert type(foreign).model_fields["type"].default not in own_types
    return Fed(mutation, foreign.model_dump_json().encode(), "dead", mention="type")


# Found by this fuzzer: their dead letters outgrew Kafka's record limit (NUL bytes become
# six-byte escapes in JSON; an unknown tag is echoed in the reason), so publishing them
# failed and the consumer retried the same record forever.
NUL_FLOOD = Fed("not JSON", b"\x00" * 900_000, "dead")
HUGE_UNKNOWN_TYPE = Fed(
    "unknown type", json.dumps({"type": "\x00" * 150_000}).encode(), "dead", mention="type"
)


# --- what a dead letter must be ----------------------------------------------------------

Record: TypeAlias = "ConsumerRecord[Any, Any]"

# Kafka's default max.request.size is 1 MiB; what is left covers the record's own framing.
KAFKA_MAX_LETTER_BYTES = 1_000_000


def text_of(raw: bytes | None) -> str:
    return (raw or b"").decode("utf-8", errors="replace")


def assert_keeps_the_record(letter: DeadLetter, record: Record, consumer_group: str) -> None:
    """The dead letter says why, keeps what it can of the record, and fits in Kafka."""
    assert letter.reason.strip()
    assert (letter.source_topic, letter.partition, letter.offset, letter.consumer_group) == (
        record.topic,
        record.partition,
        record.offset,
        consumer_group,
    )
    original = text_of(record.value)
    assert original.startswith(letter.payload)
    if letter.payload != original:
        assert "payload of" in letter.reason
    headers = {name: text_of(value) for name, value in record.headers}
    assert letter.headers.items() <= headers.items()
    if letter.headers != headers:
        assert "headers" in letter.reason
    if record.key:
        assert letter.key is not None
        assert text_of(record.key).startswith(letter.key)
    else:
        assert letter.key is None
    serialized = letter.model_dump_json().encode()
    assert len(serialized) + len(letter.record_key or b"") <= KAFKA_MAX_LETTER_BYTES
    assert DeadLetter.model_validate_json(serialized) == letter
