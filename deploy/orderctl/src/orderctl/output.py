"""How orderctl shows results: tables for people, JSON (`--json`) for programs; problems go
to stderr and end the command with exit code 1."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

# Piped output is not wrapped (rich would wrap it at 80 columns), so grep sees whole lines.
stdout = Console(highlight=False, width=None if sys.stdout.isatty() else 10_000)
stderr = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 10_000)


def emit_json(data: Any) -> None:
    """UUIDs and datetimes become strings."""
    typer.echo(json.dumps(data, indent=2, default=str))


def say(line: str) -> None:
    # Text, not markup: reasons and error messages may hold brackets.
    stdout.print(Text(line))


def table(columns: Sequence[str], rows: Iterable[Sequence[Any]], title: str | None = None) -> None:
    shown = Table(*columns, title=title, title_justify="left")
    for row in rows:
        shown.add_row(*(Text("" if cell is None else str(cell)) for cell in row))
    stdout.print(shown)


def fail(message: str, details: dict[str, Any] | None = None, *, code: int = 1) -> NoReturn:
    stderr.print(Text(f"error: {message}"))
    for name, value in (details or {}).items():
        stderr.print(Text(f"  {name}: {_detail(value)}"))
    raise typer.Exit(code)


def _detail(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(_detail(item) for item in value)
    if isinstance(value, dict):
        return json.dumps(value, default=str)
    return str(value)
