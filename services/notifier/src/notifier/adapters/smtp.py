"""Email over SMTP (aiosmtplib). The Message-ID derives from the dedupe key, so should the
same communication ever be sent twice (a crash between the server's acceptance and our
record of it), every mail system sees one message twice rather than two messages.

Sessions are kept open and reused, one message at a time each: opening one (TCP, greeting,
EHLO, maybe TLS and AUTH) and saying goodbye cost more than the message itself. aiosmtplib
has no pool of its own."""

from __future__ import annotations

import asyncio
import contextlib
import email.policy
import socket
import time
from dataclasses import dataclass
from email.header import Header
from email.message import EmailMessage
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.utils import formatdate, parseaddr
from typing import Any

import aiosmtplib
from opentelemetry.trace import SpanKind
from pydantic import SecretStr

from notifier.adapters.telemetry import tracer
from notifier.adapters.templates import EmailTemplates, RenderedEmail, RenderError
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
    # An idle session is reused only this long: servers hang up on idle clients (RFC 5321
    # allows them to after 5 minutes; many do sooner).
    idle_seconds: float = 30.0
    # Sessions open at once, at most: a send waits for one to be free (within its timeout).
    max_sessions: int = 50


def _internationalised(headers: dict[str, str], rendered: RenderedEmail) -> EmailMessage:
    message = EmailMessage()
    for name, value in headers.items():
        message[name] = value
    message.set_content(rendered.text)
    message.add_alternative(rendered.html, subtype="html")
    return message


def message_id(dedupe_key: str, domain: str) -> str:
    return f"<{dedupe_key}@{domain}>"


class SmtpSessions:
    """Open SMTP sessions, each carrying one message at a time, at most `max_sessions` at once.
    A send takes an idle session (the most recently used) or opens one, and hands it back only
    after the server accepted the message: a session in which anything failed is in an unknown
    state and is closed."""

    def __init__(self, settings: SmtpSettings) -> None:
        self._settings = settings
        # The EHLO name, looked up once: aiosmtplib would otherwise call getfqdn() per session.
        self._local_hostname = socket.getfqdn()
        self._idle: list[tuple[aiosmtplib.SMTP, float]] = []  # with when each was handed back
        self._free = asyncio.Semaphore(settings.max_sessions)

    async def take(self) -> aiosmtplib.SMTP:
        """An open session: an idle one still connected and not idle too long, else a new one,
        once fewer than `max_sessions` are in use (the caller bounds the time this takes)."""
        await self._free.acquire()
        try:
            return await self._open()
        except BaseException:
            self._free.release()
            raise

    async def _open(self) -> aiosmtplib.SMTP:
        fresh_since = time.monotonic() - self._settings.idle_seconds
        while self._idle:
            client, idle_since = self._idle.pop()
            if client.is_connected and idle_since >= fresh_since:
                return client
            client.close()
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
        try:
            await client.connect()
        except BaseException:
            client.close()
            raise
        return client

    def give_back(self, client: aiosmtplib.SMTP) -> None:
        self._idle.append((client, time.monotonic()))
        self._free.release()

    def discard(self, client: aiosmtplib.SMTP) -> None:
        """Hang up at once: aiosmtplib's own exit would first wait for a stuck server to
        answer QUIT, up to the whole timeout."""
        client.close()
        self._free.release()

    async def close(self) -> None:
        """Say goodbye to the idle sessions (at shutdown); a server that does not answer is
        hung up on."""
        idle, self._idle = self._idle, []
        for client, _ in idle:
            with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
                async with asyncio.timeout(self._settings.timeout):
                    await client.quit()
            client.close()


@dataclass(frozen=True)
class Email:
    """An email as it goes to the server: the envelope and the bytes of the message."""

    message_id: str
    sender: str
    recipient: str
    content: bytes
    smtputf8: bool  # an address is not ASCII: the server must take UTF-8 (RFC 6531)


