"""What the benchmark watches while the system runs: when each change's event reaches
`orders.events`, when its email reaches the SMTP sink and its entry the audit trail, and what
each process costs in CPU and memory. Everything runs on one machine, so wall-clock times of
different processes are comparable."""

from __future__ import annotations

import asyncio
import contextlib
import email.parser
import json
import os
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import psutil
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from bench.payloads import version_of
from bench.stats import StatementCount, StatementKey
from contracts import ORDERS_COMMAND_RESULTS, ORDERS_EVENTS, OrderStatus

ChangeKey = tuple[str, int]  # (order id, version)


class EventWatch:
    """Reads `orders.events` and `orders.command-results` from their end onwards and notes
    when each order's creation and each status change (by order id and version) arrived."""

    def __init__(self, bootstrap: str) -> None:
        self._consumer = AIOKafkaConsumer(
            ORDERS_EVENTS,
            ORDERS_COMMAND_RESULTS,
            bootstrap_servers=bootstrap,
            group_id=None,
            auto_offset_reset="latest",
        )
        self._task: asyncio.Task[None] | None = None
        self.changes: dict[ChangeKey, float] = {}
        self.created: dict[str, float] = {}
        self.results: Counter[str] = Counter()
        self.rejections: Counter[str] = Counter()

    async def start(self) -> None:
        await self._consumer.start()
        # Fix the starting offsets now, so nothing sent from here on is skipped.
        for partition in self._consumer.assignment():
            await self._consumer.position(partition)
        self._task = asyncio.create_task(self._run(), name="event-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._consumer.stop()

    async def _run(self) -> None:
        while True:
            batches = await self._consumer.getmany(timeout_ms=200)
            arrived = time.time()
            for records in batches.values():
                for record in records:
                    self._note(record.topic, json.loads(record.value), arrived)

    def _note(self, topic: str, message: dict[str, Any], arrived: float) -> None:
        kind = message.get("type")
        if topic == ORDERS_COMMAND_RESULTS:
            self.results[str(kind)] += 1
            if kind == "CommandRejected":
                self.rejections[str(message.get("code"))] += 1
        elif kind == "OrderStatusChanged":
            self.changes.setdefault((message["order_id"], message["version"]), arrived)
        elif kind == "OrderCreated":
            self.created.setdefault(message["order_id"], arrived)


@dataclass
class Maildir:
    """The SMTP sink's maildir: when each email was accepted (the file's modification time)
    and its Message-ID."""

    path: Path
    seen: set[str] = field(default_factory=set)

    def count(self) -> int:
        with os.scandir(self.path) as entries:
            return sum(1 for entry in entries if entry.name.endswith(".eml"))

    def new_messages(self) -> dict[str, float]:
        """Message-ID → acceptance time of each email not returned before."""
        parser = email.parser.BytesHeaderParser()
        found = {}
        with os.scandir(self.path) as entries:
            for entry in entries:
                if not entry.name.endswith(".eml") or entry.name in self.seen:
                    continue
                self.seen.add(entry.name)
                with open(entry.path, "rb") as file:
                    headers = parser.parse(file)
                found[str(headers["Message-ID"]).strip("<>").split("@", 1)[0]] = (
                    entry.stat().st_mtime
                )
        return found


class Reads:
    """The benchmark's reads of the services' databases, over one small pool per database: the
    checks that poll while a step settles or drains (several a second) would otherwise each
    start a PostgreSQL backend, a process, whose CPU counted as the system's."""

    def __init__(self, dsns: Mapping[str, str], server_dsn: str) -> None:
        self._dsns = dict(dsns)  # database (service) name → DSN
        self._server_dsn = server_dsn  # the server's `postgres` database, for its statistics
        self._pools: dict[str, asyncpg.Pool] = {}
        self._server: asyncpg.Pool | None = None
        self.server_version_num = 0  # e.g. 150018, known once started

    @property
    def databases(self) -> list[str]:
        return list(self._dsns)

    async def start(self) -> None:
        for name, dsn in self._dsns.items():
            self._pools[name] = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
        self._server = await asyncpg.create_pool(self._server_dsn, min_size=1, max_size=1)
        # The three databases are on one server (the benchmark creates them there).
        self.server_version_num = await self.value(
            self.databases[0], "SELECT current_setting('server_version_num')::int"
        )

    async def close(self) -> None:
        pools, self._pools = list(self._pools.values()), {}
        if self._server is not None:
            pools.append(self._server)
            self._server = None
        for pool in pools:
            await pool.close()

    async def value(self, database: str, query: str, *args: object) -> int:
        """The one integer `query` returns (a count, a setting)."""
        value: int = await self._pools[database].fetchval(query, *args)
        return value

    async def rows(self, database: str, query: str, *args: object) -> list[asyncpg.Record]:
        rows: list[asyncpg.Record] = await self._pools[database].fetch(query, *args)
        return rows

    async def server_rows(self, query: str, *args: object) -> list[asyncpg.Record]:
        """Rows from the server's `postgres` database (its statistics views)."""
        assert self._server is not None, "Reads.start() first"
        rows: list[asyncpg.Record] = await self._server.fetch(query, *args)
        return rows


# Checkpoints started since the statistics were reset: pg_stat_bgwriter up to PostgreSQL 16,
# pg_stat_checkpointer from 17 on.
CHECKPOINTS_BEFORE_17 = "SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter"
CHECKPOINTS_FROM_17 = "SELECT num_timed + num_requested FROM pg_stat_checkpointer"
# Autovacuum and autoanalyze runs completed on the database's tables.
AUTOVACUUM_RUNS = (
    "SELECT coalesce(sum(autovacuum_count), 0)::bigint AS vacuums, "
    "coalesce(sum(autoanalyze_count), 0)::bigint AS analyzes FROM pg_stat_user_tables"
)


async def postgres_background(reads: Reads) -> dict[str, int]:
    """Counters of the work PostgreSQL does on its own, whatever the statements: checkpoints
    (of the whole server) and autovacuum and autoanalyze runs (of the services' tables). Taken
    before and after a step, they tell which steps shared the machine with that work: it
    writes and reads whole tables, and a latency outlier often coincides with it."""
    any_database = reads.databases[0]
    from_17 = reads.server_version_num >= 170000
    checkpoints = CHECKPOINTS_FROM_17 if from_17 else CHECKPOINTS_BEFORE_17
    counters = {"checkpoints": await reads.value(any_database, checkpoints)}
    counters["autovacuums"] = counters["autoanalyzes"] = 0
    for database in reads.databases:
        (runs,) = await reads.rows(database, AUTOVACUUM_RUNS)
        counters["autovacuums"] += runs["vacuums"]
        counters["autoanalyzes"] += runs["analyzes"]
    return counters


# The services' statements, by database and statement, from pg_stat_statements (which
# deploy/local/postgres.sh loads; its view is in the `postgres` database). The benchmark's
# own reads, made as the admin, are left out.
STATEMENT_COUNTERS = """
SELECT d.datname AS database, s.queryid, min(s.query) AS statement, sum(s.calls)::bigint AS calls,
       sum(s.total_exec_time) AS exec_ms, sum(s.wal_bytes)::bigint AS wal_bytes
FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid
WHERE d.datname = ANY($1::text[])
  AND s.userid <> (SELECT oid FROM pg_roles WHERE rolname = current_user)
GROUP BY d.datname, s.queryid
"""


async def statement_counters(
    reads: Reads, databases: Mapping[str, str]
) -> dict[StatementKey, StatementCount]:
    """The counters of every statement the services ran in their databases (`databases`:
    service → database name); none where the server does not keep them (an external one
    without pg_stat_statements)."""
    service_of = {database: service for service, database in databases.items()}
    try:
        rows = await reads.server_rows(STATEMENT_COUNTERS, list(service_of))
    except (asyncpg.UndefinedTableError, asyncpg.ObjectNotInPrerequisiteStateError):
        return {}
    return {
        (row["database"], row["queryid"]): StatementCount(
            service=service_of[row["database"]],
            statement=row["statement"],
            calls=row["calls"],
            exec_ms=row["exec_ms"],
            wal_bytes=row["wal_bytes"],
        )
        for row in rows
    }


async def email_times(
    reads: Reads, accepted: dict[str, float], orders: list[str]
) -> dict[ChangeKey, float]:
    """(order id, version) → when the SMTP sink accepted its email, from the dedupe keys the
    notifier derived the Message-IDs from."""
    rows = await reads.rows(
        "notifier",
        "SELECT dedupe_key, order_id::text AS order_id, template FROM communication_events "
        "WHERE channel = 'email' AND order_id = ANY($1::uuid[])",
        orders,
    )
    times = {}
    for row in rows:
        if row["dedupe_key"] in accepted:
            status = OrderStatus(row["template"].removeprefix("order_"))
            times[(row["order_id"], version_of(status))] = accepted[row["dedupe_key"]]
    return times


async def audit_times(reads: Reads, orders: list[str]) -> dict[ChangeKey, float]:
    """(order id, version) → when the audit service recorded the change."""
    rows = await reads.rows(
        "audit",
        "SELECT entity_id, (after->>'version')::int AS version, recorded_at FROM audit_log "
        "WHERE action = 'order.status_changed' AND entity_id = ANY($1::text[])",
        orders,
    )
    return {(r["entity_id"], r["version"]): r["recorded_at"].timestamp() for r in rows}


async def postmaster_pid(dsn: str) -> int | None:
    """The pid of the PostgreSQL server behind `dsn` when it runs on this machine (the parent of
    the backend serving a connection, looked up while that backend lives), else None: its CPU
    is then not this machine's."""
    connection = await asyncpg.connect(dsn)
    try:
        backend: int = await connection.fetchval("SELECT pg_backend_pid()")
        with contextlib.suppress(psutil.Error):
            postmaster = psutil.Process(backend).parent()
            if postmaster is not None and postmaster.name().startswith("postgres"):
                return postmaster.pid
        return None
    finally:
        await connection.close()


async def consumer_lag(bootstrap: str, groups: dict[str, tuple[str, ...]]) -> int:
    """Records on the given topics that the given consumer groups have not committed yet."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await admin.start()
    await consumer.start()
    try:
        lag = 0
        for group, topics in groups.items():
            committed = await admin.list_consumer_group_offsets(group)
            partitions = [
                TopicPartition(topic, partition)
                for topic in topics
                for partition in consumer.partitions_for_topic(topic) or ()
            ]
            for partition, end in (await consumer.end_offsets(partitions)).items():
                position = committed.get(partition)
                lag += end - max(position.offset if position else 0, 0)
        return lag
    finally:
        await consumer.stop()
        await admin.close()


@dataclass(frozen=True)
class Mark:
    """CPU times of each watched process (and the machine) at one moment."""

    at: float
    cpu: dict[str, float]
    machine_busy: float
    # CPU time the hypervisor gave to other guests while this one wanted to run: on a shared
    # virtual machine it swings from run to run, and every latency here carries it.
    machine_stolen: float


def _cpu_seconds(process: psutil.Process, *, with_children: bool) -> float:
    """CPU seconds `process` has spent; `with_children`: with those of its children, living
    (each a sum of its own) or exited (the kernel adds an exited child's to its parent's
    `children_*` once the parent has waited for it, as PostgreSQL's postmaster does)."""
    times = process.cpu_times()
    spent = times.user + times.system
    if not with_children:
        return spent
    spent += times.children_user + times.children_system
    for child in process.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            child_times = child.cpu_times()
            spent += child_times.user + child_times.system
    return spent


class ProcessMonitor:
    """Samples the RSS of each watched process twice a second, and measures CPU between two
    marks from the processes' CPU times (exact, whatever the sampling). A process watched with
    its children (PostgreSQL's postmaster: a backend per connection, autovacuum workers, the
    WAL writer) counts theirs too, those that exited meanwhile included; its RSS is not
    sampled, as its children's share memory."""

    def __init__(self, interval: float = 0.5) -> None:
        self._interval = interval
        self._processes: dict[str, psutil.Process] = {}
        self._with_children: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        self.samples: list[tuple[float, dict[str, float]]] = []

    def watch(self, name: str, pid: int, *, with_children: bool = False) -> None:
        self._processes[name] = psutil.Process(pid)
        if with_children:
            self._with_children.add(name)

    def forget(self, name: str) -> None:
        self._processes.pop(name, None)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="process-monitor")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            rss = {}
            for name, process in list(self._processes.items()):
                if name in self._with_children:
                    continue
                with contextlib.suppress(psutil.Error):
                    rss[name] = process.memory_info().rss / 2**20
            self.samples.append((time.monotonic(), rss))
            await asyncio.sleep(self._interval)

    def mark(self) -> Mark:
        cpu = {}
        for name, process in self._processes.items():
            with contextlib.suppress(psutil.Error):
                cpu[name] = _cpu_seconds(process, with_children=name in self._with_children)
        machine = psutil.cpu_times()
        busy = machine.user + machine.system + machine.nice + machine.irq + machine.softirq
        return Mark(time.monotonic(), cpu, busy, getattr(machine, "steal", 0.0))

    def between(self, start: Mark, end: Mark) -> dict[str, dict[str, float]]:
        """Per process: CPU in % of one core, and peak RSS (MB), from `start` to `end`; the
        machine's CPU in % of one core (so 200 is two busy cores), and the share of a core
        stolen by the hypervisor."""
        wall = max(end.at - start.at, 1e-9)
        spent = self.cpu_seconds(start, end)
        usage: dict[str, dict[str, float]] = {}
        for name, seconds in spent.items():
            peaks = [
                rss[name] for at, rss in self.samples if start.at <= at <= end.at and name in rss
            ]
            usage[name] = {
                "cpu_percent": round(100 * seconds / wall, 1),
                "rss_peak_mb": round(max(peaks), 1) if peaks else 0.0,
            }
        usage["machine"]["stolen_percent"] = round(
            100 * (end.machine_stolen - start.machine_stolen) / wall, 1
        )
        return usage

    @staticmethod
    def cpu_seconds(start: Mark, end: Mark) -> dict[str, float]:
        """CPU seconds each process (and the machine as a whole) spent from `start` to `end`."""
        spent = {name: cpu - start.cpu[name] for name, cpu in end.cpu.items() if name in start.cpu}
        spent["machine"] = end.machine_busy - start.machine_busy
        return spent

    def peak_rss(self) -> dict[str, float]:
        peaks: dict[str, float] = {}
        for _, rss in self.samples:
            for name, mb in rss.items():
                peaks[name] = max(peaks.get(name, 0.0), round(mb, 1))
        return peaks
