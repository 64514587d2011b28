"""`<topic>.dlq`: a message a consumer could not take, kept whole with the reason."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from pydantic import AwareDatetime, Field, ValidationError

from contracts.base import Message, utc_now

# Kafka refuses records over its max size (1 MiB by default); an oversized poison message
# must still fit in its dead letter, so its payload is cut to this many characters.
MAX_KEPT_PAYLOAD = 256 * 1024


class DeadLetter(Message):
    type: Literal["DeadLetter"] = "DeadLetter"
    source_topic: str
    partition: int
    offset: int
    key: str | None
    # The original bytes, decoded as UTF-8 with replacement so a non-text payload still fits.
    payload: str
    headers: dict[str, str]
    reason: str
    consumer_group: str
    dead_lettered_at: AwareDatetime = Field(default_factory=utc_now)

    @classmethod
    def of_record(
        cls,
        *,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        headers: Iterable[tuple[str, bytes]],
        reason: str,
        consumer_group: str,
    ) -> DeadLetter:
        payload = (value or b"").decode("utf-8", errors="replace")
        if len(payload) > MAX_KEPT_PAYLOAD:
            reason = f"{reason} (payload of {len(payload)} characters cut to {MAX_KEPT_PAYLOAD})"
            payload = payload[:MAX_KEPT_PAYLOAD]
        return cls(
            source_topic=topic,
            partition=partition,
            offset=offset,
            key=key.decode("utf-8", errors="replace") if key else None,
            payload=payload,
            headers={name: raw.decode("utf-8", errors="replace") for name, raw in headers},
            reason=reason,
            consumer_group=consumer_group,
        )


def describe_invalid(error: ValidationError) -> str:
    """A dead letter's reason for a message that failed its contract: the first problems."""
    problems = "; ".join(
        f"{'.'.join(str(part) for part in e['loc']) or 'message'}: {e['msg']}"
        for e in error.errors()[:5]
    )
    return f"invalid message: {problems}"
