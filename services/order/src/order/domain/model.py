"""The order aggregate: it owns its status and refuses every change the lifecycle forbids."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from uuid import UUID

from contracts.statuses import INITIAL_STATUS, OrderStatus, allowed_next, is_allowed
from order.domain.errors import StaleVersion, TransitionNotAllowed


@dataclass(frozen=True)
class Customer:
    name: str
    email: str | None
    phone: str | None


@dataclass(frozen=True)
class StatusChanged:
    """Recorded by the aggregate for every effective change; the service turns it into the
    `OrderStatusChanged` integration event."""

    order_id: UUID
    from_status: OrderStatus
    to_status: OrderStatus
    version: int
    actor: str
    reason: str | None
    occurred_at: datetime


@dataclass
class Order:
    id: UUID
    customer: Customer
    status: OrderStatus
    version: int
    created_at: datetime
    updated_at: datetime
    events: list[StatusChanged] = field(default_factory=list, compare=False, repr=False)

    @classmethod
    def create(cls, order_id: UUID, customer: Customer, now: datetime) -> Order:
        return cls(order_id, customer, INITIAL_STATUS, 1, now, now)

    def change_status(
        self,
        target: OrderStatus,
        *,
        actor: str,
        reason: str | None,
        now: datetime,
        expected_version: int | None = None,
    ) -> StatusChanged | None:
        """Move to `target`. Asking for the current status is a successful no-op (None), even
        with an outdated `expected_version`, so a retried request that already applied still
        succeeds; anything the transition table forbids raises."""
        if target == self.status:
            return None
        if expected_version is not None and expected_version != self.version:
            raise StaleVersion(self.id, expected_version, self.version)
        if not is_allowed(self.status, target):
            raise TransitionNotAllowed(self.status, target, allowed_next(self.status))
        change = StatusChanged(
            order_id=self.id,
            from_status=self.status,
            to_status=target,
            version=self.version + 1,
            actor=actor,
            reason=reason,
            occurred_at=now,
        )
        self.status = target
        self.version = change.version
        self.updated_at = now
        self.events.append(change)
        return change

    @property
    def allowed_next(self) -> list[OrderStatus]:
        return allowed_next(self.status)
