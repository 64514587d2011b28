"""The notifier's use cases: record the communications an event asks for (skipping opted-out
recipients), dispatch the due ones, replay dead ones, read them back. Every change of a
communication commits in one unit of work together with its announcement on the outbox (for
notifications.events) and, when it goes dead, its dead letter (notifications.events.dlq)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

from opentelemetry.trace import StatusCode

from contracts import (
    NOTIFICATIONS_EVENTS,
    Channel,
    CommunicationDead,
    CommunicationEvent,
    CommunicationFailed,
    CommunicationQueued,
    CommunicationSent,
    CommunicationSkipped,
    DeadLetter,
    dlq_topic,
)
from notifier.adapters.telemetry import attached, current_trace_context, tracer
from notifier.adapters.unit_of_work import UnitOfWork, Unstorable
from notifier.domain.communication import Communication, CommunicationStatus, Lease, RetryPolicy
from notifier.domain.dedupe import normalise_recipient
from notifier.domain.delivery import DeliveryFailed, Sender, Undeliverable
from notifier.domain.planning import (
    NotificationRules,
    OrderEvent,
    plan_communications,
    template_context,
)
from notifier.logging_config import correlated

log = logging.getLogger(__name__)

OPTED_OUT = "recipient opted out"

# Anything that hands out a fresh unit of work (the composition root decides which).
UnitOfWorkFactory = Callable[[], UnitOfWork]


def _now() -> datetime:
    return datetime.now(UTC)


def announcement(communication: Communication) -> CommunicationEvent:
    """The notifications.events message for where `communication` now stands."""
    common = {
        "communication_id": communication.id,
        "dedupe_key": communication.dedupe_key,
        "order_id": communication.order_id,
        "source_event_id": communication.event_id,
        "channel": communication.channel,
        "template": communication.template,
        "recipient": communication.recipient,
        "attempts": communication.attempts,
        "occurred_at": communication.updated_at,
        "correlation_id": communication.context.get("correlation_id"),
    }
    error = communication.last_error or ""
    match communication.status:
        case CommunicationStatus.QUEUED:
            return CommunicationQueued.model_validate(common)
        case CommunicationStatus.SENT:
            return CommunicationSent.model_validate(
                {**common, "provider_message_id": communication.provider_message_id}
            )
        case CommunicationStatus.FAILED:
            return CommunicationFailed.model_validate({**common, "error": error})
        case CommunicationStatus.DEAD:
            return CommunicationDead.model_validate({**common, "error": error})
        case CommunicationStatus.SKIPPED:
            return CommunicationSkipped.model_validate({**common, "reason": error})
    raise ValueError(f"a {communication.status} communication is not announced")


async def _announce(uow: UnitOfWork, communication: Communication) -> None:
    await uow.outbox.add(
        NOTIFICATIONS_EVENTS, str(communication.order_id), announcement(communication)
    )


def dead_letter(communication: Communication, consumer_group: str) -> DeadLetter:
    """The DLQ entry of a dead communication. It comes from the notifier's own table, not from
    a Kafka record, hence no partition or offset (-1)."""
    return DeadLetter(
        source_topic=NOTIFICATIONS_EVENTS,
        partition=-1,
        offset=-1,
        key=str(communication.order_id),
        payload=json.dumps(communication.to_json(), separators=(",", ":")),
        headers={"content-type": "application/json"},
        reason=communication.last_error or "",
        consumer_group=consumer_group,
    )


# An event, and the trace its communications and their announcements continue (W3C headers).
TracedEvent = tuple[OrderEvent, dict[str, str]]
# An attempted communication, and the trace of its attempt (its announcement continues it).
Attempted = tuple[Communication, dict[str, str]]


def _planned(events: Sequence[TracedEvent], rules: NotificationRules) -> list[Communication]:
    """The communications the events ask for, each in the trace of its event."""
    now = _now()
    planned = []
    for event, trace_context in events:
        context = {**template_context(event), "correlation_id": event.correlation_id}
        with attached(trace_context):
            planned += [
                Communication.queue(
                    event_id=event.event_id,
                    order_id=event.order_id,
                    channel=plan.channel,
                    template=plan.template,
                    recipient=plan.recipient,
                    context=context,
                    now=now,
                    trace_context=current_trace_context(),
                )
                for plan in plan_communications(event, rules)
            ]
    return planned


@dataclass(frozen=True)
class Claim:
    """Leave to claim up to `limit` communications under `lease`: those due, or those recording
    queues, for its own process's dispatcher to send at once (no claim statement, no
    wake-up)."""

    lease: Lease
    lease_deadline: float  # the lease's end on the monotonic clock, taken before the lease
    limit: int

    def less(self, taken: int) -> Claim:
        return replace(self, limit=max(self.limit - taken, 0))


@dataclass(frozen=True)
class Recorded:
    claimed: list[Communication]  # newly queued and claimed under the Claim, to send now
    queued: int  # newly queued and left for the dispatcher to claim
    # Position in the given events → why the database refused that event's communications.
    refused: dict[int, str] = field(default_factory=dict)


async def _record_in(
    uow: UnitOfWork, events: Sequence[TracedEvent], rules: NotificationRules, claim: Claim | None
) -> Recorded:
    """Record what the events ask for, in a few statements whatever their number. A recipient
    who opted out of the channel gets a `skipped` communication instead. Each new one is
    announced as queued (or skipped); up to the claim's limit of those queued are recorded
    already claimed. Recording an event again records nothing: its dedupe keys are taken."""
    planned = _planned(events, rules)
    addressed: dict[Channel, set[str]] = {}
    for communication in planned:
        addressed.setdefault(communication.channel, set()).add(
            normalise_recipient(communication.channel, communication.recipient)
        )
    opted_out = {
        channel: await uow.opt_outs.opted_out(channel, recipients)
        for channel, recipients in addressed.items()
    }
    for communication in planned:
        recipient = normalise_recipient(communication.channel, communication.recipient)
        if recipient in opted_out[communication.channel]:
            communication.skip(OPTED_OUT, communication.created_at)
    # Announced as recorded (queued or skipped), whether or not claimed at once.
    announcements = {communication.id: announcement(communication) for communication in planned}
    queued = [c for c in planned if c.status is CommunicationStatus.QUEUED]
    claimed = queued[: claim.limit] if claim else []
    for communication in claimed:
        communication.claim(communication.created_at)
    added = await uow.communications.add_new(planned, claim.lease if claim else None)
    for communication in planned:
        if communication.id in added:
            with (
                attached(communication.trace_context),
                correlated(communication.context.get("correlation_id")),
            ):
                await uow.outbox.add(
                    NOTIFICATIONS_EVENTS,
                    str(communication.order_id),
                    announcements[communication.id],
                )
    return Recorded(
        claimed=[c for c in claimed if c.id in added],
        queued=sum(1 for c in queued[len(claimed) :] if c.id in added),
    )


async def _record_all(
    uow_factory: UnitOfWorkFactory,
    events: Sequence[TracedEvent],
    rules: NotificationRules,
    claim: Claim | None,
) -> Recorded:
    async with uow_factory() as uow:
        return await _record_in(uow, events, rules, claim)


async def record_communications(
    uow_factory: UnitOfWorkFactory,
    events: Sequence[TracedEvent],
    rules: NotificationRules,
    claim: Claim | None = None,
) -> Recorded:
    """Record what each event asks for, all of them in one transaction.

    If the database refuses some event's content, the events are recorded again one per
    transaction so the others still get in, and the refused ones are returned with the reason
    (for the dead-letter topic). Any other failure propagates: the caller retries them all,
    which is safe because the dedupe keys of those recorded are taken."""
    try:
        return await _record_all(uow_factory, events, rules, claim)
    except Unstorable as error:
        if len(events) == 1:
            return Recorded([], 0, {0: str(error)})
    claimed: list[Communication] = []
    queued = 0
    refused: dict[int, str] = {}
    for position, traced in enumerate(events):
        try:
            recorded = await _record_all(
                uow_factory, [traced], rules, claim.less(len(claimed)) if claim else None
            )
        except Unstorable as error:
            refused[position] = str(error)
            continue
        claimed += recorded.claimed
        queued += recorded.queued
    return Recorded(claimed, queued, refused)


@dataclass(frozen=True)
class Dispatcher:
    """Claims due communications under a lease and sends them. Any number of dispatchers, in
    any number of replicas, can run side by side: claims never overlap, and the claims of a
    dispatcher that died expire with its lease."""

    uow_factory: UnitOfWorkFactory
    senders: Mapping[Channel, Sender]
    policy: RetryPolicy
    owner: str  # unique per process, so a restarted replica never takes old leases for its own
    batch_size: int
    lease: timedelta
    retry_interval: float
    consumer_group: str  # named on the dead letters of communications
    # Seconds a finished attempt's outcome waits for the round's others, to share their
    # transaction (see Settings.dispatch_outcome_linger_ms).
    outcome_linger: float = 0.0
    # Told each attempt's channel, outcome (sent, failed, dead) and duration (for metrics).
    record_send: Callable[[str, str, float], None] = lambda channel, outcome, seconds: None

    def new_claim(self, limit: int) -> Claim:
        """Leave to claim up to `limit` communications under this dispatcher's lease, from now:
        for a round's claim of due ones, or for recording (then `dispatch_claimed`)."""
        # Taken before the lease, so it never outlasts the lease the database records.
        deadline = time.monotonic() + self.lease.total_seconds()
        return Claim(Lease(self.owner, _now() + self.lease), deadline, limit)

    async def dispatch_due(self, on_claimed: Callable[[int], None] = lambda count: None) -> int:
        """One round: claim up to a batch and attempt them all concurrently; returns how many
        were attempted. `on_claimed` is told how many were claimed before any is attempted."""
        claim = self.new_claim(self.batch_size)
        async with self.uow_factory() as uow:
            claimed = await uow.communications.claim_due(claim.lease, _now(), claim.limit)
        on_claimed(len(claimed))
        await self.dispatch_claimed(claimed, claim.lease_deadline)
        return len(claimed)

    async def dispatch_claimed(
        self, claimed: Sequence[Communication], lease_deadline: float
    ) -> None:
        """Attempt communications this dispatcher holds the lease of, all concurrently. Outcomes
        are stored as the attempts finish: each with those that finished within the outcome
        linger after it, in one transaction."""
        finished: asyncio.Queue[Attempted] = asyncio.Queue()

        async def attempt(communication: Communication) -> None:
            finished.put_nowait(await self.deliver(communication))

        async with asyncio.TaskGroup() as attempts:
            for communication in claimed:
                attempts.create_task(attempt(communication))
            stored = 0
            while stored < len(claimed):
                outcomes = [await finished.get()]
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.outcome_linger):
                        while stored + len(outcomes) < len(claimed):
                            outcomes.append(await finished.get())
                await self._record_outcomes(outcomes, lease_deadline)
                stored += len(outcomes)

    async def deliver(self, communication: Communication) -> Attempted:
        """Attempt one claimed communication, in the trace of the event that asked for it and
        under that event's correlation id."""
        with (
            attached(communication.trace_context),
            correlated(communication.context.get("correlation_id")),
            tracer().start_as_current_span(
                f"deliver {communication.channel}",
                attributes={
                    "notifier.communication_id": str(communication.id),
                    "notifier.order_id": str(communication.order_id),
                    "notifier.template": communication.template,
                    "notifier.attempt": communication.attempts,
                },
            ) as span,
        ):
            await self._attempt(communication)
            span.set_attribute("notifier.outcome", communication.status.value)
            if communication.status is not CommunicationStatus.SENT:
                span.set_status(StatusCode.ERROR, communication.last_error)
            return communication, current_trace_context()

    async def _attempt(self, communication: Communication) -> None:
        sender = self.senders.get(communication.channel)
        started = time.monotonic()
        try:
            if sender is None:
                raise Undeliverable(f"no sender for the {communication.channel} channel")
            provider_message_id = await sender.send(communication)
        except Undeliverable as error:
            communication.mark_dead(str(error), _now())
        except DeliveryFailed as error:
            communication.mark_failed(str(error), self.policy, _now())
        except Exception as error:
            log.exception("sending communication %s failed unexpectedly", communication.id)
            communication.mark_failed(f"{type(error).__name__}: {error}", self.policy, _now())
        else:
            communication.mark_sent(provider_message_id, _now())
        self.record_send(
            communication.channel.value, communication.status.value, time.monotonic() - started
        )
        if communication.status is CommunicationStatus.SENT:
            log.info(
                "communication %s sent by %s (attempt %d)",
                communication.id,
                communication.channel,
                communication.attempts,
            )
        elif communication.status is CommunicationStatus.DEAD:
            log.warning("communication %s is dead: %s", communication.id, communication.last_error)

    async def _record_outcomes(self, outcomes: Sequence[Attempted], lease_deadline: float) -> None:
        """Store the outcomes, each announced in its attempt's trace, retrying while the lease
        lasts: an outcome that is not stored means the communication is attempted again once
        the lease expires (for a sent email, a second copy with the same Message-ID)."""
        while True:
            try:
                async with self.uow_factory() as uow:
                    stored = await uow.communications.save_outcomes(
                        [communication for communication, _ in outcomes], self.owner
                    )
                    for communication, trace_context in outcomes:
                        with (
                            attached(trace_context),
                            correlated(communication.context.get("correlation_id")),
                        ):
                            await self._announce_outcome(
                                uow, communication, stored=communication.id in stored
                            )
                return
            except Exception:
                if time.monotonic() + self.retry_interval >= lease_deadline:
                    log.exception(
                        "the outcomes of %s could not be stored; they are retried once their "
                        "lease expires",
                        ", ".join(str(communication.id) for communication, _ in outcomes),
                    )
                    return
                log.warning("storing %d outcomes failed; retrying", len(outcomes))
                await asyncio.sleep(self.retry_interval)

    async def _announce_outcome(
        self, uow: UnitOfWork, communication: Communication, *, stored: bool
    ) -> None:
        if not stored:
            log.warning(
                "communication %s: lease lost before its outcome (%s) was stored",
                communication.id,
                communication.status,
            )
            return
        await _announce(uow, communication)
        if communication.status is CommunicationStatus.DEAD:
            letter = dead_letter(communication, self.consumer_group)
            await uow.outbox.add_message(
                dlq_topic(NOTIFICATIONS_EVENTS), str(communication.order_id), letter, uuid4()
            )

    async def release_claims(self) -> int:
        """Hand back whatever this dispatcher claimed and did not finish (at shutdown)."""
        async with self.uow_factory() as uow:
            return await uow.communications.release_leases(self.owner, _now())


