"""Checks shared by the notifier's and the audit service's read APIs, whose bearer tokens the
order service (a real process: `token_issuer`) issues and verifies over HTTP."""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any
from uuid import uuid4

import httpx

from devstack.waiting import wait_until
from tests.integration.conftest import TokenIssuer

# What the services under test are configured with: long enough to see a revoked token
# still served from the cache, short enough to see it expire.
TOKEN_CACHE_SECONDS = 5.0


def assert_refused(response: httpx.Response, status_code: int, code: str) -> None:
    assert response.status_code == status_code, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    assert (body["error"]["code"], type(body["error"]["message"])) == (code, str), body
    if status_code == 401:
        assert response.headers["WWW-Authenticate"] == "Bearer"


async def get_without_token(client: httpx.AsyncClient, path: str) -> httpx.Response:
    request = client.build_request("GET", path)
    request.headers.pop("Authorization", None)  # the client's default one, if any
    return await client.send(request)


async def check_read_api_auth(
    client: httpx.AsyncClient, issuer: TokenIssuer, paths: list[str]
) -> None:
    """Every read path refuses a missing, unknown, revoked or malformed token with 401 and
    answers a viewer's or an admin's token."""
    revoked_name = f"it-revoked-{uuid4().hex[:8]}"
    # Revoked before its first use here, so no cached answer can stand in for the check.
    revoked = await asyncio.to_thread(issuer.issue, revoked_name)
    await issuer.revoke(revoked_name)
    refused_tokens = {
        "unknown": b"Bearer " + secrets.token_urlsafe(32).encode(),
        "revoked": f"Bearer {revoked}".encode(),
        "not a token": "Bearer t\u00f6ken".encode("latin-1"),
        "other scheme": b"Basic YWxpY2U6c2VjcmV0",
    }
    for path in paths:
        assert_refused(await get_without_token(client, path), 401, "unauthenticated")
        for what, header in refused_tokens.items():
            response = await client.get(path, headers={b"Authorization": header})
            assert response.status_code == 401, (path, what, response.text)
            assert_refused(response, 401, "unauthenticated")
        as_viewer = await client.get(path, headers=issuer.as_viewer())
        as_admin = await client.get(path, headers={"Authorization": f"Bearer {issuer.admin_token}"})
        assert (as_viewer.status_code, as_admin.status_code) == (200, 200), path


async def check_token_cache(client: httpx.AsyncClient, issuer: TokenIssuer, path: str) -> None:
    """A token found valid is trusted for TOKEN_CACHE_SECONDS, then checked again."""
    name = f"it-cached-{uuid4().hex[:8]}"
    token = await asyncio.to_thread(issuer.issue, name)
    headers = {"Authorization": f"Bearer {token}"}
    asked_at = time.monotonic()
    assert (await client.get(path, headers=headers)).status_code == 200

    await issuer.revoke(name)
    served = await client.get(path, headers=headers)
    assert time.monotonic() - asked_at < TOKEN_CACHE_SECONDS, "too slow to see the cache"
    assert served.status_code == 200, "the valid answer was not cached"

    refused = await wait_until(
        lambda: client.get(path, headers=headers),
        lambda response: response.status_code == 401,
        within=TOKEN_CACHE_SECONDS + 10,
        what="the revoked token refused once its cached answer expired",
    )
    assert time.monotonic() - asked_at >= TOKEN_CACHE_SECONDS
    assert_refused(refused, 401, "unauthenticated")


async def check_unreachable_order_service(client: httpx.AsyncClient, path: str) -> None:
    """With nobody at the order service's address, a token cannot be checked: 503, not 500,
    and not a 401 that would call a valid token invalid."""
    response = await client.get(path, headers={"Authorization": "Bearer some-token"})
    assert_refused(response, 503, "auth_unavailable")
    assert response.json()["error"]["details"] == {"dependency": "order"}
    assert_refused(await get_without_token(client, path), 401, "unauthenticated")


def check_openapi(document: dict[str, Any], read_paths: set[str]) -> None:
    """The read paths declare the bearer scheme and their refusals; health stays open."""
    assert document["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    error_schema = {"$ref": "#/components/schemas/ErrorResponse"}
    paths = document["paths"]
    assert read_paths <= set(paths)
    for path, methods in paths.items():
        operation = methods["get"]
        if path in read_paths:
            assert operation["security"] == [{"HTTPBearer": []}], path
            for code in ("401", "403", "503"):
                content = operation["responses"][code]["content"]["application/json"]
                assert content["schema"] == error_schema, (path, code)
        else:
            assert path.startswith("/health"), path
            assert "security" not in operation, path
