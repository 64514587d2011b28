"""`python -m notifier serve|migrate`."""

from __future__ import annotations

import argparse
import logging

import uvicorn

from notifier.adapters.schema import upgrade_to_head
from notifier.app import build_app
from notifier.config import Settings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="notifier", description="The notifier service")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="consume orders.events, send email, serve the read API")
    commands.add_parser("migrate", help="upgrade the database schema to the latest migration")
    args = parser.parse_args(argv)

    settings = Settings()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if args.command == "migrate":
        upgrade_to_head(settings.database_url)
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
