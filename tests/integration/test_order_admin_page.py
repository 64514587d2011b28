"""The admin page's files as the order service serves them: without a token (they hold no data),
from this origin only, and everything the page refers to is there. Its behaviour in a browser
is tested in tests/e2e/test_admin_page.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from html.parser import HTMLParser

import httpx
import pytest

from order.app import build_app
from order.config import Settings


class References(HTMLParser):
    """Every `src` and `href` of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.found += [value for name, value in attrs if name in ("src", "href") and value]


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    # Static files need neither the database nor Kafka: the app is not started.
    transport = httpx.ASGITransport(app=build_app(Settings()))
    async with httpx.AsyncClient(transport=transport, base_url="http://order") as client:
        yield client


async def test_the_page_is_served_without_a_token_and_allows_this_origin_only(
    client: httpx.AsyncClient,
) -> None:
    page = await client.get("/admin")

    assert page.status_code == 200, page.text
    assert page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy
    assert "script-src 'self';" in policy
    assert "connect-src 'self';" in policy
    assert page.headers["x-content-type-options"] == "nosniff"


async def test_everything_the_page_refers_to_is_served_from_this_origin(
    client: httpx.AsyncClient,
) -> None:
    references = References()
    references.feed((await client.get("/admin")).text)

    assert references.found, "the page refers to its script and style sheet"
    for reference in references.found:
        assert reference.startswith("/admin/assets/"), reference
        served = await client.get(reference)
        assert served.status_code == 200, reference
        assert served.content, reference
    # A module script is run only when served as JavaScript (text/ or application/, by the
    # machine's mime.types).
    served_types = {
        (await client.get(r)).headers["content-type"].split(";")[0].split("/")[1]
        for r in references.found
    }
    assert served_types == {"javascript", "css"}


async def test_a_missing_asset_is_404_in_the_error_shape(client: httpx.AsyncClient) -> None:
    missing = await client.get("/admin/assets/nothing.js")

    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"
