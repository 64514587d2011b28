"""The order service's use cases. Each runs in one unit of work: the change, its history row
and its outbox row commit together or not at all."""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

from contracts import (
    ORDERS_COMMAND_RESULTS,
    ORDERS_EVENTS,
    Actor,
    ChangeOrderStatus,
    CommandAccepted,
    CommandRejected,
    CreateOrder,
    OrderCommand,
    OrderCreated,
    OrderStatus,
    OrderStatusChanged,
)
from contracts import Customer as CustomerContract
from order.adapters.telemetry import attached
from order.adapters.unit_of_work import (
    DatabaseBusy,
    DatabaseUnavailable,
    UnitOfWork,
    UnitOfWorkFactory,
    Unstorable,
)
from order.domain.auth import (
    AccessRefused,
    Identity,
    Permission,
    Role,
    StoredToken,
    check_access,
)
from order.domain.errors import (
    IdempotencyKeyReused,
    OrderAlreadyExists,
    OrderError,
    OrderNotFound,
    TransitionNotAllowed,
)
from order.domain.model import Customer, Order
from order.logging_config import correlated

log = logging.getLogger(__name__)


def _now() -> datetime:
    return datetime.now(UTC)


def _customer_contract(customer: Customer) -> CustomerContract:
    return CustomerContract(name=customer.name, email=customer.email, phone=customer.phone)


async def create_order_in(
    uow: UnitOfWork,
    *,
    customer: Customer,
    actor: Actor,
    order_id: UUID | None = None,
    correlation_id: str | None = None,
) -> Order:
    order = Order.create(order_id or uuid4(), customer, _now())
    event = OrderCreated(
        order_id=order.id,
        status=order.status,
        version=order.version,
        customer=_customer_contract(customer),
        actor=actor,
        occurred_at=order.created_at,
        correlation_id=correlation_id,
    )
    if not await uow.orders.add(order):
        raise OrderAlreadyExists(order.id)
    await uow.orders.add_creation_history(order, event.event_id, actor.id)
    await uow.outbox.add(ORDERS_EVENTS, str(order.id), event)
    return order


async def change_order_status_in(
    uow: UnitOfWork,
    order_id: UUID,
    target: OrderStatus,
    *,
    actor: Actor,
    reason: str | None = None,
    expected_version: int | None = None,
    correlation_id: str | None = None,
) -> Order:
    """Validate and apply a status change. Returns the order as it now is; a request for the
    current status returns it unchanged with no event.

    It writes one statement (the order, its history row and its outbox row together), so it
    needs no transaction of its own. Without a row lock, a change made meanwhile fails the
    save, and the order is read and the change validated again: each retry follows another
    change of this order, and the lifecycle allows only a few."""
    while True:
        order = await uow.orders.get(order_id)
        if order is None:
            raise OrderNotFound(order_id)
        change = order.change_status(
            target,
            actor=actor.id,
            reason=reason,
            now=_now(),
            expected_version=expected_version,
        )
        if change is None:
            return order
        event = OrderStatusChanged(
            order_id=order.id,
            from_status=change.from_status,
            to_status=change.to_status,
            version=change.version,
            actor=actor,
            reason=change.reason,
            customer=_customer_contract(order.customer),
            occurred_at=change.occurred_at,
            correlation_id=correlation_id,
        )
        if await uow.orders.save_status(order, change, event, ORDERS_EVENTS):
            return order


@dataclass(frozen=True)
class IdempotentRequest:
    scope: str  # whose key space: the caller's identity
    key: str
    fingerprint: str  # the same key sent with a different request is refused


@dataclass(frozen=True)
class Answer:
    status_code: int
    body: dict[str, Any]
    replayed: bool = False


Action = Callable[[UnitOfWork], Awaitable[dict[str, Any]]]


async def answer(
    uow_factory: UnitOfWorkFactory,
    status_code: int,
    action: Action,
    idempotency: IdempotentRequest | None = None,
) -> Answer:
    """Run a changing request in one unit of work. With an idempotency key, the key is claimed
    in the same transaction as the effect, so a retry (even a concurrent one) replays the first
    answer instead of applying a second effect."""

    async def attempt(uow: UnitOfWork) -> Answer:
        if idempotency is None:
            return Answer(status_code, await action(uow))
        scope, key = idempotency.scope, idempotency.key
        if not await uow.idempotency.claim(scope, key, idempotency.fingerprint):
            stored = await uow.idempotency.answer(scope, key)
            if stored.fingerprint != idempotency.fingerprint:
                raise IdempotencyKeyReused(key)
            return Answer(stored.status_code or status_code, stored.response, replayed=True)
        body = await action(uow)
        await uow.idempotency.record(scope, key, status_code, body)
        return Answer(status_code, body)

    return await uow_factory.run(attempt)


