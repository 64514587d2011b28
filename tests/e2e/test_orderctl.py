"""`orderctl` against the running system: every service a process, real Kafka, PostgreSQL and
SMTP. Each command runs as its own process, the way an operator runs it, configured only by
its environment; no output may ever show the bearer token it was given."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from contracts import ORDERS_COMMANDS, Actor, CreateOrder, Customer
from devstack import infra
from devstack.processes import free_port
from devstack.smtp_sink import read_messages
from devstack.stack import SERVICES, Stack
from devstack.waiting import wait_until

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "orderctl"
REPLAYED_FROM = "orderctl-replayed-from"


class GivesUpQuicklyStack(Stack):
    """The stack with a notifier that gives up on an address after two quick attempts, so a
    dead communication is made in seconds rather than the production minutes."""

    def env(self, service: str) -> dict[str, str]:
        env = super().env(service)
        if service == "notifier":
            env |= {
                "NOTIFIER_MAX_ATTEMPTS": "2",
                "NOTIFIER_BACKOFF_BASE_SECONDS": "0.2",
                "NOTIFIER_BACKOFF_MAX_SECONDS": "0.5",
                "NOTIFIER_DISPATCH_POLL_INTERVAL_SECONDS": "0.2",
                "NOTIFIER_OUTBOX_POLL_INTERVAL_SECONDS": "0.2",
            }
        return env


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, e2e_databases: infra.TestDatabases) -> Iterator[Stack]:
    ports = {name: free_port() for name in (*SERVICES, "smtp")}
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    system = GivesUpQuicklyStack(kafka_bootstrap, e2e_databases.services, ports, ARTIFACTS)
    try:
        system.start()
        yield system
    except BaseException:
        print(system.logs())
        raise
    finally:
        system.stop()


@dataclass(frozen=True)
class Ran:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        assert self.code == 0, f"exit {self.code}: {self.err}"
        return json.loads(self.out)


@dataclass(frozen=True)
class Orderctl:
    """Runs orderctl with the environment an operator of the stack would set."""

    stack: Stack
    argv: tuple[str, ...] = (sys.executable, "-m", "orderctl")

    def env(self, token: str | None) -> dict[str, str]:
        env = {**os.environ, "ORDERCTL_ORDER_URL": self.stack.url("order")}
        for service in SERVICES:
            env |= self.stack.env(service)
        env.pop("ORDERCTL_TOKEN", None)
        if token is not None:
            env["ORDERCTL_TOKEN"] = token
        return env

    async def __call__(self, *args: str, token: str | None = None) -> Ran:
        process = await asyncio.create_subprocess_exec(
            *self.argv,
            *args,
            env=self.env(token or self.stack.admin_token),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), timeout=120)
        assert process.returncode is not None
        ran = Ran(process.returncode, out.decode(), err.decode())
        for secret in (s for s in (self.stack.admin_token, token) if s is not None):
            assert secret not in ran.out + ran.err, f"orderctl {args} showed its token"
        return ran


@pytest.fixture
def orderctl(stack: Stack) -> Orderctl:
    return Orderctl(stack)


async def create_order(order_api: httpx.AsyncClient, email: str | None = None) -> UUID:
    customer = {"name": "Ops Test", "email": email or f"ops+{uuid4().hex[:12]}@example.com"}
    created = await order_api.post("/orders", json={"customer": customer})
    assert created.status_code == 201, created.text
    return UUID(created.json()["id"])


async def records_with_key(kafka_bootstrap: str, topic: str, key: str) -> list[Any]:
    """Every record of `topic` with `key`, from the beginning to the current end."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=kafka_bootstrap, group_id=None, enable_auto_commit=False
    )
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(infra.TOPIC_PARTITIONS)]
        ends = await consumer.end_offsets(partitions)
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        found = []
        while [tp for tp in partitions if await consumer.position(tp) < ends[tp]]:
            for tp, records in (await consumer.getmany(timeout_ms=500)).items():
                found += [r for r in records if r.key == key.encode() and r.offset < ends[tp]]
        return found
    finally:
        await consumer.stop()


@pytest.fixture
async def producer(kafka_bootstrap: str) -> AsyncIterator[AIOKafkaProducer]:
    client = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await client.start()
    yield client
    await client.stop()


# --- orders -------------------------------------------------------------------------------


