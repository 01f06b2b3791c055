"""The operator console in a real browser: headless Chromium (Debian's, at /usr/bin/chromium),
driven by Playwright, signs in with the admin client's Basic credentials, finds a stuck refund,
replays it with a click (the processor then carries it out), and shows the outcomes chart.
Without Chromium the test skips and says so; `.ci/run` installs it where it can."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import ADMIN_KEY
from tests.e2e import test_console
from tests.e2e.test_refund_flow import eventually_refund

# The console's server, with the admin client; a module attribute so that pytest finds it here.
console_api = test_console.console_api

CHROMIUM = Path("/usr/bin/chromium")
# Nothing that reaches out to the network, syncs or updates: the machine may have no internet.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture
async def browser():
    if not CHROMIUM.exists():
        pytest.skip(f"the console's browser test needs Chromium at {CHROMIUM} "
                    "(Debian: apt-get install chromium; .ci/run installs it when it runs as root)")
    playwright = pytest.importorskip("playwright.async_api")
    # Playwright gives the browser a fresh profile in a temporary folder, removed when it closes;
    # leaving the context managers stops the browser, and then Playwright's driver, even on failure.
    async with playwright.async_playwright() as p:
        chromium = await p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True,
                                           timeout=60_000)
        try:
            yield chromium
        finally:
            await chromium.close()


async def test_operator_signs_in_replays_a_stuck_refund_and_sees_the_chart(browser, console_api):
    from playwright.async_api import expect

    api = console_api
    tx = await api.transaction(amount=10_000, invoice_id="INV-BROWSER-1")
    api.mock.fail_next(amount=2_345, times=1_000)  # the processor is down until told otherwise
    refund = await api.refund(tx, 2_345)
    refund = await eventually_refund(api, refund["id"], lambda r: r["status"] != "pending")
    assert (refund["status"], refund["stage"]) == ("requires_attention", "not_sent")
    api.mock.fail_next(amount=2_345, times=0)  # back up
    await api.refund(tx, 4001)  # a decline, for the chart
    assert 2_345 not in [r.amount for r in api.mock.executed]

    context = await browser.new_context(base_url=str(api.http.make_url("/")),
                                        http_credentials={"username": "ops", "password": ADMIN_KEY})
    try:
        page = await context.new_page()
        problems: list[str] = []
        page.on("pageerror", lambda error: problems.append(f"script error: {error}"))
        # The page's own script and style must pass its Content-Security-Policy.
        page.on("console", lambda msg: problems.append(msg.text) if "Content Security Policy" in msg.text else None)

        response = await page.goto("/admin/console")
        assert response is not None and response.status == 200
        await expect(page.get_by_role("heading", name="psp-gateway console")).to_be_visible()
        row = page.locator(f"article[data-refund-id='{refund['id']}']")
        await expect(row).to_contain_text("INV-BROWSER-1")
        await expect(row.locator("[data-field=status]")).to_have_text("requires_attention")

        await row.locator("input[name=reason]").fill("processor outage over, OPS-9")
        await row.get_by_role("button", name="Replay").click()

        await expect(row.locator("output")).to_contain_text("resent with the same idempotency key")
        await expect(row.locator("[data-field=status]")).to_have_text("succeeded")
        assert 2_345 in [r.amount for r in api.mock.executed]  # the processor saw it, once
        assert (await (await api.get(f"/v1/refunds/{refund['id']}")).json())["status"] == "succeeded"

        await page.reload()
        await expect(page.locator(f"article[data-refund-id='{refund['id']}']")).to_have_count(0)
        await expect(page.locator("#stuck")).to_contain_text("No stuck refunds.")

        chart = page.locator("svg.outcomes[data-processor='mock']")
        await expect(chart).to_be_visible()
        await expect(page.locator("figure.chart", has=chart)).to_contain_text(
            "mock: 1 succeeded, 1 failed, 1 needs attention")  # needing attention, before the replay
        for outcome in ("succeeded", "failed", "requires_attention"):  # one bar, or two across an hour's turn
            assert await chart.locator(f"rect.bar.{outcome}").count() >= 1, outcome
        box = await chart.locator("rect.bar.succeeded").first.bounding_box()
        assert box is not None and box["width"] > 0 and box["height"] > 0
        assert problems == []
    finally:
        await context.close()
