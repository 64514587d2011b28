"""How SQLAlchemy Core statements (the order service's, here) become asyncpg's SQL and arguments."""

from __future__ import annotations

import json
from uuid import uuid4

import pytest
from sqlalchemy import ARRAY, Text, any_, bindparam, insert, select

from order.adapters.repository import INSERT_OUTBOX
from order.adapters.tables import OUTBOX_CHANNEL, outbox
from pgstatements import affected_rows, compiled

ROW = {
    "event_id": uuid4(),
    "topic": "orders.events",
    "key": "order-1",
    "event_type": "OrderStatusChanged",
    "payload": {"to": "confirmed", "reason": None},
    "headers": {"correlation_id": ""},
}


def test_arguments_follow_the_numbered_parameters_with_the_statements_own_values() -> None:
    arguments = INSERT_OUTBOX.arguments(ROW)

    by_number = dict(zip(INSERT_OUTBOX.names, arguments, strict=True))
    assert INSERT_OUTBOX.sql.count("$") == len(arguments)
    assert by_number["event_id"] == ROW["event_id"]
    assert by_number["topic"] == "orders.events"
    # pg_notify's channel and payload are written in the statement, not given by the caller.
    assert sorted(str(value) for name, value in by_number.items() if name not in ROW) == [
        "",
        OUTBOX_CHANNEL,
    ]


def test_jsonb_values_go_as_json_text_none_too_as_sqlalchemy_sends_them() -> None:
    by_number = dict(zip(INSERT_OUTBOX.names, INSERT_OUTBOX.arguments(ROW), strict=True))
    assert json.loads(by_number["payload"]) == ROW["payload"]

    statement = compiled(
        insert(outbox).values(payload=bindparam("payload", type_=outbox.c.payload.type))
    )
    assert statement.arguments({"payload": None}) == ["null"]


def test_a_parameter_the_caller_leaves_out_is_refused() -> None:
    statement = compiled(select(outbox.c.id).where(outbox.c.key == bindparam("key")))
    with pytest.raises(KeyError, match="key"):
        statement.arguments({})


@pytest.mark.parametrize(
    ("status", "rows"),
    [("INSERT 0 1", 1), ("INSERT 0 0", 0), ("UPDATE 12", 12), ("DELETE 0", 0), ("SELECT 3", 3)],
)
def test_affected_rows_are_read_from_the_command_tag(status: str, rows: int) -> None:
    assert affected_rows(status) == rows


def test_an_insert_without_values_takes_a_parameter_per_named_column() -> None:
    statement = compiled(insert(outbox), columns=["topic", "key"])

    assert statement.names == ("topic", "key")
    assert statement.arguments({"key": "order-1", "topic": "orders.events"}) == [
        "orders.events",
        "order-1",
    ]


def test_a_list_goes_to_an_array_parameter_as_it_is() -> None:
    statement = compiled(
        select(outbox.c.id).where(outbox.c.key == any_(bindparam("keys", type_=ARRAY(Text))))
    )

    assert "ANY ($1::TEXT[])" in statement.sql
    assert statement.arguments({"keys": ["order-1", "order-2"]}) == [["order-1", "order-2"]]


def test_an_in_list_is_refused_as_its_parameters_are_known_only_with_its_values() -> None:
    with pytest.raises(ValueError, match="any_"):
        compiled(select(outbox.c.id).where(outbox.c.key.in_(["order-1", "order-2"])))