UNFINISHED = (
    CommunicationStatus.QUEUED,
    CommunicationStatus.SENDING,
    CommunicationStatus.FAILED,
    CommunicationStatus.DEAD,
)


async def count_unfinished(uow_factory: UnitOfWorkFactory) -> dict[str, int]:
    """How many communications are in each unfinished status. The finished ones (sent,
    skipped) only ever grow; counting them would mean counting the whole table."""
    async with uow_factory() as uow:
        counts = await uow.communications.count_by_status([s.value for s in UNFINISHED])
    return {status.value: counts.get(status.value, 0) for status in UNFINISHED}


async def list_dead(uow_factory: UnitOfWorkFactory) -> list[Communication]:
    async with uow_factory() as uow:
        return await uow.communications.dead(None, lock=False)


async def replay_dead(
    uow_factory: UnitOfWorkFactory, ids: Sequence[UUID] | None
) -> list[Communication]:
    """Queue the dead communications among `ids` (or all) again, each announced as queued;
    returns those replayed. One that is no longer dead (already replayed) is left alone, so
    replaying twice is replaying once."""
    now = _now()
    async with uow_factory() as uow:
        replayed = await uow.communications.dead(ids, lock=True)
        for communication in replayed:
            communication.replay(now)
            await uow.communications.save_replay(communication)
            await _announce(uow, communication)
    return replayed


async def set_opt_out(
    uow_factory: UnitOfWorkFactory, channel: Channel, recipient: str, *, opted_out: bool
) -> bool:
    """Record (or withdraw) an opt-out; False when there was nothing to change."""
    normalised = normalise_recipient(channel, recipient)
    async with uow_factory() as uow:
        if opted_out:
            return await uow.opt_outs.add(channel, normalised)
        return await uow.opt_outs.remove(channel, normalised)


async def list_communications(
    uow_factory: UnitOfWorkFactory,
    *,
    order_id: UUID | None,
    limit: int,
    after: tuple[datetime, UUID] | None,
) -> list[Communication]:
    async with uow_factory() as uow:
        return await uow.communications.page(order_id=order_id, limit=limit, after=after)
