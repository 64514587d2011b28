"""Waiting for a condition instead of sleeping for a guessed time."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

T = TypeVar("T")


@overload
async def wait_until(
    probe: Callable[[], Awaitable[T]],
    done: Callable[[T], bool],
    *,
    within: float,
    what: str,
    interval: float = 0.1,
) -> T: ...


@overload
async def wait_until(
    probe: Callable[[], T],
    done: Callable[[T], bool],
    *,
    within: float,
    what: str,
    interval: float = 0.1,
) -> T: ...


async def wait_until(
    probe: Callable[[], Any],
    done: Callable[[Any], bool],
    *,
    within: float,
    what: str,
    interval: float = 0.1,
) -> Any:
    """Call `probe` (a coroutine function, or a plain function for what needs no I/O) until
    `done(result)` holds; return that result, or raise with the last one."""
    deadline = time.monotonic() + within
    while True:
        result = probe()
        if inspect.isawaitable(result):
            result = await result
        if done(result):
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"gave up after {within:.0f} s waiting for {what}; last seen: {result!r}"
            )
        await asyncio.sleep(interval)
