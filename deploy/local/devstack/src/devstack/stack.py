"""The whole system on one machine: the SMTP sink (and, given an "sms" port, the SMS sink) and
the three services as processes, wired to a Kafka broker and three databases. `make run`,
`make demo` and the e2e tests use this."""

from __future__ import annotations

import asyncio
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from devstack.infra import ServiceDatabase, ensure_topics
from devstack.processes import (
    Process,
    migrate,
    run_checked,
    service_env,
    service_process,
    sms_sink_process,
    smtp_sink_process,
)

SERVICES = ("order", "notifier", "audit")


@dataclass
class Stack:
    kafka_bootstrap_servers: str
    databases: dict[str, ServiceDatabase]
    ports: dict[str, int]
    workdir: Path
    admin_token: str = ""
    processes: dict[str, Process] = field(default_factory=dict)
    # Given to every service, e.g. OTEL_TRACES_EXPORTER=console to write spans to the logs.
    common_env: dict[str, str] = field(default_factory=dict)

    @property
    def maildir(self) -> Path:
        return self.workdir / "mail"

    @property
    def sms_file(self) -> Path:
        return self.workdir / "sms.jsonl"

    @property
    def log_dir(self) -> Path:
        return self.workdir / "logs"

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}"

    def env(self, service: str) -> dict[str, str]:
        extra = dict(self.common_env)
        if service in ("notifier", "audit"):
            # Their read APIs check bearer tokens with the order service that issues them.
            extra[f"{service.upper()}_ORDER_SERVICE_URL"] = self.url("order")
        if service == "order":
            # The admin page reads communications and the audit timeline through the order
            # service (a stack of the order service alone has neither).
            for peer in ("notifier", "audit"):
                if peer in self.ports:
                    extra[f"ORDER_{peer.upper()}_SERVICE_URL"] = self.url(peer)
        if service == "notifier":
            extra |= {
                "NOTIFIER_SMTP_HOST": "127.0.0.1",
                "NOTIFIER_SMTP_PORT": str(self.ports["smtp"]),
            }
            if "sms" in self.ports:
                extra["NOTIFIER_SMS_URL"] = f"http://127.0.0.1:{self.ports['sms']}/messages"
                extra["NOTIFIER_NOTIFY_CHANNELS"] = '["email", "sms"]'
        return service_env(
            service,
            database=self.databases[service],
            kafka_bootstrap_servers=self.kafka_bootstrap_servers,
            http_port=self.ports[service],
            extra=extra,
        )

    def start_smtp_sink(self) -> Process:
        sink = smtp_sink_process(self.ports["smtp"], self.maildir, self.log_dir)
        sink.start()
        self.processes["smtp-sink"] = sink
        return sink

    def start_sms_sink(self) -> Process:
        sink = sms_sink_process(self.ports["sms"], self.sms_file, self.log_dir)
        sink.start()
        self.processes["sms-sink"] = sink
        return sink

    def launch_service(self, service: str) -> Process:
        process = service_process(service, self.env(service), self.ports[service], self.log_dir)
        process.launch()
        self.processes[service] = process
        return process

    def issue_token(self, name: str, role: str = "viewer") -> str:
        """A fresh token of `role` for `name`; earlier tokens of `name` are revoked."""
        command = ["token", "create", "--name", name, "--role", role, "--replace"]
        created = run_checked(
            [sys.executable, "-m", "order", *command], self.env("order"), "token create"
        )
        return created.strip().splitlines()[-1]

    def revoke_tokens(self, name: str) -> None:
        command = ["token", "revoke", "--name", name]
        run_checked([sys.executable, "-m", "order", *command], self.env("order"), "token revoke")

    def issue_admin_token(self, name: str = "dev-admin") -> str:
        """A fresh admin token; earlier tokens of `name` are revoked."""
        self.admin_token = self.issue_token(name, "admin")
        return self.admin_token

    def start(self) -> None:
        """Migrate every database, then start the sink and the services; each start waits until
        the process answers its readiness check."""
        asyncio.run(ensure_topics(self.kafka_bootstrap_servers))
        with ThreadPoolExecutor(len(SERVICES)) as pool:
            list(pool.map(lambda service: migrate(service, self.env(service)), SERVICES))
        self.issue_admin_token()
        self.start_smtp_sink()
        if "sms" in self.ports:
            self.start_sms_sink()
        # Started side by side; each is then waited for until it answers its readiness check.
        launched = [self.launch_service(service) for service in SERVICES]
        for process in launched:
            process.wait_ready(60)

    def stop(self) -> None:
        for process in reversed(list(self.processes.values())):
            process.stop()

    def logs(self) -> str:
        return "\n".join(
            f"----- {name} -----\n{process.tail(60)}" for name, process in self.processes.items()
        )
