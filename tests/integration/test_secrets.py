"""Secrets stay secret: outside dev mode a service will not start on a published dev password
(and says which setting, not its value); a serving process and a failing one log neither
database passwords nor API tokens."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import httpx
import pytest
from sqlalchemy.engine import make_url

from devstack import infra
from devstack.processes import free_port, migrate, run_checked, service_env, service_process
from tests.integration.conftest import TokenIssuer, consumer_group_at_end

pytestmark = pytest.mark.integration

SERVICES = list(infra.SERVICE_DATABASES)


def password_of(url: str) -> str:
    password = make_url(url).password
    assert password
    return password


def with_password(url: str, password: str) -> str:
    return make_url(url).set(password=password).render_as_string(hide_password=False)


def run_service(
    service: str, command: str, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """`python -m <service> <command>` to completion, in an environment without BACKBONE_ENV
    unless `env` sets it."""
    inherited = {name: value for name, value in os.environ.items() if name != "BACKBONE_ENV"}
    return subprocess.run(
        [sys.executable, "-m", service, command],
        env={**inherited, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def secret_databases() -> Iterator[infra.TestDatabases]:
    created = infra.create_test_databases("secrets")
    yield created
    infra.drop_test_databases(created)


@pytest.mark.parametrize("service", SERVICES)
@pytest.mark.parametrize(
    ("command", "setting"), [("serve", "DATABASE_URL"), ("migrate", "MIGRATION_DATABASE_URL")]
)
def test_without_dev_mode_a_service_refuses_the_dev_password_naming_the_setting(
    service: str, command: str, setting: str
) -> None:
    """BACKBONE_ENV unset, as in a deployment that forgot it: the local dev URLs are refused
    before anything connects."""
    local = infra.local_database(service)
    prefix = service.upper()
    env = {
        f"{prefix}_DATABASE_URL": local.url,
        f"{prefix}_MIGRATION_DATABASE_URL": local.migration_url,
    }

    result = run_service(service, command, env)

    printed = result.stdout + result.stderr
    assert result.returncode != 0, printed
    assert f"refusing to start: {prefix}_{setting} has a local dev password" in result.stderr
    for url in (local.url, local.migration_url):
        assert password_of(url) not in printed


@pytest.mark.parametrize("command", ["serve", "migrate"])
def test_a_refused_database_login_does_not_print_the_password(
    secret_databases: infra.TestDatabases, command: str
) -> None:
    database = secret_databases.services["order"]
    wrong = f"wrong-{secrets.token_urlsafe(16)}"
    env = {
        "BACKBONE_ENV": "production",
        "ORDER_DATABASE_URL": with_password(database.url, wrong),
        "ORDER_MIGRATION_DATABASE_URL": with_password(database.migration_url, wrong),
        "ORDER_HTTP_PORT": "0",
        "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
    }

    result = run_service("order", command, env)

    printed = result.stdout + result.stderr
    assert result.returncode != 0, printed
    assert "password authentication failed" in printed
    assert wrong not in printed


async def test_a_serving_process_logs_no_password_and_no_token(
    kafka_bootstrap: str, secret_databases: infra.TestDatabases, tmp_path: Path
) -> None:
    database = secret_databases.services["order"]
    port = free_port()
    env = service_env(
        "order", database=database, kafka_bootstrap_servers=kafka_bootstrap, http_port=port
    )
    await asyncio.to_thread(migrate, "order", env)

    def issue(name: str, role: str) -> str:
        command = [sys.executable, "-m", "order", "token", "create", "--name", name]
        printed = run_checked([*command, "--role", role], env, "token create")
        return printed.strip().splitlines()[-1]

    admin, viewer = issue("log-admin", "admin"), issue("log-viewer", "viewer")
    unknown = secrets.token_urlsafe(32)
    process = service_process("order", env, port, tmp_path)
    try:
        await asyncio.to_thread(process.start)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:

            async def answer(path: str, authorization: str, status: str | None = None) -> int:
                headers = {"Authorization": authorization}
                if status is None:
                    return (await client.get(path, headers=headers)).status_code
                change = {"status": status}
                return (await client.post(path, json=change, headers=headers)).status_code

            created = await client.post(
                "/orders",
                json={"customer": {"name": "Lee", "email": "lee@example.com"}},
                headers={"Authorization": f"Bearer {admin}"},
            )
            assert created.status_code == 201, created.text
            order = f"/orders/{created.json()['id']}"
            change = f"{order}/status"
            assert await answer(order, f"Bearer {viewer}") == 200
            assert await answer(change, f"Bearer {viewer}", "confirmed") == 403
            assert await answer("/orders", f"Bearer {unknown}") == 401
            assert await answer("/orders", admin) == 401  # no scheme: refused
            assert await answer(change, f"Bearer {admin}", "shipped") == 422
            assert await answer(change, f"Bearer {admin}", "confirmed") == 200
        await asyncio.to_thread(process.stop)
    finally:
        await asyncio.to_thread(process.kill)

    log = process.log_path.read_text()
    assert "Application startup complete" in log
    for secret in (admin, viewer, unknown, password_of(database.url), database.url):
        assert secret not in log


@pytest.mark.parametrize(
    ("service", "reads"), [("notifier", "/communications"), ("audit", "/audit")]
)
async def test_a_read_api_process_logs_no_password_and_no_token(
    kafka_bootstrap: str,
    secret_databases: infra.TestDatabases,
    token_issuer: TokenIssuer,
    tmp_path: Path,
    service: str,
    reads: str,
) -> None:
    """The notifier and audit check tokens with the order service; the notifier also holds
    SMTP and SMS credentials. None of them, nor the database password, reaches the log."""
    database = secret_databases.services[service]
    port = free_port()
    credentials = {
        "NOTIFIER_SMTP_PORT": str(free_port()),  # nothing listens: no mail leaves this test
        "NOTIFIER_SMTP_USERNAME": "mailer",
        "NOTIFIER_SMTP_PASSWORD": f"smtp-{secrets.token_urlsafe(16)}",
        "NOTIFIER_SMS_TOKEN": f"sms-{secrets.token_urlsafe(16)}",
    }
    env = service_env(
        service,
        database=database,
        kafka_bootstrap_servers=kafka_bootstrap,
        http_port=port,
        extra={
            f"{service.upper()}_ORDER_SERVICE_URL": token_issuer.url,
            f"{service.upper()}_CONSUMER_GROUP": await consumer_group_at_end(
                kafka_bootstrap, f"{service}-secrets-{uuid4().hex[:8]}"
            ),
            **(credentials if service == "notifier" else {}),
        },
    )
    await asyncio.to_thread(migrate, service, env)
    unknown = secrets.token_urlsafe(32)
    process = service_process(service, env, port, tmp_path)
    try:
        await asyncio.to_thread(process.start)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            for token, status in ((token_issuer.viewer_token, 200), (unknown, 401)):
                answer = await client.get(reads, headers={"Authorization": f"Bearer {token}"})
                assert answer.status_code == status, answer.text
        await asyncio.to_thread(process.stop)
    finally:
        await asyncio.to_thread(process.kill)

    log = process.log_path.read_text()
    assert "Application startup complete" in log
    shown = [token_issuer.viewer_token, unknown, password_of(database.url), database.url]
    if service == "notifier":
        shown += [credentials["NOTIFIER_SMTP_PASSWORD"], credentials["NOTIFIER_SMS_TOKEN"]]
    for secret in shown:
        assert secret not in log
