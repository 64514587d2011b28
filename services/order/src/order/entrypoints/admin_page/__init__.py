"""The admin page: one static HTML page, its script and style sheet, served at `/admin`.

The page holds no data of its own: it asks for a bearer token (kept in the tab's
sessionStorage) and calls the order service's HTTP API with it, including the relayed reads of
an order's communications and audit timeline, so everything stays on this origin. No build
step, nothing from another origin; the Content-Security-Policy says so to the browser."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

ASSETS = Path(__file__).parent / "assets"
ASSETS_PATH = "/admin/assets"

# Scripts, styles and requests from this origin only; no inline script, no framing.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

router = APIRouter(include_in_schema=False)


@router.get("/admin")
async def admin_page() -> FileResponse:
    return FileResponse(ASSETS / "index.html", headers=PAGE_HEADERS)


def install(app: FastAPI) -> None:
    app.include_router(router)
    app.mount(ASSETS_PATH, StaticFiles(directory=ASSETS), name="admin-assets")
