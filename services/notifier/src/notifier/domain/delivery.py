"""The channel seam: how a communication leaves the system, whatever the channel."""

from __future__ import annotations

from typing import Protocol

from notifier.domain.communication import Communication


class DeliveryFailed(Exception):
    """This attempt failed for a reason that may pass (server down, timeout): retry later."""


class Undeliverable(Exception):
    """No attempt can ever succeed as things stand (broken template, recipient refused)."""


class Sender(Protocol):
    async def send(self, communication: Communication) -> str:
        """Hand the communication to the provider; returns the provider's message id.
        Raises DeliveryFailed or Undeliverable."""
        ...
