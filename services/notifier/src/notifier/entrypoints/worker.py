"""The dispatch loops: send due communications until asked to stop, then hand back their claims.

Several rounds run at once, so that one waiting on a slow send or on the database does not
hold up the others (claims never overlap: SKIP LOCKED). The idle rounds take turns: the one
whose turn it is claims when the consumer queued something, or after the poll interval, so it
also finds retries falling due and work queued by other replicas; a round that claimed a full
batch hands the turn on at once, so under load all of them claim.

The consumer claims what it records itself, as far as the worker has room, and hands it over
to be sent at once; what it leaves queued, a woken round claims."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Sequence

from notifier.domain.communication import Communication
from notifier.service import Claim, Dispatcher

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
        self._running = False
        self._handovers: set[asyncio.Task[None]] = set()
        self._handed_over = 0  # communications handed over and not yet finished

    def wake(self) -> None:
        self._wake.set()

    def claim_for_recording(self) -> Claim | None:
        """Leave for the consumer to claim what it records, as far as there is room: as many
        as the rounds claim at once, less those handed over and not finished. None unless
        running, and once stopping."""
        room = self._dispatcher.batch_size * self._rounds - self._handed_over
        if not self._running or self._stopping.is_set() or room <= 0:
            return None
        return self._dispatcher.new_claim(room)

    def hand_over(self, claimed: Sequence[Communication], claim: Claim) -> None:
        """Send what the consumer recorded already claimed under `claim`, at once. Once
        stopping, nothing more starts: stopping hands the claims back."""
        if not claimed or self._stopping.is_set():
            return
        task = asyncio.create_task(
            self._dispatcher.dispatch_claimed(claimed, claim.lease_deadline),
            name="dispatch-recorded",
        )
        self._handed_over += len(claimed)
        self._handovers.add(task)
        task.add_done_callback(functools.partial(self._handover_done, len(claimed)))

    def _handover_done(self, count: int, task: asyncio.Task[None]) -> None:
        self._handovers.discard(task)
        self._handed_over -= count
        if not task.cancelled() and (error := task.exception()) is not None:
            log.warning(
                "sending %d recorded communications failed; they are claimed again once their "
                "lease expires",
                count,
                exc_info=error,
            )

    async def run(self) -> None:
        self._running = True
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
        """Let the rounds in progress and the handed-over sends finish (their sends and
        outcomes) for up to `grace` seconds, cancel them past that, then release whatever is
        still claimed."""
        log.info("dispatcher stopping: the sends in flight may finish within %.1f s", grace)
        self._stopping.set()
        self._wake.set()
        _, unfinished = await asyncio.wait({task, *self._handovers}, timeout=grace)
        for late in unfinished:
            late.cancel()
        await asyncio.gather(*unfinished, return_exceptions=True)
        try:
            released = await self._dispatcher.release_claims()
        except Exception:
            log.warning("could not release claims; they expire with their lease", exc_info=True)
            return
        if released:
            log.info("released %d unfinished communications", released)
