"""`python -m order serve|migrate|token create|token revoke`."""

from __future__ import annotations

import argparse
import asyncio
import logging

import uvicorn

from order import service
from order.adapters.schema import upgrade_to_head
from order.adapters.unit_of_work import UnitOfWorkFactory
from order.app import build_app, build_engine
from order.config import Settings
from order.domain.auth import Role


async def _with_uow(settings: Settings, action: str, name: str, role: Role) -> None:
    engine = build_engine(settings)
    try:
        uow = UnitOfWorkFactory(engine)
        if action == "create":
            print(await service.issue_token(uow, name, role))
        else:
            revoked = await service.revoke_tokens(uow, name)
            print(f"revoked {revoked} token(s) named {name!r}")
    finally:
        await engine.dispose()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="order", description="The order service")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="serve the HTTP API and relay the outbox")
    commands.add_parser("migrate", help="upgrade the database schema to the latest migration")
    token = commands.add_parser("token", help="manage API tokens")
    token.add_argument("action", choices=["create", "revoke"])
    token.add_argument("--name", required=True, help="who the token is for (the event actor)")
    token.add_argument("--role", choices=[r.value for r in Role], default=Role.VIEWER.value)
    args = parser.parse_args(argv)

    settings = Settings()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if args.command == "migrate":
        upgrade_to_head(settings.database_url)
    elif args.command == "token":
        asyncio.run(_with_uow(settings, args.action, args.name, Role(args.role)))
    else:
        uvicorn.run(
            build_app(settings),
            host=settings.http_host,
            port=settings.http_port,
            log_level="info",
            access_log=False,
        )


if __name__ == "__main__":
    main()
