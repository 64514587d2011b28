"""The services' configuration: outside dev mode the published dev passwords are refused,
naming the setting and never showing its value; errors never echo a setting's value."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy.engine import URL, make_url

import audit.app
import audit.config
import notifier.app
import notifier.config
import order.app
import order.config
from devstack import infra

SERVICES: dict[str, ModuleType] = {
    "order": order.config,
    "notifier": notifier.config,
    "audit": audit.config,
}
REAL_PASSWORD = "Kx9-real-secret-4711"


def settings(service: str, **fields: Any) -> Any:
    return SERVICES[service].Settings(**fields)


@pytest.fixture(params=list(SERVICES))
def service(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each service, with BACKBONE_ENV unset: as a deployment that forgot it."""
    monkeypatch.delenv("BACKBONE_ENV", raising=False)
    return str(request.param)


def with_password(url: str, password: str | None) -> str:
    u = make_url(url)
    changed = URL.create(u.drivername, u.username, password, u.host, u.port, u.database)
    return changed.render_as_string(hide_password=False)


def test_without_backbone_env_it_is_a_production_deployment(service: str) -> None:
    assert settings(service).environment == "production"


@pytest.mark.parametrize(
    ("migrating", "setting"),
    [(False, "DATABASE_URL"), (True, "MIGRATION_DATABASE_URL")],
    ids=["serve", "migrate"],
)
def test_outside_dev_mode_the_dev_password_is_refused_by_name_never_shown(
    service: str, migrating: bool, setting: str
) -> None:
    config = SERVICES[service]
    defaults = settings(service)
    chosen = defaults.migration_database_url if migrating else defaults.database_url
    url = chosen.get_secret_value()
    password = make_url(url).password
    assert password

    with pytest.raises(config.DevSecretRefused) as refused:
        config.refuse_dev_secrets(defaults, migrating=migrating)

    message = str(refused.value)
    assert f"{service.upper()}_{setting}" in message
    assert "BACKBONE_ENV=dev" in message
    assert password not in message
    assert url not in message


def test_the_earlier_shared_backbone_password_is_refused_too(service: str) -> None:
    config = SERVICES[service]
    url = with_password(settings(service).database_url.get_secret_value(), "backbone")
    with pytest.raises(config.DevSecretRefused, match=f"{service.upper()}_DATABASE_URL"):
        config.refuse_dev_secrets(settings(service, database_url=url))


def test_only_the_url_the_command_uses_is_checked(service: str) -> None:
    """A serving process needs no owner password, so an unset migration URL does not stop it."""
    config = SERVICES[service]
    url = with_password(settings(service).database_url.get_secret_value(), REAL_PASSWORD)
    config.refuse_dev_secrets(settings(service, database_url=url))
    with pytest.raises(config.DevSecretRefused, match="MIGRATION_DATABASE_URL"):
        config.refuse_dev_secrets(settings(service, database_url=url), migrating=True)


@pytest.mark.parametrize("password", [REAL_PASSWORD, None], ids=["real", "none-in-url"])
def test_a_real_password_or_none_in_the_url_is_accepted(service: str, password: str | None) -> None:
    """No password in the URL: it comes from elsewhere (a password file, IAM)."""
    config = SERVICES[service]
    defaults = settings(service)
    configured = settings(
        service,
        database_url=with_password(defaults.database_url.get_secret_value(), password),
        migration_database_url=with_password(
            defaults.migration_database_url.get_secret_value(), password
        ),
    )
    config.refuse_dev_secrets(configured)
    config.refuse_dev_secrets(configured, migrating=True)


def test_dev_mode_accepts_the_dev_passwords(service: str) -> None:
    config = SERVICES[service]
    defaults = settings(service, BACKBONE_ENV="dev")
    assert defaults.environment == "dev"
    config.refuse_dev_secrets(defaults)
    config.refuse_dev_secrets(defaults, migrating=True)


def test_an_unknown_environment_is_an_error_not_dev_mode(service: str) -> None:
    with pytest.raises(ValidationError, match="BACKBONE_ENV"):
        settings(service, BACKBONE_ENV="development")


def test_a_settings_error_does_not_echo_the_values(service: str) -> None:
    url = with_password(settings(service).database_url.get_secret_value(), REAL_PASSWORD)
    with pytest.raises(ValidationError) as invalid:
        settings(service, database_url=url, http_port="eighty")
    assert "http_port" in str(invalid.value)
    assert REAL_PASSWORD not in str(invalid.value)
    assert "eighty" not in str(invalid.value)


def test_the_settings_do_not_show_the_database_urls(service: str) -> None:
    configured = settings(
        service,
        database_url=with_password(settings(service).database_url.get_secret_value(), "p1-x"),
        migration_database_url=with_password(
            settings(service).migration_database_url.get_secret_value(), "p2-y"
        ),
    )
    for shown in (repr(configured), str(configured), configured.model_dump_json()):
        assert "p1-x" not in shown
        assert "p2-y" not in shown


def test_the_migrations_grant_to_the_user_of_the_runtime_url(service: str) -> None:
    config = SERVICES[service]
    assert config.database_role(settings(service)) == infra.SERVICE_ROLES[service].runtime
    nobody = "postgresql+asyncpg://127.0.0.1:5432/db"
    with pytest.raises(ValueError, match=f"{service.upper()}_DATABASE_URL names no user"):
        config.database_role(settings(service, database_url=nobody))


def test_the_local_stack_uses_the_services_own_defaults(service: str) -> None:
    """devstack and the services agree on the local roles and their dev passwords."""
    defaults = settings(service)
    assert infra.local_database(service) == infra.ServiceDatabase(
        url=defaults.database_url.get_secret_value(),
        migration_url=defaults.migration_database_url.get_secret_value(),
    )


async def test_an_app_builds_without_secrets_but_will_not_start_on_a_dev_password(
    service: str,
) -> None:
    """Its documents are written from a built app; starting it is what needs real secrets."""
    apps = {"order": order.app, "notifier": notifier.app, "audit": audit.app}
    app = apps[service].build_app(settings(service))
    assert app.openapi()["paths"]
    with pytest.raises(SERVICES[service].DevSecretRefused, match=f"{service.upper()}_DATABASE"):
        async with app.router.lifespan_context(app):
            pass
