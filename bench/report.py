"""Writes a run's results: JSON (timestamped, and latest), a PNG chart of throughput and
latency against offered load, a markdown table, and (for a full run) the README's section."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import re
import statistics
import subprocess
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from bench.system import Plan
from devstack import infra

RESULTS = Path(__file__).resolve().parent / "results"
README = infra.REPO_ROOT / "README.md"
README_START = "<!-- bench:start -->"
README_END = "<!-- bench:end -->"
LIBRARIES = (
    "fastapi",
    "uvicorn",
    "starlette",
    "faststream",
    "aiokafka",
    "sqlalchemy",
    "asyncpg",
    "pydantic",
    "aiosmtplib",
    "aiosmtpd",
    "aiohttp",
)
SERVICES = ("order", "notifier", "audit")
TARGETS = {
    "sustained_per_s": 1000,
    "ratio": 0.5,
    "http_p99_ms": 25,
    "email_p99_ms": 1000,
    "audit_p99_ms": 1000,
    "rss_mb": 200,
}


def _git(*args: str) -> str:
    result = subprocess.run(
        ["git", *args], cwd=infra.REPO_ROOT, capture_output=True, text=True, check=False
    )
    return result.stdout.strip()


def environment(kafka: infra.Kafka, databases: infra.TestDatabases) -> dict[str, Any]:
    """The machine, and the versions of everything measured."""
    kafka_jars = sorted((infra.CACHE / "kafka" / "libs").glob("kafka_2.13-*.jar"))
    kafka_version = kafka_jars[0].stem.removeprefix("kafka_2.13-") if kafka_jars else "external"
    postgres = subprocess.run(
        ["psql", f"{databases.admin_url}/postgres", "-qAtX", "-c", "SHOW server_version"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return {
        "machine": {
            "cores": os.cpu_count(),
            "cpu": _cpu_model(),
            "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "system": platform.platform(),
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        },
        "versions": {
            "python": platform.python_version(),
            "kafka": kafka_version,
            "postgresql": postgres,
            **{name: importlib.metadata.version(name) for name in LIBRARIES},
        },
        "kafka_bootstrap_servers": kafka.bootstrap_servers,
        "git": {"commit": _git("rev-parse", "HEAD"), "dirty": bool(_git("status", "--porcelain"))},
    }


def _cpu_model() -> str:
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    match = re.search(r"^model name\s*:\s*(.+)$", info, re.MULTILINE)
    return match[1] if match else platform.processor()


# --- derived figures -------------------------------------------------------------------


def median_p99(steps: list[dict[str, Any]], name: str) -> float | None:
    """The median of the steps' p99 of `name`; None when no step measured it."""
    p99s = [float(s["latencies"][name]["p99"]) for s in steps if s["latencies"].get(name)]
    return statistics.median(p99s) if p99s else None


# The processes of a change that are not the three services: their database, the broker and
# the test rig (the sinks and the load generator), which share the machine with them.
OUTSIDE_SERVICES = ("postgres", "kafka", "smtp-sink", "sms-sink", "bench")


def ceiling(cost: dict[str, float] | None, cores: int) -> dict[str, Any] | None:
    """What the processes outside the three services spent per change at the sustained rate,
    and the most changes/s the machine's cores could carry at that cost alone, as if the
    services themselves took no CPU."""
    if not cost:
        return None
    outside = {name: cost[name] for name in OUTSIDE_SERVICES if cost.get(name) is not None}
    total = sum(outside.values())
    return {
        "cpu_ms_per_change": outside,
        "total_cpu_ms_per_change": round(total, 2),
        "changes_per_s_at_that_cost_alone": round(cores * 1000 / total) if total else None,
    }


