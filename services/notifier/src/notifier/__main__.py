"""`python -m notifier serve|migrate|dead list|dead replay|opt-out add|opt-out remove`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any
from uuid import UUID

import uvicorn
from pydantic import ValidationError

from contracts import Channel
from notifier import service
from notifier.adapters.telemetry import configure_tracing, shutdown_tracing
from notifier.adapters.unit_of_work import DatabaseBusy, DatabaseUnavailable, UnitOfWorkFactory
from notifier.app import build_app, build_engine, migrate
from notifier.config import DevSecretRefused, Settings, refuse_dev_secrets
from notifier.logging_config import configure_logging


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="notifier", description="The notifier service")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="consume orders.events, send email, serve the read API")
    commands.add_parser("migrate", help="upgrade the database schema to the latest migration")

    dead = commands.add_parser("dead", help="communications that gave up").add_subparsers(
        dest="action", required=True
    )
    dead.add_parser("list", help="print the dead communications")
    replay = dead.add_parser("replay", help="queue dead communications again, attempts reset")
    which = replay.add_mutually_exclusive_group(required=True)
    which.add_argument("--id", type=UUID, action="append", dest="ids", help="repeatable")
    which.add_argument("--all", action="store_true")

    opt_out = commands.add_parser("opt-out", help="who gets nothing on a channel")
    actions = opt_out.add_subparsers(dest="action", required=True)
    for action in ("add", "remove"):
        sub = actions.add_parser(action)
        sub.add_argument("--channel", type=Channel, choices=list(Channel), required=True)
        sub.add_argument("--recipient", required=True)
    return parser


async def _with_uow(
    settings: Settings, use: Callable[[UnitOfWorkFactory], Awaitable[None]]
) -> None:
    engine = build_engine(settings)
    try:
        # The running service's relay publishes what this writes to the outbox on its next poll.
        await use(UnitOfWorkFactory(engine, on_outbox_commit=lambda: None))
    finally:
        await engine.dispose()


def _on_database(work: Coroutine[Any, Any, None]) -> None:
    """Run a command's `work`; a database it cannot reach ends it with one line, exit 1."""
    try:
        asyncio.run(work)
    except (DatabaseUnavailable, DatabaseBusy) as error:
        sys.exit(f"notifier: database: {error}")


async def _dead(args: argparse.Namespace, uow_factory: UnitOfWorkFactory) -> None:
    if args.action == "list":
        for c in await service.list_dead(uow_factory):
            print(f"{c.id}\t{c.order_id}\t{c.recipient}\t{c.attempts}\t{c.last_error}")
        return
    replayed = await service.replay_dead(uow_factory, None if args.all else args.ids)
    for c in replayed:
        print(f"replayed {c.id}")
    print(f"{len(replayed)} replayed")


async def _opt_out(args: argparse.Namespace, uow_factory: UnitOfWorkFactory) -> None:
    changed = await service.set_opt_out(
        uow_factory, args.channel, args.recipient, opted_out=args.action == "add"
    )
    print(f"{args.action}: {'done' if changed else 'nothing to change'}")


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    try:
        settings = Settings()
        refuse_dev_secrets(settings, migrating=args.command == "migrate")
    except (ValidationError, DevSecretRefused) as error:
        # The messages name the setting and never hold its value.
        sys.exit(f"notifier: refusing to start: {error}")
    if args.command in ("serve",):
        configure_logging("notifier", settings.log_format, settings.log_level)
    else:
        # A command's output is for the person who ran it.
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
    if args.command == "migrate":
        migrate(settings)
    elif args.command == "dead":
        _on_database(_with_uow(settings, lambda uow_factory: _dead(args, uow_factory)))
    elif args.command == "opt-out":
        _on_database(_with_uow(settings, lambda uow_factory: _opt_out(args, uow_factory)))
    else:
        tracing = configure_tracing("notifier")
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
