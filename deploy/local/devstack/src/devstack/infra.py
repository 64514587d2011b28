"""Kafka and PostgreSQL for local runs and tests, started by the project's own scripts.

Where `KAFKA_BOOTSTRAP_SERVERS` or the database URLs are set, those are used and nothing is
started. This is the one place that decides where the infrastructure comes from.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from contracts import ALL_TOPICS, dlq_topic
from devstack.processes import port_answers

REPO_ROOT = Path(__file__).resolve().parents[5]
SCRIPTS = REPO_ROOT / "deploy" / "local"
CACHE = REPO_ROOT / ".cache"

SERVICE_DATABASES = {"order": "orders", "notifier": "notifier", "audit": "audit"}
DEV_PG = "postgresql://backbone:backbone@127.0.0.1:5432"


def _run_script(script: str, *args: str, env: dict[str, str] | None = None) -> None:
    subprocess.run([str(SCRIPTS / script), *args], check=True, env={**os.environ, **(env or {})})


@dataclass(frozen=True)
class Kafka:
    bootstrap_servers: str
    port: int | None = None
    state_dir: Path | None = None

    @property
    def managed(self) -> bool:
        """True when this project started the broker (and so may stop and restart it)."""
        return self.port is not None

    def _env(self) -> dict[str, str]:
        return {"KAFKA_PORT": str(self.port), "KAFKA_STATE_DIR": str(self.state_dir)}

    def stop(self) -> None:
        _run_script("kafka.sh", "stop", env=self._env())

    def start(self) -> None:
        env = self._env()
        env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
        _run_script("kafka.sh", "start", env={**env, "KAFKA_BOOTSTRAP_SERVERS": ""})


def dev_kafka() -> Kafka:
    """The broker `make run` uses: external if configured, else ours on 127.0.0.1:9092."""
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        return Kafka(external)
    kafka = Kafka("127.0.0.1:9092", 9092, CACHE / "kafka-9092")
    kafka.start()
    return kafka


def fresh_test_kafka() -> Kafka:
    """A broker of the test session's own, with empty storage, so no earlier run's messages
    leak in; on `TEST_KAFKA_PORT` (default 19092) so it never disturbs `make run`'s broker.
    Uses `KAFKA_BOOTSTRAP_SERVERS` instead when set."""
    return fresh_kafka(int(os.environ.get("TEST_KAFKA_PORT", "19092")), "test")


def fresh_kafka(port: int, purpose: str) -> Kafka:
    """A broker with empty storage on `port` (chosen by `<PURPOSE>_KAFKA_PORT`), its state in
    `.cache/kafka-<purpose>-<port>`; `KAFKA_BOOTSTRAP_SERVERS` instead when set."""
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        return Kafka(external)
    kafka = Kafka(f"127.0.0.1:{port}", port, CACHE / f"kafka-{purpose}-{port}")
    kafka.stop()
    if port_answers(port):
        # Another checkout's or session's broker: sharing it would mix their messages.
        raise RuntimeError(
            f"port {port} is taken by a broker this checkout did not start; "
            f"set {purpose.upper()}_KAFKA_PORT to a free port"
        )
    shutil.rmtree(kafka.state_dir, ignore_errors=True)  # type: ignore[arg-type]
    kafka.start()
    return kafka


TOPIC_PARTITIONS = 6


async def ensure_topics(bootstrap_servers: str, partitions: int = TOPIC_PARTITIONS) -> None:
    """Create every topic of the contracts and its DLQ, if missing. Partitions bound how many
    replicas of a consumer share the work, so they are chosen here rather than left to the
    broker's auto-creation."""
    wanted = [*ALL_TOPICS, *(dlq_topic(topic) for topic in ALL_TOPICS)]
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [name for name in wanted if name not in existing]
        if missing:
            await admin.create_topics(
                [
                    NewTopic(name, num_partitions=partitions, replication_factor=1)
                    for name in missing
                ]
            )
    finally:
        await admin.close()


def _asyncpg_url(url: str) -> str:
    return url.replace("postgresql://", "postgresql+asyncpg://", 1)


def dev_database_urls() -> dict[str, str]:
    """SQLAlchemy URLs of the three service databases: from the environment, or ours."""
    configured = {
        service: os.environ.get(f"{service.upper()}_DATABASE_URL") for service in SERVICE_DATABASES
    }
    if not any(configured.values()):
        _run_script("postgres.sh", "start")
    return {
        service: configured[service] or _asyncpg_url(f"{DEV_PG}/{database}")
        for service, database in SERVICE_DATABASES.items()
    }


@dataclass(frozen=True)
class Postgres:
    """A cluster of the project's own on `port`, for tests that stop or restart PostgreSQL
    without disturbing the shared one."""

    port: int

    @property
    def admin_url(self) -> str:
        return DEV_PG.rsplit(":", 1)[0] + f":{self.port}"

    def _env(self) -> dict[str, str]:
        return {
            "PG_PORT": str(self.port),
            **{f"{s.upper()}_DATABASE_URL": "" for s in SERVICE_DATABASES},
        }

    def start(self) -> None:
        _run_script("postgres.sh", "start", env=self._env())

    def stop(self) -> None:
        _run_script("postgres.sh", "stop", env=self._env())


def restartable_test_postgres() -> Postgres:
    """A cluster on `TEST_PG_PORT` (default 15432), started; restarting it is safe because
    only tests that ask for it use it."""
    cluster = Postgres(int(os.environ.get("TEST_PG_PORT", "15432")))
    cluster.start()
    return cluster


@dataclass
class TestDatabases:
    """Three throwaway databases for one test session, on the project's PostgreSQL."""

    admin_url: str
    names: dict[str, str]

    @property
    def urls(self) -> dict[str, str]:
        return {svc: _asyncpg_url(f"{self.admin_url}/{db}") for svc, db in self.names.items()}

    def dsn(self, service: str) -> str:
        """A plain libpq/asyncpg DSN, for tests that look into a service's tables."""
        return f"{self.admin_url}/{self.names[service]}"


def _psql(admin_url: str, sql: str) -> None:
    subprocess.run(
        ["psql", f"{admin_url}/postgres", "-v", "ON_ERROR_STOP=1", "-qAtX", "-c", sql],
        check=True,
    )


def create_test_databases(prefix: str = "t", admin_url: str | None = None) -> TestDatabases:
    """Fresh databases named `<prefix>_<random>_<service db>`, on the cluster of `admin_url`
    (a role allowed to CREATE DATABASE), else `TEST_PG_ADMIN_URL`, else the project's."""
    admin_url = admin_url or os.environ.get("TEST_PG_ADMIN_URL")
    if not admin_url:
        _run_script(
            "postgres.sh", "start", env={f"{s.upper()}_DATABASE_URL": "" for s in SERVICE_DATABASES}
        )
        admin_url = DEV_PG
    tag = secrets.token_hex(4)
    names = {svc: f"{prefix}_{tag}_{db}" for svc, db in SERVICE_DATABASES.items()}
    for name in names.values():
        _psql(admin_url, f"CREATE DATABASE {name}")
    return TestDatabases(admin_url, names)


def drop_test_databases(databases: TestDatabases) -> None:
    for name in databases.names.values():
        _psql(databases.admin_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
