"""The notifier's read API and health checks."""

from __future__ import annotations

import base64
from datetime import datetime
from http import HTTPStatus
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy import text
from starlette.exceptions import HTTPException as StarletteHTTPException

from notifier import service

router = APIRouter()


class Communication(BaseModel):
    id: UUID
    order_id: UUID
    event_id: UUID
    channel: str
    template: str
    recipient: str
    dedupe_key: str
    status: str
    attempts: int
    last_error: str | None
    provider_message_id: str | None
    next_attempt_at: datetime | None
    created_at: datetime
    updated_at: datetime
    sent_at: datetime | None


class CommunicationPage(BaseModel):
    items: list[Communication]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page")


def error_response(status_code: int, code: str, message: str, **details: Any) -> JSONResponse:
    body = {"error": {"code": code, "message": message, "details": details}}
    return JSONResponse(status_code=status_code, content=body)


class InvalidCursor(Exception):
    pass


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


def _encode_cursor(row: Any) -> str:
    return base64.urlsafe_b64encode(f"{row.created_at.isoformat()}|{row.id}".encode()).decode()


def _decode_cursor(cursor: str) -> tuple[datetime, UUID]:
    try:
        created_at, row_id = base64.urlsafe_b64decode(cursor.encode()).decode().split("|")
        return datetime.fromisoformat(created_at), UUID(row_id)
    except ValueError:
        raise InvalidCursor from None


@router.get("/communications", response_model=CommunicationPage)
async def communications(
    request: Request,
    order_id: UUID | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: str | None = None,
) -> CommunicationPage:
    after = _decode_cursor(cursor) if cursor else None
    rows = await service.list_communications(
        request.app.state.uow_factory, order_id=order_id, limit=limit + 1, after=after
    )
    page = rows[:limit]
    return CommunicationPage(
        items=[Communication.model_validate(row, from_attributes=True) for row in page],
        next_cursor=_encode_cursor(page[-1]) if len(rows) > limit else None,
    )


@router.get("/health/live", tags=["health"])
async def live() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/health/ready", tags=["health"])
async def ready(request: Request) -> JSONResponse:
    """Ready when the database answers and the Kafka consumer is connected."""
    try:
        async with request.app.state.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
    except Exception as error:
        return error_response(503, "not_ready", f"database unreachable: {type(error).__name__}")
    if not request.app.state.kafka_connected.is_set():
        return error_response(503, "not_ready", "kafka not connected yet")
    return JSONResponse({"status": "ok"})
