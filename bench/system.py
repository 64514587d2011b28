"""The system under load: the three services as processes (devstack's Stack, with its real
SMTP and SMS sinks), driven by stepped open-loop load over HTTP or `orders.commands`, and
bursts of events straight into `orders.events` that show what the consumers can take."""

from __future__ import annotations

import asyncio
import logging
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import uuid4

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from bench.limits import produce_batched, services_producer
from bench.load import Call, CommandChanges, HttpChanges, Offered, orders_needed
from bench.observe import (
    ChangeKey,
    EventWatch,
    Maildir,
    Mark,
    ProcessMonitor,
    Reads,
    audit_times,
    consumer_lag,
    email_times,
    postgres_background,
    statement_counters,
)
from bench.payloads import status_changed
from bench.stats import (
    BreakingPoint,
    Latency,
    StatementCount,
    StatementKey,
    Step,
    broke_at,
    buckets_between,
    cpu_cost,
    hotspots,
    next_probe,
    statement_work,
    sustained_rate,
    sustained_step,
)
from contracts import (
    NOTIFICATIONS_EVENTS,
    ORDERS_COMMAND_RESULTS,
    ORDERS_COMMANDS,
    ORDERS_EVENTS,
    Customer,
)
from devstack.infra import TestDatabases
from devstack.processes import free_port, service_process
from devstack.stack import Stack
from devstack.waiting import wait_until

log = logging.getLogger("bench")


@dataclass(frozen=True)
class DatabaseMark:
    """PostgreSQL's counters at one moment: its own work and the services' statements."""

    background: dict[str, int]
    statements: dict[StatementKey, StatementCount]


AUDIT_ENTRIES = "SELECT count(*) FROM audit_log"
COMMUNICATIONS = "SELECT count(*) FROM communication_events"
AUDITED_CHANGES_OF = (
    "SELECT count(*) FROM audit_log WHERE action = 'order.status_changed' "
    "AND entity_id = ANY($1::text[])"
)
EMAILS_SENT_FOR = (
    "SELECT count(*) FROM communication_events WHERE channel = 'email' AND status = 'sent' "
    "AND order_id = ANY($1::uuid[])"
)
UNSENT = "SELECT count(*) FROM communication_events WHERE status IN ('queued', 'sending')"
UNPUBLISHED = "SELECT count(*) FROM outbox WHERE published_at IS NULL"
# Every consumer group of the system and what it reads.
CONSUMED = {
    "order-commands": (ORDERS_COMMANDS,),
    "notifier": (ORDERS_EVENTS,),
    "audit": (ORDERS_EVENTS, ORDERS_COMMAND_RESULTS, NOTIFICATIONS_EVENTS),
}


@dataclass(frozen=True)
class Plan:
    """How long and how hard each part of the run pushes."""

    quick: bool
    step_seconds: float
    # The steps at half the sustained rate, whose tail latencies are judged against targets:
    # longer than a ladder step, so one stall does not decide a p99, and repeated, as this
    # shared machine's spare CPU varies from minute to minute (the same code has shown an HTTP
    # p99 of 21 ms and of 149 ms in two 30 s steps); the targets are judged on the median.
    half_rate_seconds: float
    half_rate_repeats: int
    rates: list[float]
    drain_timeout: float
    settle_timeout: float
    max_in_flight: int
    limit_a_concurrencies: list[int]
    limit_a_seconds: float
    limit_b_events: int
    limit_b_one_by_one: int
    burst_events: int
    # Once a step breaks, rates between it and the last that held are tried until the two
    # are within this ratio of each other.
    resolution: float
    replica_steps: int  # ladder steps re-run with two consumer replicas, up to the break
    # An unrecorded HTTP step at the first rung before anything is measured: consumer groups
    # settle and the broker's JIT warms up in it instead of in the first rung.
    warm_up_seconds: float
    # The system unloaded: this long with nothing offered, then a step at this low rate,
    # whose latencies are what the code takes with no queue to wait in.
    idle_seconds: float
    unloaded_rate: float
    unloaded_seconds: float
    profile: bool
    profile_seconds: float
    breaking: BreakingPoint


