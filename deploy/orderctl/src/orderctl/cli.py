"""`orderctl`: the operator's command line for the order backbone.

Order commands go through the order service's HTTP API with a bearer token. Dead letters and
lag are read from Kafka. Tokens, dead communications and the audit chain go through the
services' own use cases on their databases, configured as the services are (`ORDER_*`,
`NOTIFIER_*`, `AUDIT_*` environment variables). A service's use cases are imported only by
the commands that use them: each service takes seconds to import.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Annotated, Any, TypeVar
from uuid import UUID

import httpx
import typer
from aiokafka.errors import KafkaError

from audit.config import Settings as AuditSettings
from notifier.config import Settings as NotifierSettings
from order.config import Settings as OrderSettings
from order.domain.auth import Role
from orderctl import dead_letters, kafka, lag, output
from orderctl.order_api import ApiError, OrderApi

app = typer.Typer(
    name="orderctl",
    help="Operate the order backbone: orders, dead letters, communications, audit, tokens, lag.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",  # docstring paragraphs are re-wrapped, not kept line by line
)
order_app = typer.Typer(help="Orders, over the order service's HTTP API.", no_args_is_help=True)
dlq_app = typer.Typer(help="Dead-letter queues (`<topic>.dlq`).", no_args_is_help=True)
communications_app = typer.Typer(help="The notifier's communications.", no_args_is_help=True)
dead_app = typer.Typer(help="Communications that gave up.", no_args_is_help=True)
audit_app = typer.Typer(help="The audit trail.", no_args_is_help=True)
token_app = typer.Typer(help="API tokens of the order service.", no_args_is_help=True)
app.add_typer(order_app, name="order")
app.add_typer(dlq_app, name="dlq")
app.add_typer(communications_app, name="communications")
communications_app.add_typer(dead_app, name="dead")
app.add_typer(audit_app, name="audit")
app.add_typer(token_app, name="token")

Json = Annotated[bool, typer.Option("--json", help="Print JSON, for programs.")]
Url = Annotated[str, typer.Option("--url", envvar="ORDERCTL_ORDER_URL", help="The order service.")]
Token = Annotated[
    str,
    typer.Option(
        "--token",
        envvar="ORDERCTL_TOKEN",
        show_default=False,
        help="Bearer token (ORDERCTL_TOKEN keeps it out of the shell history).",
    ),
]
Kafka = Annotated[
    str,
    typer.Option("--bootstrap-servers", envvar="KAFKA_BOOTSTRAP_SERVERS", help="Kafka."),
]
DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_KAFKA = "127.0.0.1:9092"


T = TypeVar("T")


def _kafka(bootstrap_servers: str, work: Coroutine[Any, Any, T]) -> T:
    """Run `work` against Kafka; what goes wrong there ends the command with a message."""
    try:
        return asyncio.run(work)
    except (dead_letters.DeadLetterError, kafka.UnknownTopic) as problem:
        output.fail(str(problem))
    except KafkaError as error:
        output.fail(f"kafka at {bootstrap_servers}: {error}")


def _database(work: Coroutine[Any, Any, T], *unreachable: type[Exception]) -> T:
    """Run `work` on a service's database; an unreachable one ends the command with a message
    (`unreachable`: the service's own errors for that)."""
    from sqlalchemy.exc import SQLAlchemyError  # imported with the service packages anyway

    caught: tuple[type[Exception], ...] = (SQLAlchemyError, OSError, *unreachable)
    try:
        return asyncio.run(work)
    except caught as error:
        output.fail(f"database: {error}")


# --- orders -------------------------------------------------------------------------------


def _call_order_api(
    url: str, token: str, call: Callable[[OrderApi], dict[str, Any]]
) -> dict[str, Any]:
    try:
        with OrderApi(url, token) as api:
            return call(api)
    except ApiError as error:
        output.fail(f"{error.status_code} {error.code}: {error.message}", error.details)
    except httpx.HTTPError as error:
        output.fail(f"cannot reach the order service at {url}: {error}")


def _show_order(order: dict[str, Any], as_json: bool) -> None:
    if as_json:
        output.emit_json(order)
        return
    customer = order["customer"]
    contact = " ".join(
        part
        for part in (customer.get("name"), customer.get("email"), customer.get("phone"))
        if part
    )
    output.table(
        ["field", "value"],
        [
            ("id", order["id"]),
            ("status", order["status"]),
            ("version", order["version"]),
            ("customer", contact),
            ("allowed next", ", ".join(order["allowed_next"]) or "(none: final)"),
            ("created at", order["created_at"]),
            ("updated at", order["updated_at"]),
        ],
    )


@order_app.command("show")
def order_show(order_id: UUID, token: Token, url: Url = DEFAULT_URL, as_json: Json = False) -> None:
    """Show an order."""
    _show_order(_call_order_api(url, token, lambda api: api.order(order_id)), as_json)


@order_app.command("status")
def order_status(
    order_id: UUID,
    status: Annotated[str, typer.Argument(help="The status to move to.")],
    token: Token,
    reason: Annotated[str | None, typer.Option(help="Why (kept in the history).")] = None,
    if_match: Annotated[
        int | None,
        typer.Option("--if-match", help="Only if the order is still at this version."),
    ] = None,
    url: Url = DEFAULT_URL,
    as_json: Json = False,
) -> None:
    """Change an order's status (the service validates the transition)."""
    changed = _call_order_api(
        url,
        token,
        lambda api: api.change_status(order_id, status, reason=reason, if_match=if_match),
    )
    _show_order(changed, as_json)


# --- dead letters -------------------------------------------------------------------------


@dlq_app.command("list")
def dlq_list(
    topic: Annotated[str, typer.Argument(help="The original topic, e.g. orders.commands.")],
    bootstrap_servers: Kafka = DEFAULT_KAFKA,
    as_json: Json = False,
) -> None:
    """List the dead letters of TOPIC (read from `TOPIC.dlq`, beginning to current end)."""
    queue = _kafka(bootstrap_servers, dead_letters.read(bootstrap_servers, topic))
    if as_json:
        output.emit_json(
            [{**entry.as_dict(), "done": queue.done(entry)} for entry in queue.entries]
        )
        return
    rows: list[tuple[Any, ...]] = []
    for entry in queue.entries:
        letter = entry.letter
        replay = "done" if queue.done(entry) else "pending"
        if entry.bounced:
            replay += f" (bounced replay of {entry.origin})"
        if letter is None:
            rows.append((entry.position, "", "", entry.problem, replay))
        else:
            rows.append((entry.position, letter.key, letter.consumer_group, letter.reason, replay))
    output.table(["p:offset", "key", "consumer group", "reason", "replay"], rows, queue.dlq)
    output.say(f"{len(queue.entries)} dead letter(s)")


@dlq_app.command("replay")
def dlq_replay(
    topic: Annotated[str, typer.Argument(help="The original topic, e.g. orders.commands.")],
    offsets: Annotated[
        list[str] | None,
        typer.Option("--offset", help="PARTITION:OFFSET of a dead letter (repeatable)."),
    ] = None,
    replay_all: Annotated[
        bool, typer.Option("--all", help="Every dead letter not replayed yet.")
    ] = False,
    again: Annotated[
        bool, typer.Option("--again", help="With --offset: even if replayed already.")
    ] = False,
    bootstrap_servers: Kafka = DEFAULT_KAFKA,
    as_json: Json = False,
) -> None:
    """Re-publish dead letters of TOPIC to TOPIC (original value, key and headers), once each.

    --all passes over a dead letter whose message was replayed already (it bounced back, or
    another consumer group dead-lettered the same record); --offset P:O --again replays it.
    """
    if replay_all == bool(offsets):
        output.fail("give either --all or one or more --offset PARTITION:OFFSET")
    if again and replay_all:
        output.fail("--again goes with --offset only")
    try:
        chosen = None if replay_all else [dead_letters.Position.parse(o) for o in offsets or []]
    except ValueError as error:
        output.fail(str(error))
    result = _kafka(
        bootstrap_servers,
        dead_letters.replay(bootstrap_servers, topic, chosen, again=again),
    )
    if as_json:
        output.emit_json(result.as_dict())
        return
    for entry in result.replayed:
        output.say(f"replayed {entry.position} (key {entry.letter.key if entry.letter else None})")
    for skipped in result.skipped:
        output.say(f"skipped {skipped.entry.position}: {skipped.why}")
    output.say(f"{len(result.replayed)} replayed, {len(result.skipped)} skipped")


# --- communications -------------------------------------------------------------------------


@dead_app.command("list")
def dead_list(as_json: Json = False) -> None:
    """List the dead communications (from the notifier's database)."""
    from orderctl import communications

    dead = _database(communications.dead(), *communications.UNREACHABLE)
    if as_json:
        output.emit_json([communications.as_dict(c) for c in dead])
        return
    output.table(
        ["id", "order", "channel", "recipient", "attempts", "last error"],
        [(c.id, c.order_id, c.channel, c.recipient, c.attempts, c.last_error) for c in dead],
    )
    output.say(f"{len(dead)} dead communication(s)")


@dead_app.command("replay")
def dead_replay(
    ids: Annotated[
        list[UUID] | None, typer.Option("--id", help="A communication id (repeatable).")
    ] = None,
    replay_all: Annotated[bool, typer.Option("--all", help="Every dead communication.")] = False,
    as_json: Json = False,
) -> None:
    """Queue dead communications again, attempts reset; one no longer dead is left alone."""
    from orderctl import communications

    if replay_all == bool(ids):
        output.fail("give either --all or one or more --id")
    replayed = _database(
        communications.replay(None if replay_all else ids), *communications.UNREACHABLE
    )
    if as_json:
        output.emit_json([communications.as_dict(c) for c in replayed])
        return
    for c in replayed:
        output.say(f"replayed {c.id} ({c.channel} to {c.recipient})")
    output.say(f"{len(replayed)} replayed")


# --- audit --------------------------------------------------------------------------------


@audit_app.command("verify")
def audit_verify(as_json: Json = False) -> None:
    """Walk the audit hash chain; exit 1 at the first broken link, 2 when the audit database
    cannot be read (nothing was checked)."""
    # The audit service's own check, on its database (`AUDIT_*`).
    from audit.app import check_chain
    from audit.config import Settings
    from audit.domain.entries import ChainNotChecked

    report = asyncio.run(check_chain(Settings()))
    if isinstance(report, ChainNotChecked):
        output.fail(report.reason, code=report.exit_status)
    if as_json:
        output.emit_json(report.as_dict())
    elif report.ok:
        output.say(f"audit chain ok: {report.checked} entries checked, head {report.head}")
    else:
        output.say(f"audit chain BROKEN after {report.checked} good entries")
        for name, value in (report.first_broken or {}).items():
            output.say(f"  {name}: {value}")
    if not report.ok:
        raise typer.Exit(report.exit_status)


# --- tokens -------------------------------------------------------------------------------


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Option(help="Who the token is for (the actor of its changes).")],
    role: Annotated[Role, typer.Option(help="viewer reads; admin reads and changes.")] = (
        Role.VIEWER
    ),
    replace: Annotated[bool, typer.Option(help="Revoke the earlier tokens of this name.")] = False,
    as_json: Json = False,
) -> None:
    """Create an API token; it is printed once and stored only hashed."""
    from orderctl import tokens

    secret = _database(tokens.create(name, role, replace=replace), *tokens.UNREACHABLE)
    if as_json:
        output.emit_json({"name": name, "role": role.value, "token": secret})
    else:
        typer.echo(secret)


