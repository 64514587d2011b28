"""The notifier's dispatch rounds take turns: a wake-up starts one claim, a full claim hands the
turn on, and stopping ends every round. What the consumer records already claimed is sent at
once, within the rounds' room, and stopping waits for it. The dispatcher here only counts
claims and sends; what they do against the database is tested in
tests/integration/test_notifier*.py."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from uuid import uuid4

from contracts import Channel
from notifier.domain.communication import Communication, Lease
from notifier.entrypoints.worker import DispatchWorker
from notifier.service import Claim

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
        self.handed_over: list[Sequence[Communication]] = []  # as dispatch_claimed got them
        self.finished: list[Sequence[Communication]] = []
        self.released = 0

    def new_claim(self, limit: int) -> Claim:
        return Claim(Lease("this-worker", datetime.now(UTC)), lease_deadline=0.0, limit=limit)

    async def dispatch_claimed(
        self, claimed: Sequence[Communication], lease_deadline: float
    ) -> None:
        self.handed_over.append(claimed)
        await self.sent.wait()
        self.finished.append(claimed)

    async def dispatch_due(self, on_claimed: Callable[[int], None] = lambda count: None) -> int:
        self.claims += 1
        claimed = self.due.pop(0) if self.due else 0
        on_claimed(claimed)
        if claimed == BATCH:
            await self.sent.wait()
        return claimed

    async def release_claims(self) -> int:
        self.released += 1
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


def recorded(count: int) -> list[Communication]:
    return [
        Communication.queue(
            event_id=uuid4(),
            order_id=uuid4(),
            channel=Channel.EMAIL,
            template="order_ready",
            recipient=f"customer{n}@example.com",
            context={},
            now=datetime.now(UTC),
        )
        for n in range(count)
    ]


def room(worker: DispatchWorker) -> int | None:
    claim = worker.claim_for_recording()
    return None if claim is None else claim.limit


async def test_what_the_consumer_claimed_is_sent_at_once_within_the_rounds_room() -> None:
    dispatcher = CountingDispatcher(due=[])
    worker, task = await started(dispatcher)
    claims = dispatcher.claims
    assert room(worker) == 4 * BATCH  # as much as the four rounds claim at once

    first, second = recorded(3), recorded(2 * BATCH)
    worker.hand_over(first, dispatcher.new_claim(3))
    worker.hand_over(second, dispatcher.new_claim(2 * BATCH))
    await settled()
    assert dispatcher.handed_over == [first, second]
    assert dispatcher.claims == claims  # sent without a claim of due ones
    assert room(worker) == 4 * BATCH - 3 - 2 * BATCH

    dispatcher.sent.set()
    await settled()
    assert dispatcher.finished == [first, second]
    assert room(worker) == 4 * BATCH
    await stopped(worker, task)


async def test_nothing_is_claimed_for_recording_before_the_worker_runs_or_once_it_stops() -> None:
    dispatcher = CountingDispatcher(due=[])
    worker = DispatchWorker(
        dispatcher,  # type: ignore[arg-type]
        poll_interval=NEVER,
        retry_interval=NEVER,
        rounds=4,
    )
    assert room(worker) is None
    task = asyncio.create_task(worker.run())
    await settled()
    assert room(worker) == 4 * BATCH
    await stopped(worker, task)
    assert room(worker) is None

    worker.hand_over(recorded(1), dispatcher.new_claim(1))
    await settled()
    assert dispatcher.handed_over == []  # stopping handed the claims back instead


async def test_stopping_waits_for_the_handed_over_sends_then_releases_the_claims() -> None:
    dispatcher = CountingDispatcher(due=[])
    worker, task = await started(dispatcher)
    sending = recorded(2)
    worker.hand_over(sending, dispatcher.new_claim(2))
    await settled()

    stopping = asyncio.create_task(worker.stop(task, grace=NEVER))
    await settled()
    assert not stopping.done()
    assert dispatcher.released == 0

    dispatcher.sent.set()
    async with asyncio.timeout(5):
        await stopping
    assert dispatcher.finished == [sending]
    assert dispatcher.released == 1


async def test_a_handed_over_send_past_the_grace_is_cancelled_and_released() -> None:
    dispatcher = CountingDispatcher(due=[])
    worker, task = await started(dispatcher)
    worker.hand_over(recorded(2), dispatcher.new_claim(2))
    await settled()

    async with asyncio.timeout(5):
        await worker.stop(task, grace=0.01)
    assert dispatcher.finished == []
    assert dispatcher.released == 1
