"""Alembic wiring: run the migrations (as the database's owner, granting the runtime role its
privileges), and refuse to serve a database that is behind."""

from __future__ import annotations

from pathlib import Path

from alembic import command, context
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.ext.asyncio import AsyncEngine

MIGRATIONS = Path(__file__).resolve().parents[3] / "migrations"
RUNTIME_ROLE_OPTION = "runtime_role"


def alembic_config(database_url: str | None = None, runtime_role: str | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    if database_url is not None:
        config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    if runtime_role is not None:
        config.set_main_option(RUNTIME_ROLE_OPTION, runtime_role.replace("%", "%%"))
    return config


def upgrade_to_head(migration_database_url: str, runtime_role: str) -> None:
    """Migrate as the owner (`migration_database_url`); `runtime_role` is the role the service
    runs as, which the migrations grant what it needs."""
    command.upgrade(alembic_config(migration_database_url, runtime_role), "head")


def quoted_runtime_role() -> str:
    """For the migrations: the runtime role (`-x runtime_role=...` or the configuration's
    `runtime_role`), quoted as an SQL identifier (a role name cannot be a bound parameter)."""
    role = context.get_x_argument(as_dictionary=True).get(RUNTIME_ROLE_OPTION)
    role = role or context.config.get_main_option(RUNTIME_ROLE_OPTION)
    if not role:
        raise ValueError("the migrations need the runtime role: -x runtime_role=<role>")
    return str(context.get_bind().dialect.identifier_preparer.quote_identifier(role))


class SchemaBehind(RuntimeError):
    pass


async def assert_schema_current(engine: AsyncEngine) -> None:
    heads = set(ScriptDirectory.from_config(alembic_config()).get_heads())
    async with engine.connect() as connection:
        current = await connection.run_sync(
            lambda sync: set(MigrationContext.configure(sync).get_current_heads())
        )
    if current != heads:
        raise SchemaBehind(
            f"database schema is at {sorted(current) or 'nothing'}, "
            f"the code needs {sorted(heads)}; run `python -m notifier migrate` first"
        )
