"""A real SMTP server (aiosmtpd) that keeps every accepted message as a file.

Each message lands in `<maildir>/<n>.eml`, so tests and developers can count emails by
Message-ID and read them. `python -m devstack.smtp_sink --port 1025 --maildir DIR`.
"""

from __future__ import annotations

import argparse
import asyncio
import email
import email.policy
import itertools
import signal
from pathlib import Path

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session


class MaildirHandler:
    def __init__(self, maildir: Path) -> None:
        self.maildir = maildir
        maildir.mkdir(parents=True, exist_ok=True)
        start = len(list(maildir.glob("*.eml")))
        self._numbers = itertools.count(start + 1)
        # Recipients refused for now with a 450 (mailbox unavailable): a failing address.
        self.refused: set[str] = set()

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if address.lower() in self.refused:
            return "450 4.2.1 Mailbox unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        number = next(self._numbers)
        tmp = self.maildir / f".{number}.tmp"
        tmp.write_bytes(content)
        tmp.rename(self.maildir / f"{number:08d}.eml")  # atomic: readers never see half a file
        return "250 Message accepted for delivery"


def read_messages(maildir: Path) -> list[email.message.EmailMessage]:
    """Every message the sink accepted, oldest first."""
    messages = []
    for path in sorted(maildir.glob("*.eml")):
        parsed = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        messages.append(parsed)
    return messages


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1025)
    parser.add_argument("--maildir", type=Path, required=True)
    args = parser.parse_args(argv)

    controller = Controller(MaildirHandler(args.maildir), hostname=args.host, port=args.port)
    controller.start()
    print(f"smtp sink listening on {args.host}:{args.port}, mail in {args.maildir}", flush=True)

    async def wait_for_signal() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()

    try:
        asyncio.run(wait_for_signal())
    finally:
        controller.stop()


if __name__ == "__main__":
    main()
