"""Email over SMTP (aiosmtplib). The Message-ID derives from the dedupe key, so should the
same communication ever be sent twice (a crash between the server's acceptance and our
record of it), every mail system sees one message twice rather than two messages."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate

import aiosmtplib
from opentelemetry.trace import SpanKind
from pydantic import SecretStr

from notifier.adapters.telemetry import tracer
from notifier.adapters.templates import EmailTemplates, RenderError
from notifier.domain.communication import Communication
from notifier.domain.delivery import DeliveryFailed, Undeliverable


@dataclass(frozen=True)
class SmtpSettings:
    host: str
    port: int
    username: str | None
    password: SecretStr | None
    starttls: bool
    use_tls: bool
    timeout: float
    mail_from: str
    message_id_domain: str


def message_id(dedupe_key: str, domain: str) -> str:
    return f"<{dedupe_key}@{domain}>"


class SmtpEmailSender:
    def __init__(self, settings: SmtpSettings, templates: EmailTemplates) -> None:
        self._settings = settings
        self._templates = templates
        # The EHLO name, looked up once: aiosmtplib would otherwise call getfqdn() per email.
        self._local_hostname = socket.getfqdn()

    def build(self, communication: Communication) -> EmailMessage:
        try:
            rendered = self._templates.render(communication.template, communication.context)
        except RenderError as error:
            raise Undeliverable(str(error)) from error
        message = EmailMessage()
        message["Message-ID"] = message_id(
            communication.dedupe_key, self._settings.message_id_domain
        )
        message["Date"] = formatdate(localtime=False)
        message["From"] = self._settings.mail_from
        message["To"] = communication.recipient
        message["Subject"] = rendered.subject
        message.set_content(rendered.text)
        message.add_alternative(rendered.html, subtype="html")
        return message

    async def send(self, communication: Communication) -> str:
        """Send by email; returns the Message-ID."""
        s = self._settings
        message = self.build(communication)
        with tracer().start_as_current_span(
            "smtp send",
            kind=SpanKind.CLIENT,
            attributes={
                "server.address": s.host,
                "server.port": s.port,
                "smtp.message_id": str(message["Message-ID"]),
            },
        ):
            await self._send(message)
        return str(message["Message-ID"])

    async def _send(self, message: EmailMessage) -> None:
        s = self._settings
        client = aiosmtplib.SMTP(
            hostname=s.host,
            port=s.port,
            username=s.username,
            password=s.password.get_secret_value() if s.password else None,
            start_tls=s.starttls,
            use_tls=s.use_tls,
            timeout=s.timeout,
            local_hostname=self._local_hostname,
        )
        # One deadline for the whole send, goodbye included (the lease allows for that long).
        deadline = asyncio.get_running_loop().time() + s.timeout
        try:
            await self._deliver(client, message, deadline)
            # The message is accepted: saying goodbye is a courtesy, and a server that fails
            # at it must not turn a sent email into a failed one (sent again later).
            with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
                async with asyncio.timeout_at(deadline):
                    await client.quit()
        finally:
            # After a failure or a cancellation (a shutdown past its grace), hang up at once:
            # aiosmtplib's own exit would first wait for a stuck server to answer QUIT, up to
            # the whole timeout.
            client.close()

    async def _deliver(
        self, client: aiosmtplib.SMTP, message: EmailMessage, deadline: float
    ) -> None:
        try:
            async with asyncio.timeout_at(deadline):
                await client.connect()
                await client.send_message(message)
        except aiosmtplib.SMTPRecipientsRefused as error:
            if all(refusal.code >= 500 for refusal in error.recipients):
                raise Undeliverable(f"recipient refused: {error}") from error
            raise DeliveryFailed(f"recipient deferred: {error}") from error
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as error:
            raise DeliveryFailed(f"{type(error).__name__}: {str(error) or 'no details'}") from error
