"""Loads and stores order aggregates, their history and their outbox rows."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

from sqlalchemy import bindparam, func, insert, select, text, tuple_, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from contracts import Envelope
from contracts.statuses import OrderStatus
from order.adapters.tables import (
    OUTBOX_CHANNEL,
    api_tokens,
    idempotency_keys,
    order_status_history,
    orders,
    outbox,
)
from order.adapters.telemetry import current_trace_context
from order.domain.auth import Identity, Role, StoredToken
from order.domain.model import Customer, Order, StatusChanged
from pgstatements import Sql, compiled

# The statements of every status change, built and compiled once with named parameters:
# building and cache-keying a Core statement on each call cost about a tenth of the order
# service's CPU.
GET_ORDER = compiled(select(orders).where(orders.c.id == bindparam("order_id")))
_h = order_status_history.c
_event_id = bindparam("event_id", type_=_h.event_id.type)
_changed = (
    update(orders)
    .where(orders.c.id == bindparam("order_id"), orders.c.version == bindparam("from_version"))
    .values(status=bindparam("status"), version=bindparam("version"), updated_at=bindparam("now"))
    .returning(orders.c.id)
    .cte("changed")
)
_history = (
    insert(order_status_history)
    .from_select(
        [
            _h.order_id,
            _h.event_id,
            _h.from_status,
            _h.to_status,
            _h.version,
            _h.actor,
            _h.reason,
            _h.occurred_at,
        ],
        select(
            _changed.c.id,
            _event_id,
            bindparam("from_status", type_=_h.from_status.type),
            bindparam("to_status", type_=_h.to_status.type),
            bindparam("history_version", type_=_h.version.type),
            bindparam("actor", type_=_h.actor.type),
            bindparam("reason", type_=_h.reason.type),
            bindparam("occurred_at", type_=_h.occurred_at.type),
        ),
    )
    .returning(_h.order_id)
    .cte("history")
)
# An outbox row's values, each the parameter named after its column (see `_outbox_row`); the
# event id is the history row's too.
_OUTBOX_ROW = [
    _event_id,
    *(
        bindparam(column.name, type_=column.type)
        for column in (
            outbox.c.topic,
            outbox.c.key,
            outbox.c.event_type,
            outbox.c.payload,
            outbox.c.headers,
        )
    ),
]
# A status change is this one statement: the versioned UPDATE, then its history row and its
# outbox row inserted from what the UPDATE returned, so nothing is written when the version
# did not match. One statement is atomic on its own, so a change needs no transaction around
# it. The UPDATE takes the order's row lock before the outbox row gets its `id`, and holds it
# to the end: `id` order is commit order for one order's changes.
SAVE_STATUS = compiled(
    insert(outbox)
    .from_select(
        [outbox.c[value.key] for value in _OUTBOX_ROW],
        select(*_OUTBOX_ROW).select_from(_history),
    )
    .returning(func.pg_notify(OUTBOX_CHANNEL, ""))
)
# Wakes the relay, in the same round trip. A notification is delivered at commit, only if the
# transaction commits, and once however often it was sent in it.
INSERT_OUTBOX = compiled(
    insert(outbox)
    .values({value.key: value for value in _OUTBOX_ROW})
    .returning(func.pg_notify(OUTBOX_CHANNEL, ""))
)
# An order's creation: its row (insert-first), then its first history row.
ADD_ORDER = compiled(pg_insert(orders).on_conflict_do_nothing(index_elements=[orders.c.id]))
ADD_HISTORY = compiled(
    insert(order_status_history).inline(),
    columns=[column.name for column in order_status_history.c if column is not _h.id],
)
LOOKUP_TOKEN = compiled(
    select(api_tokens.c.name, api_tokens.c.role, api_tokens.c.revoked_at).where(
        api_tokens.c.token_sha256 == bindparam("digest")
    )
)
_IDEMPOTENCY_KEY = (
    idempotency_keys.c.scope == bindparam("scope"),
    idempotency_keys.c.key == bindparam("key"),
)
# What every command, and every request with an Idempotency-Key, runs: compiled once.
RECORD_ANSWER = compiled(
    update(idempotency_keys)
    .where(*_IDEMPOTENCY_KEY)
    .values(status_code=bindparam("answer_status"), response=bindparam("answer_body"))
)
STORED_ANSWER = compiled(
    select(
        idempotency_keys.c.fingerprint,
        idempotency_keys.c.status_code,
        idempotency_keys.c.response,
    ).where(*_IDEMPOTENCY_KEY)
)
CLAIM_IDEMPOTENCY_KEY = compiled(
    pg_insert(idempotency_keys)
    .values(scope=bindparam("scope"), key=bindparam("key"), fingerprint=bindparam("fingerprint"))
    .on_conflict_do_nothing(index_elements=["scope", "key"])
)

# By ctid: a PostgreSQL plan deletes the chosen rows where they lie, whereas a (scope, key) IN
# (...) join read the whole table for each batch.
FORGET_EXPIRED_IDEMPOTENCY_KEYS = compiled(
    text(
        "DELETE FROM idempotency_keys WHERE ctid = ANY(ARRAY("
        " SELECT ctid FROM idempotency_keys WHERE created_at < now() - CAST(:age AS interval)"
        " ORDER BY created_at LIMIT :limit))"
    )
)


def _to_order(row: Mapping[str, Any]) -> Order:
    return Order(
        id=row["id"],
        customer=Customer(row["customer_name"], row["customer_email"], row["customer_phone"]),
        status=OrderStatus(row["status"]),
        version=row["version"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


class OrderRepository:
    def __init__(self, sql: Sql) -> None:
        self._sql = sql

    async def get(self, order_id: UUID) -> Order | None:
        row = await self._sql.row(GET_ORDER, {"order_id": order_id})
        return None if row is None else _to_order(row)

    async def add(self, order: Order) -> bool:
        """Insert-first: False when an order with this id already exists."""
        added = await self._sql.execute(
            ADD_ORDER,
            {
                "id": order.id,
                "status": order.status.value,
                "version": order.version,
                "customer_name": order.customer.name,
                "customer_email": order.customer.email,
                "customer_phone": order.customer.phone,
                "created_at": order.created_at,
                "updated_at": order.updated_at,
            },
        )
        return bool(added)

    async def save_status(
        self, order: Order, change: StatusChanged, event: Envelope, topic: str
    ) -> bool:
        """Store a status change with its history row and its outbox row, in one statement,
        if nobody changed the order since it was read (optimistic concurrency: the UPDATE
        matches only the version the change was made from). False: it was changed meanwhile,
        and nothing was written."""
        written = await self._sql.execute(
            SAVE_STATUS,
            {
                "order_id": order.id,
                "from_version": change.version - 1,
                "status": order.status.value,
                "version": order.version,
                "now": order.updated_at,
                "from_status": change.from_status.value,
                "to_status": change.to_status.value,
                "history_version": change.version,
                "actor": change.actor,
                "reason": change.reason,
                "occurred_at": change.occurred_at,
                **_outbox_row(topic, str(order.id), event),
            },
        )
        return written == 1

    async def add_creation_history(self, order: Order, event_id: UUID, actor: str) -> None:
        await self._sql.execute(
            ADD_HISTORY,
            {
                "order_id": order.id,
                "event_id": event_id,
                "from_status": None,
                "to_status": order.status.value,
                "version": order.version,
                "actor": actor,
                "reason": None,
                "occurred_at": order.created_at,
            },
        )

    async def page(
        self, *, status: OrderStatus | None, limit: int, after: tuple[datetime, UUID] | None
    ) -> list[Order]:
        """Newest first, keyset-paginated on (created_at, id): stable under concurrent inserts."""
        query = select(orders).order_by(orders.c.created_at.desc(), orders.c.id.desc()).limit(limit)
        if status is not None:
            query = query.where(orders.c.status == status.value)
        if after is not None:
            query = query.where(tuple_(orders.c.created_at, orders.c.id) < tuple_(*after))
        return [_to_order(row) for row in await self._sql.rows(query)]

    async def history(self, order_id: UUID) -> list[Mapping[str, Any]]:
        query = (
            select(order_status_history)
            .where(order_status_history.c.order_id == order_id)
            .order_by(order_status_history.c.version)
        )
        return list(await self._sql.rows(query))


class Outbox:
    """Writes integration events in the caller's transaction and wakes the relay on commit.
    Each row keeps the trace context it was written in (W3C `traceparent`, `tracestate` among
    its headers), so the relay publishes it in the trace of the change that caused it."""

    def __init__(self, sql: Sql) -> None:
        self._sql = sql

    async def add(self, topic: str, key: str, event: Envelope) -> None:
        await self._sql.execute(INSERT_OUTBOX, _outbox_row(topic, key, event))


def _outbox_row(topic: str, key: str, event: Envelope) -> dict[str, Any]:
    return {
        "event_id": event.event_id,
        "topic": topic,
        "key": key,
        "event_type": getattr(event, "type", type(event).__name__),
        "payload": event.model_dump(mode="json", by_alias=True),
        "headers": {"correlation_id": event.correlation_id or "", **current_trace_context()},
    }


def token_digest(token: str) -> str:
    # Tokens are 256-bit random strings, so a fast hash is enough: nothing to brute-force.
    return hashlib.sha256(token.encode()).hexdigest()


class TokenRepository:
    def __init__(self, sql: Sql) -> None:
        self._sql = sql

    async def add(self, name: str, role: Role, token: str) -> UUID:
        token_id = uuid4()
        await self._sql.execute(
            insert(api_tokens).values(
                id=token_id, name=name, role=role.value, token_sha256=token_digest(token)
            )
        )
        return token_id

    async def revoke(self, name: str, now: datetime) -> int:
        return await self._sql.execute(
            update(api_tokens)
            .where(api_tokens.c.name == name, api_tokens.c.revoked_at.is_(None))
            .values(revoked_at=now)
        )

    async def lookup(self, token: str) -> StoredToken | None:
        """The token's holder, revoked or not (a refused revoked token is audited by name)."""
        row = await self._sql.row(LOOKUP_TOKEN, {"digest": token_digest(token)})
        if row is None:
            return None
        return StoredToken(
            Identity(row["name"], Role(row["role"])), revoked=row["revoked_at"] is not None
        )


