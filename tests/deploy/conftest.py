"""What the deployment files in deploy/ are checked against: the services' own settings
classes, the contracts' topics and the Dockerfiles' images. No Docker engine or cluster is
needed; kustomize comes from deploy/k8s/install-kustomize.sh."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from dockerfile_parse import DockerfileParser
from pydantic import AliasChoices
from pydantic_settings import BaseSettings
from sqlalchemy.engine import URL, make_url

from audit.config import Settings as AuditSettings
from audit.config import refuse_dev_secrets as refuse_audit_dev_secrets
from contracts import ALL_TOPICS, dlq_topic
from notifier.config import Settings as NotifierSettings
from notifier.config import refuse_dev_secrets as refuse_notifier_dev_secrets
from order.config import Settings as OrderSettings
from order.config import refuse_dev_secrets as refuse_order_dev_secrets

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"

SETTINGS: dict[str, type[BaseSettings]] = {
    "order": OrderSettings,
    "notifier": NotifierSettings,
    "audit": AuditSettings,
}
SERVICES = tuple(SETTINGS)
REFUSE_DEV_SECRETS: dict[str, Callable[..., None]] = {
    "order": refuse_order_dev_secrets,
    "notifier": refuse_notifier_dev_secrets,
    "audit": refuse_audit_dev_secrets,
}

# Every topic of the contracts and its dead-letter topic: what the topic jobs must create.
ALL_TOPICS_WITH_DLQS = frozenset({*ALL_TOPICS, *(dlq_topic(topic) for topic in ALL_TOPICS)})
# (service, its setting, the service whose HTTP API that setting names): the notifier and the
# audit service check tokens with the order service, which relays their reads to its admin page.
PEER_URLS = (
    ("order", "notifier_service_url", "notifier"),
    ("order", "audit_service_url", "audit"),
    ("notifier", "order_service_url", "order"),
    ("audit", "order_service_url", "order"),
)


def env_prefix(service: str) -> str:
    return str(SETTINGS[service].model_config.get("env_prefix", ""))


def env_names(service: str) -> frozenset[str]:
    """The environment variables the service's settings read, upper-cased (pydantic-settings
    matches them regardless of case)."""
    names: set[str] = set()
    for field_name, field in SETTINGS[service].model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names.update(str(choice).upper() for choice in alias.choices)
        elif isinstance(alias, str):
            names.add(alias.upper())
        else:
            names.add(f"{env_prefix(service)}{field_name}".upper())
    return frozenset(names)


def dockerfile(service: str) -> DockerfileParser:
    return DockerfileParser(path=str(DEPLOY / "docker" / f"{service}.Dockerfile"))


def image_env(service: str) -> dict[str, str]:
    """The service settings its image's ENV sets (PATH and the like are not settings)."""
    return {
        name: value
        for name, value in dockerfile(service).envs.items()
        if name.upper().startswith(env_prefix(service))
    }


SettingsFromEnv = Callable[[str, Mapping[str, str]], BaseSettings]


@pytest.fixture
def settings_from_env(monkeypatch: pytest.MonkeyPatch) -> SettingsFromEnv:
    """The settings a service's container would get from exactly `env` (on top of its image's
    ENV): every variable must be one the settings read, and every value must be accepted."""

    def build(service: str, env: Mapping[str, str]) -> BaseSettings:
        container_env = {**image_env(service), **env}
        unknown = sorted(name for name in container_env if name.upper() not in env_names(service))
        assert not unknown, f"the {service} settings read no variable named {unknown}"
        for name in list(os.environ):
            if name.upper() in env_names(service):
                monkeypatch.delenv(name)
        for name, value in container_env.items():
            monkeypatch.setenv(name, value)
        return SETTINGS[service]()

    return build


def topics_of_script(script: str) -> tuple[set[str], set[int]]:
    """The topics a topic-creation script's `for topic in ...; do` loop creates, and the
    partition counts it passes."""
    loop = re.search(r"for topic in (.+?);\s*do", script.replace("\\\n", " "), re.DOTALL)
    assert loop, f"no `for topic in ...; do` loop in:\n{script}"
    partitions = {int(count) for count in re.findall(r"--partitions\s+(\d+)", script)}
    return set(loop.group(1).split()), partitions


def load_yaml_documents(text: str) -> list[dict[str, Any]]:
    return [document for document in yaml.safe_load_all(text) if document]


@pytest.fixture(scope="session")
def kustomize() -> Path:
    installed = subprocess.run(
        ["bash", str(DEPLOY / "k8s" / "install-kustomize.sh")],
        capture_output=True,
        text=True,
        check=False,
    )
    if installed.returncode != 0:
        pytest.fail(f"could not install kustomize:\n{installed.stderr}")
    return Path(installed.stdout.strip())


def url(secret: Any) -> URL:
    """A database URL setting (a SecretStr), parsed."""
    return make_url(secret.get_secret_value())


def check_roles(service: str, serving: Any, migrating: Any) -> tuple[str, str, str]:
    """The settings of a service's server and of its migration job agree with the role model
    (owner migrates, runtime role serves, one database) and start in their mode; returns the
    database, the owner and the runtime role."""
    runtime, owner = url(serving.database_url), url(migrating.migration_database_url)
    assert owner.username != runtime.username, "the service must not run as the owner"
    assert url(migrating.database_url).username == runtime.username, (
        "the migrations grant to the role the service runs as"
    )
    same_database = (owner.host, owner.port, owner.database)
    assert same_database == (runtime.host, runtime.port, runtime.database)
    REFUSE_DEV_SECRETS[service](serving)
    REFUSE_DEV_SECRETS[service](migrating, migrating=True)
    assert runtime.database
    assert owner.username
    assert runtime.username
    return runtime.database, owner.username, runtime.username


def init_creates(init_files: Mapping[str, str]) -> tuple[set[str], set[tuple[str, str, str]]]:
    """What a postgres image's /docker-entrypoint-initdb.d (path in it -> text) creates: the
    roles, and each (database, owner, runtime role) its top-level scripts create through the
    psql variables they set before including the database script."""
    roles: set[str] = set()
    databases: set[tuple[str, str, str]] = set()
    for path, script in init_files.items():
        if "/" in path or not path.endswith(".sql"):
            continue  # the image's init runs only these; the rest is included
        variables: dict[str, str] = {}
        for line in script.splitlines():
            if assignment := re.fullmatch(r"\\set (\w+) '?(\w*)'?", line.strip()):
                variables[assignment[1]] = assignment[2]
            elif include := re.fullmatch(r"\\ir (\S+)", line.strip()):
                assert include[1] in init_files, f"{path} includes {include[1]}, not there"
                included = init_files[include[1]]
                if created := re.search(r"CREATE ROLE.*?ARRAY\[(.*?)\]", included, re.DOTALL):
                    roles.update(re.findall(r"'(\w+)'", created[1]))
                if "CREATE DATABASE %I OWNER %I" in included:
                    assert re.search(r"REVOKE CONNECT\b.*\bFROM PUBLIC;", included), included
                    databases.add((variables["db"], variables["owner"], variables["runtime"]))
    return roles, databases
