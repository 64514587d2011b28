"""The order aggregate's state machine: every allowed and every refused pair."""

from datetime import UTC, datetime, timedelta
from itertools import product
from uuid import uuid4

import pytest

from contracts import TRANSITIONS, OrderStatus, allowed_next
from order.domain.auth import (
    Forbidden,
    Identity,
    Permission,
    Role,
    StoredToken,
    Unauthenticated,
    check_access,
)
from order.domain.errors import StaleVersion, TransitionNotAllowed
from order.domain.model import Customer, Order

NOW = datetime(2026, 1, 1, tzinfo=UTC)
LATER = NOW + timedelta(minutes=5)

ALLOWED = [(a, b) for a, b in product(OrderStatus, OrderStatus) if b in TRANSITIONS[a]]
REFUSED = [
    (a, b) for a, b in product(OrderStatus, OrderStatus) if a != b and b not in TRANSITIONS[a]
]


def order_in(status: OrderStatus, version: int = 3) -> Order:
    order = Order.create(uuid4(), Customer("Ann", "ann@example.com", None), NOW)
    order.status = status
    order.version = version
    return order


def test_lifecycle_matches_the_design() -> None:
    assert set(ALLOWED) == {
        (OrderStatus.PENDING, OrderStatus.CONFIRMED),
        (OrderStatus.CONFIRMED, OrderStatus.PREPARING),
        (OrderStatus.PREPARING, OrderStatus.READY),
        (OrderStatus.READY, OrderStatus.OUT_FOR_DELIVERY),
        (OrderStatus.OUT_FOR_DELIVERY, OrderStatus.DELIVERED),
        (OrderStatus.PENDING, OrderStatus.CANCELLED),
        (OrderStatus.CONFIRMED, OrderStatus.CANCELLED),
        (OrderStatus.PREPARING, OrderStatus.CANCELLED),
        (OrderStatus.READY, OrderStatus.CANCELLED),
    }


def test_a_new_order_is_pending_at_version_one() -> None:
    order = Order.create(uuid4(), Customer("Ann", None, None), NOW)
    assert (order.status, order.version, order.events) == (OrderStatus.PENDING, 1, [])


@pytest.mark.parametrize(("current", "target"), ALLOWED)
def test_allowed_change_applies_and_records_one_event(
    current: OrderStatus, target: OrderStatus
) -> None:
    order = order_in(current, version=3)

    change = order.change_status(target, actor="alice", reason="why", now=LATER)

    assert change is not None
    assert (change.from_status, change.to_status, change.version) == (current, target, 4)
    assert (change.actor, change.reason, change.occurred_at) == ("alice", "why", LATER)
    assert (order.status, order.version, order.updated_at) == (target, 4, LATER)
    assert order.events == [change]


@pytest.mark.parametrize(("current", "target"), REFUSED)
def test_refused_change_names_current_and_allowed_next(
    current: OrderStatus, target: OrderStatus
) -> None:
    order = order_in(current, version=3)

    with pytest.raises(TransitionNotAllowed) as refused:
        order.change_status(target, actor="alice", reason=None, now=LATER)

    assert refused.value.current == current
    assert refused.value.requested == target
    assert refused.value.allowed == allowed_next(current)
    assert f"'{current}'" in str(refused.value)
    assert (order.status, order.version, order.events) == (current, 3, [])


@pytest.mark.parametrize("status", list(OrderStatus))
def test_same_status_is_a_successful_no_op(status: OrderStatus) -> None:
    order = order_in(status, version=3)

    assert order.change_status(status, actor="alice", reason=None, now=LATER) is None
    assert (order.status, order.version, order.events) == (status, 3, [])


def test_same_status_with_an_outdated_version_is_still_a_no_op() -> None:
    """A retried request that already applied must succeed, not fail on its old version."""
    order = order_in(OrderStatus.CONFIRMED, version=2)

    assert (
        order.change_status(
            OrderStatus.CONFIRMED, actor="a", reason=None, now=LATER, expected_version=1
        )
        is None
    )


def test_stale_expected_version_is_refused() -> None:
    order = order_in(OrderStatus.CONFIRMED, version=2)

    with pytest.raises(StaleVersion) as stale:
        order.change_status(
            OrderStatus.PREPARING, actor="a", reason=None, now=LATER, expected_version=1
        )

    assert (stale.value.expected, stale.value.actual) == (1, 2)
    assert (order.status, order.version) == (OrderStatus.CONFIRMED, 2)


def test_matching_expected_version_applies() -> None:
    order = order_in(OrderStatus.CONFIRMED, version=2)

    change = order.change_status(
        OrderStatus.PREPARING, actor="a", reason=None, now=LATER, expected_version=2
    )

    assert change is not None
    assert change.version == 3


@pytest.mark.parametrize("terminal", [OrderStatus.DELIVERED, OrderStatus.CANCELLED])
def test_terminal_statuses_allow_nothing(terminal: OrderStatus) -> None:
    assert order_in(terminal).allowed_next == []


# --- access -------------------------------------------------------------------------------

ALICE = Identity("alice", Role.ADMIN)
VERA = Identity("vera", Role.VIEWER)


@pytest.mark.parametrize("permission", [Permission.READ, Permission.CHANGE, None])
def test_a_valid_token_of_a_role_granted_the_permission_passes(
    permission: Permission | None,
) -> None:
    assert check_access(True, StoredToken(ALICE, revoked=False), permission) == ALICE


def test_a_viewer_reads_but_is_forbidden_to_change() -> None:
    token = StoredToken(VERA, revoked=False)

    assert check_access(True, token, Permission.READ) == VERA
    with pytest.raises(Forbidden) as refused:
        check_access(True, token, Permission.CHANGE)
    assert (refused.value.code, refused.value.holder) == ("forbidden", VERA)
    assert refused.value.why == "role 'viewer' may not change"


@pytest.mark.parametrize(
    ("presented", "token", "why", "holder"),
    [
        (False, None, "no bearer token", None),
        (True, None, "unknown bearer token", None),
        (True, StoredToken(ALICE, revoked=True), "revoked token of 'alice'", ALICE),
    ],
    ids=["missing", "unknown", "revoked"],
)
def test_a_missing_unknown_or_revoked_token_is_unauthenticated_and_says_why(
    presented: bool, token: StoredToken | None, why: str, holder: Identity | None
) -> None:
    with pytest.raises(Unauthenticated) as refused:
        check_access(presented, token, None)

    assert (refused.value.code, refused.value.why, refused.value.holder) == (
        "unauthenticated",
        why,
        holder,
    )


def test_the_caller_cannot_tell_an_unknown_token_from_a_revoked_one() -> None:
    with pytest.raises(Unauthenticated) as unknown:
        check_access(True, None, Permission.READ)
    with pytest.raises(Unauthenticated) as revoked:
        check_access(True, StoredToken(ALICE, revoked=True), Permission.READ)

    assert str(unknown.value) == str(revoked.value)
