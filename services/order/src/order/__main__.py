"""`python -m order serve|relay|migrate|token create|token revoke`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

import uvicorn
from pydantic import ValidationError

from order import service
from order.adapters.telemetry import configure_tracing, shutdown_tracing
from order.adapters.unit_of_work import DatabaseBusy, DatabaseUnavailable, UnitOfWorkFactory
from order.app import build_app, build_engine, migrate, run_relay
from order.config import DevSecretRefused, Settings, refuse_dev_secrets
from order.domain.auth import Role
from order.logging_config import configure_logging


async def _tokens(settings: Settings, args: argparse.Namespace) -> None:
    engine = build_engine(settings)
    try:
        uow = UnitOfWorkFactory(engine)
        if args.action == "create":
            print(await service.issue_token(uow, args.name, Role(args.role), replace=args.replace))
        else:
            revoked = await service.revoke_tokens(uow, args.name)
            print(f"revoked {revoked} token(s) named {args.name!r}")
    finally:
        await engine.dispose()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="order", description="The order service")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="serve the HTTP API and relay the outbox")
    commands.add_parser("migrate", help="upgrade the database schema to the latest migration")
    commands.add_parser("relay", help="relay the outbox to Kafka, without the HTTP API")
    token = commands.add_parser("token", help="manage API tokens")
    token.add_argument("action", choices=["create", "revoke"])
    token.add_argument("--name", required=True, help="who the token is for (the event actor)")
    token.add_argument("--role", choices=[r.value for r in Role], default=Role.VIEWER.value)
    token.add_argument(
        "--replace", action="store_true", help="on create: revoke earlier tokens of this name"
    )
    args = parser.parse_args(argv)
    try:
        settings = Settings()
        refuse_dev_secrets(settings, migrating=args.command == "migrate")
    except (ValidationError, DevSecretRefused) as error:
        # The messages name the setting and never hold its value.
        sys.exit(f"order: refusing to start: {error}")
    if args.command in ("serve", "relay"):
        configure_logging("order", settings.log_format, settings.log_level)
    else:
        # A command's output is for the person who ran it.
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
    if args.command == "migrate":
        migrate(settings)
    elif args.command == "token":
        try:
            asyncio.run(_tokens(settings, args))
        except (DatabaseUnavailable, DatabaseBusy) as error:
            sys.exit(f"order: database: {error}")
    else:
        tracing = configure_tracing("order")
        try:
            if args.command == "relay":
                asyncio.run(run_relay(settings))
            else:
                uvicorn.run(
                    build_app(settings),
                    host=settings.http_host,
                    port=settings.http_port,
                    log_config=None,  # the logging configured above, uvicorn's loggers included
                    access_log=False,  # each request is logged with its trace by the app
                )
        finally:
            shutdown_tracing(tracing)


if __name__ == "__main__":
    main()
