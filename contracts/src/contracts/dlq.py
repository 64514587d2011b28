"""`<topic>.dlq`: a message a consumer could not take, kept whole with the reason."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from pydantic import AwareDatetime, Field, ValidationError
from pydantic_core import to_json

from contracts.base import Message, utc_now

# Kafka refuses records over its max size (1 MiB by default), and a dead letter must fit
# whatever the poison message held, though its JSON can be six times the original's size
# (a NUL byte becomes `\u0000`). So each part kept from the original, and the reason, which
# may echo it, is cut to a budget of JSON bytes; together they stay well under the limit.
MAX_KEPT_PAYLOAD_BYTES = 512 * 1024
MAX_KEPT_HEADERS_BYTES = 128 * 1024
MAX_KEPT_KEY_BYTES = 1024
MAX_REASON_BYTES = 4 * 1024


def _json_size(text: str) -> int:
    return len(to_json(text))


def _cut(text: str, budget: int) -> str:
    """The longest start of `text` whose JSON string takes at most `budget` bytes."""
    if _json_size(text) <= budget:
        return text
    shortest, longest = 0, min(len(text), budget)
    while shortest < longest:
        middle = (shortest + longest + 1) // 2
        if _json_size(text[:middle]) <= budget:
            shortest = middle
        else:
            longest = middle - 1
    return text[:shortest]


def _text(raw: bytes | None) -> str:
    return (raw or b"").decode("utf-8", errors="replace")


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
    # What was cut to fit Kafka's record size ("payload", "headers", "key"): such a letter no
    # longer holds the whole original message, so it cannot be replayed as it was.
    cut: list[str] = Field(default_factory=list)

    @property
    def record_key(self) -> bytes | None:
        """The key to publish this letter with: the kept key, which stays within the size
        limit however large the original was."""
        return self.key.encode() if self.key is not None else None

    @classmethod
    def of_record(
        cls,
        *,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        headers: Iterable[tuple[str, bytes | None]],
        reason: str,
        consumer_group: str,
    ) -> DeadLetter:
        cuts: list[str] = []
        cut: list[str] = []
        original = _text(value)
        payload = _cut(original, MAX_KEPT_PAYLOAD_BYTES)
        if payload != original:
            cuts.append(f"payload of {len(original)} characters cut to {len(payload)}")
            cut.append("payload")
        kept_headers: dict[str, str] = {}
        budget = MAX_KEPT_HEADERS_BYTES
        for name, raw in headers:
            header = _text(raw)
            size = _json_size(name) + _json_size(header) + 2  # `:` and `,`
            if size <= budget:
                kept_headers[name] = header
                budget -= size
            else:
                kept_headers.pop(name, None)  # a header kept is the record's last of its name
                if "headers" not in cut:
                    cuts.append("headers cut")
                    cut.append("headers")
        original_key = _text(key) if key else None
        kept_key = original_key and _cut(original_key, MAX_KEPT_KEY_BYTES)
        if kept_key != original_key:
            cuts.append("key cut")
            cut.append("key")
        # A dead letter always says why, even if its caller gave no words for it.
        reason = _cut(reason.strip() or "dead-lettered without a stated reason", MAX_REASON_BYTES)
        return cls(
            source_topic=topic,
            partition=partition,
            offset=offset,
            key=kept_key,
            payload=payload,
            headers=kept_headers,
            reason=f"{reason} ({'; '.join(cuts)})" if cuts else reason,
            consumer_group=consumer_group,
            cut=cut,
        )


def describe_invalid(error: ValidationError) -> str:
    """A dead letter's reason for a message that failed its contract: the first problems."""
    problems = "; ".join(
        f"{'.'.join(str(part) for part in e['loc']) or 'message'}: {_shortened(e['msg'])}"
        for e in error.errors()[:5]
    )
    return f"invalid message: {problems}"


def _shortened(problem: str) -> str:
    """A problem that echoes a long input (an unknown tag, say) cut in the middle: its start
    and its end, where pydantic names what it expected, are what a reader needs."""
    if len(problem) <= 400:
        return problem
    return f"{problem[:150]} … {problem[-200:]}"
