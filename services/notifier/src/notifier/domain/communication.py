"""A customer communication: its lifecycle and its retry policy.

    queued  ─► sending               a dispatcher claims it under a lease
    sending ─► sent | failed | dead  the attempt's outcome
    failed  ─► sending               claimed again once next_attempt_at is due
    sending ─► sending               its lease ran out (the worker died): claimed again
    queued  ─► skipped               recorded but not to be sent (the recipient opted out)
    dead    ─► queued                an operator replays it (attempts reset, replays counted)

`sent` and `skipped` are terminal; `dead` (attempts exhausted, or it can never be sent) is
terminal for the dispatcher, and only an operator's replay moves it on.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Final
from uuid import UUID, uuid4

from contracts import Channel
from notifier.domain.dedupe import dedupe_key


class CommunicationStatus(StrEnum):
    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"  # retried at next_attempt_at
    DEAD = "dead"  # given up: attempts exhausted, or it can never be sent
    SKIPPED = "skipped"  # never to be sent, e.g. the recipient opted out


TRANSITIONS: Final[dict[CommunicationStatus, frozenset[CommunicationStatus]]] = {
    CommunicationStatus.QUEUED: frozenset(
        {CommunicationStatus.SENDING, CommunicationStatus.SKIPPED}
    ),
    CommunicationStatus.SENDING: frozenset(
        {
            CommunicationStatus.SENDING,
            CommunicationStatus.SENT,
            CommunicationStatus.FAILED,
            CommunicationStatus.DEAD,
        }
    ),
    CommunicationStatus.FAILED: frozenset({CommunicationStatus.SENDING}),
    CommunicationStatus.SENT: frozenset(),
    CommunicationStatus.DEAD: frozenset({CommunicationStatus.QUEUED}),
    CommunicationStatus.SKIPPED: frozenset(),
}


class LifecycleError(Exception):
    def __init__(self, current: CommunicationStatus, target: CommunicationStatus) -> None:
        super().__init__(f"a communication cannot go from {current} to {target}")
        self.current = current
        self.target = target


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter, bounded in delay and in attempts.

    After the n-th failed attempt the next one waits between half and all of
    min(max_seconds, base_seconds * 2**(n-1)): the jitter spreads retries of many
    communications apart, the lower half-bound keeps the backoff growing."""

    max_attempts: int
    base_seconds: float
    max_seconds: float

    def ceiling(self, attempts: int) -> float:
        exponent = min(max(attempts - 1, 0), 62)  # beyond this the cap applies anyway
        return float(min(self.max_seconds, self.base_seconds * 2**exponent))

    def delay(self, attempts: int, rng: random.Random | None = None) -> timedelta:
        ceiling = self.ceiling(attempts)
        return timedelta(seconds=(rng or random).uniform(ceiling / 2, ceiling))

    def exhausted(self, attempts: int) -> bool:
        return attempts >= self.max_attempts


@dataclass(frozen=True)
class Lease:
    """Who holds the claims on communications being sent, and until when. Past that, the
    holder is taken to have died, and any dispatcher may claim them again."""

    owner: str
    until: datetime


@dataclass
class Communication:
    id: UUID
    dedupe_key: str
    order_id: UUID
    event_id: UUID
    channel: Channel
    template: str
    recipient: str
    context: dict[str, Any]
    status: CommunicationStatus
    attempts: int
    created_at: datetime
    updated_at: datetime
    last_error: str | None = None
    provider_message_id: str | None = None
    next_attempt_at: datetime | None = None
    sent_at: datetime | None = None
    replays: int = 0
    # W3C trace context (traceparent, tracestate) of the event that asked for it, so that
    # sending it, however much later, is seen in the trace of the change that caused it.
    trace_context: dict[str, str] = field(default_factory=dict)

    @classmethod
    def queue(
        cls,
        *,
        event_id: UUID,
        order_id: UUID,
        channel: Channel,
        template: str,
        recipient: str,
        context: dict[str, Any],
        now: datetime,
        trace_context: dict[str, str] | None = None,
    ) -> Communication:
        """A new communication, due at once, identified by its dedupe key."""
        return cls(
            id=uuid4(),
            dedupe_key=dedupe_key(event_id, channel, template, recipient),
            order_id=order_id,
            event_id=event_id,
            channel=channel,
            template=template,
            recipient=recipient.strip(),
            context=context,
            status=CommunicationStatus.QUEUED,
            attempts=0,
            created_at=now,
            updated_at=now,
            next_attempt_at=now,
            trace_context=dict(trace_context or {}),
        )

    def claim(self, now: datetime) -> None:
        """A dispatcher takes it to send: an attempt starts, and counts. (A claim of due
        communications in the database does the same in its statement, for many at once.)"""
        self._move(CommunicationStatus.SENDING, now)
        self.attempts += 1

    def mark_sent(self, provider_message_id: str, now: datetime) -> None:
        self._move(CommunicationStatus.SENT, now)
        self.provider_message_id = provider_message_id
        self.sent_at = now
        self.next_attempt_at = None
        self.last_error = None

    def mark_failed(
        self, error: str, policy: RetryPolicy, now: datetime, rng: random.Random | None = None
    ) -> None:
        """A failed attempt (already counted in `attempts`): retry later, or give up."""
        if policy.exhausted(self.attempts):
            self.mark_dead(f"gave up after {self.attempts} attempts: {error}", now)
            return
        self._move(CommunicationStatus.FAILED, now)
        self.last_error = error
        self.next_attempt_at = now + policy.delay(self.attempts, rng)

    def mark_dead(self, reason: str, now: datetime) -> None:
        self._move(CommunicationStatus.DEAD, now)
        self.last_error = reason
        self.next_attempt_at = None

    def skip(self, reason: str, now: datetime) -> None:
        self._move(CommunicationStatus.SKIPPED, now)
        self.last_error = reason
        self.next_attempt_at = None

    def replay(self, now: datetime) -> None:
        """A dead communication gets a fresh set of attempts, due at once. Its identity (dedupe
        key, hence Message-ID) stays, so the customer can never get two different messages."""
        self._move(CommunicationStatus.QUEUED, now)
        self.attempts = 0
        self.next_attempt_at = now
        self.replays += 1

    def to_json(self) -> dict[str, Any]:
        """The communication as a JSON object (for its dead letter)."""
        fields = asdict(self)
        return {
            name: value.isoformat() if isinstance(value, datetime) else value
            for name, value in fields.items()
        } | {
            "id": str(self.id),
            "order_id": str(self.order_id),
            "event_id": str(self.event_id),
            "channel": self.channel.value,
            "status": self.status.value,
        }

    def _move(self, target: CommunicationStatus, now: datetime) -> None:
        if target not in TRANSITIONS[self.status]:
            raise LifecycleError(self.status, target)
        self.status = target
        self.updated_at = now
