"""SQLAlchemy Core statements, run on a pooled connection's own asyncpg driver.

SQLAlchemy builds each statement and compiles it, once for the statements a service runs on
every change; asyncpg runs it as a prepared statement. SQLAlchemy's execution layer (its
greenlet hop and result machinery) cost about 200 µs a statement against asyncpg's 50 µs: at
63 changes/s, 41 % of the order process's py-spy samples had SQLAlchemy frames, and a quarter
of the notifier's. The pool stays SQLAlchemy's.

Values are converted as SQLAlchemy would before handing them to asyncpg (JSONB to its text);
asyncpg decodes results with the codecs SQLAlchemy's dialect installed on the connection, so
rows hold what SQLAlchemy's would. A list given to an array parameter goes as it is: asyncpg
sends it as a PostgreSQL array.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
from sqlalchemy import func
from sqlalchemy.dialects.postgresql import asyncpg as asyncpg_dialect
from sqlalchemy.sql import ClauseElement, ColumnElement
from sqlalchemy.sql.compiler import SQLCompiler

DIALECT = asyncpg_dialect.dialect()  # type: ignore[no-untyped-call]  # untyped in SQLAlchemy

_GIVEN = object()  # a parameter the caller gives, as opposed to a value in the statement


@dataclass(frozen=True)
class Statement:
    """A statement compiled for asyncpg: its SQL and how to order its parameters."""

    sql: str
    names: tuple[str, ...]  # of the parameters $1, $2, ...
    values: tuple[Any, ...]  # each parameter's value in the statement itself, or _GIVEN
    converters: tuple[Callable[[Any], Any] | None, ...]

    def arguments(self, parameters: Mapping[str, Any]) -> list[Any]:
        arguments = []
        for name, value, convert in zip(self.names, self.values, self.converters, strict=True):
            if value is _GIVEN:
                value = parameters[name]
            arguments.append(value if convert is None else convert(value))
        return arguments


def compiled(statement: ClauseElement, columns: Sequence[str] | None = None) -> Statement:
    """Compile once what runs often (a module constant), or per call what is built per call.
    An INSERT with no values of its own takes one parameter per column of `columns` (default:
    all), named after it. Lists go to array parameters (`column == any_(bindparam(...))`), not
    to IN, whose parameters SQLAlchemy expands only once it has every value."""
    compiled_statement = statement.compile(dialect=DIALECT, column_keys=columns)
    assert isinstance(compiled_statement, SQLCompiler)  # a query or DML, not DDL
    if "POSTCOMPILE" in compiled_statement.string:
        raise ValueError("an IN list: give the list to an array parameter with any_()")
    names = tuple(compiled_statement.positiontup or ())
    binds = [compiled_statement.binds[name] for name in names]
    return Statement(
        sql=compiled_statement.string,
        names=names,
        values=tuple(_GIVEN if bind.required else bind.effective_value for bind in binds),
        converters=tuple(bind.type.dialect_impl(DIALECT).bind_processor(DIALECT) for bind in binds),
    )


def without_sequential_scans() -> ColumnElement[str]:
    """A column for a statement early in a transaction (its lock, as a rule): the statements
    after it, to the transaction's end, are planned without sequential scans.

    For transactions that look rows up by many keys at once (`id = ANY($1)`) in a table that
    grows. asyncpg prepares every statement, and after five runs PostgreSQL keeps one generic
    plan for it, made for an array of unknown length. Made while the table was (nearly)
    empty, that plan reads the whole table, and it is kept until the table is next analysed,
    by then grown: on a fresh database the audit's duplicate check was the costliest
    statement of the first minutes (8.9 ms per batch at 30,000 entries instead of 0.3). With
    no sequential scan to choose, the plan looks each key up in the key's index, whatever the
    table's size when it was made; the setting ends with the transaction."""
    return func.set_config("enable_seqscan", "off", True)


def affected_rows(status: str) -> int:
    """Rows a command touched, from its status tag: 'INSERT 0 1', 'UPDATE 2', 'DELETE 0'."""
    return int(status.rpartition(" ")[2] or 0)


class Sql:
    """What a unit of work's repositories run their statements on."""

    def __init__(self, driver: asyncpg.Connection) -> None:
        self._driver = driver

    async def rows(
        self, statement: Statement | ClauseElement, parameters: Mapping[str, Any] | None = None
    ) -> list[asyncpg.Record]:
        statement = _statement(statement)
        rows: list[asyncpg.Record] = await self._driver.fetch(
            statement.sql, *statement.arguments(parameters or {})
        )
        return rows

    async def row(
        self, statement: Statement | ClauseElement, parameters: Mapping[str, Any] | None = None
    ) -> asyncpg.Record | None:
        statement = _statement(statement)
        return await self._driver.fetchrow(statement.sql, *statement.arguments(parameters or {}))

    async def value(
        self, statement: Statement | ClauseElement, parameters: Mapping[str, Any] | None = None
    ) -> Any:
        """The first column of the first row (None for no row)."""
        statement = _statement(statement)
        return await self._driver.fetchval(statement.sql, *statement.arguments(parameters or {}))

    async def execute(
        self, statement: Statement | ClauseElement, parameters: Mapping[str, Any] | None = None
    ) -> int:
        """Run a statement returning no rows; how many rows it touched."""
        statement = _statement(statement)
        status = await self._driver.execute(statement.sql, *statement.arguments(parameters or {}))
        return affected_rows(status)

    async def execute_many(self, statement: Statement, rows: Sequence[Mapping[str, Any]]) -> None:
        """Run a statement once per row, pipelined in one round trip."""
        await self._driver.executemany(statement.sql, [statement.arguments(row) for row in rows])


def _statement(statement: Statement | ClauseElement) -> Statement:
    return statement if isinstance(statement, Statement) else compiled(statement)