def derive(results: dict[str, Any]) -> dict[str, Any]:
    """Ratios, the machine's ceiling and the issue's targets, from the measurements."""
    system = results["system"]
    limit_a = results["limit_a"]
    http = system["http"]["sustained_per_s"]
    commands = system["commands"]["sustained_per_s"]
    notifier = system["bursts"][0]["notifier_events_per_s"] or 0.0
    ratios = {
        "http_changes_over_limit_a": round(http / limit_a["changes_per_s"], 3),
        "command_changes_over_limit_a": round(commands / limit_a["changes_per_s"], 3),
        "http_changes_over_limit_a_http_shape": round(
            http / limit_a["shapes"]["http"]["changes_per_s"], 3
        ),
        "command_changes_over_limit_a_command_shape": round(
            commands / limit_a["shapes"]["command"]["changes_per_s"], 3
        ),
        "notifier_events_over_limit_b": round(notifier / results["limit_b"]["events_per_s"], 3),
    }
    half = system.get("http_half_rate_steps", [])
    at_half = f"at half rate (median of {len(half)} steps)" if len(half) > 1 else "at half rate"
    rss = results["peak_rss_mb"]
    worst_rss = max(
        (mb for name, mb in rss.items() if name.split("-")[0] in SERVICES), default=None
    )

    def target(name: str, value: float | None, goal: float, at_least: bool) -> dict[str, Any]:
        met = value is not None and (value >= goal if at_least else value <= goal)
        return {"name": name, "value": value, "target": goal, "at_least": at_least, "met": met}

    targets = [
        target("sustained HTTP changes/s (emailed and audited)", http, 1000, True),
        target("HTTP changes/s ÷ limit A", ratios["http_changes_over_limit_a"], 0.5, True),
        target("notifier events/s ÷ limit B", ratios["notifier_events_over_limit_b"], 0.5, True),
        target(f"HTTP p99 ms {at_half}", median_p99(half, "http"), 25, False),
        target(f"change→email p99 ms {at_half}", median_p99(half, "email"), 1000, False),
        target(f"change→audit p99 ms {at_half}", median_p99(half, "audit"), 1000, False),
        target("peak RSS MB of a service", worst_rss, 200, False),
    ]
    outside = ceiling(
        system["http"].get("sustained_cpu_ms_per_change"),
        results["environment"]["machine"]["cores"],
    )
    return {"ratios": ratios, "ceiling": outside, "targets": targets}


# --- files -----------------------------------------------------------------------------


def write(
    results: dict[str, Any], plan: Plan, command: str, started: datetime, finished: datetime
) -> Path:
    """Write every output; returns the markdown file."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    document = {
        "command": command,
        "mode": "quick" if plan.quick else "full",
        "started_at": started.isoformat(timespec="seconds"),
        "finished_at": finished.isoformat(timespec="seconds"),
        "plan": {**plan.__dict__, "breaking": plan.breaking.__dict__},
        **results,
        **derive(results),
    }
    suffix = "-quick" if plan.quick else ""
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    text = json.dumps(document, indent=2, default=str)
    (RESULTS / f"{stamp}{suffix}.json").write_text(text + "\n")
    (RESULTS / f"latest{suffix}.json").write_text(text + "\n")
    chart = RESULTS / f"latest{suffix}.png"
    draw(document, chart)
    table = markdown(document)
    markdown_file = RESULTS / f"latest{suffix}.md"
    markdown_file.write_text(table)
    if not plan.quick:
        update_readme(document, table)
    return markdown_file


def update_readme(document: dict[str, Any], table: str) -> None:
    readme = README.read_text()
    if README_START not in readme:
        return
    head, rest = readme.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    section = (
        f"{README_START}\nMade by `{document['command']}` on {document['started_at']} "
        f"(commit {document['environment']['git']['commit'][:10]}); raw figures in "
        "[`bench/results/latest.json`](bench/results/latest.json).\n\n"
        "![throughput and latency against offered load](bench/results/latest.png)\n\n"
        f"{_demote(table)}\n{README_END}"
    )
    README.write_text(head + section + tail)


def _demote(table: str) -> str:
    """Headings one level down, to sit under the README's benchmark section."""
    return re.sub(r"^(#+) ", lambda m: "#" * (len(m[1]) + 2) + " ", table, flags=re.MULTILINE)


