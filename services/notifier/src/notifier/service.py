"""The notifier's use cases: record the communications an event asks for, dispatch the due
ones, and read them back. Each change runs in one unit of work with its outbox row."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from contracts import (
    NOTIFICATIONS_EVENTS,
    Channel,
    CommunicationDead,
    CommunicationEvent,
    CommunicationFailed,
    CommunicationQueued,
    CommunicationSent,
    OrderCreated,
    OrderStatus,
    OrderStatusChanged,
)
from notifier.adapters.repository import NewCommunication, Row
from notifier.adapters.smtp import SendError, SmtpEmailSender
from notifier.adapters.templates import EmailTemplates, RenderError
from notifier.adapters.unit_of_work import UnitOfWork
from notifier.domain.communication import (
    CommunicationStatus,
    RetryPolicy,
    after_failure,
    plan_communications,
)
from notifier.domain.dedupe import dedupe_key

log = logging.getLogger(__name__)

UnitOfWorkFactory = Callable[[], UnitOfWork]


def _now() -> datetime:
    return datetime.now(UTC)


def _announcement(row: Row, kind: type[CommunicationEvent], **fields: Any) -> CommunicationEvent:
    return kind(
        communication_id=row.id,
        dedupe_key=row.dedupe_key,
        order_id=row.order_id,
        source_event_id=row.event_id,
        channel=Channel(row.channel),
        template=row.template,
        recipient=row.recipient,
        attempts=row.attempts,
        correlation_id=row.context.get("correlation_id"),
        **fields,
    )


async def _announce(uow: UnitOfWork, event: CommunicationEvent) -> None:
    await uow.outbox.add(NOTIFICATIONS_EVENTS, str(event.order_id), event)


async def record_communications(
    uow_factory: UnitOfWorkFactory,
    event: OrderCreated | OrderStatusChanged,
    email_statuses: frozenset[OrderStatus],
) -> int:
    """Record (queue) what `event` asks for; returns how many were new. Recording twice is a
    no-op: the dedupe key's unique constraint makes the second insert do nothing."""
    if not isinstance(event, OrderStatusChanged):
        return 0
    planned = plan_communications(event.to_status, event.customer.email, email_statuses)
    context = {
        "order_id": str(event.order_id),
        "customer_name": event.customer.name,
        "status": event.to_status.value,
        "status_label": event.to_status.value.replace("_", " "),
        "reason": event.reason,
        "correlation_id": event.correlation_id,
    }
    created = 0
    async with uow_factory() as uow:
        for plan in planned:
            row = await uow.communications.add_if_new(
                NewCommunication(
                    dedupe_key=dedupe_key(
                        event.event_id, plan.channel, plan.template, plan.recipient
                    ),
                    order_id=event.order_id,
                    event_id=event.event_id,
                    channel=plan.channel,
                    template=plan.template,
                    recipient=plan.recipient,
                    context=context,
                ),
                _now(),
            )
            if row is not None:
                created += 1
                await _announce(uow, _announcement(row, CommunicationQueued))
    return created


@dataclass
class Dispatcher:
    """Claims due communications under a lease and sends them. Any number of dispatchers (in
    any number of replicas) can run: claims never overlap, and a dead one's lease expires."""

    uow_factory: UnitOfWorkFactory
    sender: SmtpEmailSender
    templates: EmailTemplates
    policy: RetryPolicy
    owner: str
    batch_size: int
    lease: timedelta
    concurrency: int

    async def dispatch_due(self) -> int:
        """One round: claim a batch and attempt each; returns how many were attempted."""
        async with self.uow_factory() as uow:
            claimed = await uow.communications.claim_due(self.owner, self.batch_size, self.lease)
        limit = asyncio.Semaphore(self.concurrency)

        async def attempt(row: Row) -> None:
            async with limit:
                await self._attempt(row)

        await asyncio.gather(*(attempt(row) for row in claimed))
        return len(claimed)

    async def _attempt(self, row: Row) -> None:
        try:
            email = self.templates.render(row.template, row.context)
        except RenderError as error:
            await self._finish_dead(row, str(error))
            return
        try:
            provider_id = await self.sender.send(row.dedupe_key, row.recipient, email)
        except SendError as error:
            await self._finish_failed(row, str(error))
            return
        async with self.uow_factory() as uow:
            done = await uow.communications.finish(
                row.id,
                self.owner,
                status=CommunicationStatus.SENT,
                now=_now(),
                provider_message_id=provider_id,
            )
            if done is not None:
                await _announce(
                    uow, _announcement(done, CommunicationSent, provider_message_id=provider_id)
                )

    async def _finish_failed(self, row: Row, error: str) -> None:
        outcome = after_failure(self.policy, row.attempts, _now())
        if outcome.status is CommunicationStatus.DEAD:
            await self._finish_dead(row, f"gave up after {row.attempts} attempts: {error}")
            return
        async with self.uow_factory() as uow:
            done = await uow.communications.finish(
                row.id,
                self.owner,
                status=CommunicationStatus.FAILED,
                now=_now(),
                error=error,
                next_attempt_at=outcome.next_attempt_at,
            )
            if done is not None:
                await _announce(uow, _announcement(done, CommunicationFailed, error=error))

    async def _finish_dead(self, row: Row, error: str) -> None:
        log.warning("communication %s is dead: %s", row.id, error)
        async with self.uow_factory() as uow:
            done = await uow.communications.finish(
                row.id, self.owner, status=CommunicationStatus.DEAD, now=_now(), error=error
            )
            if done is not None:
                await _announce(uow, _announcement(done, CommunicationDead, error=error))

    async def release_leases(self) -> int:
        async with self.uow_factory() as uow:
            return await uow.communications.release_leases(self.owner)


async def list_communications(
    uow_factory: UnitOfWorkFactory,
    *,
    order_id: UUID | None,
    limit: int,
    after: tuple[datetime, UUID] | None,
) -> list[Row]:
    async with uow_factory() as uow:
        return await uow.communications.page(order_id=order_id, limit=limit, after=after)
