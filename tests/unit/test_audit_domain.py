"""Audit entries and the hash chain, without I/O."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta, timezone
from uuid import uuid4

import pytest
from hypothesis import given
from hypothesis import strategies as st

from audit.domain.entries import (
    GENESIS_HASH,
    AuditEntry,
    StoredEntry,
    chain_hash,
    entry_for,
    verify_chain,
)
from contracts import (
    Actor,
    Channel,
    CommandRejected,
    CommunicationSent,
    Customer,
    OrderStatus,
    OrderStatusChanged,
)

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def status_changed(**fields: object) -> OrderStatusChanged:
    values: dict[str, object] = {
        "order_id": uuid4(),
        "from_status": OrderStatus.CONFIRMED,
        "to_status": OrderStatus.PREPARING,
        "version": 3,
        "actor": Actor(id="alice", role="admin"),
        "reason": "kitchen started",
        "customer": Customer(name="Ann", email="ann@example.com"),
        "occurred_at": NOW,
        "correlation_id": "req-1",
    }
    values.update(fields)
    return OrderStatusChanged.model_validate(values)


def chain_of(entries: list[AuditEntry]) -> list[StoredEntry]:
    stored, prev = [], GENESIS_HASH
    for number, entry in enumerate(entries, start=1):
        entry_hash = chain_hash(prev, entry)
        stored.append(StoredEntry(number, entry, prev, entry_hash))
        prev = entry_hash
    return stored


def test_a_status_change_is_who_what_on_what_when_before_after_why() -> None:
    event = status_changed()

    entry = entry_for(event, NOW + timedelta(seconds=1))

    assert entry.event_id == event.event_id
    assert (entry.action, entry.actor, entry.entity_type) == (
        "order.status_changed",
        "alice",
        "order",
    )
    assert entry.entity_id == str(event.order_id)
    assert (entry.occurred_at, entry.recorded_at) == (NOW, NOW + timedelta(seconds=1))
    assert entry.before == {"status": "confirmed", "version": 2}
    assert entry.after == {"status": "preparing", "version": 3}
    assert (entry.reason, entry.correlation_id, entry.source) == (
        "kitchen started",
        "req-1",
        "order",
    )


def test_a_rejected_command_records_the_attempt_and_its_reason() -> None:
    rejected = CommandRejected(
        command_id=uuid4(),
        order_id=uuid4(),
        actor=Actor(id="shop"),
        code="transition_not_allowed",
        reason="cannot skip",
        current_status=OrderStatus.PENDING,
        requested_status=OrderStatus.READY,
    )

    entry = entry_for(rejected, NOW)

    assert entry.action == "order.command_rejected"
    assert (entry.actor, entry.reason) == ("shop", "cannot skip")
    assert (entry.before, entry.after) == ({"status": "pending"}, {"status": "ready"})
    assert entry.details["code"] == "transition_not_allowed"


def test_a_communication_outcome_names_its_dedupe_key() -> None:
    sent = CommunicationSent(
        communication_id=uuid4(),
        dedupe_key="k" * 64,
        order_id=uuid4(),
        source_event_id=uuid4(),
        channel=Channel.EMAIL,
        template="order_ready",
        recipient="ann@example.com",
        attempts=1,
        provider_message_id="<k@x>",
    )

    entry = entry_for(sent, NOW)

    assert (entry.action, entry.actor, entry.entity_id) == (
        "communication.sent",
        "notifier",
        str(sent.order_id),
    )
    assert entry.details["dedupe_key"] == "k" * 64


def test_an_intact_chain_verifies() -> None:
    entries = [entry_for(status_changed(), NOW) for _ in range(5)]

    report = verify_chain(chain_of(entries))

    assert (report.ok, report.checked, report.first_broken) == (True, 5, None)


FIELDS = st.sampled_from(["action", "actor", "entity_id", "reason", "correlation_id", "source"])


@given(field=FIELDS, replacement=st.text(min_size=1, max_size=20), position=st.integers(0, 4))
def test_altering_any_field_of_any_entry_is_found_and_named(
    field: str, replacement: str, position: int
) -> None:
    stored = chain_of([entry_for(status_changed(), NOW) for _ in range(5)])
    victim = stored[position]
    if getattr(victim.entry, field) == replacement:
        replacement += "!"
    tampered = dataclasses.replace(victim.entry, **{field: replacement})
    stored[position] = dataclasses.replace(victim, entry=tampered)

    report = verify_chain(stored)

    assert not report.ok
    assert report.checked == position
    assert report.first_broken is not None
    assert report.first_broken["event_id"] == str(victim.entry.event_id)
    assert "altered" in report.first_broken["problem"]


def test_a_removed_entry_breaks_the_link_after_it() -> None:
    stored = chain_of([entry_for(status_changed(), NOW) for _ in range(4)])
    del stored[1]

    report = verify_chain(stored)

    assert not report.ok
    assert report.first_broken is not None
    assert report.first_broken["id"] == 3
    assert "prev_hash" in report.first_broken["problem"]


@pytest.mark.parametrize("tz_hours", [0, 2, -5])
def test_the_canonical_form_does_not_depend_on_the_timezone_it_is_read_in(tz_hours: int) -> None:
    entry = entry_for(status_changed(), NOW)

    shifted = dataclasses.replace(
        entry, occurred_at=entry.occurred_at.astimezone(timezone(timedelta(hours=tz_hours)))
    )

    assert shifted.canonical() == entry.canonical()