@dataclass(frozen=True)
class StoredAnswer:
    fingerprint: str
    status_code: int | None
    response: dict[str, Any]


class IdempotencyRepository:
    def __init__(self, sql: Sql) -> None:
        self._sql = sql

    async def claim(self, scope: str, key: str, fingerprint: str) -> bool:
        """Insert-first: True if this transaction now owns the key. A concurrent claimer
        waits on the unique index until the owner commits (then gets False) or rolls back."""
        claimed = await self._sql.execute(
            CLAIM_IDEMPOTENCY_KEY, {"scope": scope, "key": key, "fingerprint": fingerprint}
        )
        return bool(claimed)

    async def answer(self, scope: str, key: str) -> StoredAnswer:
        row = await self._sql.row(STORED_ANSWER, {"scope": scope, "key": key})
        assert row is not None, "read after its claim failed: the key is stored"
        return StoredAnswer(row["fingerprint"], row["status_code"], row["response"])

    async def record(
        self, scope: str, key: str, status_code: int | None, response: dict[str, Any]
    ) -> None:
        await self._sql.execute(
            RECORD_ANSWER,
            {"scope": scope, "key": key, "answer_status": status_code, "answer_body": response},
        )

    async def forget_older_than(self, age: timedelta, limit: int) -> int:
        """Delete up to `limit` of the keys claimed longer than `age` ago, oldest first."""
        return await self._sql.execute(
            FORGET_EXPIRED_IDEMPOTENCY_KEYS, {"age": age, "limit": limit}
        )
