"""SQLAlchemy Core statements compiled once and run on a pooled connection's asyncpg driver,
past SQLAlchemy's execution layer (see `statements`), and the pooled connection they run on
(see `checkout`). The services' units of work are built on these."""

from pgstatements.checkout import (
    Checkout,
    DatabaseBusy,
    DatabaseUnavailable,
    Unstorable,
    ping_when_idle,
    transaction,
)
from pgstatements.outbox import Backlog, OutboxStatements
from pgstatements.statements import (
    Sql,
    Statement,
    affected_rows,
    compiled,
    without_sequential_scans,
)

__all__ = [
    "Backlog",
    "Checkout",
    "DatabaseBusy",
    "DatabaseUnavailable",
    "OutboxStatements",
    "Sql",
    "Statement",
    "Unstorable",
    "affected_rows",
    "compiled",
    "ping_when_idle",
    "transaction",
    "without_sequential_scans",
]
