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
    ProcessMonitor,
    audit_times,
    count_rows,
    email_times,
)
from bench.payloads import status_changed
from bench.stats import BreakingPoint, Latency, Step, hotspots, sustained_rate
from contracts import ORDERS_EVENTS, Customer
from devstack.infra import TestDatabases
from devstack.processes import free_port, service_process
from devstack.stack import Stack
from devstack.waiting import wait_until

log = logging.getLogger("bench")

AUDITED_CHANGES = "SELECT count(*) FROM audit_log WHERE action = 'order.status_changed'"
AUDIT_ENTRIES = "SELECT count(*) FROM audit_log"
COMMUNICATIONS = "SELECT count(*) FROM communication_events"


@dataclass(frozen=True)
class Plan:
    """How long and how hard each part of the run pushes."""

    quick: bool
    step_seconds: float
    rates: list[float]
    drain_timeout: float
    settle_timeout: float
    max_in_flight: int
    limit_a_concurrencies: list[int]
    limit_a_seconds: float
    limit_b_events: int
    limit_b_one_by_one: int
    burst_events: int
    replica_steps: int  # ladder steps re-run with two consumer replicas, up to the break
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
        self.maildir = Maildir(stack.maildir)
        self.producer = services_producer(stack.kafka_bootstrap_servers, "bench-upstream")
        # Consequences every change so far should have had (drained steps catch up to these).
        self.expected_emails = 0
        self.expected_audited = 0

    async def start(self) -> None:
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

    # --- consequences ------------------------------------------------------------------

    async def _caught_up(self, events: set[ChangeKey]) -> bool:
        if not events.issubset(self.watch.changes.keys()):
            return False
        if self.maildir.count() < self.expected_emails:
            return False
        audited = await count_rows(self.databases.dsn("audit"), AUDITED_CHANGES)
        return audited >= self.expected_audited

    async def drain(self, events: set[ChangeKey], within: float) -> tuple[bool, float]:
        """Wait until every change has its event, email and audit entry; (drained, seconds)."""
        started = time.monotonic()
        try:
            await wait_until(
                lambda: self._caught_up(events),
                bool,
                within=within,
                what="events, emails and audit entries",
                interval=0.2,
            )
        except TimeoutError:
            return False, time.monotonic() - started
        return True, time.monotonic() - started

    async def settle(self) -> None:
        """After a broken step: let the backlog clear before the next measurement, or give up
        on it and measure from where things stand."""
        drained, _ = await self.drain(set(), self.plan.settle_timeout)
        if not drained:
            self.expected_emails = self.maildir.count()
            self.expected_audited = await count_rows(self.databases.dsn("audit"), AUDITED_CHANGES)
            log.warning("backlog did not clear in %.0f s", self.plan.settle_timeout)
        self.maildir.new_messages()  # the stragglers belong to no step

    async def _latencies(self, calls: list[Call]) -> dict[str, Latency | None]:
        orders = sorted({c.order_id for c in calls})
        emails = await email_times(
            self.databases.dsn("notifier"), self.maildir.new_messages(), orders
        )
        audited = await audit_times(self.databases.dsn("audit"), orders)

        def after(times: dict[ChangeKey, float]) -> Latency | None:
            return Latency.of_seconds(
                times[(c.order_id, c.version)] - c.due
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

    # --- load steps --------------------------------------------------------------------

    async def http_step(self, phase: str, rate: float, seconds: float) -> Step:
        async with HttpChanges(self.stack.url("order"), self.stack.admin_token) as http:
            orders = await http.create_orders(orders_needed(rate, seconds))
            # The creations' own consequences (events, audit entries) settle first.
            await self.drain(set(), self.plan.drain_timeout)
            before = self.monitor.mark()
            offered = await http.step(orders, rate, seconds, self.plan.max_in_flight)
            loaded = self.monitor.mark()
        ok = [c for c in offered.calls if c.status == 200]
        self.expected_emails += len(ok)
        self.expected_audited += len(ok)
        drained, drain_seconds = await self.drain(
            {(c.order_id, c.version) for c in ok}, self.plan.drain_timeout
        )
        step = self._step(phase, rate, offered, ok, offered.finished)
        answered = [c.latency for c in offered.calls if c.latency is not None and c.status]
        step.latencies = {"http": Latency.of_seconds(answered), **await self._latencies(ok)}
        step.drained, step.drain_seconds = drained, round(drain_seconds, 2)
        step.resources = self._resources(before, loaded)
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
        await self.drain(set(), self.plan.drain_timeout)
        rejected_before = self.watch.results["CommandRejected"]
        before = self.monitor.mark()
        offered = await commands.step(orders, rate, seconds)
        loaded = self.monitor.mark()
        wanted = {(c.order_id, c.version) for c in offered.calls}
        # Accepted changes show as events; the generator cannot know their number in advance.
        self.expected_emails += len(wanted)
        self.expected_audited += len(wanted)
        drained, drain_seconds = await self.drain(wanted, self.plan.drain_timeout)
        ok = [c for c in offered.calls if (c.order_id, c.version) in self.watch.changes]
        if not drained:
            self.expected_emails -= len(wanted) - len(ok)
            self.expected_audited -= len(wanted) - len(ok)
        last_event = max((self.watch.changes[(c.order_id, c.version)] for c in ok), default=0.0)
        step = self._step(phase, rate, offered, ok, max(last_event, offered.finished))
        step.latencies = await self._latencies(ok)
        step.drained, step.drain_seconds = drained, round(drain_seconds, 2)
        step.resources = self._resources(before, loaded)
        step.judge(self.plan.breaking)
        rejected = self.watch.results["CommandRejected"] - rejected_before
        if rejected:
            step.breaks.append(f"{rejected} commands rejected")
        log.info("%s %.0f/s: %s", phase, rate, _summary(step))
        return step

    def _resources(self, before: Any, loaded: Any) -> dict[str, dict[str, float]]:
        """CPU over the offered load; peak RSS up to now, drain included."""
        usage = self.monitor.between(before, loaded)
        peaks = self.monitor.between(before, self.monitor.mark())
        for name, figures in usage.items():
            figures["rss_peak_mb"] = peaks.get(name, figures)["rss_peak_mb"]
        return usage

    async def ladder(self, phase: str, rates: list[float], over_http: bool) -> dict[str, Any]:
        """Step the offered rate up until a step breaks; the sustained rate is the last one
        that held."""
        steps: list[Step] = []
        for rate in rates:
            if over_http:
                step = await self.http_step(phase, rate, self.plan.step_seconds)
            else:
                step = await self.command_step(phase, rate, self.plan.step_seconds)
            steps.append(step)
            if not step.passed:
                await self.settle()
                break
        return {
            "steps": [s.to_json() for s in steps],
            "sustained_per_s": sustained_rate(steps),
            "broke_at": next((s.offered_rate for s in steps if not s.passed), None),
        }

    # --- consumers on their own ----------------------------------------------------------

    async def burst(self, events: int, label: str) -> dict[str, Any]:
        """`events` status changes straight into orders.events as fast as the broker takes
        them; how fast the notifier records and emails them and the audit records them all
        (each event, then its communication queued and sent)."""
        notifier, audit = self.databases.dsn("notifier"), self.databases.dsn("audit")
        await self.settle()  # the consumers alone, not the end of an earlier backlog
        base_communications = await count_rows(notifier, COMMUNICATIONS)
        base_entries = await count_rows(audit, AUDIT_ENTRIES)
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
        done: dict[str, float] = {}

        async def progress() -> dict[str, float]:
            now = time.monotonic() - started
            if "recorded" not in done and (
                await count_rows(notifier, COMMUNICATIONS) >= base_communications + events
            ):
                done["recorded"] = now
            if "emailed" not in done and self.maildir.count() >= base_emails + events:
                done["emailed"] = now
            if "audited" not in done and (
                await count_rows(audit, AUDIT_ENTRIES) >= base_entries + 3 * events
            ):
                done["audited"] = now
            return done

        try:
            await wait_until(
                progress,
                lambda finished: len(finished) == 3,
                within=self.plan.settle_timeout,
                what="the burst to be recorded, emailed and audited",
                interval=0.2,
            )
        except TimeoutError:
            log.warning("burst %s not finished: %s", label, done)
        self.expected_emails = self.maildir.count()
        self.expected_audited = await count_rows(audit, AUDITED_CHANGES)
        self.maildir.new_messages()
        result = {
            "label": label,
            "events": events,
            "produced_per_s": round(events / produced, 1),
            "seconds": {name: round(s, 2) for name, s in done.items()},
            "notifier_events_per_s": _rate(events, done.get("recorded")),
            "emails_per_s": _rate(events, done.get("emailed")),
            "audit_entries_per_s": _rate(3 * events, done.get("audited")),
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


def _rate(count: int, seconds: float | None) -> float | None:
    return None if not seconds else round(count / seconds, 1)


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
