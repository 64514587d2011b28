"""What the token verifier (the notifier's and the audit service's read APIs) sends on to the
order service: only what can be a bearer token (anything else is refused without asking)."""

from __future__ import annotations

import secrets

import pytest
from hypothesis import given
from hypothesis import strategies as st

from servicekit.token_verifier import could_be_token


@given(nbytes=st.integers(min_value=1, max_value=512))
def test_every_token_the_order_service_issues_can_be_a_token(nbytes: int) -> None:
    assert could_be_token(secrets.token_urlsafe(nbytes))


@pytest.mark.parametrize(
    "presented",
    ["", "two words", "line\nbreak", "t\u00f6ken", "nul\x00", "=leading", "a" * 1025],
    ids=["empty", "space", "newline", "non-ascii", "nul", "padding-first", "too-long"],
)
def test_what_cannot_be_a_token_is_not_sent_on(presented: str) -> None:
    assert not could_be_token(presented)
