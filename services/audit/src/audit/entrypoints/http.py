"""The audit read API, chain verification and health checks."""

from __future__ import annotations

import base64
import logging
from collections.abc import Mapping
from datetime import datetime
from http import HTTPStatus
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import AwareDatetime, BaseModel, Field
from sqlalchemy import text
from starlette.exceptions import HTTPException as StarletteHTTPException

from audit import service
from audit.adapters.unit_of_work import DatabaseBusy, DatabaseUnavailable
from servicekit.token_verifier import Caller, OrderServiceUnavailable, TokenVerifier

router = APIRouter()
log = logging.getLogger(__name__)

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
            ("database_busy", "The audit service is taking more requests than its database answers")
            if isinstance(error, DatabaseBusy)
            else ("database_unavailable", "The audit database cannot be reached")
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


def _decode_cursor(cursor: str) -> int:
    try:
        after_id = int(base64.urlsafe_b64decode(cursor.encode()).decode())
    except ValueError:
        raise InvalidCursor from None
    if not 0 < after_id <= MAX_ID:
        raise InvalidCursor
    return after_id


def _cursor_after(rows: list[Mapping[str, Any]], limit: int) -> str | None:
    """The cursor of the next page, if `rows` (fetched with one extra) has one."""
    if len(rows) <= limit:
        return None
    return base64.urlsafe_b64encode(str(rows[limit - 1]["id"]).encode()).decode()


@router.get("/audit", response_model=EntryPage, dependencies=[Reader], responses=READ_ERRORS)
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
        items=[Entry.model_validate(dict(row)) for row in rows[:limit]],
        next_cursor=_cursor_after(rows, limit),
    )


@router.get(
    "/audit/orders/{order_id}/timeline",
    response_model=Timeline,
    dependencies=[Reader],
    responses=READ_ERRORS,
)
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
        items=[Entry.model_validate(dict(row)) for row in rows[:limit]],
        next_cursor=_cursor_after(rows, limit),
    )


@router.get(
    "/audit/verify",
    response_model=VerifyReport,
    response_model_exclude_none=True,
    dependencies=[Reader],
    responses=READ_ERRORS,
)
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
