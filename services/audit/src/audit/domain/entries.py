"""Audit entries: what each message means for the trail, and the hash chain that makes the
trail tamper-evident.

Canonical content of an entry: a JSON object of exactly these fields, `event_id`, `action`,
`actor`, `entity_type`, `entity_id`, `occurred_at`, `recorded_at`, `source`, `before`,
`after`, `reason`, `correlation_id`, `details`, serialised with sorted keys, no whitespace
(`","` and `":"` separators) and ASCII escapes; UUIDs in their 36-character form, timestamps
in UTC as ISO 8601 with microseconds (`2026-05-01T12:00:00.000000+00:00`), absent values as
`null`. The database id, `hash` and `prev_hash` are not part of it.

Each entry's `hash` is the hex sha256 of `prev_hash + "\\n" + canonical content`, where
`prev_hash` is the previous entry's `hash` (64 zeros for the first entry). Changing any field
of any entry, or removing or reordering entries, breaks the chain from that entry on;
`verify_chain` names the first entry where it breaks. Cutting entries off the end leaves a
valid shorter chain, which is why a verification reports the `head` hash: kept elsewhere, it
shows that nothing after it went missing.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from contracts import (
    CommandAccepted,
    CommandRejected,
    CommunicationDead,
    CommunicationEvent,
    CommunicationFailed,
    CommunicationQueued,
    CommunicationSent,
    CommunicationSkipped,
    OrderCreated,
    OrderStatusChanged,
)

GENESIS_HASH = "0" * 64

AuditedMessage = (
    OrderCreated
    | OrderStatusChanged
    | CommandAccepted
    | CommandRejected
    | CommunicationQueued
    | CommunicationSent
    | CommunicationFailed
    | CommunicationDead
    | CommunicationSkipped
)

COMMUNICATION_ACTIONS: dict[type[CommunicationEvent], str] = {
    CommunicationQueued: "communication.queued",
    CommunicationSent: "communication.sent",
    CommunicationFailed: "communication.failed",
    CommunicationDead: "communication.dead",
    CommunicationSkipped: "communication.skipped",
}

# The order service's codes for a request refused for its credentials (no, unknown or revoked
# token; a role too low), rather than a command refused by the order rules.
ACCESS_REFUSAL_CODES = frozenset({"unauthenticated", "forbidden"})

COMMAND_RESULT_NAMESPACE = uuid5(NAMESPACE_URL, "urn:order-backbone:audit:command-result")


def audit_event_id(message: AuditedMessage) -> UUID:
    """The id an entry is recorded (and deduplicated) under.

    Events carry their own `event_id`. A command result is about one attempt, its
    `command_id`, and the order service may announce the same attempt again under a new
    `event_id` (a refused HTTP change retried with the same Idempotency-Key keeps its
    command id), so its id is uuid5(COMMAND_RESULT_NAMESPACE, "<command_id>/<type>"): the
    same attempt and outcome always map to the same entry."""
    if isinstance(message, CommandAccepted | CommandRejected):
        return uuid5(COMMAND_RESULT_NAMESPACE, f"{message.command_id}/{message.type}")
    return message.event_id


@dataclass(frozen=True)
class AuditEntry:
    event_id: UUID
    action: str
    actor: str
    entity_type: str
    entity_id: str
    occurred_at: datetime
    recorded_at: datetime
    source: str
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None
    reason: str | None = None
    correlation_id: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def canonical(self) -> str:
        content = {
            "event_id": str(self.event_id),
            "action": self.action,
            "actor": self.actor,
            "entity_type": self.entity_type,
            "entity_id": self.entity_id,
            "occurred_at": _utc(self.occurred_at),
            "recorded_at": _utc(self.recorded_at),
            "source": self.source,
            "before": self.before,
            "after": self.after,
            "reason": self.reason,
            "correlation_id": self.correlation_id,
            "details": self.details,
        }
        return json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def _utc(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def chain_hash(prev_hash: str, entry: AuditEntry) -> str:
    return hashlib.sha256(f"{prev_hash}\n{entry.canonical()}".encode()).hexdigest()


def entry_for(message: AuditedMessage, recorded_at: datetime) -> AuditEntry:
    """The one audit entry a message stands for, under `audit_event_id(message)`, so a
    redelivered message maps to the same entry and is recorded once."""
    common: dict[str, Any] = {
        "event_id": audit_event_id(message),
        "occurred_at": message.occurred_at,
        "recorded_at": recorded_at,
        "correlation_id": message.correlation_id,
    }
    if isinstance(message, OrderCreated):
        return AuditEntry(
            action="order.created",
            actor=message.actor.id,
            entity_type="order",
            entity_id=str(message.order_id),
            source="order",
            after={"status": message.status.value, "version": message.version},
            **common,
        )
    if isinstance(message, OrderStatusChanged):
        return AuditEntry(
            action="order.status_changed",
            actor=message.actor.id,
            entity_type="order",
            entity_id=str(message.order_id),
            source="order",
            before={"status": message.from_status.value, "version": message.version - 1},
            after={"status": message.to_status.value, "version": message.version},
            reason=message.reason,
            **common,
        )
    if isinstance(message, CommandAccepted):
        return AuditEntry(
            action="order.command_accepted",
            actor=message.actor.id,
            entity_type="order",
            entity_id=str(message.order_id),
            source="order",
            after={"version": message.version},
            details={
                "command_id": str(message.command_id),
                "result_event_id": str(message.event_id),
            },
            **common,
        )
    if isinstance(message, CommandRejected):
        return _rejection_entry(message, common)
    details: dict[str, Any] = {
        "communication_id": str(message.communication_id),
        "dedupe_key": message.dedupe_key,
        "source_event_id": str(message.source_event_id),
        "channel": message.channel.value,
        "template": message.template,
        "recipient": message.recipient,
        "attempts": message.attempts,
    }
    if isinstance(message, CommunicationSent):
        details["provider_message_id"] = message.provider_message_id
    reason = None
    if isinstance(message, CommunicationFailed | CommunicationDead):
        reason = message.error
    elif isinstance(message, CommunicationSkipped):
        reason = message.reason
    return AuditEntry(
        action=COMMUNICATION_ACTIONS[type(message)],
        actor="notifier",
        entity_type="order",
        entity_id=str(message.order_id),
        source="notifier",
        reason=reason,
        details=details,
        **common,
    )


def _rejection_entry(message: CommandRejected, common: dict[str, Any]) -> AuditEntry:
    refused_access = message.code in ACCESS_REFUSAL_CODES
    if message.order_id is not None:
        entity_type, entity_id = "order", str(message.order_id)
    else:
        # Nothing names an order (a refused POST /orders, a list): filed under the attempt.
        entity_type = "request" if refused_access else "command"
        entity_id = str(message.command_id)
    details = {
        "command_id": str(message.command_id),
        "code": message.code,
        "result_event_id": str(message.event_id),
    }
    if refused_access:
        # Who was refused matters here: anonymous, or a viewer trying to change.
        details["actor_role"] = message.actor.role
    return AuditEntry(
        action="access.refused" if refused_access else "order.command_rejected",
        actor=message.actor.id,
        entity_type=entity_type,
        entity_id=entity_id,
        source="order",
        before={"status": message.current_status.value} if message.current_status else None,
        after={"status": message.requested_status.value} if message.requested_status else None,
        reason=message.reason,
        details=details,
        **common,
    )


def new_entries(
    messages: Iterable[AuditedMessage], recorded: set[UUID], recorded_at: datetime
) -> list[AuditEntry]:
    """The entries of the messages not recorded yet, each once, in message order."""
    seen = set(recorded)
    entries = []
    for message in messages:
        entry = entry_for(message, recorded_at)
        if entry.event_id not in seen:
            seen.add(entry.event_id)
            entries.append(entry)
    return entries


@dataclass(frozen=True)
class ChainedEntry:
    entry: AuditEntry
    prev_hash: str
    hash: str


def chained(tail_hash: str, entries: Iterable[AuditEntry]) -> list[ChainedEntry]:
    """Link `entries`, in order, after the entry whose hash is `tail_hash`."""
    links = []
    prev_hash = tail_hash
    for entry in entries:
        link = ChainedEntry(entry, prev_hash, chain_hash(prev_hash, entry))
        links.append(link)
        prev_hash = link.hash
    return links


@dataclass(frozen=True)
class StoredEntry:
    id: int
    entry: AuditEntry
    prev_hash: str
    hash: str


# How a verification ends, as the exit status of `python -m audit verify` and `orderctl audit
# verify`: a monitoring job tells a broken chain (tampering) from a check that could not run.
CHAIN_INTACT, CHAIN_BROKEN, CHAIN_NOT_CHECKED = 0, 1, 2


@dataclass(frozen=True)
class ChainReport:
    ok: bool
    checked: int
    head: str
    first_broken: dict[str, Any] | None = None

    @property
    def exit_status(self) -> int:
        return CHAIN_INTACT if self.ok else CHAIN_BROKEN

    def as_dict(self) -> dict[str, Any]:
        """`{"ok": true, "checked": N, "head": ...}`, or with `first_broken` when not ok."""
        report: dict[str, Any] = {"ok": self.ok, "checked": self.checked, "head": self.head}
        if self.first_broken is not None:
            report["first_broken"] = self.first_broken
        return report


@dataclass(frozen=True)
class ChainNotChecked:
    """A verification that could not run (the database unreachable, its schema missing…):
    no link was found broken, none was found sound."""

    reason: str

    @property
    def exit_status(self) -> int:
        return CHAIN_NOT_CHECKED


class ChainCheck:
    """Checks a chain one entry at a time, so a long chain is verified without holding it
    all in memory. `checked` counts the entries that hold; `head` is the last one's hash."""

    def __init__(self) -> None:
        self.checked = 0
        self.head = GENESIS_HASH
        self.first_broken: dict[str, Any] | None = None

    def add(self, stored: StoredEntry) -> bool:
        """Check the next entry; False (and nothing more is checked) once the chain broke."""
        if self.first_broken is not None:
            return False
        problem = None
        if stored.prev_hash != self.head:
            problem = "prev_hash does not match the previous entry's hash"
        elif chain_hash(stored.prev_hash, stored.entry) != stored.hash:
            problem = "content does not match its hash (the entry was altered)"
        if problem is not None:
            self.first_broken = {
                "id": stored.id,
                "event_id": str(stored.entry.event_id),
                "problem": problem,
            }
            return False
        self.head = stored.hash
        self.checked += 1
        return True

    def report(self) -> ChainReport:
        return ChainReport(
            ok=self.first_broken is None,
            checked=self.checked,
            head=self.head,
            first_broken=self.first_broken,
        )


def verify_chain(entries: Iterable[StoredEntry]) -> ChainReport:
    """Walk the chain in order; report the first entry whose link or content does not hold."""
    check = ChainCheck()
    for stored in entries:
        if not check.add(stored):
            break
    return check.report()