class _Unfolded(email.policy.Compat32):
    """Headers are not folded: a folded Message-ID (longer than 78 characters, as ours are) is
    valid but trips up whoever matches it as a plain string. Lines stay far below the 998
    allowed. An ASCII value on one line (all of ours: `build` refuses line breaks and encodes
    anything else) is written as it is, without compat32's splitting and rejoining of it,
    which took a third of the time an email took to build."""

    def fold_binary(self, name: str, value: Any) -> bytes:
        if isinstance(value, str) and value.isascii() and "\r" not in value and "\n" not in value:
            return f"{name}: {value}{self.linesep}".encode("ascii")
        return super().fold_binary(name, value)


_UNFOLDED = _Unfolded(linesep="\r\n", max_line_length=0)


class SmtpEmailSender:
    def __init__(self, settings: SmtpSettings, templates: EmailTemplates) -> None:
        self._settings = settings
        self._templates = templates
        self._sessions = SmtpSessions(settings)
        self._sender = parseaddr(settings.mail_from)[1]

    def build(self, communication: Communication) -> Email:
        """The email: a plain-text body with an HTML alternative.

        Built with the standard library's compat32 MIME classes, which take header values as
        given: EmailMessage parses every header it is given, which cost a quarter of the
        notifier's CPU. Those classes cannot carry a non-ASCII address, so an email whose From
        or To is not ASCII is built as an EmailMessage and sent with SMTPUTF8."""
        try:
            rendered = self._templates.render(communication.template, communication.context)
        except RenderError as error:
            raise Undeliverable(str(error)) from error
        headers = {
            "Message-ID": message_id(communication.dedupe_key, self._settings.message_id_domain),
            "Date": formatdate(localtime=False),
            "From": self._settings.mail_from,
            "To": communication.recipient,
            "Subject": rendered.subject,
        }
        if any(len(value.splitlines()) > 1 for value in headers.values()):
            raise Undeliverable("a header value spans lines")
        smtputf8 = not (communication.recipient.isascii() and self._settings.mail_from.isascii())
        if smtputf8:
            content = _internationalised(headers, rendered).as_bytes(policy=email.policy.SMTPUTF8)
        else:
            # The parts are base64, which never holds "_": no part can contain this boundary,
            # so the generator need not look for one that is absent from the text.
            message = MIMEMultipart("alternative", boundary=f"=_{communication.id.hex}")
            for name, value in headers.items():
                message[name] = value if value.isascii() else Header(value, "utf-8").encode()
            message.attach(MIMEText(rendered.text, "plain", "utf-8"))
            message.attach(MIMEText(rendered.html, "html", "utf-8"))
            content = message.as_bytes(policy=_UNFOLDED)
        return Email(
            headers["Message-ID"], self._sender, communication.recipient, content, smtputf8
        )

    async def send(self, communication: Communication) -> str:
        """Send by email; returns the Message-ID."""
        s = self._settings
        outgoing = self.build(communication)
        with tracer().start_as_current_span(
            "smtp send",
            kind=SpanKind.CLIENT,
            attributes={
                "server.address": s.host,
                "server.port": s.port,
                "smtp.message_id": outgoing.message_id,
            },
        ):
            await self._send(outgoing)
        return outgoing.message_id

    async def aclose(self) -> None:
        await self._sessions.close()

    async def _send(self, outgoing: Email) -> None:
        try:
            # One deadline for the whole send, opening a session included.
            async with asyncio.timeout(self._settings.timeout):
                client = await self._sessions.take()
                try:
                    await client.sendmail(
                        outgoing.sender,
                        [outgoing.recipient],
                        outgoing.content,
                        mail_options=["SMTPUTF8"] if outgoing.smtputf8 else None,
                    )
                except BaseException:  # a cancellation too (a shutdown past its grace)
                    self._sessions.discard(client)
                    raise
        except aiosmtplib.SMTPRecipientsRefused as error:
            if all(refusal.code >= 500 for refusal in error.recipients):
                raise Undeliverable(f"recipient refused: {error}") from error
            raise DeliveryFailed(f"recipient deferred: {error}") from error
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as error:
            raise DeliveryFailed(f"{type(error).__name__}: {str(error) or 'no details'}") from error
        self._sessions.give_back(client)
