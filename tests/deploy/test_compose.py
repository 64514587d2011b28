"""deploy/docker-compose.yml: valid against the Compose Specification's JSON schema (the copy
check-jsonschema ships; no compose plugin is installed for `docker compose config` here), and
consistent with the services it runs: their settings, topics, databases and scaling."""

from __future__ import annotations

import re
import subprocess
import sys
from typing import Any

import pytest
import yaml

from devstack.infra import TOPIC_PARTITIONS
from tests.deploy.conftest import (
    ALL_TOPICS_WITH_DLQS,
    DEPLOY,
    REPO,
    SERVICES,
    SettingsFromEnv,
    env_prefix,
    topics_of_script,
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
    database_url = f"{env_prefix(service)}DATABASE_URL"
    assert migration["environment"][database_url] == services[service]["environment"][database_url]


@pytest.mark.parametrize("service", SERVICES)
def test_every_variable_a_service_gets_is_one_of_its_settings_with_a_valid_value(
    compose: dict[str, Any], service: str, settings_from_env: SettingsFromEnv
) -> None:
    for name in (service, f"{service}-migrate"):
        environment = compose["services"][name]["environment"]
        settings_from_env(service, {key: str(value) for key, value in environment.items()})


@pytest.mark.parametrize("service", SERVICES)
def test_each_service_database_is_created_by_the_postgres_init_script(
    compose: dict[str, Any], service: str, settings_from_env: SettingsFromEnv
) -> None:
    environment = compose["services"][service]["environment"]
    settings: Any = settings_from_env(service, {k: str(v) for k, v in environment.items()})
    database = settings.database_url.rsplit("/", 1)[1]

    mounted = [
        volume.split(":")[0]
        for volume in compose["services"]["postgres"]["volumes"]
        if "/docker-entrypoint-initdb.d/" in volume
    ]
    scripts = " ".join((DEPLOY / source).read_text() for source in mounted)
    assert re.search(rf"CREATE DATABASE {database}\b", scripts)


def test_the_notifier_can_be_scaled(compose: dict[str, Any]) -> None:
    notifier = compose["services"]["notifier"]
    assert "container_name" not in notifier, "replicas need names of their own"
    for port in notifier.get("ports", []):
        assert ":" not in str(port), f"a fixed host port ({port}) allows only one replica"


def test_the_notifier_sends_to_the_mail_catcher(
    compose: dict[str, Any], settings_from_env: SettingsFromEnv
) -> None:
    environment = compose["services"]["notifier"]["environment"]
    settings: Any = settings_from_env("notifier", {k: str(v) for k, v in environment.items()})
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
