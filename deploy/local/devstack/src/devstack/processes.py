"""The services and dev sinks as real OS processes: start, wait until ready, stop by pid."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

if TYPE_CHECKING:
    from devstack.infra import ServiceDatabase


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_answers(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Process:
    """One child process with its own log file. Started with `start()`, ended by its pid."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_dir: Path
    ready_url: str | None = None
    ready_port: int | None = None
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"{self.name}.log"

    def start(self, timeout: float = 60.0) -> None:
        self.launch()
        self.wait_ready(timeout)

    def launch(self) -> None:
        """Start the process without waiting for it to be ready."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.popen = subprocess.Popen(
            self.argv,
            env={**os.environ, **self.env},
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen is not None and self.popen.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.popen.returncode} while starting; "
                    f"last log lines:\n{self.tail()}"
                )
            if self._ready():
                return
            time.sleep(0.1)
        raise TimeoutError(f"{self.name} not ready after {timeout:.0f} s; log:\n{self.tail()}")

    def _ready(self) -> bool:
        if self.ready_url is not None:
            try:
                return httpx.get(self.ready_url, timeout=1.0).status_code == 200
            except httpx.HTTPError:
                return False
        if self.ready_port is not None:
            return port_answers(self.ready_port)
        return True

    def tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM (graceful shutdown), then SIGKILL if it does not end in time."""
        if not self.running or self.popen is None:
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()

    def kill(self) -> None:
        """SIGKILL: the process dies mid-work, as in a crash."""
        if self.running and self.popen is not None:
            self.popen.kill()
            self.popen.wait()


def run_checked(argv: list[str], env: dict[str, str], what: str) -> str:
    """Run a command to completion; its stdout, or an error carrying all it printed."""
    result = subprocess.run(
        argv, env={**os.environ, **env}, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"{what} failed ({result.returncode}):\n{result.stdout}{result.stderr}")
    return result.stdout


SERVICE_MODULES = {"order": "order", "notifier": "notifier", "audit": "audit"}


def service_env(
    service: str,
    *,
    database: ServiceDatabase,
    kafka_bootstrap_servers: str,
    http_port: int,
    extra: dict[str, str] | None = None,
) -> dict[str, str]:
    """The environment of one service process on this machine: dev mode (the local roles'
    passwords are accepted), its database as the runtime role and, for `migrate`, as the
    owner."""
    prefix = service.upper()
    return {
        "BACKBONE_ENV": "dev",
        f"{prefix}_DATABASE_URL": database.url,
        f"{prefix}_MIGRATION_DATABASE_URL": database.migration_url,
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap_servers,
        f"{prefix}_HTTP_PORT": str(http_port),
        **(extra or {}),
    }


def migrate(service: str, env: dict[str, str]) -> None:
    run_checked(
        [sys.executable, "-m", SERVICE_MODULES[service], "migrate"], env, f"{service} migrate"
    )


# Everything here shares one machine, so the consumers yield the CPU to the order service
# when both want it: their work is asynchronous by design (its targets are in seconds), a
# status change's answer is not (tens of milliseconds). Kubernetes says the same with the
# order service's larger CPU request. 0 is the default niceness; 19 the lowest priority.
NICENESS = {"order": 0, "notifier": 5, "audit": 5}


def service_process(
    service: str, env: dict[str, str], http_port: int, log_dir: Path, name: str | None = None
) -> Process:
    argv = [sys.executable, "-m", SERVICE_MODULES[service], "serve"]
    if NICENESS[service]:
        # nice(1) execs the service: the pid stays the service's, its threads inherit.
        argv = ["nice", "-n", str(NICENESS[service]), *argv]
    return Process(
        name=name or service,
        argv=argv,
        env=env,
        log_dir=log_dir,
        ready_url=f"http://127.0.0.1:{http_port}/health/ready",
    )


def smtp_sink_process(port: int, maildir: Path, log_dir: Path) -> Process:
    return Process(
        name="smtp-sink",
        argv=[
            sys.executable,
            "-m",
            "devstack.smtp_sink",
            "--port",
            str(port),
            "--maildir",
            str(maildir),
        ],
        env={},
        log_dir=log_dir,
        ready_port=port,
    )


def sms_sink_process(port: int, path: Path, log_dir: Path) -> Process:
    return Process(
        name="sms-sink",
        argv=[
            sys.executable,
            "-m",
            "devstack.sms_sink",
            "--port",
            str(port),
            "--file",
            str(path),
        ],
        env={},
        log_dir=log_dir,
        ready_port=port,
    )
