"""`make run`: the whole system on this machine, until Ctrl-C.

Starts (or reuses) Kafka and PostgreSQL, the SMTP sink and the three services on their
default ports, and prints where each listens and an admin token.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

from devstack import infra
from devstack.stack import SERVICES, Stack

DEFAULT_PORTS = {"order": 8000, "notifier": 8001, "audit": 8002, "smtp": 1025, "sms": 1026}


def _ports() -> dict[str, int]:
    ports = {
        name: int(os.environ.get(f"{name.upper()}_HTTP_PORT", port))
        for name, port in DEFAULT_PORTS.items()
    }
    ports["smtp"] = int(os.environ.get("DEV_SMTP_PORT", DEFAULT_PORTS["smtp"]))
    ports["sms"] = int(os.environ.get("DEV_SMS_PORT", DEFAULT_PORTS["sms"]))
    return ports


def main() -> None:
    kafka = infra.dev_kafka()
    databases = infra.dev_databases()
    stack = Stack(kafka.bootstrap_servers, databases, _ports(), infra.CACHE / "run")
    stopping = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopping.set())
    try:
        stack.start()
        _announce(stack)
        while not stopping.wait(1.0):
            dead = [name for name, p in stack.processes.items() if not p.running]
            if dead:
                print(f"stopped unexpectedly: {', '.join(dead)}\n{stack.logs()}", flush=True)
                break
    finally:
        print("stopping services…", flush=True)
        stack.stop()


def _announce(stack: Stack) -> None:
    relative = Path(os.path.relpath(stack.workdir, Path.cwd()))
    lines = [f"{name:<9} {stack.url(name)}" for name in SERVICES]
    lines += [
        f"smtp sink 127.0.0.1:{stack.ports['smtp']} (mail in {relative / 'mail'})",
        f"sms sink  127.0.0.1:{stack.ports['sms']} (messages in {relative / 'sms.jsonl'})",
        f"kafka     {stack.kafka_bootstrap_servers}",
        f"logs      {relative / 'logs'}",
        f"admin token: {stack.admin_token}",
        f"admin page  {stack.url('order')}/admin (paste the admin token)",
        "",
        "try it:",
        f"  TOKEN={stack.admin_token}",
        f'  curl -s -X POST {stack.url("order")}/orders -H "Authorization: Bearer $TOKEN" '
        "-H 'content-type: application/json' "
        '-d \'{"customer": {"name": "Ada", "email": "ada@example.com"}}\'',
        f"  curl -s -X POST {stack.url('order')}/orders/<id>/status "
        '-H "Authorization: Bearer $TOKEN" '
        "-H 'content-type: application/json' -d '{\"status\": \"confirmed\"}'",
        f'  curl -s "{stack.url("notifier")}/communications?order_id=<id>" '
        '-H "Authorization: Bearer $TOKEN"',
        f'  curl -s "{stack.url("audit")}/audit?entity_id=<id>" -H "Authorization: Bearer $TOKEN"',
        "",
        "Ctrl-C stops the services (Kafka and PostgreSQL keep running).",
    ]
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main()
