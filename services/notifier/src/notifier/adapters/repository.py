"""Stores communications and the notifier's outbox rows."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import (
    ARRAY,
    ColumnElement,
    Text,
    and_,
    any_,
    bindparam,
    cast,
    delete,
    func,
    insert,
    literal_column,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.sql.selectable import TableValuedAlias

from contracts import Channel, Envelope, Message
from notifier.adapters.tables import communication_events, opt_outs, outbox
from notifier.adapters.telemetry import current_trace_context
from notifier.domain.communication import Communication, CommunicationStatus, Lease
from pgstatements import Sql, compiled

_c = communication_events.c


def _to_communication(row: Mapping[str, Any]) -> Communication:
    return Communication(
        id=row["id"],
        dedupe_key=row["dedupe_key"],
        order_id=row["order_id"],
        event_id=row["event_id"],
        channel=Channel(row["channel"]),
        template=row["template"],
        recipient=row["recipient"],
        context=row["context"],
        status=CommunicationStatus(row["status"]),
        attempts=row["attempts"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        last_error=row["last_error"],
        provider_message_id=row["provider_message_id"],
        next_attempt_at=row["next_attempt_at"],
        sent_at=row["sent_at"],
        replays=row["replays"],
        trace_context=row["trace_context"],
    )


def _unnest(columns: Sequence[str]) -> TableValuedAlias:
    """Rows given as one array parameter per column of `communication_events`, named after it
    (JSONB ones as JSON text), for statements on many rows at once. Unlike a VALUES list, the
    SQL is the same whatever the number of rows, so it is compiled and prepared once."""
    arrays = [
        bindparam(name, type_=ARRAY(Text if isinstance(_c[name].type, JSONB) else _c[name].type))
        for name in columns
    ]
    return func.unnest(*arrays).table_valued(*columns).render_derived()


def _status_in(*statuses: CommunicationStatus) -> ColumnElement[bool]:
    """The statuses written into the SQL, not bound: the planner can then match the partial
    indexes on status (tables.py) in every plan of the prepared statement."""
    return _c.status.in_([literal_column(f"'{status.value}'") for status in statuses])


_NEW = _unnest(
    [
        "id",
        "dedupe_key",
        "order_id",
        "event_id",
        "channel",
        "template",
        "recipient",
        "context",
        "status",
        "attempts",
        "last_error",
        "next_attempt_at",
        "lease_owner",
        "lease_until",
        "created_at",
        "updated_at",
        "trace_context",
    ]
)
ADD_NEW = compiled(
    pg_insert(communication_events)
    .from_select(
        list(_NEW.c.keys()),
        select(
            *(
                cast(column, JSONB) if name in ("context", "trace_context") else column
                for name, column in _NEW.c.items()
            )
        ),
    )
    .on_conflict_do_nothing(index_elements=[_c.dedupe_key])
    .returning(_c.id)
)

_DUE = (
    select(_c.id)
    .where(
        or_(
            and_(
                _status_in(CommunicationStatus.QUEUED, CommunicationStatus.FAILED),
                _c.next_attempt_at <= bindparam("now"),
            ),
            and_(_status_in(CommunicationStatus.SENDING), _c.lease_until < bindparam("now")),
        )
    )
    .order_by(_c.next_attempt_at)
    .limit(bindparam("limit"))
    .with_for_update(skip_locked=True)
    .cte("due")
)
CLAIM_DUE = compiled(
    update(communication_events)
    .where(_c.id == _DUE.c.id)
    .values(
        status=CommunicationStatus.SENDING.value,
        lease_owner=bindparam("owner"),
        lease_until=bindparam("lease_ends"),
        attempts=_c.attempts + 1,
        updated_at=bindparam("now"),
    )
    .returning(communication_events)
)

_OUTCOME = _unnest(
    [
        "id",
        "status",
        "last_error",
        "provider_message_id",
        "next_attempt_at",
        "sent_at",
        "updated_at",
    ]
)
SAVE_OUTCOMES = compiled(
    update(communication_events)
    .where(
        _c.id == _OUTCOME.c.id,
        _c.lease_owner == bindparam("owner"),
        _status_in(CommunicationStatus.SENDING),
    )
    .values(
        status=_OUTCOME.c.status,
        last_error=_OUTCOME.c.last_error,
        provider_message_id=_OUTCOME.c.provider_message_id,
        next_attempt_at=_OUTCOME.c.next_attempt_at,
        sent_at=_OUTCOME.c.sent_at,
        updated_at=_OUTCOME.c.updated_at,
        lease_owner=None,
        lease_until=None,
    )
    .returning(_c.id)
)

OPTED_OUT = compiled(
    select(opt_outs.c.recipient).where(
        opt_outs.c.channel == bindparam("channel"),
        opt_outs.c.recipient == any_(bindparam("recipients", type_=ARRAY(Text))),
    )
)

INSERT_OUTBOX = compiled(
    insert(outbox).inline(), columns=["event_id", "topic", "key", "payload", "headers"]
)


class CommunicationRepository:
    def __init__(self, sql: Sql) -> None:
        self._sql = sql

    async def add_new(
        self, communications: Sequence[Communication], lease: Lease | None = None
    ) -> set[UUID]:
        """Insert-first under the unique dedupe key, all in one statement; returns the ids of
        those inserted. One whose key is taken (a redelivery, another replica, a restart, or an
        earlier one in the same call) is not written. A concurrent insert of the same key waits
        for the first transaction to finish. Those already claimed (sending) are written under
        `lease`, as a claim of due ones would have leased them."""
        if not communications:
            return set()
        sending = [c.status is CommunicationStatus.SENDING for c in communications]
        if lease is None and any(sending):
            raise ValueError("a communication inserted as being sent needs a lease")
        owner, until = (lease.owner, lease.until) if lease else (None, None)
        rows = await self._sql.rows(
            ADD_NEW,
            {
                "id": [c.id for c in communications],
                "dedupe_key": [c.dedupe_key for c in communications],
                "order_id": [c.order_id for c in communications],
                "event_id": [c.event_id for c in communications],
                "channel": [c.channel.value for c in communications],
                "template": [c.template for c in communications],
                "recipient": [c.recipient for c in communications],
                "context": [json.dumps(c.context) for c in communications],
                "status": [c.status.value for c in communications],
                "attempts": [c.attempts for c in communications],
                "last_error": [c.last_error for c in communications],
                "next_attempt_at": [c.next_attempt_at for c in communications],
                "lease_owner": [owner if held else None for held in sending],
                "lease_until": [until if held else None for held in sending],
                "created_at": [c.created_at for c in communications],
                "updated_at": [c.updated_at for c in communications],
                "trace_context": [json.dumps(c.trace_context) for c in communications],
            },
        )
        return {row["id"] for row in rows}

    async def claim_due(self, lease: Lease, now: datetime, limit: int) -> list[Communication]:
        """Take under `lease` up to `limit` communications that are due (queued, or failed and
        past their next attempt), or whose lease ran out because their worker died. Each claim
        counts as an attempt. SKIP LOCKED lets any number of workers claim side by side without
        waiting for, or taking, each other's rows."""
        rows = await self._sql.rows(
            CLAIM_DUE,
            {"owner": lease.owner, "now": now, "limit": limit, "lease_ends": lease.until},
        )
        return [_to_communication(row) for row in rows]

    async def save_outcomes(self, attempted: Sequence[Communication], owner: str) -> set[UUID]:
        """Store attempts' outcomes and end their leases, where `owner` still holds them, in one
        statement; returns the ids stored. One missing lost its lease: it expired and another
        worker took the communication over."""
        rows = await self._sql.rows(
            SAVE_OUTCOMES,
            {
                "owner": owner,
                "id": [c.id for c in attempted],
                "status": [c.status.value for c in attempted],
                "last_error": [c.last_error for c in attempted],
                "provider_message_id": [c.provider_message_id for c in attempted],
                "next_attempt_at": [c.next_attempt_at for c in attempted],
                "sent_at": [c.sent_at for c in attempted],
                "updated_at": [c.updated_at for c in attempted],
            },
        )
        return {row["id"] for row in rows}

    async def release_leases(self, owner: str, now: datetime) -> int:
        """Hand back what `owner` claimed but did not finish: due again at once. The interrupted
        attempt stays counted, since it may have reached the server."""
        return await self._sql.execute(
            update(communication_events)
            .where(_c.lease_owner == owner, _c.status == CommunicationStatus.SENDING)
            .values(
                status=CommunicationStatus.FAILED.value,
                next_attempt_at=now,
                last_error="the attempt was interrupted by a shutdown",
                updated_at=now,
                lease_owner=None,
                lease_until=None,
            )
        )

    async def dead(self, ids: Sequence[UUID] | None, *, lock: bool) -> list[Communication]:
        """Dead communications, oldest first: those among `ids`, or all of them. With `lock`,
        they stay locked until the transaction ends, so two replays cannot both take one."""
        query = (
            select(communication_events)
            .where(_c.status == CommunicationStatus.DEAD)
            .order_by(_c.created_at, _c.id)
        )
        if ids is not None:
            query = query.where(_c.id == any_(bindparam("ids", list(ids), ARRAY(_c.id.type))))
        if lock:
            query = query.with_for_update()
        return [_to_communication(row) for row in await self._sql.rows(query)]

    async def save_replay(self, communication: Communication) -> None:
        await self._sql.execute(
            update(communication_events)
            .where(_c.id == communication.id)
            .values(
                status=communication.status.value,
                attempts=communication.attempts,
                next_attempt_at=communication.next_attempt_at,
                replays=communication.replays,
                updated_at=communication.updated_at,
            )
        )

    async def page(
        self, *, order_id: UUID | None, limit: int, after: tuple[datetime, UUID] | None
    ) -> list[Communication]:
        """Oldest first, keyset-paginated on (created_at, id)."""
        query = select(communication_events).order_by(_c.created_at, _c.id).limit(limit)
        if order_id is not None:
            query = query.where(_c.order_id == order_id)
        if after is not None:
            query = query.where(tuple_(_c.created_at, _c.id) > tuple_(*after))
        return [_to_communication(row) for row in await self._sql.rows(query)]

    async def count_by_status(self, statuses: Sequence[str]) -> dict[str, int]:
        """How many communications are in each of `statuses` (absent when none)."""
        rows = await self._sql.rows(
            select(_c.status, func.count().label("count"))
            .where(_c.status == any_(bindparam("statuses", list(statuses), ARRAY(Text))))
            .group_by(_c.status)
        )
        return {row["status"]: int(row["count"]) for row in rows}


