"""The audit read API, chain verification and health checks."""

from __future__ import annotations

import base64
from datetime import datetime
from http import HTTPStatus
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import AwareDatetime, BaseModel, Field
from sqlalchemy import text
from starlette.exceptions import HTTPException as StarletteHTTPException

from audit import service

router = APIRouter()

MAX_ID = 2**63 - 1  # a cursor beyond bigint would fail in the database, not as a 422


class Entry(BaseModel):
    id: int
    event_id: UUID
    action: str
    actor: str
    entity_type: str
    entity_id: str
    occurred_at: datetime
    recorded_at: datetime
    source: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    reason: str | None
    correlation_id: str | None
    details: dict[str, Any]
    hash: str
    prev_hash: str


class EntryPage(BaseModel):
    items: list[Entry]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page")


class Timeline(BaseModel):
    order_id: UUID
    items: list[Entry] = Field(description="Oldest first")
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page")


class VerifyReport(BaseModel):
    ok: bool
    checked: int = Field(description="How many entries, from the first, hold")
    head: str = Field(description="Hash of the last entry that holds; keep it to detect a cut")
    first_broken: dict[str, Any] | None = Field(
        default=None, description="Only when not ok: the entry's id, event_id and the problem"
    )


class InvalidCursor(Exception):
    pass


def error_response(status_code: int, code: str, message: str, **details: Any) -> JSONResponse:
    body = {"error": {"code": code, "message": message, "details": details}}
    return JSONResponse(status_code=status_code, content=body)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(_: Request, error: StarletteHTTPException) -> JSONResponse:
        code = HTTPStatus(error.status_code).phrase.lower().replace(" ", "_")
        return error_response(error.status_code, code, str(error.detail))

    @app.exception_handler(RequestValidationError)
    async def on_invalid_request(_: Request, error: RequestValidationError) -> JSONResponse:
        problems = [{"location": list(e["loc"]), "problem": e["msg"]} for e in error.errors()]
        return error_response(
            422, "validation_error", "The request is not valid.", problems=problems
        )

    @app.exception_handler(InvalidCursor)
    async def on_invalid_cursor(_: Request, __: InvalidCursor) -> JSONResponse:
        return error_response(422, "invalid_cursor", "The cursor is not one this API issued.")


def _decode_cursor(cursor: str) -> int:
    try:
        after_id = int(base64.urlsafe_b64decode(cursor.encode()).decode())
    except ValueError:
        raise InvalidCursor from None
    if not 0 < after_id <= MAX_ID:
        raise InvalidCursor
    return after_id


def _cursor_after(rows: list[Any], limit: int) -> str | None:
    """The cursor of the next page, if `rows` (fetched with one extra) has one."""
    if len(rows) <= limit:
        return None
    return base64.urlsafe_b64encode(str(rows[limit - 1].id).encode()).decode()


@router.get("/audit", response_model=EntryPage)
async def entries(
    request: Request,
    entity_id: str | None = None,
    actor: str | None = None,
    action: str | None = None,
    since: Annotated[AwareDatetime | None, Query(description="occurred at or after")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: str | None = None,
) -> EntryPage:
    """Newest first."""
    rows = await service.list_entries(
        request.app.state.uow_factory,
        entity_id=entity_id,
        actor=actor,
        action=action,
        since=since,
        after_id=_decode_cursor(cursor) if cursor else None,
        limit=limit + 1,
    )
    return EntryPage(
        items=[Entry.model_validate(row, from_attributes=True) for row in rows[:limit]],
        next_cursor=_cursor_after(rows, limit),
    )


@router.get("/audit/orders/{order_id}/timeline", response_model=Timeline)
async def timeline(
    request: Request,
    order_id: UUID,
    limit: Annotated[int, Query(ge=1, le=1000)] = 1000,
    cursor: str | None = None,
) -> Timeline:
    """Everything that happened to one order, oldest first, ready for an admin UI."""
    rows = await service.list_entries(
        request.app.state.uow_factory,
        entity_id=str(order_id),
        after_id=_decode_cursor(cursor) if cursor else None,
        limit=limit + 1,
        newest_first=False,
    )
    return Timeline(
        order_id=order_id,
        items=[Entry.model_validate(row, from_attributes=True) for row in rows[:limit]],
        next_cursor=_cursor_after(rows, limit),
    )


@router.get("/audit/verify", response_model=VerifyReport, response_model_exclude_none=True)
async def verify(request: Request) -> VerifyReport:
    """Walk the whole chain from the first entry and report the first broken link."""
    report = await service.verify(request.app.state.uow_factory)
    return VerifyReport.model_validate(report.as_dict())


@router.get("/health/live", tags=["health"])
async def live() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/health/ready", tags=["health"])
async def ready(request: Request) -> JSONResponse:
    """Ready when the database answers and the Kafka consumers are connected."""
    try:
        async with request.app.state.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
    except Exception as error:
        return error_response(
            503, "not_ready", f"database unreachable: {type(error).__name__}", dependency="database"
        )
    if not await request.app.state.kafka.answers(within=1.0):
        return error_response(503, "not_ready", "kafka not connected", dependency="kafka")
    return JSONResponse({"status": "ok"})
