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
from typing import Any
from urllib.parse import unquote, urlsplit

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from contracts import ALL_TOPICS, dlq_topic
from devstack.processes import port_answers
from devstack.waiting import wait_until

REPO_ROOT = Path(__file__).resolve().parents[5]
SCRIPTS = REPO_ROOT / "deploy" / "local"
CACHE = REPO_ROOT / ".cache"

# The local cluster (deploy/local/postgres.sh) and its admin, which creates the test databases.
DEV_PG_SERVER = "127.0.0.1:5432"
DEV_PG = f"postgresql://backbone:backbone@{DEV_PG_SERVER}"


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


async def partitions_of(bootstrap_servers: str, topic: str) -> list[TopicPartition]:
    """The topic's partitions, once each has a leader (a topic just created has none yet, and
    clients leave such partitions out)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:

        async def described() -> dict[str, Any]:
            (description,) = await admin.describe_topics([topic])
            return description  # type: ignore[no-any-return]

        description = await wait_until(
            described,
            lambda d: (
                not d["error_code"]
                and bool(d["partitions"])
                and all(p["leader"] >= 0 for p in d["partitions"])
            ),
            within=30,
            what=f"a leader for every partition of {topic}",
        )
    finally:
        await admin.close()
    return [TopicPartition(topic, p["partition"]) for p in description["partitions"]]


async def commit_group_at_end(bootstrap_servers: str, group: str, topic: str) -> str:
    """Commits `group`'s offsets at the current end of `topic` and returns the group: a
    consumer started in it sees only what comes next, not every earlier test's messages
    (a new group would start at the earliest offset)."""
    partitions = await partitions_of(bootstrap_servers, topic)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        consumer.assign(partitions)
        await consumer.commit(await consumer.end_offsets(partitions))
    finally:
        await consumer.stop()
    return group


SERVICE_DATABASES = {"order": "orders", "notifier": "notifier", "audit": "audit"}


@dataclass(frozen=True)
class ServiceRoles:
    """A service database's owner (owns it, runs the migrations) and runtime role (what the
    service connects as); deploy/local/postgres/roles.sql creates them."""

    owner: str
    runtime: str


SERVICE_ROLES = {
    "order": ServiceRoles("orders_owner", "order_service"),
    "notifier": ServiceRoles("notifier_owner", "notifier_service"),
    "audit": ServiceRoles("audit_owner", "audit_service"),
}


def dev_password(role: str) -> str:
    """The local roles' passwords (roles.sql); the services accept them only in dev mode."""
    return f"{role}_dev"


@dataclass(frozen=True)
class ServiceDatabase:
    """Where one service's database is: the runtime role's URL, which the service runs on,
    and the owner's, which `migrate` runs on (SQLAlchemy URLs)."""

    url: str
    migration_url: str


def local_database(
    service: str, *, server: str = DEV_PG_SERVER, name: str | None = None
) -> ServiceDatabase:
    """A service's database on a cluster set up by deploy/local/postgres: its local roles with
    their dev passwords; `name` defaults to the service's dev database."""
    roles = SERVICE_ROLES[service]
    name = name or SERVICE_DATABASES[service]

    def url(role: str) -> str:
        return f"postgresql+asyncpg://{role}:{dev_password(role)}@{server}/{name}"

    return ServiceDatabase(url=url(roles.runtime), migration_url=url(roles.owner))


# For postgres.sh: no database configured elsewhere, so it provisions the local ones.
_NO_CONFIGURED_DATABASES = {
    f"{service.upper()}_{setting}": ""
    for service in SERVICE_DATABASES
    for setting in ("DATABASE_URL", "MIGRATION_DATABASE_URL")
}


