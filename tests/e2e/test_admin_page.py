"""The admin page in headless Chromium (Debian's package, driven by Playwright), against all
three services as processes: an admin clicks an order through the live protocol with the
allowed-next-status buttons and sees its history, its emails (from the notifier) and its audit
timeline (from the audit service) appear; a viewer sees no buttons; an unknown token is refused;
with the audit service down the page says so and a change still goes through.

Screenshots are kept in test-artifacts/admin-page/ (git-ignored; each path is printed)."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from devstack.stack import Stack
from devstack.waiting import wait_until

REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "test-artifacts" / "admin-page"
# As in test_live_protocol.py: these four, then `delivered` with the SMTP server down.
PROTOCOL = ["confirmed", "preparing", "ready", "out_for_delivery"]
# Emails and audit entries follow a change over Kafka; on a busy machine that takes a while.
CONSEQUENCES_SECONDS = 90
# What the audit trail holds of an order once a change to it has been emailed.
SETTLED_ACTIONS = {"order.created", "order.status_changed", "communication.sent"}

expect.set_options(timeout=15_000)


@pytest.fixture(scope="module")
def chromium() -> str:
    """Debian's chromium, installed by the project's script if missing: its path."""
    installed = subprocess.run(
        ["bash", str(REPO / "deploy" / "local" / "chromium.sh")],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert installed.returncode == 0, installed.stderr
    return installed.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
async def browser(chromium: str) -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=chromium, headless=True)
        yield launched
        await launched.close()


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    """A fresh tab (its own sessionStorage); an uncaught script error fails the test."""
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    opened = await context.new_page()
    script_errors: list[str] = []
    opened.on("pageerror", lambda error: script_errors.append(str(error)))
    yield opened
    await context.close()
    assert script_errors == [], script_errors


async def screenshot(page: Page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")
    return path


async def sign_in(page: Page, stack: Stack, token: str, *, as_whom: str | None) -> None:
    """Sign in with `token`; given `as_whom` ("name (role)"), wait until the page is ready."""
    await page.goto(f"{stack.url('order')}/admin")
    await page.get_by_label("API token").fill(token)
    await page.get_by_role("button", name="Sign in").click()
    if as_whom is not None:
        await expect(page.locator("#whoami")).to_have_text(as_whom)


async def create_order(order_api: httpx.AsyncClient, name: str = "Admin Page") -> str:
    created = await order_api.post(
        "/orders", json={"customer": {"name": name, "email": "admin.page@example.com"}}
    )
    assert created.status_code == 201, created.text
    order_id: str = created.json()["id"]
    return order_id


async def allowed_next(order_api: httpx.AsyncClient, order_id: str) -> list[str]:
    response = await order_api.get(f"/orders/{order_id}")
    response.raise_for_status()
    statuses: list[str] = response.json()["allowed_next"]
    return statuses


async def show_orders(page: Page, status: str) -> None:
    await page.locator("#status-filter").select_option(status)
    await page.locator("#filter-form").get_by_role("button", name="Show").click()


async def test_an_admin_clicks_an_order_through_the_live_protocol(
    stack: Stack, page: Page, order_api: httpx.AsyncClient, notifier_api: httpx.AsyncClient
) -> None:
    await sign_in(page, stack, stack.admin_token, as_whom="dev-admin (admin)")

    # A new order, made on the page; it is listed under its status.
    create = page.locator("#create-form")
    await create.get_by_label("Name").fill("Admin Page")
    await create.get_by_label("Email").fill("admin.page@example.com")
    await create.get_by_role("button", name="Create").click()
    await expect(page.locator("#order-status")).to_have_text("pending")
    order_id = await page.locator("#order-id").inner_text()
    await show_orders(page, "pending")
    await expect(page.locator(f"#order-list tr[data-order-id='{order_id}']")).to_be_visible()

    buttons = page.locator("#next-statuses button")
    for version, status in enumerate(PROTOCOL, start=2):
        # The buttons are exactly the statuses the API allows next.
        await expect(buttons).to_have_text(await allowed_next(order_api, order_id))
        await page.get_by_label("Reason").fill(f"on the admin page: {status}")
        await buttons.filter(has_text=status).click()
        await expect(page.locator("#order-status")).to_have_text(status)
        await expect(page.locator("#order-version")).to_have_text(str(version))
        change = page.locator(f"#history tbody tr[data-version='{version}']")
        await expect(change).to_contain_text(status)

    history = page.locator("#history tbody tr")
    await expect(history.locator("td:nth-child(3)")).to_have_text(["pending", *PROTOCOL])
    stored = (await order_api.get(f"/orders/{order_id}/history")).json()["items"]
    assert [(i["to"], i["actor"], i["reason"]) for i in stored[1:]] == [
        (status, "dev-admin", f"on the admin page: {status}") for status in PROTOCOL
    ]
    await show_orders(page, "out_for_delivery")
    await expect(page.locator(f"#order-list tr[data-order-id='{order_id}']")).to_be_visible()

    # The consequences appear on the page as the notifier and the audit service record them.
    sent = page.locator("#communications tbody tr[data-status='sent']")
    await expect(sent).to_have_count(len(PROTOCOL), timeout=CONSEQUENCES_SECONDS * 1000)
    notified = (await notifier_api.get("/communications", params={"order_id": order_id})).json()
    assert len(notified["items"]) == len(PROTOCOL), notified
    await expect(sent.locator("td:nth-child(4)")).to_have_text(
        ["admin.page@example.com"] * len(PROTOCOL)
    )
    changes = page.locator("#audit tbody tr[data-action='order.status_changed']")
    await expect(changes).to_have_count(len(PROTOCOL), timeout=CONSEQUENCES_SECONDS * 1000)
    await expect(changes.locator("td:nth-child(5)")).to_have_text(
        [f"status: {status}, version: {v}" for v, status in enumerate(PROTOCOL, start=2)]
    )
    emailed = page.locator("#audit tbody tr[data-action='communication.sent']")
    await expect(emailed).to_have_count(len(PROTOCOL), timeout=CONSEQUENCES_SECONDS * 1000)

    # With the SMTP server down, delivering still succeeds at once; the email waits on the
    # page (recorded, not sent) until the server is back.
    stack.processes["smtp-sink"].stop()
    try:
        await buttons.filter(has_text="delivered").click()
        await expect(page.locator("#order-status")).to_have_text("delivered")
        await expect(buttons).to_have_count(0)
        waiting = page.locator("#communications tbody tr:not([data-status='sent'])")
        await expect(waiting).to_have_count(1, timeout=CONSEQUENCES_SECONDS * 1000)
    finally:
        stack.start_smtp_sink()
    await expect(sent).to_have_count(len(PROTOCOL) + 1, timeout=CONSEQUENCES_SECONDS * 1000)
    await expect(emailed).to_have_count(len(PROTOCOL) + 1, timeout=CONSEQUENCES_SECONDS * 1000)

    await show_orders(page, "")
    await expect(page.locator(f"#order-list tr[data-order-id='{order_id}']")).to_contain_text(
        "delivered"
    )
    await screenshot(page, "admin-live-protocol")


async def test_a_change_on_a_stale_version_is_refused_and_the_page_shows_why(
    stack: Stack, page: Page, order_api: httpx.AsyncClient
) -> None:
    order_id = await create_order(order_api)
    await sign_in(page, stack, stack.admin_token, as_whom="dev-admin (admin)")
    await page.goto(f"{stack.url('order')}/admin#/orders/{order_id}")
    await expect(page.locator("#order-version")).to_have_text("1")

    # Someone else confirms the order meanwhile: the page's change is made against the
    # version on screen (If-Match), so it is refused instead of overwriting theirs unseen.
    confirmed = await order_api.post(f"/orders/{order_id}/status", json={"status": "confirmed"})
    assert confirmed.status_code == 200, confirmed.text
    await page.locator("#next-statuses button").filter(has_text="cancelled").click()

    error = page.locator("#change-error")
    await expect(error).to_contain_text("412 stale_version")
    await expect(error).to_contain_text("expected_version: 1, current_version: 2")
    await expect(page.locator("#order-status")).to_have_text("confirmed")
    await expect(page.locator("#order-version")).to_have_text("2")
    await expect(page.locator("#history tbody tr")).to_have_count(2)
    refused = page.locator("#audit tbody tr[data-action='order.command_rejected']")
    await expect(refused).to_have_count(1, timeout=CONSEQUENCES_SECONDS * 1000)
    await screenshot(page, "admin-stale-version")


async def test_the_relayed_reads_are_the_peers_own_answers(
    order_api: httpx.AsyncClient,
    notifier_api: httpx.AsyncClient,
    audit_api: httpx.AsyncClient,
) -> None:
    order_id = await create_order(order_api)
    changed = await order_api.post(f"/orders/{order_id}/status", json={"status": "confirmed"})
    assert changed.status_code == 200, changed.text

    # Read once everything about the change has happened, so that both answers agree.
    async def timeline() -> dict[str, Any]:
        relayed = await order_api.get(f"/orders/{order_id}/audit")
        assert relayed.status_code == 200, relayed.text
        page: dict[str, Any] = relayed.json()
        return page

    relayed_timeline = await wait_until(
        timeline,
        lambda page: {i["action"] for i in page["items"]} >= SETTLED_ACTIONS,
        within=CONSEQUENCES_SECONDS,
        what=f"the audit entries {sorted(SETTLED_ACTIONS)}",
    )
    own_timeline = await audit_api.get(f"/audit/orders/{order_id}/timeline")
    relayed_communications = await order_api.get(f"/orders/{order_id}/communications")
    own_communications = await notifier_api.get("/communications", params={"order_id": order_id})

    assert relayed_timeline == own_timeline.json()
    assert relayed_timeline["order_id"] == order_id
    assert relayed_communications.status_code == 200, relayed_communications.text
    assert relayed_communications.json() == own_communications.json()
    assert [c["status"] for c in relayed_communications.json()["items"]] == ["sent"]
    # The peer's own refusal of a request is relayed as it is.
    bad_cursor = await order_api.get(f"/orders/{order_id}/audit", params={"cursor": "nope"})
    assert bad_cursor.status_code == 422, bad_cursor.text
    assert bad_cursor.json()["error"]["code"] == "invalid_cursor"


async def test_a_viewer_sees_the_order_but_no_change_buttons(
    stack: Stack, page: Page, order_api: httpx.AsyncClient
) -> None:
    order_id = await create_order(order_api)
    viewer = stack.issue_token("e2e-page-viewer", "viewer")

    await sign_in(page, stack, viewer, as_whom="e2e-page-viewer (viewer)")
    await page.get_by_label("Order id").fill(order_id)
    await page.get_by_role("button", name="Open").click()

    await expect(page.locator("#order-status")).to_have_text("pending")
    await expect(page.locator("#read-only")).to_be_visible()
    await expect(page.locator("#next-statuses button")).to_have_count(0)
    await expect(page.get_by_label("Reason")).to_be_hidden()
    await expect(page.locator("#create")).to_be_hidden()
    await expect(page.locator("#history tbody tr")).to_have_count(1)
    await expect(page.locator("#communications-state")).to_have_attribute("data-state", "ok")
    await expect(page.locator("#audit tbody tr[data-action='order.created']")).to_have_count(
        1, timeout=CONSEQUENCES_SECONDS * 1000
    )
    await screenshot(page, "admin-viewer")


async def test_an_unknown_token_is_refused_and_not_kept(stack: Stack, page: Page) -> None:
    await sign_in(page, stack, "not-a-token-of-this-service", as_whom=None)

    await expect(page.locator("#sign-in-error")).to_contain_text("401 unauthenticated")
    await expect(page.locator("#workspace")).to_be_hidden()
    kept = await page.evaluate("() => sessionStorage.length")
    assert kept == 0


async def test_with_the_audit_service_down_the_page_says_so_and_a_change_still_succeeds(
    stack: Stack, page: Page, order_api: httpx.AsyncClient
) -> None:
    order_id = await create_order(order_api)
    await sign_in(page, stack, stack.admin_token, as_whom="dev-admin (admin)")
    await page.goto(f"{stack.url('order')}/admin#/orders/{order_id}")
    audit_state = page.locator("#audit-state")
    await expect(audit_state).to_have_attribute("data-state", "ok")

    stack.processes["audit"].stop()
    try:
        await expect(audit_state).to_have_attribute("data-state", "unavailable")
        await expect(audit_state).to_contain_text("Unavailable: The audit service does not answer")
        await expect(page.locator("#audit tbody tr")).to_have_count(0)
        await page.locator("#next-statuses button").filter(has_text="confirmed").click()
        await expect(page.locator("#order-status")).to_have_text("confirmed")
        await expect(page.locator("#communications-state")).to_have_attribute("data-state", "ok")
        await screenshot(page, "admin-audit-down")
    finally:
        stack.launch_service("audit").wait_ready(60)

    # Back, the audit service has caught up from Kafka: the change made meanwhile is there.
    await expect(audit_state).to_have_attribute("data-state", "ok")
    changed = page.locator("#audit tbody tr[data-action='order.status_changed']")
    await expect(changed).to_have_count(1, timeout=CONSEQUENCES_SECONDS * 1000)
