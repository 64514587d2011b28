"""An order's communications (the notifier's) and audit timeline (the audit service's), read
through the order service so that its admin page needs only its own origin.

Read-only, with the caller's token: the order service checks it first (401/403 recorded like
any refusal) and answers 404 for an unknown order; the peer then checks it again, as for any
reader. A peer that does not answer gives 503 with `<peer>_unavailable`, never a 502/504: the
admin page shows that part as unavailable, and nothing else (a status change least of all)
depends on it."""

from __future__ import annotations

import logging
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, FastAPI, Query, Request, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from order import service
from order.adapters.peer_reads import PeerReadApi, PeerUnavailable
from order.entrypoints.http import ERROR_MEANINGS, Reader, Uow, error_response
from order.entrypoints.schemas import ErrorResponse

router = APIRouter(tags=["relayed reads"])
log = logging.getLogger(__name__)

# Long enough for the peer to check the token with this service and read its database.
RETRY_AFTER_SECONDS = "2"


class RelayedPage(BaseModel):
    """A page of the peer's read API, relayed unchanged: see its own OpenAPI document for
    the fields of the items."""

    model_config = ConfigDict(extra="allow")

    items: list[dict[str, Any]]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page")


def _errors(peer: str) -> dict[int | str, dict[str, Any]]:
    relayed = f"; or the {peer} service's own refusal of the same request, relayed"
    return {
        401: {"model": ErrorResponse, "description": ERROR_MEANINGS[401] + relayed},
        403: {"model": ErrorResponse, "description": ERROR_MEANINGS[403]},
        404: {"model": ErrorResponse, "description": ERROR_MEANINGS[404]},
        422: {
            "model": ErrorResponse,
            "description": "Invalid order id, limit or cursor (the cursor is checked by the "
            f"{peer} service)",
        },
        503: {
            "model": ErrorResponse,
            "description": f"`{peer}_unavailable`: the {peer} service does not answer (or "
            "answers an error of its own); retry after Retry-After seconds. Or "
            "`database_unavailable` or `database_busy`, as everywhere.",
        },
    }


def _peer(request: Request, peer: str) -> PeerReadApi:
    apis: dict[str, PeerReadApi] = request.app.state.peer_reads
    return apis[peer]


async def _relay(
    request: Request, uow: Uow, order_id: UUID, peer: str, path: str, params: dict[str, str | int]
) -> JSONResponse:
    await service.get_order(uow, order_id)  # 404 here, not the peer's empty page
    # The Reader dependency has refused any request without a valid bearer token.
    authorization = request.headers["authorization"]
    answer = await _peer(request, peer).page(path, params=params, authorization=authorization)
    return JSONResponse(answer.body, status_code=answer.status_code)


Cursor = Annotated[str | None, Query(description="`next_cursor` of the previous page")]


@router.get(
    "/orders/{order_id}/communications",
    response_model=RelayedPage,
    responses=_errors("notifier"),
)
async def communications(
    order_id: UUID,
    request: Request,
    uow: Uow,
    _: Reader,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: Cursor = None,
) -> JSONResponse:
    """The order's communications, oldest first: the notifier's `GET /communications?order_id=`
    (items with `channel`, `template`, `recipient`, `dedupe_key`, `status`, `attempts`,
    `last_error` and timestamps)."""
    params: dict[str, str | int] = {"order_id": str(order_id), "limit": limit}
    if cursor is not None:
        params["cursor"] = cursor
    return await _relay(request, uow, order_id, "notifier", "/communications", params)


@router.get(
    "/orders/{order_id}/audit",
    response_model=RelayedPage,
    responses=_errors("audit"),
)
async def audit_timeline(
    order_id: UUID,
    request: Request,
    uow: Uow,
    _: Reader,
    limit: Annotated[int, Query(ge=1, le=1000)] = 1000,
    cursor: Cursor = None,
) -> JSONResponse:
    """The order's audit timeline, oldest first: the audit service's
    `GET /audit/orders/{order_id}/timeline` (items with `action`, `actor`, `occurred_at`,
    `before`, `after`, `reason`, `hash` and `prev_hash`)."""
    params: dict[str, str | int] = {"limit": limit}
    if cursor is not None:
        params["cursor"] = cursor
    return await _relay(
        request, uow, order_id, "audit", f"/audit/orders/{order_id}/timeline", params
    )


def install(app: FastAPI, *, notifier: PeerReadApi, audit: PeerReadApi) -> None:
    app.state.peer_reads = {"notifier": notifier, "audit": audit}

    @app.exception_handler(PeerUnavailable)
    async def on_peer_unavailable(_: Request, error: PeerUnavailable) -> JSONResponse:
        log.warning("%s", error)
        response = error_response(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            f"{error.peer}_unavailable",
            f"The {error.peer} service does not answer now; this part of the order cannot be "
            "shown. Retry shortly.",
            dependency=error.peer,
        )
        response.headers["Retry-After"] = RETRY_AFTER_SECONDS
        return response

    app.include_router(router)
