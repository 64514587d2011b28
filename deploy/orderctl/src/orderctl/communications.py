"""Dead communications, through the notifier's own use cases on its database (`NOTIFIER_*`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID

from notifier import service
from notifier.adapters.unit_of_work import DatabaseBusy, DatabaseUnavailable, UnitOfWorkFactory
from notifier.app import build_engine
from notifier.config import Settings
from notifier.domain.communication import Communication

# The notifier's own errors for a database that does not answer.
UNREACHABLE = (DatabaseUnavailable, DatabaseBusy)


async def dead() -> list[Communication]:
    engine = build_engine(Settings())
    try:
        return await service.list_dead(_uow_factory(engine))
    finally:
        await engine.dispose()


async def replay(ids: Sequence[UUID] | None) -> list[Communication]:
    """Queue the dead ones among `ids` (None: all) again; those no longer dead are left alone."""
    engine = build_engine(Settings())
    try:
        return await service.replay_dead(_uow_factory(engine), ids)
    finally:
        await engine.dispose()


def _uow_factory(engine: Any) -> UnitOfWorkFactory:
    # The running notifier's relay publishes what a replay writes to the outbox on its next
    # poll; there is no relay here to wake.
    return UnitOfWorkFactory(engine, on_outbox_commit=lambda: None)


def as_dict(communication: Communication) -> dict[str, Any]:
    c = communication
    return {
        "id": c.id,
        "order_id": c.order_id,
        "event_id": c.event_id,
        "channel": c.channel.value,
        "template": c.template,
        "recipient": c.recipient,
        "status": c.status.value,
        "attempts": c.attempts,
        "last_error": c.last_error,
        "replays": c.replays,
        "updated_at": c.updated_at,
    }
