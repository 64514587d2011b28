"""Waiting for a condition instead of sleeping for a guessed time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def wait_until(
    probe: Callable[[], Awaitable[T]],
    done: Callable[[T], bool],
    *,
    within: float,
    what: str,
    interval: float = 0.1,
) -> T:
    """Call `probe` until `done(result)` holds; return that result, or raise with the last one."""
    deadline = time.monotonic() + within
    while True:
        result = await probe()
        if done(result):
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"gave up after {within:.0f} s waiting for {what}; last seen: {result!r}"
            )
        await asyncio.sleep(interval)
