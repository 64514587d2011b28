"""Checks the bearer tokens presented to this service with the order service, which issues
them (`GET /auth/whoami`, over httpx).

A positive answer is cached for `cache_seconds` (cachetools' TTLCache, bounded, keyed by a
hash of the token, never the token itself), so that reads do not each cost a call; that is
also how long a revoked token may still be accepted here. A refusal is never cached: a token
issued a moment ago works at once, and a refused one is asked about again next time."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import httpx
from cachetools import TTLCache
from pydantic import BaseModel, Field, ValidationError

WHOAMI = "/auth/whoami"
# RFC 6750's token68 alphabet, bounded: nothing else can be a token, and sending it on (a
# newline, a non-ASCII character) could only fail in the HTTP client.
TOKEN_SHAPE = re.compile(r"[A-Za-z0-9\-._~+/]{1,1024}=*")


@dataclass(frozen=True)
class Caller:
    """Whom a token belongs to, as the order service says."""

    id: str
    role: str


class _WhoAmI(BaseModel):
    id: str = Field(min_length=1)
    role: str = Field(min_length=1)


class OrderServiceUnavailable(Exception):
    """The order service did not say whether the token is valid (unreachable, too slow, or
    answering something other than an identity or a 401)."""


def could_be_token(presented: str) -> bool:
    return TOKEN_SHAPE.fullmatch(presented) is not None


class TokenVerifier:
    def __init__(
        self,
        order_service_url: str,
        *,
        timeout: float,
        cache_seconds: float,
        cache_size: int = 10_000,
    ) -> None:
        self._client = httpx.AsyncClient(base_url=order_service_url, timeout=timeout)
        self._valid: TTLCache[str, Caller] = TTLCache(maxsize=cache_size, ttl=cache_seconds)

    async def caller(self, token: str) -> Caller | None:
        """Whose `token` is, or None if it is not a valid token (unknown or revoked)."""
        if not could_be_token(token):
            return None
        key = hashlib.sha256(token.encode()).hexdigest()
        cached = self._valid.get(key)
        if cached is not None:
            return cached
        try:
            response = await self._client.get(WHOAMI, headers={"Authorization": f"Bearer {token}"})
        except httpx.HTTPError as error:
            raise OrderServiceUnavailable(type(error).__name__) from error
        if response.status_code == httpx.codes.UNAUTHORIZED:
            return None
        if response.status_code != httpx.codes.OK:
            raise OrderServiceUnavailable(f"it answered {response.status_code}")
        try:
            who = _WhoAmI.model_validate_json(response.content)
        except ValidationError as error:
            raise OrderServiceUnavailable("its answer is not an identity") from error
        caller = Caller(who.id, who.role)
        self._valid[key] = caller
        return caller

    async def aclose(self) -> None:
        await self._client.aclose()
