"""Email over SMTP (aiosmtplib). The Message-ID derives from the dedupe key, so a resend of
the same communication is recognisable as the same message by any mail system."""

from __future__ import annotations

from dataclasses import dataclass
from email.message import EmailMessage

import aiosmtplib
from pydantic import SecretStr

from notifier.adapters.templates import RenderedEmail


class SendError(Exception):
    """The SMTP server could not be reached or refused the message."""


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
    def __init__(self, settings: SmtpSettings) -> None:
        self._settings = settings

    def build(self, dedupe_key: str, recipient: str, email: RenderedEmail) -> EmailMessage:
        message = EmailMessage()
        message["Message-ID"] = message_id(dedupe_key, self._settings.message_id_domain)
        message["From"] = self._settings.mail_from
        message["To"] = recipient
        message["Subject"] = email.subject
        message.set_content(email.text)
        message.add_alternative(email.html, subtype="html")
        return message

    async def send(self, dedupe_key: str, recipient: str, email: RenderedEmail) -> str:
        """Send; returns the provider message id (the Message-ID). Raises SendError."""
        s = self._settings
        message = self.build(dedupe_key, recipient, email)
        try:
            await aiosmtplib.send(
                message,
                hostname=s.host,
                port=s.port,
                username=s.username,
                password=s.password.get_secret_value() if s.password else None,
                start_tls=s.starttls,
                use_tls=s.use_tls,
                timeout=s.timeout,
            )
        except (aiosmtplib.SMTPException, OSError) as error:
            raise SendError(f"{type(error).__name__}: {error}") from error
        return str(message["Message-ID"])
