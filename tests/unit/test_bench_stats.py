"""The benchmark's arithmetic: percentiles, the load ladder, when a step breaks, the sustained
rate, the open-loop schedule, py-spy profile summaries, the burst table's CPU and the
half-rate medians, PostgreSQL's own work per step, the services' statements per step, and the
machine's ceiling set by what runs beside the services."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from typing import Any

import pytest

from bench.load import orders_needed, schedule
from bench.observe import Mark, ProcessMonitor
from bench.report import (
    ceiling,
    median_p99,
    postgres_work,
    statement_ms,
    statements_section,
    with_replicas_added,
)
from bench.stats import (
    BreakingPoint,
    Latency,
    StatementCount,
    Step,
    broke_at,
    buckets_between,
    cpu_cost,
    frame_name,
    hotspots,
    ladder,
    next_probe,
    percentile,
    statement_work,
    sustained_rate,
    sustained_step,
)


def test_percentile_interpolates_between_ranks() -> None:
    values = [10.0, 20.0, 30.0, 40.0]
    assert percentile(values, 0) == 10.0
    assert percentile(values, 50) == 25.0
    assert percentile(values, 100) == 40.0
    assert percentile([7.0], 99) == 7.0


def test_percentile_of_nothing_is_an_error() -> None:
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)


def test_latency_is_in_milliseconds_and_empty_is_none() -> None:
    latency = Latency.of_seconds([0.001 * n for n in range(1, 101)])
    assert latency is not None
    assert (latency.count, latency.p50, latency.max) == (100, 50.5, 100.0)
    assert latency.p99 == pytest.approx(99.01)
    assert Latency.of_seconds([]) is None


def test_timed_latency_grows_by_the_p50s_between_the_first_and_last_third() -> None:
    # Given out of order: growth follows when each change was due, not the order given.
    falling_behind = [(due, 0.1 + 0.01 * due) for due in reversed(range(300))]
    latency = Latency.of_timed(falling_behind)
    assert latency is not None
    assert latency.count == 300
    assert latency.p50 == pytest.approx(1595.0)
    assert latency.growth_ms == pytest.approx(2000.0)
    keeping_up = Latency.of_timed((due, 0.1 + 0.05 * (due % 2)) for due in range(300))
    assert keeping_up is not None
    assert keeping_up.growth_ms == pytest.approx(0.0)
    too_few = Latency.of_timed([(0.0, 0.1), (1.0, 0.2)])
    assert too_few is not None
    assert too_few.growth_ms is None
    assert Latency.of_timed([]) is None


def test_a_histograms_percentiles_are_interpolated_inside_their_bucket() -> None:
    buckets = [(0.005, 50.0), (0.01, 90.0), (0.025, 100.0), (math.inf, 100.0)]
    latency = Latency.of_buckets(buckets)
    assert latency is not None
    assert latency.count == 100
    assert latency.p50 == pytest.approx(5.0)
    assert latency.p95 == pytest.approx(17.5)  # half-way through the 10-25 ms bucket
    assert latency.p99 == pytest.approx(23.5)
    assert latency.max == pytest.approx(25.0)


def test_values_beyond_the_last_finite_bucket_read_as_its_bound() -> None:
    latency = Latency.of_buckets([(0.005, 0.0), (0.01, 1.0), (math.inf, 2.0)])
    assert latency is not None
    assert (latency.p50, latency.p99, latency.max) == (10.0, 10.0, 10.0)
    assert Latency.of_buckets([(0.005, 0.0), (math.inf, 0.0)]) is None
    assert Latency.of_buckets([]) is None


def test_what_a_histogram_counted_between_two_scrapes() -> None:
    before = [(0.005, 3.0), (0.01, 3.0), (math.inf, 4.0)]
    after = [(0.005, 10.0), (0.01, 11.0), (math.inf, 12.0)]
    assert buckets_between(before, after) == [(0.005, 7.0), (0.01, 8.0), (math.inf, 8.0)]
    # A route first called after the first scrape has no series in it: counted from zero.
    assert buckets_between([], after) == after


def test_ladder_grows_geometrically_up_to_the_ceiling() -> None:
    assert ladder(50, 2, 400) == [50, 100, 200, 400]
    assert ladder(25, 1.5, 100) == [25, 38, 56, 84]
    with pytest.raises(ValueError, match="factor above 1"):
        ladder(50, 1, 400)


def _step(rate: float, **changes: object) -> Step:
    fields: dict[str, object] = {
        "phase": "http",
        "offered_rate": rate,
        "seconds": 10.0,
        "sent": int(rate * 10),
        "ok": int(rate * 10),
        "errors": 0,
        "achieved_rate": rate,
        "latencies": {"http": Latency(10, 5, 8, 9, 12)},
    }
    step = Step(**{**fields, **changes})  # type: ignore[arg-type]
    step.judge(BreakingPoint())
    return step


def test_a_healthy_step_holds() -> None:
    assert _step(100).passed


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"errors": 20}, "errors 2.0%"),
        ({"achieved_rate": 80.0}, "achieved 80/s"),
        ({"latencies": {"http": Latency(10, 5, 8, 1500, 2000)}}, "HTTP p99 1500 ms"),
        ({"latencies": {"email": Latency(10, 5, 8, 6000, 7000)}}, "change→email p99 6000 ms"),
        (
            {"latencies": {"audit": Latency(10, 500, 800, 900, 950, growth_ms=1200)}},
            "change→audit p50 grew 1200 ms",
        ),
        ({"drained": False}, "backlog"),
        ({"sent": 0}, "nothing was sent"),
    ],
)
def test_a_step_breaks_on_errors_lag_latency_or_backlog(
    changes: dict[str, object], reason: str
) -> None:
    step = _step(100, **changes)
    assert not step.passed
    assert any(reason in why for why in step.breaks), step.breaks


def test_sustained_rate_is_the_last_step_before_the_first_break() -> None:
    steps = [
        _step(50),
        _step(100, achieved_rate=98.0),
        _step(200, errors=500),
        _step(400),  # held again by chance: after a break it does not count
    ]
    assert sustained_rate(steps) == 98.0
    assert broke_at(steps) == 200
    assert sustained_rate([_step(50, drained=False)]) == 0.0


def test_cpu_cost_is_that_of_the_sustained_step() -> None:
    held = _step(100, resources={"order": {"cpu_percent": 50.0, "cpu_ms_per_change": 5.0}})
    broke = _step(200, errors=500, resources={"order": {"cpu_ms_per_change": 4.0}})
    assert sustained_step([_step(50), held, broke]) is held
    assert cpu_cost(sustained_step([_step(50), held, broke])) == {"order": 5.0}
    assert cpu_cost(sustained_step([broke])) == {}


def test_monitor_reports_cpu_per_process_and_the_machine_with_what_was_stolen() -> None:
    start = Mark(at=10.0, cpu={"order": 1.0, "gone": 3.0}, machine_busy=100.0, machine_stolen=5.0)
    end = Mark(at=12.0, cpu={"order": 2.5, "new": 1.0}, machine_busy=103.0, machine_stolen=6.0)
    usage = ProcessMonitor().between(start, end)
    assert usage["order"]["cpu_percent"] == 75.0
    assert usage["machine"] == {"cpu_percent": 150.0, "stolen_percent": 50.0, "rss_peak_mb": 0.0}
    assert set(usage) == {"order", "machine"}  # a process watched at one mark only: none
    assert ProcessMonitor.cpu_seconds(start, end) == {"order": 1.5, "machine": 3.0}


# A child that spends `seconds` of CPU, says so on stdout, then waits for its stdin to close.
BUSY_CHILD = (
    "import sys, time\n"
    "started = time.process_time()\n"
    "while time.process_time() - started < float(sys.argv[1]): pass\n"
    "print('spent', flush=True)\n"
    "sys.stdin.read()\n"
)


def _busy_child(seconds: float) -> subprocess.Popen[str]:
    child = subprocess.Popen(
        [sys.executable, "-c", BUSY_CHILD, str(seconds)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    assert child.stdout.readline() == "spent\n"
    return child


def test_monitor_counts_the_cpu_of_a_process_with_its_children_living_and_exited() -> None:
    monitor = ProcessMonitor()
    monitor.watch("alone", os.getpid())
    monitor.watch("with children", os.getpid(), with_children=True)
    start = monitor.mark()
    living = _busy_child(0.3)
    exited = _busy_child(0.3)
    exited.communicate("")  # it exits and is waited for: the kernel adds its CPU to ours
    mid = monitor.mark()
    living.communicate("")
    end = monitor.mark()

    spent, spent_to_end = monitor.cpu_seconds(start, mid), monitor.cpu_seconds(start, end)
    # Both children (0.3 s each; one alone would be 0.3), one of them still running.
    assert spent["with children"] - spent["alone"] > 0.5
    # The living child's CPU is counted once, whether read from it or, exited, from us.
    children_to_end = spent_to_end["with children"] - spent_to_end["alone"]
    assert children_to_end == pytest.approx(spent["with children"] - spent["alone"], abs=0.1)


def test_probes_halve_the_gap_between_held_and_broke_until_it_is_narrow() -> None:
    steps = [_step(84), _step(127), _step(190, errors=500)]
    assert next_probe(steps, resolution=1.15) == 158
    steps.append(_step(158))
    assert next_probe(steps, resolution=1.15) == 174
    steps.append(_step(174, errors=500))
    assert next_probe(steps, resolution=1.15) is None  # 158 → 174 is within 15 %
    assert sustained_rate(steps) == 158
    assert broke_at(steps) == 174


def test_a_probe_that_breaks_narrows_the_gap_from_above() -> None:
    steps = [_step(127), _step(190, errors=500), _step(158, errors=500)]
    assert next_probe(steps, resolution=1.15) == 142
    assert broke_at(steps) == 158


def test_no_probe_without_a_break_or_below_the_first_rung() -> None:
    assert next_probe([_step(25), _step(38)], resolution=1.15) is None
    assert next_probe([_step(25, errors=500)], resolution=1.15) is None
    assert next_probe([_step(1), _step(2, errors=500)], resolution=1.15) is None


def test_schedule_walks_every_order_one_stage_at_a_time() -> None:
    orders = ["a", "b"]
    assert schedule(orders, 5) == [("a", 2), ("b", 2), ("a", 3), ("b", 3), ("a", 4)]
    assert len(schedule(orders, 100)) == 10  # two orders have ten changes in them
    assert orders_needed(rate=100, seconds=2) == 40


LOOP = "_run (/usr/lib/python3.11/asyncio/events.py:80)"
HANDLER = "handle (/x/site-packages/uvicorn/h11.py:{line})"
RAW_PROFILE = [
    f"{LOOP};{HANDLER.format(line=10)};dumps (/usr/lib/python3.11/json/encoder.py:200) 30",
    f"{LOOP};{HANDLER.format(line=12)};execute (/x/site-packages/sqlalchemy/engine/base.py:5) 50",
    f"{LOOP};poll (/x/site-packages/aiokafka/consumer.py:7) 20",
    "garbage line",
]


def test_hotspots_add_up_the_lines_of_one_function() -> None:
    profile = hotspots(RAW_PROFILE)
    assert profile.samples == 100
    assert profile.by_self[0].name == "execute (sqlalchemy/engine/base.py)"
    assert profile.by_self[0].share == 0.5
    packages = {h.name: h.share for h in profile.by_package}
    assert packages == {"sqlalchemy": 0.5, "json": 0.3, "aiokafka": 0.2}
    # The event loop is on every stack: left out of the callers; the handler is not.
    callers = {h.name: h.share for h in profile.by_total}
    assert callers["handle (uvicorn/h11.py)"] == 0.8
    assert "_run (asyncio/events.py)" not in callers


def test_frame_names_drop_the_line_number() -> None:
    assert frame_name("send (/a/site-packages/aiokafka/producer.py:42)") == (
        "send (aiokafka/producer.py)"
    )
    assert hotspots([]).samples == 0


def test_a_burst_counts_the_cpu_of_a_services_replicas_as_the_services() -> None:
    resources = {
        "notifier": {"cpu_percent": 40.0, "rss_peak_mb": 120.0},
        "notifier-2": {"cpu_percent": 30.0, "rss_peak_mb": 110.0},
        "smtp-sink": {"cpu_percent": 20.0, "rss_peak_mb": 30.0},
        "machine": {"cpu_percent": 150.0, "stolen_percent": 12.0, "rss_peak_mb": 0.0},
    }
    added = with_replicas_added(resources)
    assert added["notifier"]["cpu_percent"] == 70.0
    assert added["smtp-sink"]["cpu_percent"] == 20.0
    assert added["machine"]["cpu_percent"] == 150.0
    assert "notifier-2" not in added
    assert resources["notifier"]["cpu_percent"] == 40.0  # the measurement itself is kept


def test_the_half_rate_figure_is_the_median_p99_of_the_steps_that_measured_it() -> None:
    def step(http_p99: float, email_p99: float | None) -> dict[str, Any]:
        latencies: dict[str, Any] = {"http": {"p99": http_p99}}
        if email_p99 is not None:
            latencies["email"] = {"p99": email_p99}
        return {"latencies": latencies}

    steps = [step(60.0, 800.0), step(21.0, None), step(149.0, 500.0)]
    assert median_p99(steps, "http") == 60.0
    assert median_p99(steps, "email") == 650.0  # of the two that measured it
    assert median_p99(steps, "audit") is None
    assert median_p99([], "http") is None


def test_a_steps_postgresql_work_reads_checkpoints_autovacuums_autoanalyzes() -> None:
    recorded = {"postgres_background": {"autoanalyzes": 3, "checkpoints": 1, "autovacuums": 0}}
    assert postgres_work(recorded) == "1 / 0 / 3"
    assert postgres_work({}) == "n/a / n/a / n/a"  # a result written before it was recorded


def counted(service: str, statement: str, calls: int, exec_ms: float, wal: int) -> StatementCount:
    return StatementCount(service, statement, calls, exec_ms, wal)


def test_statement_work_is_the_difference_of_two_readings_per_change() -> None:
    before = {
        ("orders", 1): counted("order", "UPDATE orders", 100, 50.0, 10_240),
        ("audit", 7): counted("audit", "SELECT 1", 5, 1.0, 0),
    }
    after = {
        ("orders", 1): counted("order", "UPDATE orders", 300, 90.0, 30_720),
        ("orders", 2): counted("order", "INSERT INTO\n  outbox", 200, 10.0, 20_480),  # new
        ("audit", 7): counted("audit", "SELECT 1", 5, 1.0, 0),  # not run during the step
        ("audit", 8): counted("audit", "INSERT INTO audit_log", 600, 120.0, 61_440),
    }
    work = statement_work(before, after, changes=200)
    assert work["by_service"] == {
        "audit": {"calls_per_change": 3.0, "exec_ms_per_change": 0.6, "wal_kb_per_change": 0.3},
        "order": {"calls_per_change": 2.0, "exec_ms_per_change": 0.25, "wal_kb_per_change": 0.2},
    }
    assert [(top["service"], top["statement"]) for top in work["top"]] == [
        ("audit", "INSERT INTO audit_log"),
        ("order", "UPDATE orders"),
        ("order", "INSERT INTO outbox"),  # its whitespace made one space
    ]
    assert work["top"][1] == {
        "service": "order",
        "statement": "UPDATE orders",
        "calls_per_change": 1.0,
        "exec_ms_per_change": 0.2,
        "wal_kb_per_change": 0.1,
    }
    assert len(statement_work(before, after, changes=200, top=1)["top"]) == 1
    assert statement_work(before, after, changes=0) == {}
    assert statement_work({}, {}, changes=10) == {"by_service": {}, "top": []}


def test_the_report_shows_statement_time_per_service_and_the_costliest_statements() -> None:
    work = statement_work(
        {},
        {
            ("orders", 1): counted("order", "SELECT a || b FROM t", 10, 5.0, 0),
            ("audit", 2): counted("audit", "INSERT INTO audit_log", 30, 20.0, 2048),
        },
        changes=10,
    )
    assert statement_ms({"statements": work}) == "0.50 / n/a / 2.00"
    assert statement_ms({}) == "n/a / n/a / n/a"  # a result written before it was recorded
    section = statements_section(work)
    assert "audit 3.0 statements, 2.00 ms, 0.2 KB WAL" in section[3]
    assert section[-2] == "| audit | `INSERT INTO audit_log` | 3.00 | 2.000 | 0.20 |"
    assert section[-1] == "| order | `SELECT a \\|\\| b FROM t` | 1.00 | 0.500 | 0.00 |"
    assert statements_section({}) == []


def test_the_ceiling_is_what_the_cores_carry_at_the_cost_outside_the_services() -> None:
    cost = {
        "order": 1.4,
        "notifier": 1.3,
        "audit": 0.3,
        "postgres": 1.2,
        "kafka": 0.3,
        "smtp-sink": 0.4,
        "sms-sink": 0.1,
        "bench": 0.5,
        "machine": 5.6,
    }
    outside = ceiling(cost, cores=2)
    assert outside is not None
    assert outside["cpu_ms_per_change"] == {
        "postgres": 1.2,
        "kafka": 0.3,
        "smtp-sink": 0.4,
        "sms-sink": 0.1,
        "bench": 0.5,
    }
    assert outside["total_cpu_ms_per_change"] == 2.5
    assert outside["changes_per_s_at_that_cost_alone"] == 800  # 2,000 ms of CPU a second / 2.5
    assert ceiling({}, cores=2) is None  # no step held: no sustained cost
