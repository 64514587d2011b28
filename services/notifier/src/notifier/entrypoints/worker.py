"""The dispatch loop: sends due communications until stopped, then hands back its leases."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from notifier.service import Dispatcher

log = logging.getLogger(__name__)


async def run_dispatcher(
    dispatcher: Dispatcher, wake: asyncio.Event, poll_interval: float, retry_interval: float
) -> None:
    try:
        while True:
            try:
                attempted = await dispatcher.dispatch_due()
            except Exception:
                log.warning("dispatch round failed; retrying", exc_info=True)
                await asyncio.sleep(retry_interval)
                continue
            if attempted < dispatcher.batch_size:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), poll_interval)
                wake.clear()
    finally:
        with contextlib.suppress(Exception):
            released = await asyncio.shield(dispatcher.release_leases())
            if released:
                log.info("released %d unfinished communications", released)
