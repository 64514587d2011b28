"""Now and then, forget the idempotency keys and command ids past their retention, so the
table that remembers them stops growing with the traffic."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from order import service
from order.adapters.unit_of_work import UnitOfWorkFactory

log = logging.getLogger(__name__)


async def forget_expired_idempotency_keys_every(
    interval: float, uow_factory: UnitOfWorkFactory, retention: timedelta
) -> None:
    """Until cancelled, first after one interval (not in the way of a start). Every API process
    runs it: two deleting at once delete each key once."""
    while True:
        await asyncio.sleep(interval)
        try:
            forgotten = await service.forget_expired_idempotency_keys(uow_factory, retention)
            if forgotten:
                log.info("forgot %d idempotency keys older than %s", forgotten, retention)
        except Exception:
            log.warning(
                "forgetting expired idempotency keys failed; trying again later", exc_info=True
            )