async def test_order_status_changes_through_the_api_and_errors_say_why(
    orderctl: Orderctl, order_api: httpx.AsyncClient
) -> None:
    order_id = await create_order(order_api)

    changed = await orderctl(
        "order", "status", str(order_id), "confirmed", "--reason", "paid", "--json"
    )
    assert (changed.json()["status"], changed.json()["version"]) == ("confirmed", 2)
    seen = (await order_api.get(f"/orders/{order_id}")).json()
    assert (seen["status"], seen["version"]) == ("confirmed", 2)
    history = (await order_api.get(f"/orders/{order_id}/history")).json()["items"]
    assert (history[-1]["to"], history[-1]["reason"]) == ("confirmed", "paid")

    shown = await orderctl("order", "show", str(order_id))
    assert shown.code == 0, shown.err
    assert str(order_id) in shown.out
    assert "confirmed" in shown.out
    assert "preparing, cancelled" in shown.out  # the allowed next statuses

    skipping = await orderctl("order", "status", str(order_id), "delivered")
    assert skipping.code == 1
    assert "409" in skipping.err
    assert "allowed_next: preparing, cancelled" in skipping.err

    stale = await orderctl("order", "status", str(order_id), "preparing", "--if-match", "1")
    assert stale.code == 1
    assert "412" in stale.err

    unknown = await orderctl("order", "status", str(order_id), "shipped")
    assert unknown.code == 1
    assert "'shipped' is not an order status" in unknown.err

    missing = await orderctl("order", "show", str(uuid4()))
    assert (missing.code, "404" in missing.err) == (1, True)

    still = (await order_api.get(f"/orders/{order_id}")).json()
    assert (still["status"], still["version"]) == ("confirmed", 2)


# --- dead letters ----------------------------------------------------------------------------


def at(item: dict[str, Any]) -> str:
    """A dead letter's PARTITION:OFFSET on its DLQ."""
    return f"{item['partition']}:{item['offset']}"


async def dlq_entries(orderctl: Orderctl, topic: str, key: str) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = (await orderctl("dlq", "list", topic, "--json")).json()
    return [entry for entry in entries if entry["key"] == key]


async def test_poison_commands_are_listed_and_each_replayed_once(
    orderctl: Orderctl, producer: AIOKafkaProducer, kafka_bootstrap: str
) -> None:
    # Two poison commands under one key, so their dead letters share a DLQ partition.
    key = f"poison-{uuid4()}"
    poison_a = b'{"type": "CreateOrder", "this is": "not a command"'
    poison_b = b"not even JSON"
    for poison in (poison_a, poison_b):
        await producer.send_and_wait(
            ORDERS_COMMANDS, poison, key=key.encode(), headers=[("h", b"v")]
        )

    async def copies() -> list[bytes]:
        return [r.value for r in await records_with_key(kafka_bootstrap, ORDERS_COMMANDS, key)]

    async def dead_letters(count: int, what: str) -> list[dict[str, Any]]:
        return await wait_until(
            lambda: dlq_entries(orderctl, ORDERS_COMMANDS, key),
            lambda entries: len(entries) == count,
            within=60,
            what=what,
            interval=0.5,
        )

    letter_a, letter_b = await dead_letters(2, "the poison commands' dead letters")
    for letter, poison in ((letter_a, poison_a), (letter_b, poison_b)):
        assert letter["consumer_group"] == "order-commands"
        assert letter["reason"].startswith("invalid message")
        assert (letter["payload"], letter["headers"]["h"]) == (poison.decode(), "v")
        assert (letter["done"], letter["bounced"]) == (False, False)
    listed = await orderctl("dlq", "list", ORDERS_COMMANDS)
    assert key in listed.out
    assert "order-commands" in listed.out

    # The second one alone: replayed out of order, so recorded in the commit's metadata.
    only_b = await orderctl("dlq", "replay", ORDERS_COMMANDS, "--offset", at(letter_b), "--json")
    assert [at(r) for r in only_b.json()["replayed"]] == [at(letter_b)]
    assert await copies() == [poison_a, poison_b, poison_b]
    replayed_b = (await records_with_key(kafka_bootstrap, ORDERS_COMMANDS, key))[2]
    assert dict(replayed_b.headers)["h"] == b"v"
    assert dict(replayed_b.headers)[REPLAYED_FROM] == letter_b["origin"].encode()
    assert letter_b["origin"] == f"{ORDERS_COMMANDS}:{letter_b['source_partition']}:" + str(
        letter_b["source_offset"]
    )

    # Still poison: the order service dead-letters the copy, recognised as a bounce.
    *_, bounce_b = await dead_letters(3, "the replayed copy's dead letter")
    assert (bounce_b["bounced"], bounce_b["origin"]) == (True, letter_b["origin"])

    # --all replays the first one only: the second is done, its bounce was replayed already.
    everything = (await orderctl("dlq", "replay", ORDERS_COMMANDS, "--all", "--json")).json()
    assert at(letter_a) in {at(r) for r in everything["replayed"]}
    assert at(letter_b) not in {at(r) for r in everything["replayed"]}
    assert at(bounce_b) in {at(s) for s in everything["skipped"]}
    assert await copies() == [poison_a, poison_b, poison_b, poison_a]

    entries = await dead_letters(4, "the dead letter of the first one's copy")
    again = (await orderctl("dlq", "replay", ORDERS_COMMANDS, "--all", "--json")).json()
    assert again["replayed"] == []
    assert at(entries[-1]) in {at(s) for s in again["skipped"]}
    named = await orderctl("dlq", "replay", ORDERS_COMMANDS, "--offset", at(letter_a))
    assert named.code == 0, named.err
    assert "0 replayed, 1 skipped" in named.out
    assert len(await copies()) == 4
    assert all(e["done"] for e in await dlq_entries(orderctl, ORDERS_COMMANDS, key))

    # On purpose, once more: --again.
    forced = await orderctl(
        "dlq", "replay", ORDERS_COMMANDS, "--offset", at(bounce_b), "--again", "--json"
    )
    assert [at(r) for r in forced.json()["replayed"]] == [at(bounce_b)]
    assert len(await copies()) == 5

    nowhere = await orderctl("dlq", "replay", ORDERS_COMMANDS, "--offset", "0:999999")
    assert (nowhere.code, "no dead letter at 0:999999" in nowhere.err) == (1, True)
    no_topic = await orderctl("dlq", "list", "no.such.topic")
    assert (no_topic.code, "no topic 'no.such.topic.dlq'" in no_topic.err) == (1, True)