async def forget_expired_idempotency_keys(
    uow_factory: UnitOfWorkFactory, retention: timedelta, batch: int = 10_000
) -> int:
    """Delete the Idempotency-Keys and command ids claimed longer than `retention` ago: a retry
    or a redelivery after that counts as new. A batch per statement, so that no delete holds
    many locks for long; returns how many were deleted."""
    forgotten = 0
    while True:
        deleted = await uow_factory.write_once(
            lambda uow: uow.idempotency.forget_older_than(retention, batch)
        )
        forgotten += deleted
        if deleted < batch:
            return forgotten


COMMAND_SCOPE = "orders.commands"


def rejection_of(
    error: OrderError,
    *,
    command_id: UUID,
    order_id: UUID,
    actor: Actor,
    requested: OrderStatus | None,
    correlation_id: str | None,
) -> CommandRejected:
    """The result announcing a refused change, so the refusal is audited like any change."""
    return CommandRejected(
        command_id=command_id,
        order_id=order_id,
        actor=actor,
        code=error.code,
        reason=str(error),
        current_status=error.current if isinstance(error, TransitionNotAllowed) else None,
        requested_status=requested,
        correlation_id=correlation_id,
    )


def _rejection(command: CreateOrder | ChangeOrderStatus, error: OrderError) -> CommandRejected:
    return rejection_of(
        error,
        command_id=command.command_id,
        order_id=command.order_id,
        actor=command.actor,
        requested=command.status if isinstance(command, ChangeOrderStatus) else None,
        correlation_id=command.correlation_id,
    )


async def _apply_command(uow: UnitOfWork, command: OrderCommand) -> None:
    """Apply an upstream command once per `command_id`, and publish its result through the
    outbox in the caller's transaction. A duplicate changes nothing."""
    fingerprint = hashlib.sha256(command.model_dump_json().encode()).hexdigest()
    result: CommandAccepted | CommandRejected
    if not await uow.idempotency.claim(COMMAND_SCOPE, str(command.command_id), fingerprint):
        return
    try:
        if isinstance(command, CreateOrder):
            c = command.customer
            order = await create_order_in(
                uow,
                customer=Customer(c.name, c.email, c.phone),
                actor=command.actor,
                order_id=command.order_id,
                correlation_id=command.correlation_id,
            )
        else:
            order = await change_order_status_in(
                uow,
                command.order_id,
                command.status,
                actor=command.actor,
                reason=command.reason,
                expected_version=command.expected_version,
                correlation_id=command.correlation_id,
            )
        result = CommandAccepted(
            command_id=command.command_id,
            order_id=order.id,
            actor=command.actor,
            version=order.version,
            correlation_id=command.correlation_id,
        )
    except OrderError as error:
        # Domain rules raise before writing anything, so the transaction is still clean
        # and the rejection is recorded and announced with the claimed command id.
        result = _rejection(command, error)
    await uow.outbox.add(ORDERS_COMMAND_RESULTS, str(command.order_id), result)
    await uow.idempotency.record(
        COMMAND_SCOPE, str(command.command_id), None, result.model_dump(mode="json")
    )


# A command, and the trace its result and events continue (W3C headers).
TracedCommand = tuple[OrderCommand, dict[str, str]]


async def handle_commands(
    uow_factory: UnitOfWorkFactory, commands: Sequence[TracedCommand]
) -> dict[int, str]:
    """Apply consumed commands in their order, all in one transaction; returns the position
    of each command the database refused to store, with the reason (for the dead-letter topic).

    If the transaction fails for any reason but the database being away or busy, the commands are
    applied again one per transaction, so one that cannot be stored holds up no other. Any other
    failure propagates: the caller has them all redelivered, which is safe because a command
    applied before is not applied again (its `command_id` is claimed)."""

    def applying(batch: Sequence[TracedCommand]) -> Callable[[UnitOfWork], Awaitable[None]]:
        async def apply(uow: UnitOfWork) -> None:
            for command, trace_context in batch:
                with attached(trace_context), correlated(command.correlation_id):
                    await _apply_command(uow, command)

        return apply

    if not commands:
        return {}
    try:
        await uow_factory.run(applying(commands))
        return {}
    except (DatabaseUnavailable, DatabaseBusy):
        raise
    except Exception as error:
        if len(commands) > 1:
            log.warning("%d commands failed together; applying them one by one", len(commands))
        elif isinstance(error, Unstorable):
            return {0: str(error)}
        else:
            raise
    refused: dict[int, str] = {}
    for position, traced in enumerate(commands):
        try:
            await uow_factory.run(applying([traced]))
        except Unstorable as error:
            refused[position] = str(error)
    return refused


