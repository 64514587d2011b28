"""Rendering from Jinja2 templates, one per status: email as plain text and HTML, SMS as
plain text."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, TemplateError, select_autoescape

TEMPLATES = Path(__file__).resolve().parents[1] / "templates"


class RenderError(Exception):
    """A template is missing or broken: the communication cannot be sent as it stands."""


@dataclass(frozen=True)
class RenderedEmail:
    subject: str
    text: str
    html: str


class EmailTemplates:
    def __init__(self, directory: Path = TEMPLATES) -> None:
        self._env = Environment(
            loader=FileSystemLoader(directory),
            undefined=StrictUndefined,
            autoescape=select_autoescape(["html"]),
            keep_trailing_newline=True,
            # Templates ship with the code: checking each file for changes on every render
            # cost a stat() per template per email.
            auto_reload=False,
        )

    def render(self, template: str, context: dict[str, Any]) -> RenderedEmail:
        try:
            subject = self._env.get_template(f"email/{template}.subject.txt").render(context)
            text = self._env.get_template(f"email/{template}.txt").render(context)
            html = self._env.get_template(f"email/{template}.html").render(context)
        except TemplateError as error:
            raise RenderError(f"template {template!r}: {type(error).__name__}: {error}") from error
        return RenderedEmail(subject.strip(), text, html)


class TextTemplates:
    """Plain-text messages (SMS): `<channel>/<template>.txt`, not HTML-escaped (`.txt`)."""

    def __init__(self, directory: Path = TEMPLATES, channel: str = "sms") -> None:
        self._channel = channel
        self._env = Environment(
            loader=FileSystemLoader(directory),
            undefined=StrictUndefined,
            autoescape=select_autoescape(["html"]),
            auto_reload=False,  # as for email
        )

    def render(self, template: str, context: dict[str, Any]) -> str:
        try:
            text = self._env.get_template(f"{self._channel}/{template}.txt").render(context)
        except TemplateError as error:
            raise RenderError(f"template {template!r}: {type(error).__name__}: {error}") from error
        return text.strip()