def dev_databases() -> dict[str, ServiceDatabase]:
    """The three service databases: from the environment (`<SERVICE>_DATABASE_URL`,
    `<SERVICE>_MIGRATION_DATABASE_URL`), or ours on the local cluster. A service given only a
    runtime URL migrates with it too."""
    configured = {
        service: (
            os.environ.get(f"{service.upper()}_DATABASE_URL"),
            os.environ.get(f"{service.upper()}_MIGRATION_DATABASE_URL"),
        )
        for service in SERVICE_DATABASES
    }
    if not any(url for urls in configured.values() for url in urls):
        _run_script("postgres.sh", "start")
    databases = {}
    for service in SERVICE_DATABASES:
        url, migration_url = configured[service]
        local = local_database(service)
        databases[service] = ServiceDatabase(
            url=url or local.url, migration_url=migration_url or url or local.migration_url
        )
    return databases


@dataclass(frozen=True)
class Postgres:
    """A cluster of the project's own on `port`, for tests that stop or restart PostgreSQL
    without disturbing the shared one."""

    port: int

    @property
    def admin_url(self) -> str:
        return DEV_PG.rsplit(":", 1)[0] + f":{self.port}"

    def _env(self) -> dict[str, str]:
        return {"PG_PORT": str(self.port), **_NO_CONFIGURED_DATABASES}

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
    """Three throwaway databases for one test session, on the project's PostgreSQL, set up
    like the real ones: each owned by its owner role, only its runtime role may connect."""

    admin_url: str
    names: dict[str, str]

    @property
    def services(self) -> dict[str, ServiceDatabase]:
        server = urlsplit(self.admin_url).netloc.rpartition("@")[2]
        return {
            service: local_database(service, server=server, name=name)
            for service, name in self.names.items()
        }

    @property
    def urls(self) -> dict[str, str]:
        """The runtime roles' URLs: what the services run on."""
        return {service: database.url for service, database in self.services.items()}

    @property
    def migration_urls(self) -> dict[str, str]:
        """The owners' URLs: what the migrations run on."""
        return {service: database.migration_url for service, database in self.services.items()}

    def dsn(self, service: str) -> str:
        """A plain libpq/asyncpg DSN as the admin (a member of the owners), for tests that look
        into a service's tables."""
        return f"{self.admin_url}/{self.names[service]}"


def _psql(admin_url: str, sql: str) -> None:
    subprocess.run(
        ["psql", f"{admin_url}/postgres", "-v", "ON_ERROR_STOP=1", "-qAtX", "-c", sql],
        check=True,
    )


def _psql_script(admin_url: str, script: str, **variables: str) -> None:
    assignments = [f"--variable={name}={value}" for name, value in variables.items()]
    subprocess.run(
        [
            "psql",
            f"{admin_url}/postgres",
            "-v",
            "ON_ERROR_STOP=1",
            "-qAtX",
            *assignments,
            "-f",
            str(SCRIPTS / "postgres" / script),
        ],
        check=True,
    )


def create_test_databases(prefix: str = "t", admin_url: str | None = None) -> TestDatabases:
    """Fresh databases named `<prefix>_<random>_<service db>`, on the cluster of `admin_url`
    (a role allowed to CREATE DATABASE, and to create the service roles unless they exist),
    else `TEST_PG_ADMIN_URL`, else the project's."""
    admin_url = admin_url or os.environ.get("TEST_PG_ADMIN_URL")
    if not admin_url:
        _run_script(
            "postgres.sh",
            "start",
            env=_NO_CONFIGURED_DATABASES,
        )
        admin_url = DEV_PG
    _psql_script(admin_url, "roles.sql", admin=unquote(urlsplit(admin_url).username or ""))
    tag = secrets.token_hex(4)
    names = {svc: f"{prefix}_{tag}_{db}" for svc, db in SERVICE_DATABASES.items()}
    for service, name in names.items():
        roles = SERVICE_ROLES[service]
        _psql_script(admin_url, "database.sql", db=name, owner=roles.owner, runtime=roles.runtime)
    return TestDatabases(admin_url, names)


def drop_test_databases(databases: TestDatabases) -> None:
    for name in databases.names.values():
        _psql(databases.admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
