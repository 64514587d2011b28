"""Broken business rules, each a named error carrying what a caller needs to react."""

from uuid import UUID

from contracts.statuses import OrderStatus


class OrderError(Exception):
    """Base of the order domain's errors; `code` is stable and machine-readable."""

    code = "order_error"


class OrderNotFound(OrderError):
    code = "order_not_found"

    def __init__(self, order_id: UUID) -> None:
        super().__init__(f"Order {order_id} does not exist.")
        self.order_id = order_id


class OrderAlreadyExists(OrderError):
    code = "order_already_exists"

    def __init__(self, order_id: UUID) -> None:
        super().__init__(f"Order {order_id} already exists.")
        self.order_id = order_id


class TransitionNotAllowed(OrderError):
    code = "transition_not_allowed"

    def __init__(self, current: OrderStatus, requested: OrderStatus, allowed: list[OrderStatus]):
        allowed_text = ", ".join(allowed) if allowed else "none (terminal status)"
        super().__init__(
            f"An order in status '{current}' cannot move to '{requested}'; "
            f"allowed next: {allowed_text}."
        )
        self.current = current
        self.requested = requested
        self.allowed = allowed


class StaleVersion(OrderError):
    code = "stale_version"

    def __init__(self, order_id: UUID, expected: int, actual: int) -> None:
        super().__init__(
            f"Order {order_id} is at version {actual}, not the expected version {expected}."
        )
        self.order_id = order_id
        self.expected = expected
        self.actual = actual


class IdempotencyKeyReused(OrderError):
    code = "idempotency_key_reused"

    def __init__(self, key: str) -> None:
        super().__init__(
            f"Idempotency-Key '{key}' was already used for a different request; "
            "use a new key for a new request."
        )
        self.key = key