# --- communications ----------------------------------------------------------------------------


async def dead_communications(orderctl: Orderctl, order_id: UUID) -> list[dict[str, Any]]:
    dead: list[dict[str, Any]] = (await orderctl("communications", "dead", "list", "--json")).json()
    return [c for c in dead if c["order_id"] == str(order_id)]


async def test_a_dead_communication_is_listed_and_replayed_once(
    orderctl: Orderctl, stack: Stack, order_api: httpx.AsyncClient
) -> None:
    recipient = f"dead+{uuid4().hex[:12]}@example.com"
    order_id = await create_order(order_api, recipient)
    stack.processes["smtp-sink"].stop()  # every attempt fails: the communication gives up
    try:
        changed = await order_api.post(f"/orders/{order_id}/status", json={"status": "confirmed"})
        assert changed.status_code == 200, changed.text
        (dead,) = await wait_until(
            lambda: dead_communications(orderctl, order_id),
            lambda dead: len(dead) == 1,
            within=60,
            what="the communication to give up",
            interval=0.5,
        )
    finally:
        stack.start_smtp_sink()
    assert (dead["recipient"], dead["status"], dead["attempts"]) == (recipient, "dead", 2)
    listed = await orderctl("communications", "dead", "list")
    assert dead["id"] in listed.out

    # Its dead letter is no Kafka record: `dlq replay` leaves it to `communications dead replay`.
    (letter,) = await wait_until(
        lambda: dlq_entries(orderctl, "notifications.events", str(order_id)),
        lambda entries: len(entries) == 1,
        within=30,
        what="the dead communication's dead letter",
        interval=0.5,
    )
    position = at(letter)
    refused = await orderctl("dlq", "replay", "notifications.events", "--offset", position)
    assert "communications dead replay" in refused.out
    assert "0 replayed, 1 skipped" in refused.out

    replayed = await orderctl("communications", "dead", "replay", "--id", dead["id"], "--json")
    assert [c["id"] for c in replayed.json()] == [dead["id"]]

    async def mail() -> list[Any]:
        return [m for m in read_messages(stack.maildir) if m["To"] == recipient]

    await wait_until(mail, lambda sent: len(sent) == 1, within=60, what="the replayed email")
    again = await orderctl("communications", "dead", "replay", "--id", dead["id"])
    assert again.out.splitlines()[-1] == "0 replayed"
    everything = (await orderctl("communications", "dead", "replay", "--all", "--json")).json()
    assert dead["id"] not in {c["id"] for c in everything}
    assert await dead_communications(orderctl, order_id) == []
    assert len(await mail()) == 1


# --- audit, tokens, lag ----------------------------------------------------------------------


async def test_audit_verify_walks_the_chain(
    orderctl: Orderctl, order_api: httpx.AsyncClient
) -> None:
    await create_order(order_api)  # at least its creation is audited
    report = await wait_until(
        lambda: orderctl("audit", "verify", "--json"),
        lambda ran: ran.code == 0 and ran.json()["checked"] >= 1,
        within=60,
        what="a verified audit entry",
        interval=0.5,
    )
    assert report.json()["ok"] is True
    shown = await orderctl("audit", "verify")
    assert shown.code == 0, shown.err
    assert shown.out.startswith("audit chain ok:")