@token_app.command("revoke")
def token_revoke(
    name: Annotated[str, typer.Option(help="Whose tokens to revoke.")], as_json: Json = False
) -> None:
    """Revoke every active token of NAME; exit 1 if there was none."""
    from orderctl import tokens

    revoked = _database(tokens.revoke(name), *tokens.UNREACHABLE)
    if as_json:
        output.emit_json({"name": name, "revoked": revoked})
    else:
        output.say(f"revoked {revoked} token(s) named {name!r}")
    if revoked == 0:
        output.fail(f"no active token named {name!r}")


# --- lag ----------------------------------------------------------------------------------


def _service_groups() -> list[str]:
    """The consumer groups the services use, as their settings say (defaults or env)."""
    return [
        OrderSettings().commands_consumer_group,
        NotifierSettings().consumer_group,
        AuditSettings().consumer_group,
    ]


@app.command("lag")
def consumer_lag(
    groups: Annotated[
        list[str] | None,
        typer.Option("--group", help="A consumer group (repeatable); default: the services'."),
    ] = None,
    bootstrap_servers: Kafka = DEFAULT_KAFKA,
    as_json: Json = False,
) -> None:
    """Per consumer group and partition: committed offset, end offset, lag; and totals."""
    wanted = groups or _service_groups()
    lags = _kafka(bootstrap_servers, lag.consumer_lag(bootstrap_servers, wanted))
    if as_json:
        total = sum(g.lag or 0 for g in lags)
        output.emit_json({"groups": [g.as_dict() for g in lags], "lag": total})
        return
    rows: list[tuple[Any, ...]] = []
    for group in lags:
        if group.lag is None:
            rows.append((group.group, "(no committed offsets)", "", "", "", ""))
            continue
        for p in group.partitions:
            committed = "-" if p.committed is None else p.committed
            rows.append((group.group, p.topic, p.partition, committed, p.end, p.lag))
        rows.append((group.group, "total", "", "", "", group.lag))
    rows.append(("all groups", "total", "", "", "", sum(g.lag or 0 for g in lags)))
    output.table(["group", "topic", "partition", "committed", "end", "lag"], rows)


def main() -> None:
    app(prog_name="orderctl")
