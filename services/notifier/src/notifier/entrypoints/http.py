"""The notifier's read API and health checks."""

from __future__ import annotations

import base64
import logging
from datetime import datetime
from http import HTTPStatus
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field
from sqlalchemy import text
from starlette.exceptions import HTTPException as StarletteHTTPException

from contracts import Channel
from notifier import service
from notifier.adapters.broker import BrokerConnection
from notifier.adapters.unit_of_work import DatabaseBusy, DatabaseUnavailable
from notifier.domain.communication import Communication, CommunicationStatus
from servicekit.token_verifier import Caller, OrderServiceUnavailable, TokenVerifier

router = APIRouter()
log = logging.getLogger(__name__)

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


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable, machine-readable error code")
    message: str = Field(description="What went wrong, in a sentence")
    details: dict[str, Any] = Field(default_factory=dict)


class ErrorResponse(BaseModel):
    """The one shape of every error answer."""

    error: ErrorDetail


class Refused(Exception):
    def __init__(self, status_code: int, code: str, message: str, **details: Any) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.message = message
        self.details = details


bearer = HTTPBearer(
    auto_error=False,
    description="An API token issued by the order service (`python -m order token create`), "
    "of role `viewer` or `admin`; checked with the order service's `GET /auth/whoami`.",
)
READER_ROLES = frozenset({"viewer", "admin"})


async def reader(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Caller:
    """The caller, if its token may read here."""
    if credentials is None:
        raise Refused(401, "unauthenticated", "A bearer token is required.")
    verifier: TokenVerifier = request.app.state.token_verifier
    try:
        caller = await verifier.caller(credentials.credentials)
    except OrderServiceUnavailable as error:
        log.warning("cannot check a token: the order service did not answer (%s)", error)
        raise Refused(
            503,
            "auth_unavailable",
            "The token cannot be checked now: the order service, which issues tokens, "
            "does not answer. Retry shortly.",
            dependency="order",
        ) from error
    if caller is None:
        raise Refused(401, "unauthenticated", "The bearer token is unknown or revoked.")
    if caller.role not in READER_ROLES:
        raise Refused(403, "forbidden", f"Role '{caller.role}' may not read here.")
    return caller


Reader = Depends(reader)
READ_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "No bearer token, or an unknown or revoked one"},
    403: {"model": ErrorResponse, "description": "The token's role may not read here"},
    503: {
        "model": ErrorResponse,
        "description": "`auth_unavailable`: the token cannot be checked, as the order service "
        "does not answer; `database_unavailable`: the database cannot be reached; "
        "`database_busy`: every connection to it stayed in use. Retry shortly.",
    },
}


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

    @app.exception_handler(Refused)
    async def on_refused(_: Request, refused: Refused) -> JSONResponse:
        response = error_response(
            refused.status_code, refused.code, refused.message, **refused.details
        )
        if refused.status_code == 401:
            response.headers["WWW-Authenticate"] = "Bearer"
        return response

    @app.exception_handler(DatabaseUnavailable)
    @app.exception_handler(DatabaseBusy)
    async def on_database_not_answering(_: Request, error: Exception) -> JSONResponse:
        code, why = (
            (
                "database_busy",
                "The notifier service is taking more requests than its database answers",
            )
            if isinstance(error, DatabaseBusy)
            else ("database_unavailable", "The notifier database cannot be reached")
        )
        response = error_response(503, code, f"{why}. Retry shortly.")
        response.headers["Retry-After"] = "1"
        return response

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


@router.get(
    "/communications",
    response_model=CommunicationPage,
    dependencies=[Reader],
    responses=READ_ERRORS,
)
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
