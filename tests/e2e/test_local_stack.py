"""How the local stack (`make run`, the benchmark, these tests) shares one machine between the
services: the consumers yield the CPU to the order service, whose answers cannot wait."""

from __future__ import annotations

import os

import psutil

from devstack.stack import SERVICES, Stack


def test_every_thread_of_the_consumers_runs_at_a_lower_priority_than_the_order_service(
    stack: Stack,
) -> None:
    own = os.getpriority(os.PRIO_PROCESS, 0)  # the stack's processes start from the test's
    niceness: dict[str, set[int]] = {}
    for service in SERVICES:
        popen = stack.processes[service].popen
        assert popen is not None
        # Linux keeps a niceness per thread: threads started before a later renice would
        # keep the old one.
        threads = psutil.Process(popen.pid).threads()
        niceness[service] = {os.getpriority(os.PRIO_PROCESS, t.id) for t in threads}
    lower = min(own + 5, 19)
    assert niceness == {"order": {own}, "notifier": {lower}, "audit": {lower}}
