"""Every document, built in memory and written to a folder: byte-identical on every run."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, TypeVar, cast

import yaml
from fastapi import FastAPI
from faststream.kafka import KafkaBroker
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from audit.app import build_app as build_audit
from audit.config import Settings as AuditSettings
from docgen.asyncapi import asyncapi_document
from docgen.catalogue import contract_schemas
from notifier.app import build_app as build_notifier
from notifier.config import Settings as NotifierSettings
from order.app import build_app as build_order
from order.config import Settings as OrderSettings

SettingsT = TypeVar("SettingsT", bound=BaseSettings)

# The folders this generator owns inside the output folder.
FOLDERS: Final = ("openapi", "asyncapi", "schemas")


def defaults(settings_class: type[SettingsT]) -> SettingsT:
    """The settings' defaults whatever the environment: the documents describe the code, not
    the machine they are written on."""

    class Defaults(settings_class):  # type: ignore[valid-type,misc]
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            return (init_settings,)

    return cast(SettingsT, Defaults())


# Building an app connects to nothing: the database and Kafka are reached when it starts.
SERVICES: Final[dict[str, Callable[[], FastAPI]]] = {
    "order": lambda: build_order(defaults(OrderSettings)),
    "notifier": lambda: build_notifier(defaults(NotifierSettings)),
    "audit": lambda: build_audit(defaults(AuditSettings)),
}


def build_documents() -> dict[str, str]:
    """Each document's text by its path relative to the output folder."""
    documents: dict[str, str] = {}
    for name, build_app in SERVICES.items():
        app = build_app()
        documents[f"openapi/{name}.json"] = as_json(app.openapi())
        asyncapi = asyncapi_document(
            _broker(app), title=app.title, version=app.version, description=app.description
        )
        documents[f"asyncapi/{name}.yaml"] = as_yaml(asyncapi)
    for name, schema in contract_schemas().items():
        documents[f"schemas/{name}.json"] = as_json(schema)
    return documents


def write_documents(root: Path) -> list[Path]:
    """Write every document under `root` and delete the files there it no longer writes."""
    documents = build_documents()
    for folder in FOLDERS:
        for existing in (root / folder).glob("*"):
            if existing.is_file() and f"{folder}/{existing.name}" not in documents:
                existing.unlink()
    written = []
    for relative, text in documents.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8", newline="\n")
        written.append(path)
    return written


def stale_documents(root: Path) -> list[str]:
    """How the documents under `root` differ from what the code generates now, one line per
    file: stale, missing, or no longer generated. Empty when they are fresh."""
    documents = build_documents()
    present = {
        f"{folder}/{path.name}"
        for folder in FOLDERS
        for path in (root / folder).glob("*")
        if path.is_file()
    }
    differences = []
    for relative in sorted(documents.keys() | present):
        path = root / relative
        if relative not in documents:
            differences.append(f"{path}: no longer generated")
        elif relative not in present:
            differences.append(f"{path}: missing")
        elif path.read_bytes() != documents[relative].encode("utf-8"):
            differences.append(f"{path}: stale")
    return differences


def as_json(document: Any) -> str:
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def as_yaml(document: Any) -> str:
    return yaml.safe_dump(document, sort_keys=True, allow_unicode=True, width=100)


def _broker(app: FastAPI) -> KafkaBroker:
    broker = app.state.kafka.broker
    if not isinstance(broker, KafkaBroker):
        raise TypeError(f"{app.title}: app.state.kafka.broker is not a KafkaBroker")
    return broker
