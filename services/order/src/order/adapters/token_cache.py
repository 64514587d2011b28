"""Tokens looked up, kept in memory so that a request need not read its token from the
database, and forgotten as soon as any token changes.

Every statement that changes api_tokens (a revocation by `order token revoke`, or by hand in
SQL) notifies the channel `TOKENS_CHANNEL` as it commits (a trigger, migration 0007). Each
process listens on a connection of its own and forgets every token it knows when a
notification arrives, so a revocation holds in every replica within milliseconds of its
commit: about the time a request that had read the token just before the commit still takes.

The memory is trusted only while that connection is known to work: a round trip checks it
every `check_interval`, and it is trusted for twice that after each check that succeeded.
A lost connection forgets everything and bypasses the memory until it listens again and
answers a check; a notification missed meanwhile cannot leave a revoked token valid. A lookup
that was reading from the database when a notification arrived keeps its answer to itself:
the answer may predate the revocation."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from order.adapters.listening import listen_forever
from order.adapters.repository import token_digest
from order.adapters.tables import TOKENS_CHANNEL
from order.domain.auth import StoredToken

ReadToken = Callable[[str], Awaitable[StoredToken | None]]


class KnownTokens:
    """Looks tokens up with `read`, keeping up to `capacity` of those found (0: none); tells
    `count` where each answer came from ("memory" or "database")."""

    def __init__(
        self,
        read: ReadToken,
        *,
        capacity: int,
        check_interval: float,
        count: Callable[[str], None] = lambda source: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._read = read
        self._capacity = capacity
        self._check_interval = check_interval
        self._count = count
        self._clock = clock
        self._known: dict[str, StoredToken] = {}  # by digest: no usable token in memory
        self._generation = 0  # moves on at each forgetting
        self._trusted_until = 0.0  # monotonic; 0 while not listening

    async def lookup(self, token: str) -> StoredToken | None:
        """The token as stored (None: unknown); unknown tokens are never kept, so guessing
        cannot fill the memory."""
        digest = token_digest(token)
        if self._trusted():
            known = self._known.get(digest)
            if known is not None:
                self._count("memory")
                return known
        generation = self._generation
        stored = await self._read(token)
        self._count("database")
        if stored is not None and generation == self._generation and self._trusted():
            self._keep(digest, stored)
        return stored

    def forget(self) -> None:
        self._known.clear()
        self._generation += 1

    async def keep_current(self, dsn: str) -> None:
        """Listen for changes to the tokens until cancelled (pointless without a capacity);
        a lost connection is opened again after a check interval."""
        await listen_forever(
            dsn,
            TOKENS_CHANNEL,
            self.forget,
            listening=self.forget,
            retry_interval=self._check_interval,
            check_interval=self._check_interval,
            checked=self.listener_checked,
            stopped=self.listener_lost,
            name="order-token-listener",
        )

    def listener_checked(self) -> None:
        """The listening connection answered a check: trust the memory for two intervals."""
        self._trusted_until = self._clock() + 2 * self._check_interval

    def listener_lost(self) -> None:
        self._trusted_until = 0.0
        self.forget()

    def _trusted(self) -> bool:
        return self._clock() < self._trusted_until

    def _keep(self, digest: str, stored: StoredToken) -> None:
        if self._known and len(self._known) >= self._capacity:
            del self._known[next(iter(self._known))]  # the oldest
        if len(self._known) < self._capacity:
            self._known[digest] = stored
