"""Open-loop load: status changes offered at a fixed rate whatever the answers, each timed
from the moment it was due (so a slow system shows as latency, not as a lower offered rate).

Each order walks the lifecycle once. The changes of a step go lifecycle-stage first (every
order confirmed, then every order preparing, ...), so one order's changes are a fifth of the
step apart; over HTTP a change still waits for the same order's previous one to be answered.
"""

from __future__ import annotations

import asyncio
import gc
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from uuid import UUID, uuid4

import aiohttp
from aiokafka import AIOKafkaProducer

from bench.payloads import CUSTOMER, LIFECYCLE, change_command, create_command, status_of
from contracts import ORDERS_COMMANDS
from devstack.metrics import Scrape

STAGES = len(LIFECYCLE)
# The order service's per-route latency histogram, and the route of a status change in it.
SERVICE_LATENCY = "order_http_request_duration_seconds"
STATUS_CHANGE_ROUTE = {"handler": "/orders/{order_id}/status", "method": "POST"}


@dataclass
class Call:
    order_id: str
    version: int
    due: float  # wall clock (time.time()) when the change was due
    latency: float | None = None  # seconds from due to answer; None for fire-and-forget
    status: int = 0  # HTTP status; 0 = no answer (connection error, refused by the generator)


@dataclass
class Offered:
    """What one step offered and how it was answered."""

    calls: list[Call] = field(default_factory=list)
    started: float = 0.0  # wall clock
    finished: float = 0.0  # wall clock: the last answer (or the last send)


def orders_needed(rate: float, seconds: float) -> int:
    return math.ceil(rate * seconds / STAGES)


def schedule(orders: list[str], count: int) -> list[tuple[str, int]]:
    """The first `count` changes of the lifecycle-stage-first walk over `orders`."""
    walk = [(order, stage + 2) for stage in range(STAGES) for order in orders]
    return walk[:count]


async def offer(
    changes: list[tuple[str, int]],
    rate: float,
    send: Callable[[Call], Awaitable[None]],
    max_in_flight: int,
) -> Offered:
    """Start `send` for change i at i/rate seconds; returns once every send has finished.

    The generator's garbage collector is off meanwhile: a full collection of its heap paused it
    for 70-100 ms, and every change due or answered in that pause counted the pause as the
    system's latency. It runs again once the step's answers are in."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        return await _offer(changes, rate, send, max_in_flight)
    finally:
        if collecting:
            gc.enable()


async def _offer(
    changes: list[tuple[str, int]],
    rate: float,
    send: Callable[[Call], Awaitable[None]],
    max_in_flight: int,
) -> Offered:
    offered = Offered(started=time.time())
    clock_start = time.perf_counter()
    in_flight: set[asyncio.Task[None]] = set()
    previous: dict[str, asyncio.Task[None]] = {}

    async def after_previous(call: Call, before: asyncio.Task[None] | None) -> None:
        if before is not None:
            await asyncio.shield(before)
        await send(call)

    for index, (order_id, version) in enumerate(changes):
        due = clock_start + index / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        call = Call(order_id, version, offered.started + index / rate)
        offered.calls.append(call)
        if len(in_flight) >= max_in_flight:
            continue  # the system is this far behind: counted as an error, not sent
        task = asyncio.create_task(after_previous(call, previous.get(order_id)))
        previous[order_id] = task
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
    if in_flight:
        await asyncio.gather(*in_flight, return_exceptions=True)
    offered.finished = time.time()
    return offered


class HttpChanges:
    """Status changes over the order service's HTTP API, as the admin UI makes them."""

    def __init__(self, base_url: str, token: str, connections: int = 256) -> None:
        self._base_url = base_url
        self._headers = {"Authorization": f"Bearer {token}"}
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> HttpChanges:
        self._session = aiohttp.ClientSession(
            self._base_url,
            headers=self._headers,
            connector=aiohttp.TCPConnector(limit=self._connections),
            timeout=aiohttp.ClientTimeout(total=30),
        )
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._session is not None:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "use `async with`"
        return self._session

    async def create_orders(self, count: int, concurrency: int = 16) -> list[str]:
        """`count` new orders, created by `concurrency` callers one after another."""
        created: list[str] = []
        body = {"customer": CUSTOMER.model_dump()}

        async def caller(share: int) -> None:
            for _ in range(share):
                async with self.session.post("/orders", json=body) as response:
                    response.raise_for_status()
                    created.append((await response.json())["id"])

        shares = [count // concurrency + (i < count % concurrency) for i in range(concurrency)]
        await asyncio.gather(*(caller(share) for share in shares))
        return created

    async def change(self, call: Call) -> None:
        try:
            async with self.session.post(
                f"/orders/{call.order_id}/status", json={"status": status_of(call.version)}
            ) as response:
                await response.read()
                call.status = response.status
        except (aiohttp.ClientError, TimeoutError):
            call.status = 0
        call.latency = time.time() - call.due

    async def step(
        self, orders: list[str], rate: float, seconds: float, max_in_flight: int
    ) -> Offered:
        changes = schedule(orders, round(rate * seconds))
        return await offer(changes, rate, self.change, max_in_flight)

    async def status_change_buckets(self) -> list[tuple[float, float]]:
        """The order service's own latency histogram of status changes, from its `/metrics`:
        cumulative (upper bound in seconds, count), ascending, ending with +Inf. The time
        from the request's arrival to its answer, without the client's or the network's."""
        async with self.session.get("/metrics") as response:
            response.raise_for_status()
            exposition = await response.text()
        return Scrape(exposition).buckets(SERVICE_LATENCY, **STATUS_CHANGE_ROUTE)


class CommandChanges:
    """Status changes as an upstream system sends them: `ChangeOrderStatus` on
    `orders.commands`, keyed by order id, through an idempotent acks=all producer."""

    def __init__(self, producer: AIOKafkaProducer) -> None:
        self._producer = producer
        self._acks: list[asyncio.Future[object]] = []

    async def _send(self, order_id: str, value: bytes) -> None:
        ack = await self._producer.send(
            ORDERS_COMMANDS,
            value,
            key=order_id.encode(),
            headers=[("content-type", b"application/json")],
        )
        self._acks.append(ack)

    async def _acknowledged(self) -> None:
        acks, self._acks = self._acks, []
        await asyncio.gather(*acks)

    async def create_orders(self, count: int) -> list[str]:
        orders = [str(uuid4()) for _ in range(count)]
        for order_id in orders:
            await self._send(order_id, create_command(UUID(order_id)))
        await self._acknowledged()
        return orders

    async def change(self, call: Call) -> None:
        await self._send(call.order_id, change_command(UUID(call.order_id), call.version))
        call.status = 202

    async def step(self, orders: list[str], rate: float, seconds: float) -> Offered:
        changes = schedule(orders, round(rate * seconds))
        # Sends only queue in the producer, so in-flight never builds up here.
        offered = await offer(changes, rate, self.change, max_in_flight=len(changes) + 1)
        await self._acknowledged()
        return offered
