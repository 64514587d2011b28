"""`make bench` (`python -m bench [--quick] [--profile]`): the system against its own limits,
in one run on this machine's PostgreSQL and a Kafka broker of the benchmark's own."""

from __future__ import annotations

import argparse
import asyncio
import bisect
import gc
import logging
import os
import shutil
import sys
from datetime import UTC, datetime
from typing import Any

from bench import report
from bench.limits import limit_a, limit_b
from bench.observe import postmaster_pid
from bench.stats import BreakingPoint, ladder
from bench.system import Plan, System
from devstack import infra
from devstack.processes import free_port, migrate, service_env
from devstack.stack import Stack

log = logging.getLogger("bench")

FULL = Plan(
    quick=False,
    step_seconds=15,
    half_rate_seconds=45,
    half_rate_repeats=3,
    rates=ladder(25, 1.5, 3000),
    resolution=1.15,
    drain_timeout=30,
    settle_timeout=180,
    max_in_flight=2000,
    limit_a_concurrencies=[1, 2, 4, 8, 16, 32],
    limit_a_seconds=3,
    limit_b_events=50_000,
    limit_b_one_by_one=5_000,
    burst_events=3_000,
    replica_steps=4,
    warm_up_seconds=15,
    idle_seconds=20,
    unloaded_rate=5,
    unloaded_seconds=30,
    profile=False,
    profile_seconds=15,
    breaking=BreakingPoint(),
)
QUICK = Plan(
    quick=True,
    step_seconds=5,
    half_rate_seconds=5,
    half_rate_repeats=1,
    rates=ladder(25, 2, 1600),
    resolution=1.5,
    drain_timeout=15,
    settle_timeout=45,
    max_in_flight=1000,
    limit_a_concurrencies=[2, 8],
    limit_a_seconds=1.5,
    limit_b_events=10_000,
    limit_b_one_by_one=1_000,
    burst_events=500,
    replica_steps=2,
    warm_up_seconds=5,
    idle_seconds=5,
    unloaded_rate=5,
    unloaded_seconds=8,
    profile=False,
    profile_seconds=8,
    breaking=BreakingPoint(),
)

BENCH_KAFKA_PORT = 29092


async def measure(plan: Plan, kafka: infra.Kafka, databases: infra.TestDatabases) -> dict[str, Any]:
    results: dict[str, Any] = {}
    await infra.ensure_topics(kafka.bootstrap_servers)

    log.info("limit A: raw asyncpg, the order service's statements")
    order_env = service_env(
        "order",
        database=databases.services["order"],
        kafka_bootstrap_servers=kafka.bootstrap_servers,
        http_port=0,
    )
    migrate("order", order_env)
    results["limit_a"] = await limit_a(
        databases.dsn("order"), plan.limit_a_concurrencies, plan.limit_a_seconds
    )
    log.info("limit A: %s changes/s", results["limit_a"]["changes_per_s"])

    log.info("limit B: raw aiokafka, the services' producer settings")
    results["limit_b"] = await limit_b(
        kafka.bootstrap_servers, plan.limit_b_events, plan.limit_b_one_by_one
    )
    log.info("limit B: %s events/s", results["limit_b"]["events_per_s"])

    workdir = infra.CACHE / "bench"
    shutil.rmtree(workdir, ignore_errors=True)
    ports = {name: free_port() for name in ("order", "notifier", "audit", "smtp", "sms")}
    stack = Stack(kafka.bootstrap_servers, databases.services, ports, workdir)
    system = System(stack, databases, plan, report.RESULTS / "profiles")
    try:
        log.info("starting the services")
        await asyncio.to_thread(stack.start)
        await system.start()
        system.monitor.watch("bench", os.getpid())
        # What start-up built lives as long as the run: frozen, a full collection of the
        # generator's heap no longer walks it (see load.offer).
        gc.collect()
        gc.freeze()
        if kafka.state_dir is not None:
            system.monitor.watch("kafka", int((kafka.state_dir / "kafka.pid").read_text()))
        postgres = await postmaster_pid(databases.dsn("order"))
        if postgres is not None:
            system.monitor.watch("postgres", postgres, with_children=True)
        results["system"] = await _system(plan, system)
        results["peak_rss_mb"] = system.monitor.peak_rss()
        results["sms_sent"] = _lines(stack.sms_file)
    except BaseException:
        print(stack.logs(), file=sys.stderr)
        raise
    finally:
        await system.stop()
        await asyncio.to_thread(stack.stop)
    return results


