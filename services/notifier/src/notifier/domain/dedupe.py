"""The dedupe key: what makes each customer communication happen exactly once.

    dedupe_key = sha256("notifier-dedupe-v1" ␟ event_id ␟ channel ␟ template ␟ recipient)

as 64 lowercase hex characters (␟ is the ASCII unit separator, which none of the parts can
contain). It is a pure function of the event's identity: the same event redelivered, seen by
another replica or after a restart gives the same key, and the unique constraint on it turns
the second insert into a no-op. Anything random or time-based in it (the old system put a
timestamp and a UUID there) would defeat exactly that. Two different events differ in
event_id, so they never share a key. The recipient is normalised first, so that
"Ann@Example.com " and "ann@example.com" are one recipient.
"""

from __future__ import annotations

import hashlib
import re
from uuid import UUID

from contracts import Channel

KEY_VERSION = "notifier-dedupe-v1"
SEPARATOR = "\x1f"
KEY_LENGTH = 64


def normalise_recipient(channel: Channel, recipient: str) -> str:
    if channel is Channel.EMAIL:
        return recipient.strip().lower()
    return re.sub(r"[\s().-]", "", recipient)


def dedupe_key(event_id: UUID, channel: Channel, template: str, recipient: str) -> str:
    parts = (
        KEY_VERSION,
        str(event_id),
        channel.value,
        template,
        normalise_recipient(channel, recipient),
    )
    return hashlib.sha256(SEPARATOR.join(parts).encode()).hexdigest()
