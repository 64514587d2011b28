"""`python -m audit serve|migrate|verify`."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys

import uvicorn
from pydantic import ValidationError

from audit.adapters.telemetry import configure_tracing, shutdown_tracing
from audit.app import build_app, check_chain, migrate
from audit.config import DevSecretRefused, Settings, refuse_dev_secrets
from audit.domain.entries import CHAIN_BROKEN, CHAIN_NOT_CHECKED, ChainNotChecked
from audit.logging_config import configure_logging


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="audit", description="The audit service")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="consume the audited topics and serve the read API")
    commands.add_parser("migrate", help="upgrade the database schema to the latest migration")
    commands.add_parser(
        "verify",
        help=f"walk the hash chain; exit {CHAIN_BROKEN} at the first broken link, "
        f"{CHAIN_NOT_CHECKED} when the check could not run (e.g. the database is unreachable)",
    )
    args = parser.parse_args(argv)
    try:
        settings = Settings()
        refuse_dev_secrets(settings, migrating=args.command == "migrate")
    except (ValidationError, DevSecretRefused) as error:
        # The messages name the setting and never hold its value.
        sys.exit(f"audit: refusing to start: {error}")
    if args.command in ("serve",):
        configure_logging("audit", settings.log_format, settings.log_level)
    else:
        # A command's output is for the person who ran it.
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
    if args.command == "migrate":
        migrate(settings)
    elif args.command == "verify":
        checked = asyncio.run(check_chain(settings))
        if isinstance(checked, ChainNotChecked):
            print(f"audit: {checked.reason}", file=sys.stderr)
        else:
            print(json.dumps(checked.as_dict()))
        sys.exit(checked.exit_status)
    else:
        tracing = configure_tracing("audit")
        try:
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