class System:
    """The running stack plus everything that watches it."""

    def __init__(
        self, stack: Stack, databases: TestDatabases, plan: Plan, profile_dir: Path
    ) -> None:
        self.stack = stack
        self.databases = databases
        self.plan = plan
        self.profile_dir = profile_dir
        self.watch = EventWatch(stack.kafka_bootstrap_servers)
        self.monitor = ProcessMonitor()
        self.reads = Reads(
            {name: databases.dsn(name) for name in ("order", "notifier", "audit")},
            server_dsn=f"{databases.admin_url}/postgres",
        )
        self.maildir = Maildir(stack.maildir)
        self.producer = services_producer(stack.kafka_bootstrap_servers, "bench-upstream")

    async def start(self) -> None:
        await self.reads.start()
        for name, process in self.stack.processes.items():
            assert process.popen is not None
            self.monitor.watch(name, process.popen.pid)
        await self.monitor.start()
        await self.watch.start()
        await self.producer.start()

    async def stop(self) -> None:
        await self.producer.stop()
        await self.watch.stop()
        await self.monitor.stop()
        await self.reads.close()

    # --- consequences ------------------------------------------------------------------

    async def _caught_up(self, changes: set[ChangeKey]) -> bool:
        """Every change has its event, its email sent and its audit entry."""
        if not changes.issubset(self.watch.changes.keys()):
            return False
        orders = sorted({order for order, _ in changes})
        sent = await self.reads.value("notifier", EMAILS_SENT_FOR, orders)
        if sent < len(changes):
            return False
        audited = await self.reads.value("audit", AUDITED_CHANGES_OF, orders)
        return audited >= len(changes)

    async def drain(self, changes: set[ChangeKey]) -> tuple[bool, float]:
        """Wait until every change has its consequences; (drained, seconds)."""
        started = time.monotonic()
        try:
            await wait_until(
                lambda: self._caught_up(changes),
                bool,
                within=self.plan.drain_timeout,
                what="events, emails and audit entries",
                interval=0.2,
            )
        except TimeoutError:
            return False, time.monotonic() - started
        return True, time.monotonic() - started

    async def backlog(self) -> int:
        """Work the system still has in hand: unconsumed records, unpublished outbox rows,
        unsent communications."""
        lag = await consumer_lag(self.stack.kafka_bootstrap_servers, CONSUMED)
        unpublished = await self.reads.value("order", UNPUBLISHED)
        unpublished += await self.reads.value("notifier", UNPUBLISHED)
        return lag + unpublished + await self.reads.value("notifier", UNSENT)

    async def settle(self) -> None:
        """Before a measurement: let any backlog clear (or go on after the settle timeout,
        noting it)."""
        try:
            await wait_until(
                self.backlog,
                lambda left: left == 0,
                within=self.plan.settle_timeout,
                what="the backlog to clear",
                interval=0.5,
            )
        except TimeoutError as error:
            log.warning("%s", error)
        self.maildir.new_messages()  # the stragglers belong to no step

    async def _latencies(self, calls: list[Call]) -> dict[str, Latency | None]:
        orders = sorted({c.order_id for c in calls})
        emails = await email_times(self.reads, self.maildir.new_messages(), orders)
        audited = await audit_times(self.reads, orders)

        def after(times: dict[ChangeKey, float]) -> Latency | None:
            return Latency.of_timed(
                (c.due, times[(c.order_id, c.version)] - c.due)
                for c in calls
                if (c.order_id, c.version) in times
            )

        return {
            "event": after(self.watch.changes),
            "email": after(emails),
            "audit": after(audited),
        }

    def _step(
        self, phase: str, rate: float, offered: Offered, ok: list[Call], finished: float
    ) -> Step:
        return Step(
            phase=phase,
            offered_rate=rate,
            seconds=round(finished - offered.started, 2),
            sent=len(offered.calls),
            ok=len(ok),
            errors=len(offered.calls) - len(ok),
            achieved_rate=round(len(ok) / max(finished - offered.started, 1e-9), 1),
        )

    async def idle(self, seconds: float) -> dict[str, dict[str, float]]:
        """Each process's CPU while nothing is offered: what polling, heartbeats and metrics
        cost whatever the load, and a share of every core the loaded steps do not get."""
        await self.settle()
        before = self.monitor.mark()
        await asyncio.sleep(seconds)  # the measurement itself: nothing offered for this long
        return self.monitor.between(before, self.monitor.mark())

    # --- load steps --------------------------------------------------------------------

    async def http_step(self, phase: str, rate: float, seconds: float) -> Step:
        async with HttpChanges(self.stack.url("order"), self.stack.admin_token) as http:
            orders = await http.create_orders(orders_needed(rate, seconds))
            await self.settle()  # the creations' own events and audit entries first
            database_before = await self._database_mark()
            in_service_before = await http.status_change_buckets()
            before = self.monitor.mark()
            offered = await http.step(orders, rate, seconds, self.plan.max_in_flight)
            loaded = self.monitor.mark()
            in_service = buckets_between(in_service_before, await http.status_change_buckets())
        ok = [c for c in offered.calls if c.status == 200]
        drained, drain_seconds = await self.drain({(c.order_id, c.version) for c in ok})
        database_work = await self._database_work_since(database_before, len(ok))
        step = self._step(phase, rate, offered, ok, offered.finished)
        answered = [c.latency for c in offered.calls if c.latency is not None and c.status]
        step.latencies = {
            "http": Latency.of_seconds(answered),
            "http_in_service": Latency.of_buckets(in_service),
            **await self._latencies(ok),
        }
        step.drained, step.drain_seconds = drained, round(drain_seconds, 2)
        step.resources = self._resources(before, loaded, len(ok))
        step.postgres_background, step.statements = database_work
        step.judge(self.plan.breaking)
        log.info("%s %.0f/s: %s", phase, rate, _summary(step))
        return step

    async def command_step(self, phase: str, rate: float, seconds: float) -> Step:
        commands = CommandChanges(self.producer)
        orders = await commands.create_orders(orders_needed(rate, seconds))
        try:
            await wait_until(
                _async_value(lambda: len(set(orders) - self.watch.created.keys())),
                lambda missing: missing == 0,
                within=self.plan.settle_timeout,
                what="the orders created by command",
                interval=0.2,
            )
        except TimeoutError:
            log.warning("not every order created by command arrived; measuring anyway")
        await self.settle()
        rejected_before = self.watch.results["CommandRejected"]
        database_before = await self._database_mark()
        before = self.monitor.mark()
        offered = await commands.step(orders, rate, seconds)
        loaded = self.monitor.mark()
        drained, drain_seconds = await self.drain({(c.order_id, c.version) for c in offered.calls})
        # An accepted command shows as its event.
        ok = [c for c in offered.calls if (c.order_id, c.version) in self.watch.changes]
        database_work = await self._database_work_since(database_before, len(ok))
        last_event = max((self.watch.changes[(c.order_id, c.version)] for c in ok), default=0.0)
        step = self._step(phase, rate, offered, ok, max(last_event, offered.finished))
        step.latencies = await self._latencies(ok)
        step.drained, step.drain_seconds = drained, round(drain_seconds, 2)
        step.resources = self._resources(before, loaded, len(ok))
        step.postgres_background, step.statements = database_work
        step.judge(self.plan.breaking)
        rejected = self.watch.results["CommandRejected"] - rejected_before
        if rejected:
            step.breaks.append(f"{rejected} commands rejected")
        log.info("%s %.0f/s: %s", phase, rate, _summary(step))
        return step

    async def _database_mark(self) -> DatabaseMark:
        """PostgreSQL's own work so far, and its counters of the services' statements."""
        return DatabaseMark(
            await postgres_background(self.reads),
            await statement_counters(self.reads, self.databases.names),
        )

    async def _database_work_since(
        self, start: DatabaseMark, changes: int
    ) -> tuple[dict[str, int], dict[str, Any]]:
        """Since `start`: PostgreSQL's own work, and the services' statements per change."""
        now = await self._database_mark()
        return (
            {name: now.background[name] - count for name, count in start.background.items()},
            statement_work(start.statements, now.statements, changes),
        )

    def _resources(self, before: Mark, loaded: Mark, changes: int) -> dict[str, dict[str, float]]:
        """CPU over the offered load; peak RSS up to now, drain included; and the CPU time of
        each process per change made, drain included (the consumers' backlog is the step's
        work too). CPU time per change depends far less than latency or throughput on what
        else the machine runs, so it compares code across runs and machines better."""
        drained = self.monitor.mark()
        usage = self.monitor.between(before, loaded)
        peaks = self.monitor.between(before, drained)
        spent = self.monitor.cpu_seconds(before, drained)
        for name, figures in usage.items():
            figures["rss_peak_mb"] = peaks.get(name, figures)["rss_peak_mb"]
            if changes and name in spent:
                figures["cpu_ms_per_change"] = round(1000 * spent[name] / changes, 2)
        return usage

    async def ladder(self, phase: str, rates: list[float], over_http: bool) -> dict[str, Any]:
        """Step the offered rate up until a step breaks, then try rates between the last
        that held and the first that broke (a ladder's rungs are far apart); the sustained
        rate is the highest that held with every rate below it holding too."""

        async def step_at(rate: float) -> Step:
            if over_http:
                return await self.http_step(phase, rate, self.plan.step_seconds)
            return await self.command_step(phase, rate, self.plan.step_seconds)

        steps: list[Step] = []
        for rate in rates:
            steps.append(await step_at(rate))
            if not steps[-1].passed:
                break
        while (probe := next_probe(steps, self.plan.resolution)) is not None:
            steps.append(await step_at(probe))
        steps.sort(key=lambda s: s.offered_rate)
        held = sustained_step(steps)
        return {
            "steps": [s.to_json() for s in steps],
            "sustained_per_s": sustained_rate(steps),
            "sustained_cpu_ms_per_change": cpu_cost(held),
            "sustained_statements": held.statements if held else {},
            "broke_at": broke_at(steps),
        }

    # --- consumers on their own ----------------------------------------------------------

    async def burst(self, events: int, label: str) -> dict[str, Any]:
        """`events` status changes straight into orders.events as fast as the broker takes
        them; how fast the notifier records and emails them and the audit records them all
        (each event, then its communication queued and sent)."""
        await self.settle()  # the consumers alone, not the end of an earlier backlog
        base_communications = await self.reads.value("notifier", COMMUNICATIONS)
        base_entries = await self.reads.value("audit", AUDIT_ENTRIES)
        base_emails = self.maildir.count()
        customer = Customer(name="Burst", email="burst@example.com")  # email only, no SMS
        messages = [
            (str(order).encode(), status_changed(order, 2, customer))
            for order in (uuid4() for _ in range(events))
        ]
        before = self.monitor.mark()
        started = time.monotonic()
        await produce_batched(self.producer, ORDERS_EVENTS, messages)
        produced = time.monotonic() - started
        targets = {"recorded": events, "emailed": events, "audited": 3 * events}
        reached = dict.fromkeys(targets, 0)
        done: dict[str, float] = {}

        async def progress() -> dict[str, float]:
            now = time.monotonic() - started
            recorded = await self.reads.value("notifier", COMMUNICATIONS)
            reached["recorded"] = recorded - base_communications
            reached["emailed"] = self.maildir.count() - base_emails
            reached["audited"] = await self.reads.value("audit", AUDIT_ENTRIES) - base_entries
            for name, target in targets.items():
                if name not in done and reached[name] >= target:
                    done[name] = now
            return done

        try:
            await wait_until(
                progress,
                lambda finished: len(finished) == len(targets),
                within=self.plan.settle_timeout,
                what="the burst to be recorded, emailed and audited",
                interval=0.2,
            )
        except TimeoutError:
            log.warning("burst %s not finished in time; rates from what was done", label)
        elapsed = time.monotonic() - started

        def rate(name: str) -> float:
            # Unfinished: what got done in the time allowed.
            return round(min(reached[name], targets[name]) / done.get(name, elapsed), 1)

        self.maildir.new_messages()
        result = {
            "label": label,
            "events": events,
            "produced_per_s": round(events / produced, 1),
            "finished": len(done) == len(targets),
            "seconds": {name: round(done.get(name, elapsed), 2) for name in targets},
            "notifier_events_per_s": rate("recorded"),
            "emails_per_s": rate("emailed"),
            "audit_entries_per_s": rate("audited"),
            "resources": self.monitor.between(before, self.monitor.mark()),
        }
        log.info("burst %s: %s", label, result)
        return result

    async def add_consumer_replicas(self) -> None:
        """A second notifier and a second audit process, in the same consumer groups."""
        for service in ("notifier", "audit"):
            port = free_port()
            env = {**self.stack.env(service), f"{service.upper()}_HTTP_PORT": str(port)}
            name = f"{service}-2"
            process = service_process(service, env, port, self.stack.log_dir, name=name)
            process.start()
            self.stack.processes[name] = process
            assert process.popen is not None
            self.monitor.watch(name, process.popen.pid)
        await wait_until(
            self._group_members,
            lambda members: members == {"notifier": 2, "audit": 2},
            within=60,
            what="two stable members in each consumer group",
        )

    async def _group_members(self) -> dict[str, int]:
        """Members of each consumer group once it is stable (0 while it rebalances)."""
        admin = AIOKafkaAdminClient(bootstrap_servers=self.stack.kafka_bootstrap_servers)
        members = {}
        try:
            await admin.start()
            # One group per request: aiokafka fails to decode an answer about several.
            for group_id in ("notifier", "audit"):
                (response,) = await admin.describe_consumer_groups([group_id])
                # Each group: (error_code, group_id, state, protocol_type, protocol, members…)
                for group in response.groups:
                    members[group[1]] = len(group[5]) if group[2] == "Stable" else 0
        except KafkaError:
            return {}
        finally:
            await admin.close()
        return members

    # --- profiles ------------------------------------------------------------------------

    async def profiled(self, names: list[str], label: str, load: Any) -> dict[str, Any]:
        """Run `load` (an awaitable) while py-spy samples the named processes."""
        py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        self.profile_dir.mkdir(parents=True, exist_ok=True)
        recorders = {}
        for name in names:
            process = self.stack.processes[name]
            assert process.popen is not None
            output = self.profile_dir / f"{label}-{name}.txt"
            recorders[name] = (
                output,
                await asyncio.create_subprocess_exec(
                    py_spy,
                    "record",
                    "--pid",
                    str(process.popen.pid),
                    "--duration",
                    str(round(self.plan.profile_seconds)),
                    "--rate",
                    "100",
                    "--format",
                    "raw",
                    "--nonblocking",
                    "--output",
                    str(output),
                    stdout=asyncio.subprocess.DEVNULL,
                    stderr=asyncio.subprocess.DEVNULL,
                ),
            )
        measured = await load
        profiles: dict[str, Any] = {"load": measured}
        for name, (output, recorder) in recorders.items():
            await recorder.wait()
            lines = output.read_text().splitlines() if output.exists() else []
            profiles[name] = {"file": output.name, **hotspots(lines).to_json()}
        return profiles


def _async_value(function: Any) -> Any:
    async def probe() -> Any:
        return function()

    return probe


def _summary(step: Step) -> str:
    parts = [f"achieved {step.achieved_rate:.0f}/s", f"ok {step.ok}/{step.sent}"]
    for name, latency in step.latencies.items():
        if latency is not None:
            parts.append(f"{name} p99 {latency.p99:.0f} ms")
    return ", ".join(parts) + (f"; BROKE: {'; '.join(step.breaks)}" if step.breaks else "")