class OptOutRepository:
    """Recipients are stored normalised; callers normalise before asking."""

    def __init__(self, sql: Sql) -> None:
        self._sql = sql

    async def add(self, channel: Channel, recipient: str) -> bool:
        return bool(
            await self._sql.execute(
                pg_insert(opt_outs)
                .values(channel=channel.value, recipient=recipient)
                .on_conflict_do_nothing()
            )
        )

    async def remove(self, channel: Channel, recipient: str) -> bool:
        return bool(
            await self._sql.execute(
                delete(opt_outs).where(
                    opt_outs.c.channel == channel.value, opt_outs.c.recipient == recipient
                )
            )
        )

    async def opted_out(self, channel: Channel, recipients: Iterable[str]) -> set[str]:
        """Which of `recipients` opted out of `channel`."""
        rows = await self._sql.rows(
            OPTED_OUT, {"channel": channel.value, "recipients": list(recipients)}
        )
        return {row["recipient"] for row in rows}


class Outbox:
    """Collects notifications.events messages, each with the trace context it was added in (the
    relay publishes it in that trace), and writes them in the caller's transaction in one
    executemany (a prepared statement, pipelined), in the order they were added, when the unit
    of work commits."""

    def __init__(self, sql: Sql) -> None:
        self._sql = sql
        self._rows: list[dict[str, Any]] = []
        self.written = False

    async def add(self, topic: str, key: str, event: Envelope) -> None:
        await self.add_message(topic, key, event, event.event_id)

    async def add_message(self, topic: str, key: str, message: Message, message_id: UUID) -> None:
        """A message that carries no event id of its own (a dead letter) under `message_id`."""
        self._rows.append(
            {
                "event_id": message_id,
                "topic": topic,
                "key": key,
                "payload": message.model_dump(mode="json", by_alias=True),
                "headers": current_trace_context(),
            }
        )

    async def flush(self) -> None:
        """Write what was added (the unit of work does, before it commits)."""
        if self._rows:
            rows, self._rows = self._rows, []
            await self._sql.execute_many(INSERT_OUTBOX, rows)
            self.written = True
