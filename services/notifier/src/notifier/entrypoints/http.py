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

from contracts import Channel
from notifier import service
from notifier.adapters.broker import BrokerConnection
from notifier.domain.communication import Communication, CommunicationStatus

router = APIRouter()

# How long the readiness check waits for Kafka to answer.
KAFKA_PING_SECONDS = 1.0


class CommunicationResponse(BaseModel):
    id: UUID
    order_id: UUID
    event_id: UUID
    channel: Channel
    template: str
    recipient: str
    dedupe_key: str
    status: CommunicationStatus
    attempts: int
    last_error: str | None
    provider_message_id: str | None
    next_attempt_at: datetime | None
    created_at: datetime
    updated_at: datetime
    sent_at: datetime | None
    replays: int


class CommunicationPage(BaseModel):
    items: list[CommunicationResponse]
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


def _encode_cursor(last: Communication) -> str:
    return base64.urlsafe_b64encode(f"{last.created_at.isoformat()}|{last.id}".encode()).decode()


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
    cursor: Annotated[str | None, Query(description="`next_cursor` of the previous page")] = None,
) -> CommunicationPage:
    """Communications, oldest first, optionally of one order."""
    after = _decode_cursor(cursor) if cursor else None
    found = await service.list_communications(
        request.app.state.uow_factory, order_id=order_id, limit=limit + 1, after=after
    )
    page = found[:limit]
    return CommunicationPage(
        items=[CommunicationResponse.model_validate(c, from_attributes=True) for c in page],
        next_cursor=_encode_cursor(page[-1]) if len(found) > limit else None,
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
    kafka: BrokerConnection = request.app.state.kafka
    if not kafka.connected.is_set():
        return error_response(503, "not_ready", "kafka not connected yet")
    if not await kafka.broker.ping(timeout=KAFKA_PING_SECONDS):
        return error_response(503, "not_ready", "kafka not answering")
    return JSONResponse({"status": "ok"})
