"""A customer communication's lifecycle, its retry policy, and which ones an event asks for."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from contracts import Channel, OrderStatus


class CommunicationStatus(StrEnum):
    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"  # will be retried at next_attempt_at
    DEAD = "dead"  # gave up: attempts exhausted or not sendable at all


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter, bounded in delay and in attempts."""

    max_attempts: int
    base_seconds: float
    max_seconds: float

    def delay(self, attempts: int, rng: random.Random | None = None) -> timedelta:
        ceiling = min(self.max_seconds, self.base_seconds * 2 ** max(attempts - 1, 0))
        return timedelta(seconds=(rng or random).uniform(0, ceiling))

    def exhausted(self, attempts: int) -> bool:
        return attempts >= self.max_attempts


@dataclass(frozen=True)
class FailureOutcome:
    status: CommunicationStatus
    next_attempt_at: datetime | None


def after_failure(policy: RetryPolicy, attempts: int, now: datetime) -> FailureOutcome:
    """`attempts` counts the attempt that just failed."""
    if policy.exhausted(attempts):
        return FailureOutcome(CommunicationStatus.DEAD, None)
    return FailureOutcome(CommunicationStatus.FAILED, now + policy.delay(attempts))


@dataclass(frozen=True)
class PlannedCommunication:
    channel: Channel
    template: str
    recipient: str


def template_for(status: OrderStatus) -> str:
    return f"order_{status.value}"


def plan_communications(
    to_status: OrderStatus,
    email: str | None,
    email_statuses: frozenset[OrderStatus],
) -> list[PlannedCommunication]:
    """What a status change asks for: an email when the status is configured to notify and the
    customer has an address."""
    if email and to_status in email_statuses:
        return [PlannedCommunication(Channel.EMAIL, template_for(to_status), email)]
    return []
