"""The dedupe key: what makes each customer communication happen exactly once.

    dedupe_key = sha256_hex(canonical)
    canonical  = JSON array ["notifier-dedupe-v1", event_id, channel, template, recipient]
                 (compact, ASCII-only with JSON escapes, event_id as lowercase hyphenated
                 UUID, recipient normalised as below)

The result is always 64 lowercase hex characters, whatever the inputs.

- Pure function of the event's identity: the same event redelivered, handled by another
  replica or after a restart gives the same key, and the unique constraint on
  `communication_events.dedupe_key` turns the second insert into a no-op. Nothing random or
  time-based may ever go in here; that would defeat exactly this.
- Two different events differ in `event_id`, and a JSON array of strings is an unambiguous
  encoding (no choice of parts can imitate another), so different identities give different
  canonical strings and, short of a SHA-256 collision, different keys.
- The recipient is normalised first so that one person is one recipient: an email address is
  trimmed and lower-cased ("Ann@Example.com " is "ann@example.com"); a phone number keeps
  only its digits and a leading "+".
- The version tag changes if the recipe ever does, so old and new keys can never collide.
"""

from __future__ import annotations

import hashlib
import json
import re
from uuid import UUID

from contracts import Channel

KEY_VERSION = "notifier-dedupe-v1"
KEY_LENGTH = 64

_NOT_PHONE_DIGIT = re.compile(r"[^0-9+]")


def normalise_recipient(channel: Channel, recipient: str) -> str:
    if channel is Channel.EMAIL:
        return recipient.strip().lower()
    return _NOT_PHONE_DIGIT.sub("", recipient)


def canonical_identity(event_id: UUID, channel: Channel, template: str, recipient: str) -> str:
    parts = [KEY_VERSION, str(event_id), channel.value, template]
    parts.append(normalise_recipient(channel, recipient))
    return json.dumps(parts, separators=(",", ":"))


def dedupe_key(event_id: UUID, channel: Channel, template: str, recipient: str) -> str:
    canonical = canonical_identity(event_id, channel, template, recipient)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()
