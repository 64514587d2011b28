"""LISTEN on a PostgreSQL connection of its own, reconnecting whenever it is lost.

A notification sent while nobody listens is gone for good: whoever listens is told each time
LISTEN holds again, to catch up on what it may have missed."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import asyncpg

log = logging.getLogger(__name__)


def asyncpg_dsn(sqlalchemy_url: str) -> str:
    return sqlalchemy_url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def listen_forever(
    dsn: str,
    channel: str,
    notified: Callable[[], None],
    *,
    listening: Callable[[], None],
    retry_interval: float,
    check_interval: float | None = None,
    checked: Callable[[], None] = lambda: None,
    stopped: Callable[[], None] = lambda: None,
    name: str = "order-listener",
) -> None:
    """Call `notified` for each notification on `channel` until cancelled; `listening` once
    LISTEN holds, after every (re)connection; `stopped` as soon as the connection is lost.

    With `check_interval`, a round trip on the connection checks it that often and `checked`
    is told of each that succeeded within the interval: a connection gone silent (a peer
    vanished without a reset) then shows as a failed check, not as a quiet channel. `name` is
    the connection's application_name in pg_stat_activity."""

    def on_notification(*_: Any) -> None:
        notified()

    while True:
        connection: asyncpg.Connection | None = None
        try:
            lost = asyncio.Event()
            connection = await asyncpg.connect(dsn, server_settings={"application_name": name})
            connection.add_termination_listener(lambda _, lost=lost: lost.set())
            await connection.add_listener(channel, on_notification)
            listening()
            if check_interval is None:
                await lost.wait()
            else:
                await _check_until_lost(connection, lost, check_interval, checked)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.debug("listener on %s lost its connection; reconnecting", channel, exc_info=True)
        finally:
            stopped()
            if connection is not None and not connection.is_closed():
                await connection.close()
        await asyncio.sleep(retry_interval)


async def _check_until_lost(
    connection: asyncpg.Connection,
    lost: asyncio.Event,
    interval: float,
    checked: Callable[[], None],
) -> None:
    while not lost.is_set():
        async with asyncio.timeout(interval):  # a check that hangs is a lost connection
            await connection.fetchval("SELECT 1")
        checked()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(interval):
                await lost.wait()
