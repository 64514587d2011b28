"""Limit A runs exactly the SQL the order service sends for a status change: the statements
its repositories build, compiled as SQLAlchemy compiles them for asyncpg."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast
from uuid import uuid4

from bench.limits import GET_ORDER, INSERT_OUTBOX, SAVE_STATUS
from contracts import Actor, Customer, OrderStatus, OrderStatusChanged
from order.adapters.repository import OrderRepository, Outbox
from order.domain.model import Customer as OrderCustomer
from order.domain.model import Order
from pgstatements import Sql, Statement


def words(sql: str) -> list[str]:
    """The SQL, whitespace aside."""
    return sql.split()


class CompiledStatements:
    """Stands in for the driver: keeps the SQL of each statement it is given, once its
    arguments were taken from the parameters."""

    def __init__(self) -> None:
        self.sql: list[str] = []

    def _run(self, statement: Statement, parameters: dict[str, Any]) -> None:
        statement.arguments(parameters)
        self.sql.append(statement.sql)

    async def row(self, statement: Statement, parameters: dict[str, Any]) -> None:
        self._run(statement, parameters)

    async def execute(self, statement: Statement, parameters: dict[str, Any]) -> int:
        self._run(statement, parameters)
        return 1


async def test_limit_a_sends_the_statements_of_a_status_change() -> None:
    statements = CompiledStatements()
    connection = cast(Sql, statements)
    now = datetime.now(UTC)
    order = Order.create(uuid4(), OrderCustomer("Ann", "ann@example.com", None), now)
    change = order.change_status(OrderStatus.CONFIRMED, actor="shop", reason=None, now=now)
    assert change is not None
    event = OrderStatusChanged(
        order_id=order.id,
        from_status=change.from_status,
        to_status=change.to_status,
        version=change.version,
        actor=Actor(id="shop", role="admin"),
        customer=Customer(name="Ann"),
        occurred_at=now,
    )

    await OrderRepository(connection).get(order.id)
    await OrderRepository(connection).save_status(order, change, event, "orders.events")
    # A command's result row, which limit A's command shape adds.
    await Outbox(connection).add("orders.command-results", str(order.id), event)

    assert [words(sql) for sql in statements.sql] == [
        words(sql) for sql in (GET_ORDER, SAVE_STATUS, INSERT_OUTBOX)
    ]
