"""Reads from the notifier's and the audit service's HTTP read APIs (httpx), which the order
service relays for its admin page: same origin for the browser, the caller's own token for the
peer (which checks it with this service's `GET /auth/whoami`, as for any reader).

A peer's 4xx answer is relayed as it is (it has the same error shape as this service's); a peer
that cannot be reached, is too slow, answers 5xx or something that is not a page is
`PeerUnavailable`, which the HTTP layer answers 503."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, ValidationError


class PeerUnavailable(Exception):
    def __init__(self, peer: str, why: str) -> None:
        super().__init__(f"the {peer} service did not answer a read: {why}")
        self.peer = peer


@dataclass(frozen=True)
class PeerAnswer:
    status_code: int
    body: dict[str, Any]


class _Page(BaseModel):
    """What every read API of the backbone answers (further fields are kept)."""

    model_config = ConfigDict(extra="allow")

    items: list[dict[str, Any]]
    next_cursor: str | None


class _Refusal(BaseModel):
    """The backbone's one error shape: `{"error": {"code", "message", "details"}}`."""

    class Detail(BaseModel):
        code: str
        message: str
        details: dict[str, Any] = {}

    error: Detail


class PeerReadApi:
    def __init__(self, peer: str, base_url: str, *, timeout: float) -> None:
        self.peer = peer
        self._client = httpx.AsyncClient(base_url=base_url, timeout=timeout)

    async def page(
        self, path: str, *, params: Mapping[str, str | int], authorization: str
    ) -> PeerAnswer:
        """One page of `path`, asked with the caller's `Authorization` header."""
        try:
            response = await self._client.get(
                path, params=params, headers={"Authorization": authorization}
            )
        except httpx.HTTPError as error:
            raise PeerUnavailable(self.peer, type(error).__name__) from error
        if response.status_code >= httpx.codes.INTERNAL_SERVER_ERROR:
            raise PeerUnavailable(self.peer, f"it answered {response.status_code}")
        expected = _Page if response.is_success else _Refusal
        try:
            body = expected.model_validate_json(response.content).model_dump(mode="json")
        except ValidationError as error:
            raise PeerUnavailable(
                self.peer, f"its {response.status_code} answer is not a {expected.__name__[1:]}"
            ) from error
        return PeerAnswer(response.status_code, body)

    async def aclose(self) -> None:
        await self._client.aclose()
