"""The dispatch loops: send due communications until asked to stop, then hand back their claims.

Several rounds run at once, so that one waiting on a slow send or on the database does not
hold up the others (claims never overlap: SKIP LOCKED). The idle rounds take turns: the one
whose turn it is claims when the consumer queued something, or after the poll interval, so it
also finds retries falling due and work queued by other replicas; a round that claimed a full
batch hands the turn on at once, so under load all of them claim."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from notifier.service import Dispatcher

log = logging.getLogger(__name__)


class DispatchWorker:
    def __init__(
        self, dispatcher: Dispatcher, poll_interval: float, retry_interval: float, rounds: int
    ) -> None:
        self._dispatcher = dispatcher
        self._rounds = rounds
        self._poll_interval = poll_interval
        self._retry_interval = retry_interval
        self._wake = asyncio.Event()
        self._turn = asyncio.Lock()  # held by the one idle round that waits for a wake-up
        self._stopping = asyncio.Event()

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        async with asyncio.TaskGroup() as loops:
            for _ in range(self._rounds):
                loops.create_task(self._loop())

    async def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                attempted = await self._dispatcher.dispatch_due(self._hand_on_when_full)
            except Exception:
                log.warning("dispatch round failed; retrying", exc_info=True)
                await self._wait_for_turn(self._retry_interval)
                continue
            if attempted < self._dispatcher.batch_size:
                await self._wait_for_turn(self._poll_interval)

    def _hand_on_when_full(self, claimed: int) -> None:
        # A full batch may have left more behind: the next idle round claims too.
        if claimed >= self._dispatcher.batch_size:
            self._wake.set()

    async def _wait_for_turn(self, seconds: float) -> None:
        """Wait for a wake-up or `seconds`, one round at a time: a wake-up starts one claim,
        not one per round."""
        async with self._turn:
            if self._stopping.is_set():
                return
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that
            # races with the wake-up.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(seconds):
                    await self._wake.wait()
            if not self._stopping.is_set():
                self._wake.clear()

    async def stop(self, task: asyncio.Task[None], grace: float) -> None:
        """Let the rounds in progress finish (their sends and outcomes) for up to `grace`
        seconds, cancel them past that, then release whatever is still claimed."""
        log.info("dispatcher stopping: the sends in flight may finish within %.1f s", grace)
        self._stopping.set()
        self._wake.set()
        try:
            async with asyncio.timeout(grace):
                await asyncio.shield(task)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        try:
            released = await self._dispatcher.release_claims()
        except Exception:
            log.warning("could not release claims; they expire with their lease", exc_info=True)
            return
        if released:
            log.info("released %d unfinished communications", released)
