"""The contracts as documents: every message model, and which contract travels on which topic."""

from __future__ import annotations

from typing import Any, Final

from pydantic import TypeAdapter

import contracts
from contracts import (
    ALL_TOPICS,
    NOTIFICATIONS_EVENTS,
    ORDERS_COMMAND_RESULTS,
    ORDERS_COMMANDS,
    ORDERS_EVENTS,
    CommandResult,
    DeadLetter,
    Message,
    NotificationEvent,
    OrderCommand,
    OrderEvent,
    dlq_topic,
)

JSON_SCHEMA_DIALECT: Final = "https://json-schema.org/draft/2020-12/schema"

# The message union each topic carries, named as `contracts` names it (DESIGN.md's topic table).
TOPIC_CONTRACTS: Final[dict[str, tuple[str, Any]]] = {
    ORDERS_COMMANDS: ("OrderCommand", OrderCommand),
    ORDERS_COMMAND_RESULTS: ("CommandResult", CommandResult),
    ORDERS_EVENTS: ("OrderEvent", OrderEvent),
    NOTIFICATIONS_EVENTS: ("NotificationEvent", NotificationEvent),
}


def contract_of_topic(topic: str) -> tuple[str, Any]:
    """The name and type of what travels on `topic`; every `<topic>.dlq` carries dead letters."""
    if topic in TOPIC_CONTRACTS:
        return TOPIC_CONTRACTS[topic]
    if topic in {dlq_topic(source) for source in ALL_TOPICS}:
        return DeadLetter.__name__, DeadLetter
    raise LookupError(f"no contract is known for topic {topic!r}: add it to TOPIC_CONTRACTS")


def message_models() -> list[type[Message]]:
    """Every concrete message in `contracts` (a model with a `type` discriminator), by name."""
    exported = (getattr(contracts, name) for name in contracts.__all__)
    models = {
        candidate
        for candidate in exported
        if isinstance(candidate, type)
        and issubclass(candidate, Message)
        and "type" in candidate.model_fields
    }
    return sorted(models, key=lambda model: model.__name__)


def contract_schemas() -> dict[str, dict[str, Any]]:
    """A self-contained JSON Schema for every message and for each topic's message union."""
    named: dict[str, Any] = {model.__name__: model for model in message_models()}
    named.update(contract_of_topic(topic) for topic in ALL_TOPICS)
    return {name: json_schema(name, contract) for name, contract in sorted(named.items())}


def json_schema(name: str, contract: Any) -> dict[str, Any]:
    # Validation mode: the schema says what a consumer accepts (fields with defaults optional).
    return {
        "$schema": JSON_SCHEMA_DIALECT,
        **TypeAdapter(contract).json_schema(),
        "title": name,
    }
