"""deploy/docker-compose.yml: valid against the Compose Specification's JSON schema (the copy
check-jsonschema ships; no compose plugin is installed for `docker compose config` here), and
consistent with the services it runs: their settings, topics, databases and scaling."""

from __future__ import annotations

import subprocess
import sys
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from devstack.infra import TOPIC_PARTITIONS
from tests.deploy.conftest import (
    ALL_TOPICS_WITH_DLQS,
    DEPLOY,
    PEER_URLS,
    REPO,
    SERVICES,
    SettingsFromEnv,
    check_roles,
    env_prefix,
    init_creates,
    topics_of_script,
    url,
)

pytestmark = pytest.mark.deploy

COMPOSE_FILE = DEPLOY / "docker-compose.yml"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return loaded


def test_the_compose_file_follows_the_compose_specification() -> None:
    checked = subprocess.run(
        [
            sys.executable,
            "-m",
            "check_jsonschema",
            "--builtin-schema",
            "vendor.compose-spec",
            str(COMPOSE_FILE),
        ],
        capture_output=True,
        text=True,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_every_dependency_names_a_service(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown {dependency}"


def test_the_topic_job_creates_every_topic_and_dlq_with_the_partitions_of_the_local_stack(
    compose: dict[str, Any],
) -> None:
    topics, partitions = topics_of_script("\n".join(compose["services"]["kafka-topics"]["command"]))
    assert topics == ALL_TOPICS_WITH_DLQS
    assert partitions == {TOPIC_PARTITIONS}
    assert compose["services"]["kafka"]["environment"]["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"


@pytest.mark.parametrize("service", SERVICES)
def test_a_service_starts_after_its_migration_and_the_topics(
    compose: dict[str, Any], service: str
) -> None:
    services = compose["services"]
    migration = services[f"{service}-migrate"]
    assert migration["command"] == ["migrate"]
    assert migration["image"] == services[service]["image"], "the same image migrates and serves"
    assert migration["build"]["dockerfile"] == f"deploy/docker/{service}.Dockerfile"
    assert (DEPLOY / migration["build"]["context"]).resolve() == REPO
    assert (REPO / migration["build"]["dockerfile"]).is_file()
    assert services[service]["depends_on"][f"{service}-migrate"] == {
        "condition": "service_completed_successfully"
    }
    assert services[service]["depends_on"]["kafka-topics"] == {
        "condition": "service_completed_successfully"
    }


def environment_of(compose: dict[str, Any], container: str) -> dict[str, str]:
    return {k: str(v) for k, v in compose["services"][container]["environment"].items()}


@pytest.mark.parametrize("service", SERVICES)
def test_every_variable_a_service_gets_is_one_of_its_settings_with_a_valid_value(
    compose: dict[str, Any], service: str, settings_from_env: SettingsFromEnv
) -> None:
    for name in (service, f"{service}-migrate"):
        settings_from_env(service, environment_of(compose, name))


@pytest.mark.parametrize("service", SERVICES)
def test_the_migration_runs_as_the_owner_and_the_service_as_its_runtime_role_in_dev_mode(
    compose: dict[str, Any], service: str, settings_from_env: SettingsFromEnv
) -> None:
    serving_env = environment_of(compose, service)
    assert f"{env_prefix(service)}MIGRATION_DATABASE_URL" not in serving_env, (
        "only the migration gets the owner's password"
    )
    serving: Any = settings_from_env(service, serving_env)
    migrating: Any = settings_from_env(service, environment_of(compose, f"{service}-migrate"))
    # The stack uses the published dev passwords: explicitly in dev mode, or it would not start.
    assert serving.environment == migrating.environment == "dev"
    check_roles(service, serving, migrating)


def postgres_init_files(compose: dict[str, Any]) -> dict[str, str]:
    """What the postgres service's /docker-entrypoint-initdb.d holds: path in it -> text."""
    files = {}
    for volume in compose["services"]["postgres"]["volumes"]:
        source, target = volume.split(":")[:2]
        inside = target.removeprefix("/docker-entrypoint-initdb.d/")
        if inside == target:
            continue
        origin = DEPLOY / source
        if origin.is_dir():
            files.update({f"{inside}/{f.name}": f.read_text() for f in origin.glob("*.sql")})
        else:
            files[inside] = origin.read_text()
    return files


@pytest.mark.parametrize("service", SERVICES)
def test_the_postgres_init_creates_the_roles_and_the_database_of_each_service(
    compose: dict[str, Any], service: str, settings_from_env: SettingsFromEnv
) -> None:
    serving: Any = settings_from_env(service, environment_of(compose, service))
    migrating: Any = settings_from_env(service, environment_of(compose, f"{service}-migrate"))
    database, owner, runtime = check_roles(service, serving, migrating)
    assert url(serving.database_url).host == "postgres"

    roles, databases = init_creates(postgres_init_files(compose))
    assert {owner, runtime} <= roles
    assert (database, owner, runtime) in databases


@pytest.mark.parametrize(("service", "setting", "peer"), PEER_URLS)
def test_a_service_reaches_another_by_its_compose_name_and_port(
    compose: dict[str, Any],
    settings_from_env: SettingsFromEnv,
    service: str,
    setting: str,
    peer: str,
) -> None:
    settings: Any = settings_from_env(service, environment_of(compose, service))
    peer_settings: Any = settings_from_env(peer, environment_of(compose, peer))
    target = urlsplit(getattr(settings, setting))
    assert (target.hostname, target.port) == (peer, peer_settings.http_port)


def test_the_notifier_can_be_scaled(compose: dict[str, Any]) -> None:
    notifier = compose["services"]["notifier"]
    assert "container_name" not in notifier, "replicas need names of their own"
    for port in notifier.get("ports", []):
        assert ":" not in str(port), f"a fixed host port ({port}) allows only one replica"


def test_the_notifier_sends_to_the_mail_catcher(
    compose: dict[str, Any], settings_from_env: SettingsFromEnv
) -> None:
    settings: Any = settings_from_env("notifier", environment_of(compose, "notifier"))
    assert settings.smtp_host == "mailpit"
    assert compose["services"]["notifier"]["depends_on"]["mailpit"]["condition"] == (
        "service_healthy"
    )


@pytest.mark.parametrize("service", SERVICES)
def test_the_service_containers_run_read_only_without_capabilities(
    compose: dict[str, Any], service: str
) -> None:
    for name in (service, f"{service}-migrate"):
        container = compose["services"][name]
        assert container["read_only"] is True, name
        assert container["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in container["security_opt"], name
