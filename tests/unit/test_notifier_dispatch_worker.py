"""The notifier's dispatch rounds take turns: a wake-up starts one claim, a full claim hands the
turn on, and stopping ends every round. The dispatcher here only counts claims; what a claim
does against the database is tested in tests/integration/test_notifier*.py."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from notifier.entrypoints.worker import DispatchWorker

BATCH = 5
NEVER = 3600.0  # a poll interval no test reaches: every claim here comes from a wake-up


class CountingDispatcher:
    """Claims what `due` says, one count per claim (nothing once it runs out); a full claim
    holds its round, as if sending, until `sent` is set."""

    batch_size = BATCH

    def __init__(self, due: list[int]) -> None:
        self.due = due
        self.claims = 0
        self.sent = asyncio.Event()

    async def dispatch_due(self, on_claimed: Callable[[int], None] = lambda count: None) -> int:
        self.claims += 1
        claimed = self.due.pop(0) if self.due else 0
        on_claimed(claimed)
        if claimed == BATCH:
            await self.sent.wait()
        return claimed

    async def release_claims(self) -> int:
        return 0


async def settled() -> None:
    """Let every round that can run do so (no I/O here: a few passes of the loop suffice)."""
    for _ in range(50):
        await asyncio.sleep(0)


async def started(dispatcher: CountingDispatcher) -> tuple[DispatchWorker, asyncio.Task[None]]:
    worker = DispatchWorker(
        dispatcher,  # type: ignore[arg-type]
        poll_interval=NEVER,
        retry_interval=NEVER,
        rounds=4,
    )
    task = asyncio.create_task(worker.run())
    await settled()
    return worker, task


async def stopped(worker: DispatchWorker, task: asyncio.Task[None]) -> None:
    async with asyncio.timeout(5):  # far below the grace: the rounds end, nothing cancels them
        await worker.stop(task, grace=NEVER)
    assert task.done()
    assert not task.cancelled()


async def test_a_wake_up_starts_one_claim_not_one_per_round() -> None:
    dispatcher = CountingDispatcher(due=[])
    worker, task = await started(dispatcher)
    at_start = dispatcher.claims
    assert at_start == 4  # each round looks once as it starts

    worker.wake()
    await settled()
    assert dispatcher.claims == at_start + 1

    worker.wake()
    await settled()
    assert dispatcher.claims == at_start + 2
    await stopped(worker, task)


async def test_a_full_claim_hands_the_turn_to_the_next_round() -> None:
    dispatcher = CountingDispatcher(due=[0, 0, 0, 0, BATCH, BATCH])
    worker, task = await started(dispatcher)

    worker.wake()
    await settled()
    # The woken round claimed a full batch and is still sending it; meanwhile the next round
    # claimed the second full batch, and the one after found nothing.
    assert dispatcher.claims == 4 + 3
    assert dispatcher.due == []

    dispatcher.sent.set()
    await settled()
    # Both full rounds look again at once, without waiting to be woken.
    assert dispatcher.claims == 4 + 3 + 2
    await stopped(worker, task)


async def test_stopping_ends_every_round_while_they_wait_their_turn() -> None:
    dispatcher = CountingDispatcher(due=[])
    worker, task = await started(dispatcher)
    await stopped(worker, task)
    assert dispatcher.claims == 4
