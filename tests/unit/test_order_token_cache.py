"""The order service's memory of tokens (KnownTokens), with a read function standing for the
database and a clock of the test's own; the notifications themselves are in
tests/integration/test_order_auth.py."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from order.adapters.token_cache import KnownTokens
from order.domain.auth import Identity, Role, StoredToken

CHECK_INTERVAL = 2.0
ADMIN = StoredToken(Identity("ops", Role.ADMIN), revoked=False)


class Database:
    """Tokens by value, counting the reads; `during_read` runs inside each read."""

    def __init__(self, tokens: dict[str, StoredToken]) -> None:
        self.tokens = tokens
        self.reads = 0
        self.during_read: Callable[[], None] = lambda: None

    async def read(self, token: str) -> StoredToken | None:
        self.reads += 1
        self.during_read()
        await asyncio.sleep(0)
        return self.tokens.get(token)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def known_tokens(database: Database, clock: Clock, capacity: int = 10) -> KnownTokens:
    return KnownTokens(database.read, capacity=capacity, check_interval=CHECK_INTERVAL, clock=clock)


async def test_a_token_is_answered_from_memory_while_the_listener_is_checked() -> None:
    database, clock = Database({"t": ADMIN}), Clock()
    known = known_tokens(database, clock)
    known.listener_checked()

    answers = [await known.lookup("t") for _ in range(3)]

    assert answers == [ADMIN] * 3
    assert database.reads == 1


async def test_nothing_is_kept_before_the_listener_was_checked_or_once_its_check_is_old() -> None:
    database, clock = Database({"t": ADMIN}), Clock()
    known = known_tokens(database, clock)

    await known.lookup("t")
    await known.lookup("t")
    assert database.reads == 2  # not listening yet: every lookup reads

    known.listener_checked()
    await known.lookup("t")
    clock.now += 2 * CHECK_INTERVAL  # no check since: the memory is no longer trusted
    await known.lookup("t")
    assert database.reads == 4


async def test_a_notification_or_a_lost_listener_forgets_every_token() -> None:
    database, clock = Database({"t": ADMIN}), Clock()
    known = known_tokens(database, clock)
    known.listener_checked()
    await known.lookup("t")

    known.forget()  # a notification: some token changed
    await known.lookup("t")
    assert database.reads == 2

    known.listener_lost()
    await known.lookup("t")
    await known.lookup("t")
    assert database.reads == 4  # bypassed until the listener is checked again


async def test_an_answer_read_while_a_notification_arrived_is_not_kept() -> None:
    database, clock = Database({"t": ADMIN}), Clock()
    known = known_tokens(database, clock)
    known.listener_checked()
    database.during_read = known.forget  # the revocation commits while the token is read

    await known.lookup("t")
    database.during_read = lambda: None
    await known.lookup("t")

    assert database.reads == 2


async def test_unknown_tokens_are_never_kept_and_the_oldest_known_goes_first() -> None:
    tokens = {name: StoredToken(Identity(name, Role.VIEWER), revoked=False) for name in "abc"}
    database, clock = Database(tokens), Clock()
    known = known_tokens(database, clock, capacity=2)
    known.listener_checked()

    for token in ("guess", "guess", "a", "b", "c"):
        await known.lookup(token)
    reads = database.reads
    await known.lookup("b")
    await known.lookup("c")
    assert database.reads == reads  # the two newest are kept
    await known.lookup("a")
    assert database.reads == reads + 1  # the oldest made room
    assert reads == 5  # each guess was read


async def test_without_a_capacity_every_lookup_reads() -> None:
    database, clock = Database({"t": ADMIN}), Clock()
    known = known_tokens(database, clock, capacity=0)
    known.listener_checked()

    await known.lookup("t")
    await known.lookup("t")

    assert database.reads == 2
