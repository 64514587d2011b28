"""The order service's HTTP API: parse, call a use case, map the result or error."""

from __future__ import annotations

import base64
import hashlib
from datetime import datetime
from http import HTTPStatus
from typing import Annotated, Any
from urllib.parse import quote
from uuid import NAMESPACE_URL, UUID, uuid4, uuid5

from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel
from sqlalchemy import text
from starlette.exceptions import HTTPException as StarletteHTTPException

from contracts import Actor, CommandRejected, OrderStatus
from order import service
from order.adapters.token_cache import KnownTokens
from order.adapters.unit_of_work import (
    DatabaseBusy,
    DatabaseUnavailable,
    UnitOfWork,
    UnitOfWorkFactory,
    Unstorable,
)
from order.domain.auth import AccessRefused, Forbidden, Identity, Permission
from order.domain.errors import (
    IdempotencyKeyReused,
    OrderAlreadyExists,
    OrderError,
    OrderNotFound,
    StaleVersion,
    TransitionNotAllowed,
)
from order.domain.model import Customer, Order
from order.entrypoints.schemas import (
    ChangeStatusRequest,
    CreateOrderRequest,
    ErrorResponse,
    HistoryEntry,
    HistoryResponse,
    OrderPage,
    OrderResponse,
    WhoAmI,
)

router = APIRouter()
bearer = HTTPBearer(
    auto_error=False,
    description="An API token (`python -m order token create`); role `viewer` reads, "
    "`admin` reads and changes. Refused requests are recorded in the audit trail.",
)

ERROR_STATUS: dict[type[OrderError], int] = {
    OrderNotFound: status.HTTP_404_NOT_FOUND,
    OrderAlreadyExists: status.HTTP_409_CONFLICT,
    TransitionNotAllowed: status.HTTP_409_CONFLICT,
    StaleVersion: status.HTTP_412_PRECONDITION_FAILED,
    IdempotencyKeyReused: status.HTTP_422_UNPROCESSABLE_CONTENT,
}


class ApiError(Exception):
    def __init__(self, status_code: int, code: str, message: str, **details: Any) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.message = message
        self.details = details


def error_response(status_code: int, code: str, message: str, **details: Any) -> JSONResponse:
    body = {"error": {"code": code, "message": message, "details": details}}
    return JSONResponse(status_code=status_code, content=body)


def _domain_error_details(error: OrderError) -> dict[str, Any]:
    if isinstance(error, TransitionNotAllowed):
        return {
            "current_status": error.current,
            "requested_status": error.requested,
            "allowed_next": list(error.allowed),
        }
    if isinstance(error, StaleVersion):
        return {"expected_version": error.expected, "current_version": error.actual}
    if isinstance(error, OrderNotFound | OrderAlreadyExists):
        return {"order_id": str(error.order_id)}
    return {}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(OrderError)
    async def on_domain_error(_: Request, error: OrderError) -> JSONResponse:
        return error_response(
            ERROR_STATUS.get(type(error), status.HTTP_400_BAD_REQUEST),
            error.code,
            str(error),
            **_domain_error_details(error),
        )

    @app.exception_handler(AccessRefused)
    async def on_access_refused(_: Request, refusal: AccessRefused) -> JSONResponse:
        if isinstance(refusal, Forbidden):
            return error_response(status.HTTP_403_FORBIDDEN, refusal.code, str(refusal))
        response = error_response(status.HTTP_401_UNAUTHORIZED, refusal.code, str(refusal))
        response.headers["WWW-Authenticate"] = "Bearer"
        return response

    @app.exception_handler(ApiError)
    async def on_api_error(_: Request, error: ApiError) -> JSONResponse:
        return error_response(error.status_code, error.code, error.message, **error.details)

    @app.exception_handler(Unstorable)
    async def on_unstorable(_: Request, error: Unstorable) -> JSONResponse:
        return error_response(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            "unstorable_value",
            f"The request holds a value the database cannot store: {error}",
        )

    @app.exception_handler(DatabaseUnavailable)
    @app.exception_handler(DatabaseBusy)
    async def on_database_not_answering(_: Request, error: Exception) -> JSONResponse:
        code, why = (
            ("database_busy", "The order service is taking more requests than its database answers")
            if isinstance(error, DatabaseBusy)
            else ("database_unavailable", "The order database cannot be reached")
        )
        response = error_response(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            code,
            f"{why}; nothing was changed. Retry shortly (with the same Idempotency-Key).",
        )
        response.headers["Retry-After"] = "1"
        return response

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(_: Request, error: StarletteHTTPException) -> JSONResponse:
        code = HTTPStatus(error.status_code).phrase.lower().replace(" ", "_")
        return error_response(error.status_code, code, str(error.detail))

    @app.exception_handler(RequestValidationError)
    async def on_invalid_request(_: Request, error: RequestValidationError) -> JSONResponse:
        problems = [
            {"location": list(e.get("loc", ())), "problem": e.get("msg", "")}
            for e in error.errors()
        ]
        return error_response(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            "validation_error",
            "The request is not valid.",
            problems=problems,
        )


