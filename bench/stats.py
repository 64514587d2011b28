"""The arithmetic of the benchmark: percentiles, the offered-load ladder, when a load step
counts as broken, and the hottest functions of a py-spy profile. No I/O, unit-tested."""

from __future__ import annotations

import math
import re
import statistics
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any


def percentile(ordered: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) of already sorted values, interpolated linearly between
    the two nearest ranks (numpy's default), so small samples are not rounded to one value."""
    if not ordered:
        raise ValueError("no values")
    position = (len(ordered) - 1) * q / 100
    below = math.floor(position)
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (ordered[above] - ordered[below]) * (position - below)


@dataclass(frozen=True)
class Latency:
    """A latency distribution in milliseconds."""

    count: int
    p50: float
    p95: float
    p99: float
    max: float
    # How much longer (p50) the last third of the step's changes waited than the first third:
    # near zero while the consumers keep up, the backlog's growth when they do not.
    growth_ms: float | None = None

    @classmethod
    def of_seconds(cls, seconds: Iterable[float]) -> Latency | None:
        ordered = sorted(s * 1000 for s in seconds)
        if not ordered:
            return None
        return cls(
            count=len(ordered),
            p50=round(percentile(ordered, 50), 2),
            p95=round(percentile(ordered, 95), 2),
            p99=round(percentile(ordered, 99), 2),
            max=round(ordered[-1], 2),
        )

    @classmethod
    def of_timed(cls, timed: Iterable[tuple[float, float]]) -> Latency | None:
        """The distribution of (due, seconds) pairs, with its growth over the step."""
        by_due = [seconds for _, seconds in sorted(timed)]
        latency = cls.of_seconds(by_due)
        third = len(by_due) // 3
        if latency is None or third == 0:
            return latency
        growth = statistics.median(by_due[-third:]) - statistics.median(by_due[:third])
        return replace(latency, growth_ms=round(growth * 1000, 2))

    @classmethod
    def of_buckets(cls, buckets: Sequence[tuple[float, float]]) -> Latency | None:
        """The distribution in a Prometheus histogram's cumulative buckets, (upper bound in
        seconds, count) ascending and ending with +Inf. A percentile is interpolated linearly
        inside its bucket, as Prometheus's histogram_quantile does, so it is only as fine as
        the buckets; `max` is the upper bound of the lowest bucket holding every value."""
        total = buckets[-1][1] if buckets else 0
        if total <= 0:
            return None
        finite = [bound for bound, _ in buckets if not math.isinf(bound)]

        def at(q: float) -> float:
            rank = total * q / 100
            lower_bound, lower_count = 0.0, 0.0
            for bound, count in buckets:
                if count >= rank:
                    if math.isinf(bound):
                        return finite[-1] if finite else lower_bound
                    return lower_bound + (bound - lower_bound) * (rank - lower_count) / (
                        count - lower_count
                    )
                lower_bound, lower_count = bound, count
            raise AssertionError("the +Inf bucket holds every value")

        return cls(
            count=round(total),
            p50=round(at(50) * 1000, 2),
            p95=round(at(95) * 1000, 2),
            p99=round(at(99) * 1000, 2),
            max=round(at(100) * 1000, 2),
        )


def buckets_between(
    before: Sequence[tuple[float, float]], after: Sequence[tuple[float, float]]
) -> list[tuple[float, float]]:
    """What a cumulative histogram counted between two scrapes, bucket by bucket."""
    earlier = dict(before)
    return [(bound, count - earlier.get(bound, 0.0)) for bound, count in after]


@dataclass(frozen=True)
class StatementCount:
    """One statement's counters in one service's database (pg_stat_statements), since the
    server started."""

    service: str
    statement: str  # its text, constants as $n
    calls: int
    exec_ms: float  # time inside the server's executor: waits for locks and the CPU included
    wal_bytes: int

    def plus(self, other: StatementCount) -> StatementCount:
        return replace(
            self,
            calls=self.calls + other.calls,
            exec_ms=self.exec_ms + other.exec_ms,
            wal_bytes=self.wal_bytes + other.wal_bytes,
        )

    def minus(self, earlier: StatementCount) -> StatementCount:
        return replace(
            self,
            calls=self.calls - earlier.calls,
            exec_ms=self.exec_ms - earlier.exec_ms,
            wal_bytes=self.wal_bytes - earlier.wal_bytes,
        )

    def per_change(self, changes: int) -> dict[str, float]:
        return {
            "calls_per_change": round(self.calls / changes, 3),
            "exec_ms_per_change": round(self.exec_ms / changes, 4),
            "wal_kb_per_change": round(self.wal_bytes / 1024 / changes, 3),
        }


StatementKey = tuple[str, int]  # (database, queryid)


def statement_work(
    before: Mapping[StatementKey, StatementCount],
    after: Mapping[StatementKey, StatementCount],
    changes: int,
    top: int = 6,
) -> dict[str, Any]:
    """What the services' statements did between two readings, per change: by service (calls,
    execution ms and WAL KB), and the `top` statements that took the most execution time."""
    if changes <= 0:
        return {}
    done = []
    for key, count in after.items():
        since = count.minus(before[key]) if key in before else count
        if since.calls > 0:
            done.append(since)
    by_service: dict[str, StatementCount] = {}
    for count in done:
        totals = by_service.get(count.service)
        by_service[count.service] = count if totals is None else totals.plus(count)
    done.sort(key=lambda count: count.exec_ms, reverse=True)
    return {
        "by_service": {
            service: totals.per_change(changes) for service, totals in sorted(by_service.items())
        },
        "top": [
            {
                "service": count.service,
                "statement": " ".join(count.statement.split())[:300],
                **count.per_change(changes),
            }
            for count in done[:top]
        ],
    }


def ladder(start: float, factor: float, ceiling: float) -> list[float]:
    """Offered rates for the stepped load: `start`, then each `factor` times the one before,
    up to `ceiling` (included when reached exactly); whole numbers, for readable tables."""
    if start <= 0 or factor <= 1:
        raise ValueError("the ladder needs a positive start and a factor above 1")
    rates: list[float] = []
    rate = start
    while rate <= ceiling + 1e-9:
        rates.append(float(round(rate)))
        rate *= factor
    return rates


@dataclass(frozen=True)
class BreakingPoint:
    """When a load step no longer counts as sustained."""

    max_error_ratio: float = 0.01
    # Below this share of the offered rate the system (or the generator) fell behind.
    min_achieved_ratio: float = 0.9
    max_response_p99_ms: float = 1000.0
    # Change → event / email / audit: past this the consumers are building a backlog.
    max_consequence_p99_ms: float = 5000.0
    # A consequence's p50 grew this much from the step's first third to its last: the
    # consumers fell behind the offered rate, however short the step kept the p99.
    max_consequence_growth_ms: float = 1000.0


CONSEQUENCES = ("event", "email", "audit")


@dataclass
class Step:
    """One load step at a fixed offered rate, and what came of it."""

    phase: str
    offered_rate: float
    seconds: float
    sent: int
    ok: int
    errors: int
    achieved_rate: float
    latencies: dict[str, Latency | None] = field(default_factory=dict)
    # Every consequence (event, email, audit) of the step arrived before the drain timeout.
    drained: bool = True
    drain_seconds: float = 0.0
    resources: dict[str, dict[str, float]] = field(default_factory=dict)
    # PostgreSQL's own work from the step's start to the end of its drain: checkpoints,
    # autovacuum and autoanalyze runs completed (see observe.postgres_background).
    postgres_background: dict[str, int] = field(default_factory=dict)
    # The services' statements from the step's start to the end of its drain, per change
    # (see statement_work); empty where the server does not count them.
    statements: dict[str, Any] = field(default_factory=dict)
    breaks: list[str] = field(default_factory=list)

    def judge(self, limits: BreakingPoint) -> None:
        """Record why this step broke, if it did."""
        self.breaks = breaking_reasons(self, limits)

    @property
    def passed(self) -> bool:
        return not self.breaks

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["passed"] = self.passed
        return data


def breaking_reasons(step: Step, limits: BreakingPoint) -> list[str]:
    reasons = []
    if step.sent == 0:
        return ["nothing was sent"]
    error_ratio = step.errors / step.sent
    if error_ratio > limits.max_error_ratio:
        reasons.append(f"errors {error_ratio:.1%} > {limits.max_error_ratio:.0%}")
    if step.achieved_rate < limits.min_achieved_ratio * step.offered_rate:
        reasons.append(
            f"achieved {step.achieved_rate:.0f}/s < {limits.min_achieved_ratio:.0%} of offered"
        )
    response = step.latencies.get("http")
    if response is not None and response.p99 > limits.max_response_p99_ms:
        reasons.append(f"HTTP p99 {response.p99:.0f} ms > {limits.max_response_p99_ms:.0f} ms")
    for name in CONSEQUENCES:
        latency = step.latencies.get(name)
        if latency is None:
            continue
        if latency.p99 > limits.max_consequence_p99_ms:
            reasons.append(
                f"change→{name} p99 {latency.p99:.0f} ms > {limits.max_consequence_p99_ms:.0f} ms"
            )
        if latency.growth_ms is not None and latency.growth_ms > limits.max_consequence_growth_ms:
            reasons.append(
                f"change→{name} p50 grew {latency.growth_ms:.0f} ms over the step > "
                f"{limits.max_consequence_growth_ms:.0f} ms (backlog growing)"
            )
    if not step.drained:
        reasons.append("consequences still missing after the drain timeout (backlog)")
    return reasons


def _bracket(steps: Sequence[Step]) -> tuple[Step | None, Step | None]:
    """The last step of the unbroken run from the lowest offered rate, and the step right
    above it (the first that broke), by offered rate."""
    held = None
    for step in sorted(steps, key=lambda s: s.offered_rate):
        if not step.passed:
            return held, step
        held = step
    return held, None


def next_probe(steps: Sequence[Step], resolution: float) -> float | None:
    """The offered rate to try next to narrow down where the load breaks: halfway between
    the highest rate that held and the lowest that broke, until they are within
    `resolution` (a ratio: 1.15 is 15 %) of each other. None when nothing broke, when the
    lowest rate already broke, or once the bracket is that narrow."""
    held, broke = _bracket(steps)
    if held is None or broke is None or broke.offered_rate <= held.offered_rate * resolution:
        return None
    probe = float(round((held.offered_rate + broke.offered_rate) / 2))
    return probe if held.offered_rate < probe < broke.offered_rate else None


def sustained_step(steps: Sequence[Step]) -> Step | None:
    """The last step of the unbroken run from the lowest offered rate: a step that passes
    after an earlier one broke does not count."""
    held, _ = _bracket(steps)
    return held


def sustained_rate(steps: Sequence[Step]) -> float:
    held = sustained_step(steps)
    return 0.0 if held is None else held.achieved_rate


def cpu_cost(step: Step | None) -> dict[str, float]:
    """CPU ms per change of each process in `step` (none for no step)."""
    if step is None:
        return {}
    return {
        name: figures["cpu_ms_per_change"]
        for name, figures in step.resources.items()
        if "cpu_ms_per_change" in figures
    }


def broke_at(steps: Sequence[Step]) -> float | None:
    """The lowest offered rate that broke, above the unbroken run; None if nothing broke."""
    _, broke = _bracket(steps)
    return None if broke is None else broke.offered_rate


# --- py-spy profiles ---------------------------------------------------------------------

# One frame of py-spy's raw (collapsed) output: "function (path/to/file.py:123)".
_FRAME = re.compile(r"^(?P<function>.+?) \((?P<path>[^()]*?)(?::(?P<line>\d+))?\)$")
_PACKAGE_ROOTS = ("site-packages/", "/src/", "/lib/python3.11/")


@dataclass(frozen=True)
class Hotspot:
    name: str
    share: float  # of all samples, 0..1


@dataclass(frozen=True)
class Hotspots:
    samples: int
    by_self: list[Hotspot]  # where the CPU was when sampled
    by_total: list[Hotspot]  # on the stack when sampled (the function and what it called)
    by_package: list[Hotspot]  # self samples summed per top-level package or module

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _module_path(path: str) -> str:
    for root in _PACKAGE_ROOTS:
        if root in path:
            return path.rsplit(root, 1)[1]
    return path.lstrip("/")  # py-spy mostly shortens paths to `package/module.py` itself


def frame_name(frame: str) -> str:
    """`function (module/path.py)` without the line, so one function's lines add up."""
    match = _FRAME.match(frame.strip())
    if match is None:
        return frame.strip()
    return f"{match['function']} ({_module_path(match['path'])})"


def frame_package(frame: str) -> str:
    match = _FRAME.match(frame.strip())
    if match is None:
        return "?"
    module = _module_path(match["path"])
    return module.split("/", 1)[0].removesuffix(".py")


def hotspots(collapsed: Iterable[str], top: int = 15) -> Hotspots:
    """Summarise py-spy `--format raw` lines (`frame;frame;...;frame <count>`, outermost
    frame first)."""
    self_samples: Counter[str] = Counter()
    total_samples: Counter[str] = Counter()
    package_samples: Counter[str] = Counter()
    samples = 0
    for line in collapsed:
        stack, _, count_text = line.strip().rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if _FRAME.match(f.strip())]
        if not frames:
            continue
        samples += count
        self_samples[frame_name(frames[-1])] += count
        package_samples[frame_package(frames[-1])] += count
        for name in {frame_name(f) for f in frames}:
            total_samples[name] += count

    def ranked(counter: Counter[str]) -> list[Hotspot]:
        return [Hotspot(name, round(n / samples, 4)) for name, n in counter.most_common(top)]

    if samples == 0:
        return Hotspots(0, [], [], [])
    # Frames on (nearly) every stack are the event loop and the thread itself: no lead.
    callers = Counter({name: n for name, n in total_samples.items() if n < 0.9 * samples})
    return Hotspots(samples, ranked(self_samples), ranked(callers), ranked(package_samples))