async def test_a_created_token_works_until_revoked(
    orderctl: Orderctl, stack: Stack, order_api: httpx.AsyncClient
) -> None:
    order_id = await create_order(order_api)
    name = f"ops-{uuid4().hex[:8]}"
    created = await orderctl("token", "create", "--name", name, "--role", "admin")
    assert created.code == 0, created.err
    token = created.out.strip()
    changed = await orderctl("order", "status", str(order_id), "confirmed", token=token)
    assert changed.code == 0, changed.err
    history = (await order_api.get(f"/orders/{order_id}/history")).json()["items"]
    assert history[-1]["actor"] == name  # the change was made as the new token's holder

    viewer = (await orderctl("token", "create", "--name", f"{name}-v", "--json")).json()
    assert viewer["role"] == "viewer"
    read = await orderctl("order", "show", str(order_id), token=viewer["token"])
    assert read.code == 0, read.err
    refused = await orderctl("order", "status", str(order_id), "preparing", token=viewer["token"])
    assert (refused.code, "403" in refused.err) == (1, True)

    revoked = await orderctl("token", "revoke", "--name", name)
    assert revoked.code == 0, revoked.err
    assert "revoked 1 token(s)" in revoked.out
    headers = {"Authorization": f"Bearer {token}"}
    answer = await order_api.get(f"/orders/{order_id}", headers=headers)
    assert answer.status_code == 401
    after = await orderctl("order", "show", str(order_id), token=token)
    assert (after.code, "401" in after.err) == (1, True)
    twice = await orderctl("token", "revoke", "--name", name)
    assert (twice.code, f"no active token named '{name}'" in twice.err) == (1, True)


async def test_lag_shows_each_service_group_catching_up(
    orderctl: Orderctl, producer: AIOKafkaProducer, order_api: httpx.AsyncClient
) -> None:
    # Work for every group: a command for the order service, events for notifier and audit.
    command = CreateOrder(
        command_id=uuid4(), customer=Customer(name="Lag"), actor=Actor(id="upstream")
    )
    await producer.send_and_wait(
        ORDERS_COMMANDS, command.model_dump_json().encode(), key=str(command.order_id).encode()
    )
    await wait_until(
        lambda: order_api.get(f"/orders/{command.order_id}"),
        lambda response: response.status_code == 200,
        within=60,
        what="the command's order",
    )

    def caught_up(ran: Ran) -> bool:
        groups = {g["group"]: g for g in ran.json()["groups"]}
        return set(groups) == {"order-commands", "notifier", "audit"} and all(
            g["lag"] == 0 for g in groups.values()
        )

    lags = await wait_until(
        lambda: orderctl("lag", "--json"), caught_up, within=90, what="no lag", interval=0.5
    )
    for group in lags.json()["groups"]:
        assert group["partitions"], group
        for p in group["partitions"]:
            assert p["committed"] is None or p["committed"] + p["lag"] == p["end"], p
        assert sum(p["end"] for p in group["partitions"]) > 0, group
    assert lags.json()["lag"] == 0

    console_script = Orderctl(orderctl.stack, (str(Path(sys.executable).with_name("orderctl")),))
    shown = await console_script("lag", "--group", "order-commands")
    assert shown.code == 0, shown.err
    assert "orders.commands" in shown.out
    assert "total" in shown.out
    assert "notifier" not in shown.out
    nobody = (await orderctl("lag", "--group", f"nobody-{uuid4().hex[:6]}", "--json")).json()
    assert nobody["groups"][0]["lag"] is None


@pytest.mark.parametrize(
    ("command", "exit_code", "message"),
    [
        (("orderctl", "communications", "dead", "list"), 1, "error: database: "),
        (("orderctl", "communications", "dead", "replay", "--all"), 1, "error: database: "),
        (("orderctl", "token", "revoke", "--name", "nobody"), 1, "error: database: "),
        # Not 1, which says the chain is broken: nothing was checked.
        (("orderctl", "audit", "verify"), 2, "error: database: "),
        (("notifier", "dead", "list"), 1, "notifier: database: "),
        (
            ("notifier", "opt-out", "add", "--channel", "email", "--recipient", "x@y.z"),
            1,
            "notifier: database: ",
        ),
        (("order", "token", "create", "--name", "nobody"), 1, "order: database: "),
        (("audit", "verify"), 2, "audit: database: "),
    ],
)
async def test_a_database_command_with_its_database_unreachable_says_so_without_a_traceback(
    command: tuple[str, ...], exit_code: int, message: str
) -> None:
    """orderctl's and the services' own commands (`python -m <service> ...`)."""
    nowhere = free_port()
    env = {**os.environ, "ORDER_DATABASE_WAIT_SECONDS": "0"}
    for service, database in infra.SERVICE_DATABASES.items():
        role = infra.SERVICE_ROLES[service].runtime
        env[f"{service.upper()}_DATABASE_URL"] = (
            f"postgresql+asyncpg://{role}:{role}_dev@127.0.0.1:{nowhere}/{database}"
        )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        *command,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode == exit_code, err.decode()
    assert err.decode().startswith(message), err.decode()
    assert "Traceback" not in err.decode()