def _fmt(value: float | None, digits: int = 0) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def _latency(
    step: dict[str, Any], name: str, percentiles: tuple[str, ...] = ("p50", "p99", "max")
) -> str:
    latency = step["latencies"].get(name)
    if latency is None:
        return "n/a"
    return " / ".join(f"{latency[p]:,.0f}" for p in percentiles)


def _cpu(
    resources: dict[str, Any],
    names: tuple[str, ...],
    figure: str = "cpu_percent",
    digits: int = 0,
) -> str:
    return " / ".join(_fmt(resources.get(name, {}).get(figure), digits) for name in names)


CPU_COLUMNS = ("order", "notifier", "audit", "kafka", "postgres", "machine")
COST_COLUMNS = ("order", "notifier", "audit", "postgres", "machine")
BACKGROUND_COLUMNS = ("checkpoints", "autovacuums", "autoanalyzes")


STATEMENT_SERVICES = ("order", "notifier", "audit")


def statement_ms(step: dict[str, Any]) -> str:
    """The step's execution ms per change of each service's statements, n/a where the server
    did not count them."""
    by_service = (step.get("statements") or {}).get("by_service", {})  # from 2026-12-04 on
    return " / ".join(
        _fmt(by_service.get(name, {}).get("exec_ms_per_change"), 2) for name in STATEMENT_SERVICES
    )


def statements_section(statements: dict[str, Any]) -> list[str]:
    """Where the services' statements spent their time at the sustained HTTP rate."""
    if not statements.get("top"):
        return []
    by_service = statements["by_service"]
    lines = [
        "",
        "### Statements at the sustained HTTP rate",
        "",
        "From pg_stat_statements, per change, the step's drain included: execution time inside "
        "the server (waits for locks and for a CPU included), and the WAL written. Per "
        "service: "
        + "; ".join(
            f"{name} {_fmt(figures['calls_per_change'], 1)} statements, "
            f"{_fmt(figures['exec_ms_per_change'], 2)} ms, "
            f"{_fmt(figures['wal_kb_per_change'], 1)} KB WAL"
            for name, figures in by_service.items()
        )
        + ". The statements that took the most time:",
        "",
        "| service | statement | calls | ms | WAL KB |",
        "|---|---|---|---|---|",
    ]
    for top in statements["top"]:
        text = top["statement"][:110].replace("|", "\\|")
        lines.append(
            f"| {top['service']} | `{text}` | {_fmt(top['calls_per_change'], 2)} | "
            f"{_fmt(top['exec_ms_per_change'], 3)} | {_fmt(top['wal_kb_per_change'], 2)} |"
        )
    return lines


def postgres_work(step: dict[str, Any]) -> str:
    """The step's checkpoints / autovacuums / autoanalyzes, n/a where it was not recorded."""
    counters = step.get("postgres_background") or {}  # absent from results before 2026-12-04
    return " / ".join(_fmt(counters.get(name)) for name in BACKGROUND_COLUMNS)


BURST_CPU_COLUMNS = ("notifier", "audit", "smtp-sink", "machine")


