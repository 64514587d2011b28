"""Audit entries: what each message means for the trail, and the hash chain that makes the
trail tamper-evident.

Each entry's hash is sha256(prev_hash + "\\n" + canonical content), where the canonical
content is the entry's fields as compact JSON with sorted keys and timestamps in UTC ISO 8601.
Changing any field of any entry, or removing or reordering entries, breaks the chain from that
entry on; `verify_chain` names the first entry where it breaks.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from contracts import (
    CommandAccepted,
    CommandRejected,
    CommunicationDead,
    CommunicationEvent,
    CommunicationFailed,
    CommunicationQueued,
    CommunicationSent,
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
)

COMMUNICATION_ACTIONS: dict[type[CommunicationEvent], str] = {
    CommunicationQueued: "communication.queued",
    CommunicationSent: "communication.sent",
    CommunicationFailed: "communication.failed",
    CommunicationDead: "communication.dead",
}


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
    """The one audit entry a message stands for. Its `event_id` is the message's own, so a
    redelivered message maps to the same entry and is recorded once."""
    common: dict[str, Any] = {
        "event_id": message.event_id,
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
            details={"command_id": str(message.command_id)},
            **common,
        )
    if isinstance(message, CommandRejected):
        return AuditEntry(
            action="order.command_rejected",
            actor=message.actor.id,
            entity_type="order",
            entity_id=str(message.order_id or message.command_id),
            source="order",
            before={"status": message.current_status.value} if message.current_status else None,
            after={"status": message.requested_status.value} if message.requested_status else None,
            reason=message.reason,
            details={"command_id": str(message.command_id), "code": message.code},
            **common,
        )
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
    reason = message.error if isinstance(message, CommunicationFailed | CommunicationDead) else None
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


@dataclass(frozen=True)
class StoredEntry:
    id: int
    entry: AuditEntry
    prev_hash: str
    hash: str


@dataclass(frozen=True)
class ChainReport:
    ok: bool
    checked: int
    first_broken: dict[str, Any] | None = None


def verify_chain(entries: Iterable[StoredEntry], expected_prev: str = GENESIS_HASH) -> ChainReport:
    """Walk the chain in order; report the first entry whose link or content does not hold."""
    checked = 0
    for stored in entries:
        problem = None
        if stored.prev_hash != expected_prev:
            problem = "prev_hash does not match the previous entry's hash"
        elif chain_hash(stored.prev_hash, stored.entry) != stored.hash:
            problem = "content does not match its hash (the entry was altered)"
        if problem is not None:
            broken = {"id": stored.id, "event_id": str(stored.entry.event_id), "problem": problem}
            return ChainReport(ok=False, checked=checked, first_broken=broken)
        expected_prev = stored.hash
        checked += 1
    return ChainReport(ok=True, checked=checked)
