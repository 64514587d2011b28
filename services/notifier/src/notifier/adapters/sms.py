"""SMS through an HTTP provider (httpx): POST JSON `{"to", "body", "idempotency_key"}` with a
bearer token; the provider answers `{"id": ...}`. The idempotency key is the dedupe key, so a
provider that honours it sends a re-sent communication once."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import httpx
from opentelemetry.trace import SpanKind
from pydantic import SecretStr

from notifier.adapters.telemetry import tracer
from notifier.adapters.templates import RenderError, TextTemplates
from notifier.domain.communication import Communication
from notifier.domain.delivery import DeliveryFailed, Undeliverable

# Refusals that say "not now" rather than "never".
_RETRYABLE_4XX = frozenset({408, 425, 429})


@dataclass(frozen=True)
class HttpSmsSettings:
    url: str
    token: SecretStr | None
    timeout: float


class HttpSmsSender:
    def __init__(self, settings: HttpSmsSettings, templates: TextTemplates) -> None:
        self._settings = settings
        self._templates = templates
        # One client for all sends: its connection pool and TLS context are built once, not
        # per SMS (a fresh client per send spent a third of the notifier's CPU on SSL setup).
        self._client = httpx.AsyncClient(timeout=settings.timeout)

    async def aclose(self) -> None:
        await self._client.aclose()

    def body(self, communication: Communication) -> str:
        try:
            return self._templates.render(communication.template, communication.context)
        except RenderError as error:
            raise Undeliverable(str(error)) from error

    async def send(self, communication: Communication) -> str:
        """Send by SMS; returns the provider's message id."""
        s = self._settings
        payload = {
            "to": communication.recipient,
            "body": self.body(communication),
            "idempotency_key": communication.dedupe_key,
        }
        headers = {"Authorization": f"Bearer {s.token.get_secret_value()}"} if s.token else {}
        with tracer().start_as_current_span(
            "sms send", kind=SpanKind.CLIENT, attributes={"url.full": s.url}
        ) as span:
            try:
                async with asyncio.timeout(s.timeout):
                    response = await self._client.post(s.url, json=payload, headers=headers)
            except (httpx.HTTPError, TimeoutError) as error:
                raise DeliveryFailed(
                    f"{type(error).__name__}: {str(error) or 'no details'}"
                ) from error
            span.set_attribute("http.response.status_code", response.status_code)
        status = response.status_code
        if status >= 500 or status in _RETRYABLE_4XX:
            raise DeliveryFailed(f"SMS provider answered {status}: {response.text[:200]}")
        if status >= 400:
            raise Undeliverable(f"SMS provider refused it ({status}): {response.text[:200]}")
        try:
            return str(response.json()["id"])
        except (ValueError, KeyError, TypeError) as error:
            # Accepted without saying under which id: retrying is safe (idempotency key).
            raise DeliveryFailed(f"SMS provider answered {status} without an id") from error
