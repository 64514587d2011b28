"""Communication rows and the notifier's outbox."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

from sqlalchemy import and_, func, insert, or_, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from contracts import Channel, Envelope
from notifier.adapters.tables import communication_events, outbox
from notifier.domain.communication import CommunicationStatus

Row = Any  # a SQLAlchemy row of communication_events


@dataclass(frozen=True)
class NewCommunication:
    dedupe_key: str
    order_id: UUID
    event_id: UUID
    channel: Channel
    template: str
    recipient: str
    context: dict[str, Any]


class CommunicationRepository:
    def __init__(self, connection: AsyncConnection) -> None:
        self._connection = connection

    async def add_if_new(self, new: NewCommunication, now: datetime) -> Row | None:
        """Insert-first under the unique dedupe key: the row if this call created it, None if
        the communication already exists (a redelivery, another replica, a restart)."""
        result = await self._connection.execute(
            pg_insert(communication_events)
            .values(
                id=uuid4(),
                dedupe_key=new.dedupe_key,
                order_id=new.order_id,
                event_id=new.event_id,
                channel=new.channel.value,
                template=new.template,
                recipient=new.recipient,
                context=new.context,
                status=CommunicationStatus.QUEUED.value,
                next_attempt_at=now,
                created_at=now,
                updated_at=now,
            )
            .on_conflict_do_nothing(index_elements=["dedupe_key"])
            .returning(communication_events)
        )
        return result.one_or_none()

    async def claim_due(self, owner: str, limit: int, lease: timedelta) -> list[Row]:
        """Lease up to `limit` communications that are due, or whose lease ran out (their
        worker died). SKIP LOCKED lets any number of workers claim side by side."""
        c = communication_events.c
        now = func.now()
        due = (
            select(c.id)
            .where(
                or_(
                    and_(
                        c.status.in_([CommunicationStatus.QUEUED, CommunicationStatus.FAILED]),
                        c.next_attempt_at <= now,
                    ),
                    and_(c.status == CommunicationStatus.SENDING, c.lease_until < now),
                )
            )
            .order_by(c.next_attempt_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
        result = await self._connection.execute(
            update(communication_events)
            .where(c.id.in_(due))
            .values(
                status=CommunicationStatus.SENDING.value,
                lease_owner=owner,
                lease_until=now + lease,
                attempts=c.attempts + 1,
                updated_at=now,
            )
            .returning(communication_events)
        )
        return list(result.all())

    async def finish(
        self,
        communication_id: UUID,
        owner: str,
        *,
        status: CommunicationStatus,
        now: datetime,
        error: str | None = None,
        provider_message_id: str | None = None,
        next_attempt_at: datetime | None = None,
    ) -> Row | None:
        """Record an attempt's outcome, if this worker still holds the lease (None if not)."""
        c = communication_events.c
        result = await self._connection.execute(
            update(communication_events)
            .where(
                c.id == communication_id,
                c.lease_owner == owner,
                c.status == CommunicationStatus.SENDING,
            )
            .values(
                status=status.value,
                last_error=error,
                provider_message_id=provider_message_id,
                next_attempt_at=next_attempt_at,
                sent_at=now if status is CommunicationStatus.SENT else None,
                lease_owner=None,
                lease_until=None,
                updated_at=now,
            )
            .returning(communication_events)
        )
        return result.one_or_none()

    async def release_leases(self, owner: str) -> int:
        """Hand this worker's unfinished claims back at once (graceful shutdown)."""
        c = communication_events.c
        result = await self._connection.execute(
            update(communication_events)
            .where(c.lease_owner == owner, c.status == CommunicationStatus.SENDING)
            .values(
                status=CommunicationStatus.FAILED.value,
                next_attempt_at=func.now(),
                lease_owner=None,
                lease_until=None,
                last_error="released at shutdown before the attempt finished",
                updated_at=func.now(),
            )
        )
        return int(result.rowcount)

    async def page(
        self, *, order_id: UUID | None, limit: int, after: tuple[datetime, UUID] | None
    ) -> list[Row]:
        c = communication_events.c
        query = select(communication_events).order_by(c.created_at, c.id).limit(limit)
        if order_id is not None:
            query = query.where(c.order_id == order_id)
        if after is not None:
            query = query.where(tuple_(c.created_at, c.id) > tuple_(*after))
        return list((await self._connection.execute(query)).all())


class Outbox:
    def __init__(self, connection: AsyncConnection) -> None:
        self._connection = connection

    async def add(self, topic: str, key: str, event: Envelope) -> None:
        await self._connection.execute(
            insert(outbox).values(
                event_id=event.event_id,
                topic=topic,
                key=key,
                payload=event.model_dump(mode="json", by_alias=True),
            )
        )