async def _system(plan: Plan, system: System) -> dict[str, Any]:
    measured: dict[str, Any] = {}
    log.info("warming up at %s changes/s", plan.rates[0])
    await system.http_step("warm-up", plan.rates[0], plan.warm_up_seconds)
    log.info("HTTP: stepped load %s", plan.rates)
    measured["http"] = http = await system.ladder("http", plan.rates, over_http=True)
    half = http["sustained_per_s"] / 2
    if half > 0:
        measured["http_half_rate_steps"] = [
            (await system.http_step("http-half", round(half), plan.half_rate_seconds)).to_json()
            for _ in range(plan.half_rate_repeats)
        ]

    log.info("unloaded: idle, then %s changes/s", plan.unloaded_rate)
    measured["idle"] = await system.idle(plan.idle_seconds)
    unloaded = await system.http_step("unloaded", plan.unloaded_rate, plan.unloaded_seconds)
    measured["unloaded"] = unloaded.to_json()

    log.info("orders.commands: stepped load")
    measured["commands"] = await system.ladder("commands", plan.rates, over_http=False)

    measured["bursts"] = [await system.burst(plan.burst_events, "1 notifier, 1 audit")]

    if plan.profile:
        measured["profiles"] = await _profiles(plan, system, http["broke_at"] or plan.rates[-1])

    log.info("two notifier and two audit replicas")
    await system.add_consumer_replicas()
    measured["bursts"].append(await system.burst(plan.burst_events, "2 notifiers, 2 audits"))
    # The ladder's rungs up to the first at or above where one notifier and one audit broke.
    broke_rung = bisect.bisect_left(plan.rates, http["broke_at"] or plan.rates[-1])
    start = max(0, broke_rung - plan.replica_steps + 1)
    rates = plan.rates[start : start + plan.replica_steps]
    measured["http_2_replicas"] = await system.ladder("http-2-replicas", rates, over_http=True)
    return measured


async def _profiles(plan: Plan, system: System, rate: float) -> dict[str, Any]:
    """py-spy on the order service under HTTP and command load (at the rate where the HTTP
    ladder broke, so it is busy), and on the consumers draining a burst; after the measured
    steps, so sampling never skews a figure."""
    seconds = plan.profile_seconds
    log.info("profiling at %.0f changes/s", rate)
    return {
        "http": await system.profiled(
            ["order"], "http", _as_json(system.http_step("profile-http", rate, seconds))
        ),
        "commands": await system.profiled(
            ["order"], "commands", _as_json(system.command_step("profile-cmd", rate, seconds))
        ),
        "consumers": await system.profiled(
            ["notifier", "audit"], "consumers", system.burst(plan.burst_events, "profiled")
        ),
    }


async def _as_json(step: Any) -> dict[str, Any]:
    measured = await step
    result: dict[str, Any] = measured.to_json()
    return result


def _lines(path: os.PathLike[str]) -> int:
    try:
        with open(path, encoding="utf-8") as file:
            return sum(1 for _ in file)
    except FileNotFoundError:
        return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a smoke run of a couple of minutes")
    parser.add_argument(
        "--profile", action="store_true", help="also sample the services with py-spy"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for chatty in ("aiokafka", "httpx"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    plan = QUICK if args.quick else FULL
    if args.profile:
        plan = Plan(**{**plan.__dict__, "profile": True})

    started = datetime.now(UTC)
    kafka = infra.fresh_kafka(int(os.environ.get("BENCH_KAFKA_PORT", BENCH_KAFKA_PORT)), "bench")
    databases = infra.create_test_databases("bench")
    try:
        results = asyncio.run(measure(plan, kafka, databases))
        results["environment"] = report.environment(kafka, databases)
    finally:
        infra.drop_test_databases(databases)
        if kafka.managed:
            kafka.stop()
    command = "make bench" + (" BENCH_QUICK=1" if plan.quick else "")
    command += " BENCH_PROFILE=1" if plan.profile else ""
    written = report.write(results, plan, command, started, datetime.now(UTC))
    print(written.read_text() if written.suffix == ".md" else written)


if __name__ == "__main__":
    main()