async def answer_change(
    uow_factory: UnitOfWorkFactory,
    action: Action,
    idempotency: IdempotentRequest | None,
    rejected: Callable[[OrderError], CommandRejected],
) -> Answer:
    """`answer` for a status change requested over HTTP (`action` writes with one statement, as
    `change_order_status_in` does). Without an idempotency key there is nothing to write with
    it, so no transaction is opened: two round trips fewer. A refused change is announced on
    orders.command-results (the change wrote nothing) so that every rejected attempt reaches
    the audit trail, then the error goes to the caller."""
    try:
        if idempotency is None:
            return Answer(200, await uow_factory.write_once(action))
        return await answer(uow_factory, 200, action, idempotency)
    except OrderError as error:
        rejection = rejected(error)
        await uow_factory.write_once(
            lambda uow: uow.outbox.add(ORDERS_COMMAND_RESULTS, str(rejection.order_id), rejection)
        )
        raise


async def get_order(uow_factory: UnitOfWorkFactory, order_id: UUID) -> Order:
    order = await uow_factory.read(lambda uow: uow.orders.get(order_id))
    if order is None:
        raise OrderNotFound(order_id)
    return order


async def list_orders(
    uow_factory: UnitOfWorkFactory,
    *,
    status: OrderStatus | None,
    limit: int,
    after: tuple[datetime, UUID] | None,
) -> list[Order]:
    return await uow_factory.read(
        lambda uow: uow.orders.page(status=status, limit=limit, after=after)
    )


async def order_history(uow_factory: UnitOfWorkFactory, order_id: UUID) -> list[Mapping[str, Any]]:
    async def read(uow: UnitOfWork) -> list[Mapping[str, Any]]:
        if await uow.orders.get(order_id) is None:
            raise OrderNotFound(order_id)
        return await uow.orders.history(order_id)

    return await uow_factory.read(read)


async def issue_token(
    uow_factory: UnitOfWorkFactory, name: str, role: Role, *, replace: bool = False
) -> str:
    """Create an API token; the returned secret is shown once and stored only hashed. With
    `replace`, the earlier tokens of `name` are revoked in the same transaction."""
    token = secrets.token_urlsafe(32)

    async def store(uow: UnitOfWork) -> None:
        if replace:
            await uow.tokens.revoke(name, _now())
        await uow.tokens.add(name, role, token)

    await uow_factory.run(store)
    return token


async def revoke_tokens(uow_factory: UnitOfWorkFactory, name: str) -> int:
    return await uow_factory.run(lambda uow: uow.tokens.revoke(name, _now()))


ANONYMOUS = Actor(id="anonymous", role="anonymous")


@dataclass(frozen=True)
class Attempt:
    """A request, as much of it as the audit of its refusal needs."""

    method: str
    path: str
    order_id: UUID | None  # the order it names, if any
    correlation_id: str | None


def access_rejection(refusal: AccessRefused, attempt: Attempt) -> CommandRejected:
    """The result announcing a request refused for its credentials: a fresh attempt each
    time, by the token's holder when known."""
    holder = refusal.holder
    return CommandRejected(
        command_id=uuid4(),
        order_id=attempt.order_id,
        actor=ANONYMOUS if holder is None else Actor(id=holder.name, role=holder.role.value),
        code=refusal.code,
        reason=f"{attempt.method} {attempt.path} refused: {refusal.why}",
        correlation_id=attempt.correlation_id,
    )


async def authorize(
    uow_factory: UnitOfWorkFactory,
    lookup: Callable[[str], Awaitable[StoredToken | None]],
    token: str | None,
    permission: Permission | None,
    attempt: Attempt,
) -> Identity:
    """The identity behind `token` (found by `lookup`) if it may do `permission` (None: any
    valid token).

    A refusal is announced on orders.command-results (one statement of its own), so that
    every refused request reaches the audit trail, and raised."""
    stored = await lookup(token) if token else None
    try:
        return check_access(token is not None, stored, permission)
    except AccessRefused as refusal:
        rejection = access_rejection(refusal, attempt)
        key = rejection.order_id or rejection.command_id
        await uow_factory.write_once(
            lambda uow: uow.outbox.add(ORDERS_COMMAND_RESULTS, str(key), rejection)
        )
        raise