def with_replicas_added(resources: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Each service's CPU, its replicas' (`notifier-2`) added to its own."""
    added: dict[str, dict[str, float]] = {}
    for name, figures in resources.items():
        service = added.setdefault(re.sub(r"-\d+$", "", name), {"cpu_percent": 0.0})
        service["cpu_percent"] += figures["cpu_percent"]
    return added


def markdown(document: dict[str, Any]) -> str:
    environment = document["environment"]
    machine, versions = environment["machine"], environment["versions"]
    system = document["system"]
    limit_a, limit_b = document["limit_a"], document["limit_b"]
    lines = [
        "## Latest run",
        "",
        f"`{document['command']}`, {document['mode']} run, {document['started_at']}; "
        f"{machine['cores']} cores ({machine['cpu']}), {machine['memory_gb']} GB; "
        f"Python {versions['python']}, Kafka {versions['kafka']}, "
        f"PostgreSQL {versions['postgresql']}. Everything (services, broker, database, "
        "load generator) shares this machine; its load average at the end was "
        f"{' / '.join(str(x) for x in machine['load_average_at_end'])} (1 / 5 / 15 min), "
        "which says how much else was running.",
        "",
        "| figure | value | target | met |",
        "|---|---|---|---|",
        f"| limit A: raw asyncpg, one change per transaction "
        f"({limit_a['best_concurrency']} connections) | "
        f"{_fmt(limit_a['changes_per_s'])} changes/s | | |",
        f"| limit B: raw aiokafka, produced and consumed | "
        f"{_fmt(limit_b['events_per_s'])} events/s | | |",
        f"| sustained orders.commands changes/s | {_fmt(system['commands']['sustained_per_s'])}"
        " | | |",
        f"| notifier events/s (burst, 1 replica → 2) | "
        f"{_fmt(system['bursts'][0]['notifier_events_per_s'])} → "
        f"{_fmt(system['bursts'][-1]['notifier_events_per_s'])} | | |",
    ]
    cost = system["http"].get("sustained_cpu_ms_per_change")
    if cost:
        lines.append(
            "| CPU ms per HTTP change at the sustained rate: "
            + " / ".join(COST_COLUMNS)
            + " | "
            + " / ".join(_fmt(cost.get(name), 1) for name in COST_COLUMNS)
            + " | | |"
        )
    outside = document.get("ceiling")  # absent from results before 2026-12-05
    if outside:
        names = list(outside["cpu_ms_per_change"])
        lines += [
            "| of that, outside the three services: "
            + " / ".join(names)
            + " (their database, the broker, the test rig) | "
            + " / ".join(_fmt(outside["cpu_ms_per_change"][name], 2) for name in names)
            + f" = {_fmt(outside['total_cpu_ms_per_change'], 2)} | | |",
            f"| HTTP changes/s the machine's {machine['cores']} cores could carry at that cost "
            "alone, were the services free | "
            f"{_fmt(outside['changes_per_s_at_that_cost_alone'])} | | |",
        ]
    unloaded = system.get("unloaded")
    if unloaded:
        lines.append(
            f"| HTTP change p50 / p99 ms unloaded ({_fmt(unloaded['offered_rate'])} changes/s) | "
            f"{_latency(unloaded, 'http', ('p50', 'p99'))} | | |"
        )
    if "idle" in system:
        lines.append(
            "| CPU % of a core, idle: "
            + " / ".join(CPU_COLUMNS)
            + f" | {_cpu(system['idle'], CPU_COLUMNS, digits=1)} | | |"
        )
    for target in document["targets"]:
        sign = "≥" if target["at_least"] else "≤"
        digits = 2 if target["target"] < 1 else 0
        lines.append(
            f"| {target['name']} | {_fmt(target['value'], digits)} | {sign} "
            f"{_fmt(target['target'], digits)} | {'yes' if target['met'] else '**no**'} |"
        )
    in_service = median_p99(system.get("http_half_rate_steps", []), "http_in_service")
    if in_service is not None:
        lines.append(
            "| of which inside the order service: HTTP p99 ms at half rate by its own "
            f"histogram | {_fmt(in_service)} | | |"
        )
    lines += [
        "",
        "### Load steps",
        "",
        "Latencies in ms as p50 / p99 / max, each from the moment the change was due. "
        "HTTP in service: the order service's own histogram of a status change, from the "
        "request reaching the application to its answer, interpolated in its buckets of "
        "2.5-25 ms; the rest of the HTTP time is the client's, the network's and the wait "
        "for the service's event loop to read the request. "
        "CPU in % of one core: " + " / ".join(CPU_COLUMNS) + "; stolen: % of a core the "
        "hypervisor gave to other guests while this machine wanted it. CPU per change in ms, "
        "the step's drain included: " + " / ".join(COST_COLUMNS) + " (what runs whatever "
        "the load, such as polling and metrics, weighs more at low rates). PostgreSQL's own "
        "work from the step's start to the end of its drain: "
        + " / ".join(BACKGROUND_COLUMNS)
        + " (checkpoints started, autovacuum and autoanalyze runs completed); a latency "
        "outlier often shares its step with them. Statement ms per change: the execution "
        "time of the services' statements inside PostgreSQL, "
        + " / ".join(STATEMENT_SERVICES)
        + ".",
        "",
        "| phase | offered/s | achieved/s | ok / sent | HTTP | HTTP in service p50 / p99 "
        "| change→event | change→email | change→audit | CPU | stolen | CPU per change "
        "| statement ms per change | PostgreSQL's own work | verdict |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    phases = [system["http"]["steps"]]
    phases.append(system.get("http_half_rate_steps", []))
    if unloaded:
        phases.append([unloaded])
    phases += [system["commands"]["steps"], system["http_2_replicas"]["steps"]]
    for steps in phases:
        for step in steps:
            verdict = "held" if step["passed"] else "broke: " + "; ".join(step["breaks"])
            used = step["resources"]
            lines.append(
                f"| {step['phase']} | {_fmt(step['offered_rate'])} | "
                f"{_fmt(step['achieved_rate'])} | {step['ok']} / {step['sent']} | "
                f"{_latency(step, 'http')} | {_latency(step, 'http_in_service', ('p50', 'p99'))} | "
                f"{_latency(step, 'event')} | "
                f"{_latency(step, 'email')} | {_latency(step, 'audit')} | "
                f"{_cpu(used, CPU_COLUMNS)} | {_cpu(used, ('machine',), 'stolen_percent')} | "
                f"{_cpu(used, COST_COLUMNS, 'cpu_ms_per_change', digits=1)} | "
                f"{statement_ms(step)} | {postgres_work(step)} | {verdict} |"
            )
    lines += statements_section(system["http"].get("sustained_statements") or {})
    lines += [
        "",
        "### Consumers on their own",
        "",
        "A burst of `OrderStatusChanged` events written straight to orders.events. CPU in % "
        "of one core, from the burst to its last audit entry: notifier / audit / smtp-sink / "
        "machine (replicas added together).",
        "",
        "| replicas | events | notifier recorded/s | emails/s | audit entries/s | CPU | stolen |",
        "|---|---|---|---|---|---|---|",
    ]
    for burst in system["bursts"]:
        unfinished = "" if burst.get("finished", True) else " (unfinished in time)"
        used = burst["resources"]
        lines.append(
            f"| {burst['label']}{unfinished} | {burst['events']} | "
            f"{_fmt(burst['notifier_events_per_s'])} | {_fmt(burst['emails_per_s'])} | "
            f"{_fmt(burst['audit_entries_per_s'])} | "
            f"{_cpu(with_replicas_added(used), BURST_CPU_COLUMNS)} | "
            f"{_cpu(used, ('machine',), 'stolen_percent')} |"
        )
    sweep = ", ".join(f"{p['concurrency']}: {_fmt(p['changes_per_s'])}" for p in limit_a["sweep"])
    shapes = limit_a["shapes"]
    lines += [
        "",
        "### Limits",
        "",
        f"- Limit A by connections (changes/s): {sweep}. With the HTTP token lookup: "
        f"{_fmt(shapes['http']['changes_per_s'])}/s; as a command (idempotency claim, result "
        f"row): {_fmt(shapes['command']['changes_per_s'])}/s.",
        f"- Limit B: produced {_fmt(limit_b['produced_per_s'])}/s; consumed with a commit per "
        f"fetched batch {_fmt(limit_b['events_per_s'])}/s end to end; with a commit per "
        f"message {_fmt(limit_b['one_by_one_commit']['events_per_s'])}/s.",
        "- Peak RSS (MB): "
        + ", ".join(f"{name} {mb:.0f}" for name, mb in sorted(document["peak_rss_mb"].items())),
    ]
    if "profiles" in system:
        lines += ["", "### Hotspots (py-spy, share of CPU samples)", ""]
        for label, profiled in system["profiles"].items():
            for name, profile in profiled.items():
                if name == "load" or not profile["samples"]:
                    continue
                packages = ", ".join(
                    f"{h['name']} {h['share']:.0%}" for h in profile["by_package"][:6]
                )
                functions = ", ".join(
                    f"`{h['name']}` {h['share']:.0%}" for h in profile["by_self"][:5]
                )
                lines.append(
                    f"- {label}, {name} ({profile['samples']} samples): {packages}; "
                    f"functions: {functions}"
                )
    return "\n".join(lines) + "\n"


# --- chart -----------------------------------------------------------------------------


def draw(document: dict[str, Any], path: Path) -> None:
    system = document["system"]
    phases = {
        "HTTP": system["http"]["steps"],
        "orders.commands": system["commands"]["steps"],
        "HTTP, 2 notifiers + 2 audits": system["http_2_replicas"]["steps"],
    }
    figure = Figure(figsize=(13, 9))  # without pyplot: no GUI backend, no global state
    axes = figure.subplots(2, 2)
    throughput, http_latency, command_latency, cpu = axes.flat

    for label, steps in phases.items():
        offered = [s["offered_rate"] for s in steps]
        throughput.plot(offered, [s["achieved_rate"] for s in steps], "o-", label=label)
        broken = [s for s in steps if not s["passed"]]
        throughput.plot(
            [s["offered_rate"] for s in broken], [s["achieved_rate"] for s in broken], "rx", ms=10
        )
    top = max((s["offered_rate"] for steps in phases.values() for s in steps), default=1)
    bottom = min((s["offered_rate"] for steps in phases.values() for s in steps), default=1)
    throughput.plot([bottom, top], [bottom, top], ":", color="grey", label="achieved = offered")
    throughput.axhline(
        document["limit_a"]["changes_per_s"], ls="--", color="black", label="limit A (database)"
    )
    limit_b = document["limit_b"]["events_per_s"]
    throughput.set(
        title=f"Throughput (red x = broke; limit B {limit_b:,.0f} events/s)",
        xlabel="offered changes/s (log)",
        ylabel="achieved changes/s (log)",
        xscale="log",
        yscale="log",
    )
    throughput.legend(fontsize=8)

    def latencies(axis: Any, steps: list[dict[str, Any]], names: list[str], title: str) -> None:
        offered = [s["offered_rate"] for s in steps]
        for name in names:
            p99 = [(s["latencies"].get(name) or {}).get("p99") for s in steps]
            p50 = [(s["latencies"].get(name) or {}).get("p50") for s in steps]
            (line,) = axis.plot(offered, p99, "o-", label=f"{name} p99")
            axis.plot(offered, p50, "--", color=line.get_color(), alpha=0.6, label=f"{name} p50")
        axis.axhline(25, ls=":", color="grey")
        axis.axhline(1000, ls=":", color="grey")
        axis.set(
            title=title,
            xlabel="offered changes/s (log)",
            ylabel="ms from the change (log)",
            xscale="log",
            yscale="log",
        )
        axis.legend(fontsize=7, ncol=2)

    latencies(
        http_latency,
        phases["HTTP"],
        ["http", "http_in_service", "event", "email", "audit"],
        "HTTP: response and change → event / email / audit",
    )
    latencies(
        command_latency,
        phases["orders.commands"],
        ["event", "email", "audit"],
        "orders.commands: change → event / email / audit",
    )
    steps = phases["HTTP"]
    offered = [s["offered_rate"] for s in steps]
    for name in CPU_COLUMNS:
        cpu.plot(
            offered,
            [s["resources"].get(name, {}).get("cpu_percent") for s in steps],
            "o-",
            label=name,
        )
    cpu.set(
        title="HTTP load: CPU by process",
        xlabel="offered changes/s (log)",
        ylabel="% of one core",
        xscale="log",
    )
    cpu.legend(fontsize=8)
    plain = FuncFormatter(lambda value, _: f"{value:g}")  # "25" rather than "2.5e1" on log axes
    for axis in axes.flat:
        axis.xaxis.set_major_formatter(plain)
        axis.xaxis.set_minor_formatter(plain)
    figure.suptitle(f"{document['command']} — {document['started_at']}")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