# async: FastAPI runs a plain `def` dependency in its threadpool, a thread hop per request.
async def uow_factory(request: Request) -> UnitOfWorkFactory:
    factory: UnitOfWorkFactory = request.app.state.uow_factory
    return factory


Uow = Annotated[UnitOfWorkFactory, Depends(uow_factory)]


# Enough of a path to recognise the request; the audit entry need not hold a huge one.
AUDITED_PATH_LENGTH = 300
MAX_CORRELATION_ID = 200  # as the contracts allow


def _attempt(request: Request) -> service.Attempt:
    # Percent-encoded, so whatever the path holds (NUL, any byte) the entry can be stored.
    path = quote(request.url.path, safe="/")[:AUDITED_PATH_LENGTH]
    try:
        order_id: UUID | None = UUID(request.path_params["order_id"])
    except (KeyError, ValueError):
        order_id = None
    correlation_id = request.headers.get("x-correlation-id")
    if correlation_id is not None and not (
        len(correlation_id) <= MAX_CORRELATION_ID and correlation_id.isprintable()
    ):
        correlation_id = None
    return service.Attempt(request.method, path, order_id, correlation_id)


def requires(permission: Permission | None) -> Any:
    """The caller's identity, if its token may do `permission` (None: any valid token);
    a refused request is recorded for the audit trail and answered 401 or 403."""

    async def identity(
        request: Request,
        uow: Uow,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> Identity:
        token = credentials.credentials if credentials is not None else None
        known: KnownTokens = request.app.state.known_tokens
        return await service.authorize(uow, known.lookup, token, permission, _attempt(request))

    return Depends(identity)


Authenticated = Annotated[Identity, requires(None)]
Reader = Annotated[Identity, requires(Permission.READ)]
Changer = Annotated[Identity, requires(Permission.CHANGE)]


def _actor(identity: Identity) -> Actor:
    return Actor(id=identity.name, role=identity.role.value)


ERROR_MEANINGS = {
    401: "No bearer token, or an unknown or revoked one",
    403: "The token's role may not do this",
    404: "No such order",
    409: "Forbidden transition (current status and allowed next ones in details), "
    "or the order id is taken",
    412: "If-Match names a version the order is no longer at",
    422: "Invalid request: unknown status (allowed values in details), malformed body, "
    "cursor or If-Match, or an Idempotency-Key reused for another request",
    503: "The database stayed unreachable (`database_unavailable`) or every connection to it "
    "busy (`database_busy`) longer than the service waits; nothing was changed, retry after "
    "Retry-After seconds",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The documented error answers of a route; every route can meet an unreachable or busy
    database."""
    return {
        code: {"model": ErrorResponse, "description": ERROR_MEANINGS[code]}
        for code in (*codes, 503)
    }


CorrelationId = Annotated[
    str | None,
    Header(
        max_length=MAX_CORRELATION_ID,
        description="Carried into the events and logs of this change, to follow it across "
        "services.",
    ),
]
IdempotencyKey = Annotated[
    str | None,
    Header(
        max_length=200,
        description="Makes a retried POST safe: the same key returns the first answer, "
        "never a second effect.",
    ),
]


def _idempotency(
    who: Identity, key: str | None, request: Request, body: BaseModel, if_match: str | None = None
) -> service.IdempotentRequest | None:
    if key is None:
        return None
    fingerprint = hashlib.sha256(
        f"{request.method} {request.url.path} {if_match}\n{body.model_dump_json()}".encode()
    ).hexdigest()
    return service.IdempotentRequest(scope=who.name, key=key, fingerprint=fingerprint)


def _respond(result: service.Answer) -> JSONResponse:
    headers = {"Idempotent-Replayed": "true"} if result.replayed else None
    return JSONResponse(result.body, status_code=result.status_code, headers=headers)


@router.post(
    "/orders", status_code=201, response_model=OrderResponse, responses=errors(401, 403, 409, 422)
)
async def create_order(
    body: CreateOrderRequest,
    request: Request,
    uow: Uow,
    who: Changer,
    idempotency_key: IdempotencyKey = None,
    x_correlation_id: CorrelationId = None,
) -> JSONResponse:
    async def create(unit: UnitOfWork) -> dict[str, Any]:
        order = await service.create_order_in(
            unit,
            customer=Customer(body.customer.name, body.customer.email, body.customer.phone),
            actor=_actor(who),
            order_id=body.id,
            correlation_id=x_correlation_id,
        )
        return OrderResponse.of(order).model_dump(mode="json")

    idempotency = _idempotency(who, idempotency_key, request, body)
    return _respond(await service.answer(uow, 201, create, idempotency))


@router.get("/orders", response_model=OrderPage, responses=errors(401, 403, 422))
async def list_orders(
    uow: Uow,
    _: Reader,
    status_filter: Annotated[OrderStatus | None, Query(alias="status")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(description="`next_cursor` of the previous page")] = None,
) -> OrderPage:
    after = _decode_cursor(cursor) if cursor else None
    found = await service.list_orders(uow, status=status_filter, limit=limit + 1, after=after)
    page = found[:limit]
    next_cursor = _encode_cursor(page[-1]) if len(found) > limit else None
    return OrderPage(items=[OrderResponse.of(o) for o in page], next_cursor=next_cursor)


def _encode_cursor(order: Order) -> str:
    return base64.urlsafe_b64encode(f"{order.created_at.isoformat()}|{order.id}".encode()).decode()


def _decode_cursor(cursor: str) -> tuple[datetime, UUID]:
    try:
        created_at, order_id = base64.urlsafe_b64decode(cursor.encode()).decode().split("|")
        return datetime.fromisoformat(created_at), UUID(order_id)
    except ValueError:
        raise ApiError(422, "invalid_cursor", "The cursor is not one this API issued.") from None


@router.get(
    "/orders/{order_id}", response_model=OrderResponse, responses=errors(401, 403, 404, 422)
)
async def get_order(order_id: UUID, uow: Uow, _: Reader) -> OrderResponse:
    return OrderResponse.of(await service.get_order(uow, order_id))


@router.post(
    "/orders/{order_id}/status",
    response_model=OrderResponse,
    responses=errors(401, 403, 404, 409, 412, 422),
)
async def change_status(
    order_id: UUID,
    body: ChangeStatusRequest,
    request: Request,
    uow: Uow,
    who: Changer,
    idempotency_key: IdempotencyKey = None,
    if_match: Annotated[
        str | None, Header(description="The order version the change is based on")
    ] = None,
    x_correlation_id: CorrelationId = None,
) -> JSONResponse:
    try:
        target = OrderStatus(body.status)
    except ValueError:
        raise ApiError(
            422,
            "unknown_status",
            f"'{body.status}' is not an order status.",
            allowed_values=[s.value for s in OrderStatus],
        ) from None
    expected_version = _version(if_match)

    async def change(unit: UnitOfWork) -> dict[str, Any]:
        order = await service.change_order_status_in(
            unit,
            order_id,
            target,
            actor=_actor(who),
            reason=body.reason,
            expected_version=expected_version,
            correlation_id=x_correlation_id,
        )
        return OrderResponse.of(order).model_dump(mode="json")

    def rejected(error: OrderError) -> CommandRejected:
        # Derived from the idempotency key when there is one, so a retried refusal is
        # recognisably the same attempt.
        command_id = (
            uuid5(NAMESPACE_URL, f"{who.name}/{idempotency_key}") if idempotency_key else uuid4()
        )
        return service.rejection_of(
            error,
            command_id=command_id,
            order_id=order_id,
            actor=_actor(who),
            requested=target,
            correlation_id=x_correlation_id,
        )

    idempotency = _idempotency(who, idempotency_key, request, body, if_match)
    return _respond(await service.answer_change(uow, change, idempotency, rejected))


def _version(if_match: str | None) -> int | None:
    if if_match is None:
        return None
    raw = if_match.strip().removeprefix("W/").strip('"')
    if not raw.isdigit():
        raise ApiError(422, "invalid_if_match", "If-Match must be an order version number.")
    return int(raw)


@router.get(
    "/orders/{order_id}/history",
    response_model=HistoryResponse,
    responses=errors(401, 403, 404, 422),
)
async def history(order_id: UUID, uow: Uow, _: Reader) -> HistoryResponse:
    rows = await service.order_history(uow, order_id)
    items = [
        HistoryEntry(
            event_id=row["event_id"],
            from_status=row["from_status"],
            to_status=row["to_status"],
            version=row["version"],
            actor=row["actor"],
            reason=row["reason"],
            occurred_at=row["occurred_at"],
        )
        for row in rows
    ]
    return HistoryResponse(order_id=order_id, items=items)


@router.get("/auth/whoami", response_model=WhoAmI, responses=errors(401), tags=["auth"])
async def whoami(who: Authenticated) -> WhoAmI:
    """Whose the bearer token is, and its role: how the notifier and the audit service check
    the tokens presented to them."""
    return WhoAmI(id=who.name, role=who.role)


@router.get("/health/live", tags=["health"])
async def live() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/health/ready", tags=["health"])
async def ready(request: Request) -> JSONResponse:
    # Ready means the database answers. Kafka is deliberately not required: status changes
    # must keep succeeding while the broker is down (the outbox holds the events), so taking
    # the service out of rotation then would refuse exactly what it can still do. Whether
    # Kafka answered the last periodic check is reported here (and as order_kafka_up).
    try:
        async with request.app.state.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
    except Exception as error:
        return error_response(503, "not_ready", f"database unreachable: {type(error).__name__}")
    reachable = request.app.state.kafka.reachable
    kafka = "unknown" if reachable is None else "ok" if reachable else "unreachable"
    return JSONResponse({"status": "ok", "database": "ok", "kafka": kafka})
