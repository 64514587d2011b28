"""What the notifier's and the audit service's token verifiers send on to the order service:
only what can be a bearer token (anything else is refused without asking)."""

from __future__ import annotations

import secrets
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from audit.adapters import token_verifier as audit_verifier
from notifier.adapters import token_verifier as notifier_verifier

VERIFIERS = [notifier_verifier.could_be_token, audit_verifier.could_be_token]


@pytest.mark.parametrize("could_be_token", VERIFIERS)
@given(nbytes=st.integers(min_value=1, max_value=512))
def test_every_token_the_order_service_issues_can_be_a_token(
    could_be_token: Callable[[str], bool], nbytes: int
) -> None:
    assert could_be_token(secrets.token_urlsafe(nbytes))


@pytest.mark.parametrize("could_be_token", VERIFIERS)
@pytest.mark.parametrize(
    "presented",
    ["", "two words", "line\nbreak", "t\u00f6ken", "nul\x00", "=leading", "a" * 1025],
    ids=["empty", "space", "newline", "non-ascii", "nul", "padding-first", "too-long"],
)
def test_what_cannot_be_a_token_is_not_sent_on(
    could_be_token: Callable[[str], bool], presented: str
) -> None:
    assert not could_be_token(presented)
