"""The order service's HTTP API as orderctl uses it. Every request carries the bearer token."""

from __future__ import annotations

from types import TracebackType
from typing import Any
from uuid import UUID

import httpx


class ApiError(Exception):
    """An answer other than success, with the message and details of the service's error body
    (`{"error": {"code", "message", "details"}}`)."""

    def __init__(self, status_code: int, code: str, message: str, details: dict[str, Any]) -> None:
        super().__init__(f"{status_code} {code}: {message}")
        self.status_code = status_code
        self.code = code
        self.message = message
        self.details = details

    @classmethod
    def of(cls, response: httpx.Response) -> ApiError:
        try:
            error = response.json()["error"]
            return cls(response.status_code, error["code"], error["message"], error["details"])
        except (ValueError, KeyError, TypeError):
            # Not the service's error body (a proxy in between?): its text is all there is.
            text = response.text.strip()[:500] or response.reason_phrase
            return cls(response.status_code, "http_error", text, {})


class OrderApi:
    def __init__(self, url: str, token: str, timeout: float = 10.0) -> None:
        self._client = httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=timeout
        )

    def __enter__(self) -> OrderApi:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._client.close()

    def order(self, order_id: UUID) -> dict[str, Any]:
        return self._answer(self._client.get(f"/orders/{order_id}"))

    def change_status(
        self, order_id: UUID, status: str, *, reason: str | None, if_match: int | None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"status": status}
        if reason is not None:
            body["reason"] = reason
        headers = {"If-Match": str(if_match)} if if_match is not None else {}
        response = self._client.post(f"/orders/{order_id}/status", json=body, headers=headers)
        return self._answer(response)

    @staticmethod
    def _answer(response: httpx.Response) -> dict[str, Any]:
        if not response.is_success:
            raise ApiError.of(response)
        answer: dict[str, Any] = response.json()
        return answer
