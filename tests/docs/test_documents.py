"""docs/ holds what the code generates now (`make docs` refreshes it), the AsyncAPI documents
pass the AsyncAPI project's own parser, and the contract schemas accept real messages."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from uuid import uuid4

import jsonschema_rs
import pytest

from contracts import (
    ORDERS_EVENTS,
    Actor,
    ChangeOrderStatus,
    Customer,
    DeadLetter,
    OrderStatus,
    OrderStatusChanged,
)
from docgen.documents import stale_documents, write_documents

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "docs"
VALIDATOR = ROOT / "deploy" / "docgen" / "asyncapi-validate"


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("docs")
    write_documents(root)
    return root


def test_the_committed_documents_are_what_the_code_generates() -> None:
    differences = stale_documents(COMMITTED)
    assert not differences, "\n".join([*differences, "run `make docs` and commit docs/"])


def test_generating_again_gives_the_same_bytes(generated: Path) -> None:
    assert stale_documents(generated) == []


def test_a_changed_missing_or_extra_document_is_named(generated: Path, tmp_path: Path) -> None:
    copy = tmp_path / "docs"
    shutil.copytree(generated, copy)
    (copy / "openapi" / "order.json").write_text("{}\n")
    (copy / "schemas" / "DeadLetter.json").unlink()
    (copy / "asyncapi" / "gone.yaml").write_text("asyncapi: 3.0.0\n")

    assert stale_documents(copy) == [
        f"{copy}/asyncapi/gone.yaml: no longer generated",
        f"{copy}/openapi/order.json: stale",
        f"{copy}/schemas/DeadLetter.json: missing",
    ]


def test_every_service_has_its_documents(generated: Path) -> None:
    for service in ("order", "notifier", "audit"):
        openapi = json.loads((generated / "openapi" / f"{service}.json").read_text())
        assert openapi["paths"], service
        assert (generated / "asyncapi" / f"{service}.yaml").is_file()


def _validate(*documents: Path) -> subprocess.CompletedProcess[str]:
    if not (VALIDATOR / "node_modules" / "@asyncapi" / "parser").is_dir():
        pytest.fail(f"the AsyncAPI parser is not installed in {VALIDATOR}: run `make setup`")
    return subprocess.run(
        ["node", str(VALIDATOR / "validate.mjs"), *map(str, documents)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_asyncapi_parser_accepts_every_asyncapi_document(generated: Path) -> None:
    documents = sorted((generated / "asyncapi").glob("*.yaml"))
    assert [d.stem for d in documents] == ["audit", "notifier", "order"]

    result = _validate(*documents)

    assert result.returncode == 0, result.stdout + result.stderr
    for document in documents:
        assert f"{document}: valid AsyncAPI 3.0.0" in result.stdout


def test_the_asyncapi_parser_refuses_a_broken_document(generated: Path, tmp_path: Path) -> None:
    text = (generated / "asyncapi" / "order.yaml").read_text()
    broken = tmp_path / "broken.yaml"
    broken.write_text(text.replace("#/components/schemas/OrderCommand", "#/components/schemas/No"))

    result = _validate(broken)

    assert result.returncode == 1, result.stdout + result.stderr
    assert "'#/components/schemas/No' does not exist" in result.stdout


def _validator(generated: Path, name: str) -> jsonschema_rs.Validator:
    schema = json.loads((generated / "schemas" / f"{name}.json").read_text())
    return jsonschema_rs.validator_for(schema, validate_formats=True)


def test_the_contract_schemas_accept_real_messages_and_refuse_others(generated: Path) -> None:
    actor = Actor(id="alice", role="admin")
    changed = OrderStatusChanged(
        order_id=uuid4(),
        from_status=OrderStatus.PENDING,
        to_status=OrderStatus.CONFIRMED,
        version=2,
        actor=actor,
        customer=Customer(name="Ada", email="ada@example.com"),
    ).model_dump(mode="json")
    letter = DeadLetter.of_record(
        topic=ORDERS_EVENTS,
        partition=0,
        offset=7,
        key=b"k",
        value=b"\xff not json",
        headers=[("content-type", b"application/json")],
        reason="invalid message",
        consumer_group="audit",
    ).model_dump(mode="json")
    command = ChangeOrderStatus(
        command_id=uuid4(), order_id=uuid4(), status=OrderStatus.READY, actor=actor
    ).model_dump(mode="json")

    assert _validator(generated, "OrderStatusChanged").is_valid(changed)
    assert _validator(generated, "OrderEvent").is_valid(changed)
    assert _validator(generated, "DeadLetter").is_valid(letter)
    assert _validator(generated, "OrderCommand").is_valid(command)
    assert not _validator(generated, "OrderEvent").is_valid(command)
    assert not _validator(generated, "OrderCommand").is_valid({**command, "status": "lost"})
