"""`python -m audit serve|migrate|verify`."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys

import uvicorn
from pydantic import ValidationError

from audit import service
from audit.adapters.unit_of_work import UnitOfWorkFactory
from audit.app import build_app, build_engine, migrate
from audit.config import DevSecretRefused, Settings, refuse_dev_secrets
from audit.domain.entries import ChainReport


async def _verify(settings: Settings) -> ChainReport:
    engine = build_engine(settings)
    try:
        return await service.verify(UnitOfWorkFactory(engine))
    finally:
        await engine.dispose()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="audit", description="The audit service")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="consume the audited topics and serve the read API")
    commands.add_parser("migrate", help="upgrade the database schema to the latest migration")
    commands.add_parser("verify", help="walk the hash chain; exit 1 at the first broken link")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        settings = Settings()
        refuse_dev_secrets(settings, migrating=args.command == "migrate")
    except (ValidationError, DevSecretRefused) as error:
        # The messages name the setting and never hold its value.
        sys.exit(f"audit: refusing to start: {error}")
    if args.command == "migrate":
        migrate(settings)
    elif args.command == "verify":
        report = asyncio.run(_verify(settings))
        print(json.dumps(report.as_dict()))
        sys.exit(0 if report.ok else 1)
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
