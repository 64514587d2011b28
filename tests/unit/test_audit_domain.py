"""Audit entries and the hash chain, without I/O."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from uuid import UUID, uuid4

import pytest
from hypothesis import given
from hypothesis import strategies as st

from audit.domain.entries import (
    GENESIS_HASH,
    AuditEntry,
    StoredEntry,
    audit_event_id,
    chain_hash,
    chained,
    entry_for,
    new_entries,
    verify_chain,
)
from contracts import (
    Actor,
    Channel,
    CommandAccepted,
    CommandRejected,
    CommunicationDead,
    CommunicationFailed,
    CommunicationQueued,
    CommunicationSent,
    Customer,
    OrderCreated,
    OrderStatus,
    OrderStatusChanged,
)

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
ALICE = Actor(id="alice", role="admin")
ANN = Customer(name="Ann", email="ann@example.com")


def status_changed(**fields: object) -> OrderStatusChanged:
    values: dict[str, object] = {
        "order_id": uuid4(),
        "from_status": OrderStatus.CONFIRMED,
        "to_status": OrderStatus.PREPARING,
        "version": 3,
        "actor": ALICE,
        "reason": "kitchen started",
        "customer": ANN,
        "occurred_at": NOW,
        "correlation_id": "req-1",
    }
    values.update(fields)
    return OrderStatusChanged.model_validate(values)


def rejected(**fields: object) -> CommandRejected:
    values: dict[str, object] = {
        "command_id": uuid4(),
        "order_id": uuid4(),
        "actor": Actor(id="shop"),
        "code": "transition_not_allowed",
        "reason": "cannot skip",
        "current_status": OrderStatus.PENDING,
        "requested_status": OrderStatus.READY,
    }
    values.update(fields)
    return CommandRejected.model_validate(values)


def communication_fields() -> dict[str, Any]:
    return {
        "communication_id": uuid4(),
        "dedupe_key": "k" * 64,
        "order_id": uuid4(),
        "source_event_id": uuid4(),
        "channel": Channel.EMAIL,
        "template": "order_ready",
        "recipient": "ann@example.com",
        "attempts": 2,
    }


def stored_chain(entries: list[AuditEntry]) -> list[StoredEntry]:
    return [
        StoredEntry(number, link.entry, link.prev_hash, link.hash)
        for number, link in enumerate(chained(GENESIS_HASH, entries), start=1)
    ]


def five_entries() -> list[AuditEntry]:
    return [entry_for(status_changed(), NOW) for _ in range(5)]


# --- what each message means for the trail ---------------------------------------------


def test_an_order_creation_is_recorded_with_its_first_status() -> None:
    created = OrderCreated(
        order_id=uuid4(), status=OrderStatus.PENDING, version=1, customer=ANN, actor=ALICE
    )

    entry = entry_for(created, NOW)

    assert entry.event_id == created.event_id
    assert (entry.action, entry.actor, entry.entity_type, entry.entity_id) == (
        "order.created",
        "alice",
        "order",
        str(created.order_id),
    )
    assert (entry.before, entry.after, entry.source) == (
        None,
        {"status": "pending", "version": 1},
        "order",
    )


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
    refusal = rejected()

    entry = entry_for(refusal, NOW)

    assert entry.action == "order.command_rejected"
    assert (entry.actor, entry.reason) == ("shop", "cannot skip")
    assert (entry.entity_type, entry.entity_id) == ("order", str(refusal.order_id))
    assert (entry.before, entry.after) == ({"status": "pending"}, {"status": "ready"})
    assert entry.details == {
        "command_id": str(refusal.command_id),
        "code": "transition_not_allowed",
        "result_event_id": str(refusal.event_id),
    }


def test_a_command_refused_before_naming_an_order_is_filed_under_the_command() -> None:
    refusal = rejected(order_id=None, current_status=None, requested_status=None)

    entry = entry_for(refusal, NOW)

    assert (entry.entity_type, entry.entity_id) == ("command", str(refusal.command_id))
    assert (entry.before, entry.after) == (None, None)


@pytest.mark.parametrize(
    ("actor", "code", "reason"),
    [
        (Actor(id="anonymous", role="anonymous"), "unauthenticated", "no bearer token"),
        (Actor(id="vera", role="viewer"), "forbidden", "role 'viewer' may not change"),
    ],
)
def test_a_request_refused_for_its_credentials_is_an_access_refusal_on_its_order(
    actor: Actor, code: str, reason: str
) -> None:
    refusal = rejected(
        actor=actor,
        code=code,
        reason=f"POST /orders/x/status refused: {reason}",
        current_status=None,
        requested_status=None,
    )

    entry = entry_for(refusal, NOW)

    assert (entry.action, entry.actor, entry.reason) == (
        "access.refused",
        actor.id,
        f"POST /orders/x/status refused: {reason}",
    )
    assert (entry.entity_type, entry.entity_id) == ("order", str(refusal.order_id))
    assert (entry.before, entry.after) == (None, None)
    assert entry.details == {
        "command_id": str(refusal.command_id),
        "code": code,
        "actor_role": actor.role,
        "result_event_id": str(refusal.event_id),
    }


def test_a_refused_request_naming_no_order_is_filed_under_the_attempt() -> None:
    refusal = rejected(
        order_id=None,
        actor=Actor(id="anonymous", role="anonymous"),
        code="unauthenticated",
        reason="GET /orders refused: unknown bearer token",
        current_status=None,
        requested_status=None,
    )

    entry = entry_for(refusal, NOW)

    assert entry.action == "access.refused"
    assert (entry.entity_type, entry.entity_id) == ("request", str(refusal.command_id))


def test_an_accepted_command_records_the_version_it_produced() -> None:
    accepted = CommandAccepted(command_id=uuid4(), order_id=uuid4(), actor=ALICE, version=4)

    entry = entry_for(accepted, NOW)

    assert (entry.action, entry.actor, entry.after) == (
        "order.command_accepted",
        "alice",
        {"version": 4},
    )
    assert entry.details["command_id"] == str(accepted.command_id)


def test_a_command_result_is_recorded_once_per_command_and_outcome() -> None:
    command_id = uuid4()
    first = rejected(command_id=command_id)
    announced_again = rejected(command_id=command_id, order_id=first.order_id)
    assert first.event_id != announced_again.event_id

    accepted = CommandAccepted(command_id=command_id, order_id=uuid4(), actor=ALICE, version=2)

    assert audit_event_id(first) == audit_event_id(announced_again)
    assert len({audit_event_id(first), audit_event_id(accepted), command_id}) == 3
    assert audit_event_id(rejected()) != audit_event_id(first)


@pytest.mark.parametrize(
    ("message_type", "action", "reason"),
    [
        (CommunicationQueued, "communication.queued", None),
        (CommunicationSent, "communication.sent", None),
        (CommunicationFailed, "communication.failed", "smtp 451"),
        (CommunicationDead, "communication.dead", "smtp 451"),
    ],
)
def test_a_communication_outcome_names_its_dedupe_key(
    message_type: type[CommunicationQueued], action: str, reason: str | None
) -> None:
    fields = communication_fields()
    if reason is not None:
        fields["error"] = reason
    outcome = message_type.model_validate(fields)

    entry = entry_for(outcome, NOW)

    assert (entry.action, entry.actor, entry.source, entry.reason) == (
        action,
        "notifier",
        "notifier",
        reason,
    )
    assert (entry.entity_type, entry.entity_id) == ("order", str(fields["order_id"]))
    assert entry.details["dedupe_key"] == "k" * 64
    assert entry.details["source_event_id"] == str(fields["source_event_id"])
    assert entry.event_id == outcome.event_id


def test_only_messages_not_yet_recorded_become_entries_each_once() -> None:
    old, new = status_changed(), status_changed()

    entries = new_entries([old, new, new, old], {old.event_id}, NOW)

    assert [e.event_id for e in entries] == [new.event_id]


# --- canonical content and hashing ------------------------------------------------------


def test_the_canonical_form_is_the_documented_one() -> None:
    entry = AuditEntry(
        event_id=UUID("00000000-0000-0000-0000-000000000001"),
        action="order.status_changed",
        actor="alice",
        entity_type="order",
        entity_id="o-1",
        occurred_at=NOW,
        recorded_at=NOW.astimezone(timezone(timedelta(hours=2))),
        source="order",
        before={"status": "pending"},
        after={"status": "confirmed"},
        reason="ok ✓",
    )

    assert entry.canonical() == (
        '{"action":"order.status_changed","actor":"alice","after":{"status":"confirmed"},'
        '"before":{"status":"pending"},"correlation_id":null,"details":{},'
        '"entity_id":"o-1","entity_type":"order",'
        '"event_id":"00000000-0000-0000-0000-000000000001",'
        '"occurred_at":"2026-05-01T12:00:00.000000+00:00",'
        '"reason":"ok \\u2713","recorded_at":"2026-05-01T12:00:00.000000+00:00",'
        '"source":"order"}'
    )
    # Pinned: a change to the canonical form would make every stored chain look tampered.
    assert chain_hash(GENESIS_HASH, entry) == (
        "bcc2496a7debb7ee001086a714d089f43844dac05528b18071046511492dfa16"
    )


@pytest.mark.parametrize("tz_hours", [0, 2, -5])
def test_the_canonical_form_does_not_depend_on_the_timezone_it_is_read_in(tz_hours: int) -> None:
    entry = entry_for(status_changed(), NOW)

    shifted = dataclasses.replace(
        entry, occurred_at=entry.occurred_at.astimezone(timezone(timedelta(hours=tz_hours)))
    )

    assert shifted.canonical() == entry.canonical()


JSON_VALUES = st.dictionaries(
    st.text(max_size=8), st.none() | st.integers() | st.text(max_size=8), max_size=3
)
MOMENTS = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)
FIELD_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "event_id": st.uuids(),
    "action": st.text(max_size=20),
    "actor": st.text(max_size=20),
    "entity_type": st.text(max_size=20),
    "entity_id": st.text(max_size=20),
    "occurred_at": MOMENTS,
    "recorded_at": MOMENTS,
    "source": st.text(max_size=20),
    "before": st.none() | JSON_VALUES,
    "after": st.none() | JSON_VALUES,
    "reason": st.none() | st.text(max_size=20),
    "correlation_id": st.none() | st.text(max_size=20),
    "details": JSON_VALUES,
}
ENTRIES = st.builds(AuditEntry, **FIELD_VALUES)


@st.composite
def entry_and_a_changed_field(draw: st.DrawFn) -> tuple[AuditEntry, AuditEntry]:
    entry = draw(ENTRIES)
    name = draw(st.sampled_from(sorted(FIELD_VALUES)))
    replacement = draw(FIELD_VALUES[name].filter(lambda value: value != getattr(entry, name)))
    return entry, dataclasses.replace(entry, **{name: replacement})


@given(entry_and_a_changed_field(), st.text(alphabet="0123456789abcdef", min_size=64, max_size=64))
def test_changing_any_field_changes_the_hash(
    pair: tuple[AuditEntry, AuditEntry], prev_hash: str
) -> None:
    entry, changed = pair

    assert chain_hash(prev_hash, changed) != chain_hash(prev_hash, entry)


@given(ENTRIES, st.text(alphabet="0123456789abcdef", min_size=64, max_size=64))
def test_the_hash_covers_the_previous_entry(entry: AuditEntry, other_prev: str) -> None:
    if other_prev != GENESIS_HASH:
        assert chain_hash(other_prev, entry) != chain_hash(GENESIS_HASH, entry)


# --- verifying the chain ----------------------------------------------------------------


def test_an_intact_chain_verifies_and_reports_its_head() -> None:
    stored = stored_chain(five_entries())

    report = verify_chain(stored)

    assert (report.ok, report.checked, report.first_broken) == (True, 5, None)
    assert report.head == stored[-1].hash
    assert report.as_dict() == {"ok": True, "checked": 5, "head": stored[-1].hash}


def test_an_empty_chain_verifies() -> None:
    assert verify_chain([]).as_dict() == {"ok": True, "checked": 0, "head": GENESIS_HASH}


@given(
    name=st.sampled_from(sorted(FIELD_VALUES)),
    position=st.integers(0, 4),
    data=st.data(),
)
def test_altering_any_field_of_any_entry_is_found_and_named(
    name: str, position: int, data: st.DataObject
) -> None:
    stored = stored_chain(five_entries())
    victim = stored[position]
    replacement = data.draw(
        FIELD_VALUES[name].filter(lambda value: value != getattr(victim.entry, name))
    )
    stored[position] = dataclasses.replace(
        victim, entry=dataclasses.replace(victim.entry, **{name: replacement})
    )

    report = verify_chain(stored)

    assert not report.ok
    assert report.checked == position
    assert report.first_broken == {
        "id": victim.id,
        "event_id": str(stored[position].entry.event_id),
        "problem": "content does not match its hash (the entry was altered)",
    }
    assert report.as_dict()["first_broken"] == report.first_broken


def test_a_rehashed_entry_breaks_the_link_after_it() -> None:
    stored = stored_chain(five_entries())
    forged_entry = dataclasses.replace(stored[1].entry, actor="mallory")
    stored[1] = dataclasses.replace(
        stored[1], entry=forged_entry, hash=chain_hash(stored[1].prev_hash, forged_entry)
    )

    report = verify_chain(stored)

    assert report.first_broken is not None
    assert (report.checked, report.first_broken["id"]) == (2, stored[2].id)
    assert "prev_hash" in report.first_broken["problem"]


def test_a_removed_entry_breaks_the_link_after_it() -> None:
    stored = stored_chain(five_entries()[:4])
    del stored[1]

    report = verify_chain(stored)

    assert not report.ok
    assert report.first_broken is not None
    assert report.first_broken["id"] == 3
    assert "prev_hash" in report.first_broken["problem"]


def test_swapped_entries_are_found() -> None:
    stored = stored_chain(five_entries())
    stored[1], stored[2] = stored[2], stored[1]

    report = verify_chain(stored)

    assert report.first_broken is not None
    assert (report.checked, report.first_broken["id"]) == (1, stored[1].id)
