"""Properties of every contract: a valid message survives JSON unchanged, unknown fields are
ignored (backwards-compatible evolution), an unknown `type` is refused."""

from __future__ import annotations

import json
from typing import Any, get_args

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

import contracts
from contracts import (
    NOTIFICATIONS_EVENTS,
    ORDERS_COMMAND_RESULTS,
    ORDERS_COMMANDS,
    ORDERS_EVENTS,
    Message,
    command_result_adapter,
    notification_event_adapter,
    order_command_adapter,
    order_event_adapter,
)
from tests.fuzz.cases import (
    CONTRACTS,
    KNOWN_TYPES,
    TOPIC_CONTRACTS,
    cases,
    json_document,
    json_values,
)

TOPIC_ADAPTERS: dict[str, TypeAdapter[Any]] = {
    ORDERS_COMMANDS: order_command_adapter,
    ORDERS_COMMAND_RESULTS: command_result_adapter,
    ORDERS_EVENTS: order_event_adapter,
    NOTIFICATIONS_EVENTS: notification_event_adapter,
}
TOPIC_UNIONS = {
    ORDERS_COMMANDS: contracts.OrderCommand,
    ORDERS_COMMAND_RESULTS: contracts.CommandResult,
    ORDERS_EVENTS: contracts.OrderEvent,
    NOTIFICATIONS_EVENTS: contracts.NotificationEvent,
}
MODELS = sorted(CONTRACTS, key=lambda model: model.__name__)


def topic_of(model: type[Message]) -> str | None:
    return next((topic for topic, models in TOPIC_CONTRACTS.items() if model in models), None)


def test_every_contract_has_a_strategy() -> None:
    messages = {
        thing
        for thing in (getattr(contracts, name) for name in contracts.__all__)
        if isinstance(thing, type) and issubclass(thing, Message) and "type" in thing.model_fields
    }
    assert messages == set(CONTRACTS)


@pytest.mark.parametrize("topic", sorted(TOPIC_UNIONS))
def test_each_topic_carries_the_contracts_the_fuzzers_assume(topic: str) -> None:
    annotated = TOPIC_UNIONS[topic]
    assert set(get_args(get_args(annotated)[0])) == set(TOPIC_CONTRACTS[topic])


@pytest.mark.parametrize("model", MODELS, ids=lambda model: model.__name__)
@given(data=st.data())
@cases()
def test_a_valid_message_round_trips_through_json_unchanged(
    model: type[Message], data: st.DataObject
) -> None:
    message = data.draw(CONTRACTS[model])
    serialized = message.model_dump_json()

    assert model.model_validate_json(serialized) == message
    topic = topic_of(model)
    if topic is not None:
        parsed = TOPIC_ADAPTERS[topic].validate_json(serialized)
        assert type(parsed) is model
        assert parsed == message


@pytest.mark.parametrize("model", MODELS, ids=lambda model: model.__name__)
@given(data=st.data())
@cases(weight=0.5)
def test_unknown_fields_are_ignored(model: type[Message], data: st.DataObject) -> None:
    message = data.draw(CONTRACTS[model])
    known = {"type"} | {
        name
        for field_name, field in model.model_fields.items()
        for name in (field_name, field.alias)
        if name
    }
    extra = data.draw(
        st.dictionaries(st.text().filter(lambda name: name not in known), json_values, min_size=1)
    )
    evolved = json.dumps({**extra, **json_document(message)})

    assert model.model_validate_json(evolved) == message
    topic = topic_of(model)
    if topic is not None:
        assert TOPIC_ADAPTERS[topic].validate_json(evolved) == message


@pytest.mark.parametrize("model", MODELS, ids=lambda model: model.__name__)
@given(data=st.data())
@cases(weight=0.5)
def test_an_unknown_type_fails_validation(model: type[Message], data: st.DataObject) -> None:
    topic = topic_of(model)
    # Another contract's type is unknown here too, unless the same topic carries it.
    carried = {m.model_fields["type"].default for m in TOPIC_CONTRACTS.get(topic or "", (model,))}
    document = json_document(data.draw(CONTRACTS[model]))
    document["type"] = data.draw(
        (st.text() | json_values).filter(
            lambda tag: not (isinstance(tag, str) and tag in KNOWN_TYPES)
        )
        | st.sampled_from(sorted(KNOWN_TYPES - carried))
    )
    foreign = json.dumps(document)

    with pytest.raises(ValidationError):
        model.model_validate_json(foreign)
    if topic is not None:
        with pytest.raises(ValidationError, match="type"):
            TOPIC_ADAPTERS[topic].validate_json(foreign)
