"""SMS through an HTTP provider: POST JSON `{"to", "body", "idempotency_key"}` with a bearer
token; the provider answers `{"id": ...}`. The idempotency key is the dedupe key, so a provider
that honours it sends a re-sent communication once.

Sent with aiohttp, not httpx as the services' other HTTP clients: an SMS is on the hot path,
and httpx's client took 1.2 ms of CPU per request against aiohttp's 0.2 (2,000 requests each
to the dev sink, on uvloop), which made the SMS 12 % of the notifier's CPU at 150 changes/s."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

import aiohttp
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
        # One session for all sends: its connection pool and TLS context are built once, not
        # per SMS (a fresh client per send spent a third of the notifier's CPU on SSL setup).
        # Made at the first send, in the event loop it then belongs to.
        self._session: aiohttp.ClientSession | None = None

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

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
                async with (
                    asyncio.timeout(s.timeout),
                    self._client().post(s.url, json=payload, headers=headers) as response,
                ):
                    status, answer = response.status, await response.read()
            except (aiohttp.ClientError, TimeoutError) as error:
                raise DeliveryFailed(
                    f"{type(error).__name__}: {str(error) or 'no details'}"
                ) from error
            span.set_attribute("http.response.status_code", status)
        if status >= 500 or status in _RETRYABLE_4XX:
            raise DeliveryFailed(f"SMS provider answered {status}: {_excerpt(answer)}")
        if status >= 400:
            raise Undeliverable(f"SMS provider refused it ({status}): {_excerpt(answer)}")
        try:
            return str(json.loads(answer)["id"])
        except (ValueError, KeyError, TypeError) as error:
            # Accepted without saying under which id: retrying is safe (idempotency key).
            raise DeliveryFailed(f"SMS provider answered {status} without an id") from error


def _excerpt(answer: bytes) -> str:
    return answer[:200].decode(errors="replace")
