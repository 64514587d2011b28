"""Dead-letter queues: read `<topic>.dlq` and replay its dead letters to `<topic>`.

What has been replayed is kept in Kafka itself, in the consumer group `orderctl-dlq-replay`
on the DLQ's partitions: its committed offset of a partition says every dead letter below it
is done (replayed, or passed over by `--all` as not to be replayed), and the commit's metadata
lists the offsets above it that were replayed one by one (`--offset`). Offsets are the natural
identity of a dead letter, and the group needs no store of its own; `orderctl lag --group
orderctl-dlq-replay` then shows how many dead letters wait.

A replayed record carries the header `orderctl-replayed-from: <topic>:<partition>:<offset>`,
where the message was first consumed. When a consumer refuses it again, its new dead letter
keeps that header, so `--all` recognises it (and a twin from another consumer group of the same
record) as a message already replayed and passes it over: replaying a still-poisonous message
by routine would only bounce it back for ever. `--offset P:O` replays a dead letter that is not
done yet, bounced or not; with `--again`, even one that is.

A replay is published (idempotent producer, acks=all) before it is recorded; a crash between
the two makes the next run replay it a second time rather than never, which the consumers
absorb (commands apply once per `command_id`, events once per `event_id`). Run one replay at
a time per topic: two at once may both replay the same dead letter.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaProducer, TopicPartition
from pydantic import ValidationError

from contracts import DeadLetter, describe_invalid, dlq_topic
from orderctl import kafka

REPLAY_GROUP = "orderctl-dlq-replay"
REPLAYED_FROM = "orderctl-replayed-from"
# Kafka's default `offset.metadata.max.bytes`; a longer commit metadata is refused.
MAX_COMMIT_METADATA = 4096
READ_TIMEOUT_SECONDS = 30.0


class DeadLetterError(Exception):
    """A request orderctl cannot carry out (unknown topic, no such dead letter, …)."""


@dataclass(frozen=True, order=True)
class Position:
    """Where a dead letter is on its DLQ."""

    partition: int
    offset: int

    def __str__(self) -> str:
        return f"{self.partition}:{self.offset}"

    @classmethod
    def parse(cls, text: str) -> Position:
        partition, sep, offset = text.partition(":")
        if not (sep and partition.isdigit() and offset.isdigit()):
            raise ValueError(f"{text!r} is not PARTITION:OFFSET")
        return cls(int(partition), int(offset))


@dataclass(frozen=True)
class Republished:
    topic: str
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]


@dataclass(frozen=True)
class Entry:
    """One record of a DLQ: a dead letter, or (if something else was written there) why not."""

    position: Position
    letter: DeadLetter | None
    problem: str | None = None

    @property
    def origin(self) -> str | None:
        """Where its message was first consumed, across replays; None if no Kafka record."""
        letter = self.letter
        if letter is None or letter.partition < 0:
            return None
        first = f"{letter.source_topic}:{letter.partition}:{letter.offset}"
        return letter.headers.get(REPLAYED_FROM, first)

    @property
    def bounced(self) -> bool:
        """True when its message had been replayed before and was refused again."""
        return self.letter is not None and REPLAYED_FROM in self.letter.headers

    @property
    def unreplayable(self) -> str | None:
        """Why it cannot be replayed, or None when it can."""
        letter = self.letter
        if letter is None:
            return f"not a dead letter ({self.problem})"
        if letter.partition < 0:
            return (
                "made from no Kafka record (a dead communication? replay it with "
                "`orderctl communications dead replay`)"
            )
        if letter.cut:
            return f"its {', '.join(letter.cut)} was cut to fit the DLQ: the original is lost"
        return None

    def republished(self) -> Republished:
        """The original message, marked with where it was first consumed."""
        letter, origin = self.letter, self.origin
        if letter is None or origin is None or self.unreplayable is not None:
            raise ValueError(f"dead letter {self.position} cannot be replayed")
        headers = [(n, v.encode()) for n, v in letter.headers.items() if n != REPLAYED_FROM]
        return Republished(
            topic=letter.source_topic,
            key=letter.key.encode() if letter.key is not None else None,
            value=letter.payload.encode(),
            headers=[*headers, (REPLAYED_FROM, origin.encode())],
        )

    def as_dict(self) -> dict[str, Any]:
        """Its position on the DLQ (`partition`, `offset`), the dead letter's fields (the
        position of the record it was made of as `source_partition`, `source_offset`), and
        what orderctl makes of it."""
        letter = self.letter.model_dump(mode="json") if self.letter is not None else {}
        source = {"source_partition": letter.pop("partition", None)}
        source["source_offset"] = letter.pop("offset", None)
        return {
            "partition": self.position.partition,
            "offset": self.position.offset,
            **letter,
            **source,
            "problem": self.problem,
            "origin": self.origin,
            "bounced": self.bounced,
        }


@dataclass
class Progress:
    """Which dead letters of one DLQ partition are done: those below `below`, and `above`."""

    below: int = 0
    above: set[int] = field(default_factory=set)

    @classmethod
    def of_commit(cls, offset: int, metadata: str) -> Progress:
        if offset < 0:  # nothing committed yet
            return cls()
        try:
            above = {int(o) for o in json.loads(metadata)} if metadata else set()
        except (ValueError, TypeError):
            raise DeadLetterError(
                f"the group {REPLAY_GROUP} holds a commit orderctl did not write: {metadata!r}"
            ) from None
        return cls(offset, above)

    def done(self, offset: int) -> bool:
        return offset < self.below or offset in self.above

    def mark(self, offset: int) -> None:
        self.above.add(offset)
        while self.below in self.above:
            self.above.remove(self.below)
            self.below += 1

    def all_before(self, end: int) -> None:
        self.below = max(self.below, end)
        self.above = {offset for offset in self.above if offset >= self.below}

    def metadata(self) -> str:
        return json.dumps(sorted(self.above), separators=(",", ":")) if self.above else ""


@dataclass
class Queue:
    """A DLQ as read up to its end at one moment, with what was replayed from it."""

    topic: str
    entries: list[Entry]
    progress: dict[int, Progress]
    ends: dict[int, int]

    @property
    def dlq(self) -> str:
        return dlq_topic(self.topic)

    def done(self, entry: Entry) -> bool:
        return self.progress[entry.position.partition].done(entry.position.offset)


@dataclass
class Skipped:
    entry: Entry
    why: str


@dataclass
class Replay:
    replayed: list[Entry] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "replayed": [_brief(entry) for entry in self.replayed],
            "skipped": [{**_brief(s.entry), "why": s.why} for s in self.skipped],
        }


def _brief(entry: Entry) -> dict[str, Any]:
    return {
        "partition": entry.position.partition,
        "offset": entry.position.offset,
        "key": entry.letter.key if entry.letter else None,
        "origin": entry.origin,
    }


async def read(bootstrap_servers: str, topic: str) -> Queue:
    """`<topic>.dlq` from its beginning to its end as of now, with the replay progress."""
    if topic.endswith(".dlq"):
        raise DeadLetterError(f"name the original topic, not its DLQ: {topic.removesuffix('.dlq')}")
    dlq = dlq_topic(topic)
    async with kafka.admin_client(bootstrap_servers) as admin:
        partitions = await kafka.partitions_of(admin, dlq)
        committed = await admin.list_consumer_group_offsets(REPLAY_GROUP, partitions=partitions)
    async with kafka.consumer(bootstrap_servers) as consumer:
        ends = {tp.partition: int(o) for tp, o in (await consumer.end_offsets(partitions)).items()}
        entries = await _read_to(consumer, partitions, ends)
    progress = {
        tp.partition: Progress.of_commit(committed[tp].offset, committed[tp].metadata or "")
        if tp in committed
        else Progress()
        for tp in partitions
    }
    return Queue(topic, entries, progress, ends)


async def _read_to(
    consumer: Any, partitions: list[TopicPartition], ends: dict[int, int]
) -> list[Entry]:
    consumer.assign(partitions)
    await consumer.seek_to_beginning(*partitions)
    entries: list[Entry] = []
    deadline = time.monotonic() + READ_TIMEOUT_SECONDS
    pending = set(partitions)
    while pending:
        for tp in list(pending):
            if await consumer.position(tp) >= ends[tp.partition]:
                pending.discard(tp)
        if not pending:
            break
        if time.monotonic() > deadline:
            raise DeadLetterError(f"could not read {partitions[0].topic} to its end in time")
        for tp, records in (await consumer.getmany(*pending, timeout_ms=500)).items():
            end = ends[tp.partition]
            entries.extend(_entry(record) for record in records if record.offset < end)
    return sorted(entries, key=lambda entry: entry.position)


def _entry(record: Any) -> Entry:
    position = Position(record.partition, record.offset)
    try:
        return Entry(position, DeadLetter.model_validate_json(record.value or b""))
    except ValidationError as error:
        return Entry(position, None, describe_invalid(error))


def plan_all(queue: Queue) -> Replay:
    """Every dead letter not done yet, except those whose message was replayed already."""
    replayed_origins = {
        entry.origin: entry.position for entry in queue.entries if queue.done(entry)
    }
    plan = Replay()
    for entry in queue.entries:
        if queue.done(entry):
            continue
        why = entry.unreplayable
        if why is None and entry.origin in replayed_origins:
            earlier = replayed_origins[entry.origin]
            why = f"its message was replayed already (dead letter {earlier})"
        if why is not None:
            plan.skipped.append(Skipped(entry, why))
            continue
        plan.replayed.append(entry)
        replayed_origins[entry.origin] = entry.position
    for partition, end in queue.ends.items():
        queue.progress[partition].all_before(end)
    return plan


def plan_chosen(queue: Queue, chosen: list[Position], *, again: bool) -> Replay:
    """The named dead letters that are not done yet (with `again`: even those)."""
    by_position = {entry.position: entry for entry in queue.entries}
    missing = [str(p) for p in chosen if p not in by_position]
    if missing:
        raise DeadLetterError(f"no dead letter at {', '.join(missing)} in {queue.dlq}")
    plan = Replay()
    for position in sorted(set(chosen)):
        entry = by_position[position]
        why = entry.unreplayable
        if why is None and queue.done(entry) and not again:
            why = "replayed already (--again replays it once more)"
        if why is not None:
            plan.skipped.append(Skipped(entry, why))
            continue
        plan.replayed.append(entry)
        queue.progress[position.partition].mark(position.offset)
    return plan


async def replay(
    bootstrap_servers: str, topic: str, chosen: list[Position] | None, *, again: bool = False
) -> Replay:
    """Replay the chosen dead letters (None: all) to `topic`, then record them as done."""
    queue = await read(bootstrap_servers, topic)
    plan = plan_all(queue) if chosen is None else plan_chosen(queue, chosen, again=again)
    for partition, progress in queue.progress.items():
        if len(progress.metadata()) > MAX_COMMIT_METADATA:
            raise DeadLetterError(
                f"too many dead letters of {queue.dlq} partition {partition} replayed one by one "
                "to record; replay the earlier ones (or --all) first"
            )
    if plan.replayed:
        await _publish(bootstrap_servers, plan.replayed)
    await _record(bootstrap_servers, queue)
    return plan


async def _publish(bootstrap_servers: str, entries: list[Entry]) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap_servers, acks="all", enable_idempotence=True
    )
    await producer.start()
    try:
        for entry in entries:
            # No partition given: the key places it, as it did the first time.
            record = entry.republished()
            await producer.send_and_wait(
                record.topic, value=record.value, key=record.key, headers=record.headers
            )
    finally:
        await producer.stop()


async def _record(bootstrap_servers: str, queue: Queue) -> None:
    offsets = {
        TopicPartition(queue.dlq, partition): (progress.below, progress.metadata())
        for partition, progress in queue.progress.items()
    }
    async with kafka.consumer(bootstrap_servers, REPLAY_GROUP) as consumer:
        consumer.assign(list(offsets))
        await consumer.commit(offsets)
