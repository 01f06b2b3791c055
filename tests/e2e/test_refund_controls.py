"""Refund controls over HTTP with the mock processor: a refund over its approval threshold waits for
a second person, a payment past its refund window is refused, and a client's daily cap holds."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest

from gateway import keys
from tests.conftest import ADMIN_KEY, WRITER_KEY, Api, make_settings, start_api

BOTH_KEY = "sk_test_both_scopes_0123456"  # a client that may both refund and approve
WRITE = ["transactions:write", "transactions:read", "refunds:write", "refunds:read"]


@pytest.fixture
async def controlled(database_url):
    settings = make_settings(database_url, processors=[
        {"id": "mock", "kind": "mock", "approval_threshold": 5_000, "max_refund_age_days": 30}],
        clients=[{"id": "billing", "api_key": WRITER_KEY, "scopes": WRITE, "daily_refund_cap": 4},
                 {"id": "both", "api_key": BOTH_KEY, "scopes": [*WRITE, "admin"]},
                 {"id": "ops", "api_key": ADMIN_KEY, "scopes": ["admin"]}])
    client = await start_api(settings)
    try:
        yield Api(client)
    finally:
        await client.close()


def _executed(api: Api) -> list[int]:
    return [r.amount for r in api.mock.executed]


async def test_a_refund_over_the_threshold_waits_for_another_person_then_goes(controlled):
    api = controlled
    tx = await api.transaction(amount=20_000)
    held = await api.refund(tx, 6_000)
    assert (held["status"], held["stage"]) == ("pending", "awaiting_approval")
    assert (await (await api.get(f"/v1/transactions/{tx['id']}")).json())["reserved_amount"] == 6_000
    assert _executed(api) == []
    replay = await api.post(f"/admin/refunds/{held['id']}/replay", {"reason": "try it"}, key=ADMIN_KEY)
    assert replay.status == 409 and (await replay.json())["code"] == "awaiting_approval"
    await asyncio.sleep(0.3)  # background rounds: nothing sends it
    assert _executed(api) == []

    approved = await api.post(f"/admin/refunds/{held['id']}/approve", {"reason": "checked ticket SUP-1"},
                              key=ADMIN_KEY)
    assert approved.status == 200, await approved.text()
    assert (await approved.json())["status"] == "succeeded"
    assert _executed(api) == [6_000]
    async with api.app[keys.POOL].acquire() as conn:
        audit = await conn.fetchrow("SELECT actor, result FROM admin_audit WHERE action = 'refund.approve'")
    assert audit["actor"] == "ops"
    again = await api.post(f"/admin/refunds/{held['id']}/approve", {"reason": "again"}, key=ADMIN_KEY)
    assert again.status == 409 and (await again.json())["code"] == "refund_final"


async def test_the_client_that_asked_cannot_approve_and_a_rejection_releases_the_amount(controlled):
    api = controlled
    tx = await api.transaction(amount=20_000)
    resp = await api.post("/v1/refunds", {"invoice_id": tx["invoice_id"], "transaction_id": tx["id"],
                                          "currency": "EUR", "amount": 7_500}, key=BOTH_KEY)
    held = await resp.json()
    assert held["stage"] == "awaiting_approval"
    same = await api.post(f"/admin/refunds/{held['id']}/approve", {"reason": "it is mine"}, key=BOTH_KEY)
    assert same.status == 403 and (await same.json())["code"] == "same_requester"
    rejected = await api.post(f"/admin/refunds/{held['id']}/reject", {"reason": "no ticket for it"}, key=ADMIN_KEY)
    body = await rejected.json()
    assert rejected.status == 200 and (body["status"], body["failure_code"]) == ("canceled", "rejected")
    assert (await (await api.get(f"/v1/transactions/{tx['id']}")).json())["reserved_amount"] == 0
    assert _executed(api) == []
    events = (await (await api.get("/v1/events", params={"limit": "100"})).json())["data"]
    assert [e["type"] for e in events if e["refund_id"] == held["id"]] == ["refund.created", "refund.canceled"]


async def test_a_payment_past_its_refund_window_is_refused_and_can_be_refunded_offline(controlled):
    api = controlled
    old = (datetime.now(timezone.utc) - timedelta(days=45)).isoformat()
    tx = await api.transaction(amount=5_000, captured_at=old)
    refused = await api.refund(tx, 1_000, expect=422)
    assert (refused["code"], refused["next_action"]) == ("refund_window_expired", "refund_offline")
    offline = await api.refund(tx, 1_000, method="offline", external_reference="SEPA-OLD-1")
    assert offline["status"] == "refunded_offline"
    assert _executed(api) == []


async def test_the_daily_cap_holds_under_concurrent_commands(controlled):
    api = controlled
    tx = await api.transaction(amount=20_000)

    async def one() -> int:
        resp = await api.post("/v1/refunds", {"invoice_id": tx["invoice_id"], "transaction_id": tx["id"],
                                              "currency": "EUR", "amount": 100})
        if resp.status == 422:
            assert (await resp.json())["code"] == "daily_limit_exceeded"
        return resp.status

    statuses = Counter(await asyncio.gather(*(one() for _ in range(7))))
    assert statuses == {201: 4, 422: 3}
    assert len(_executed(api)) == 4


async def test_the_console_lists_refunds_awaiting_approval_with_their_age(controlled):
    api = controlled
    tx = await api.transaction(amount=20_000)
    held = await api.refund(tx, 9_000)
    page = await (await api.get("/admin/console", key=ADMIN_KEY)).text()
    section = page.split("id=\"approvals\"", 1)[1].split("</section>", 1)[0]
    assert held["id"] in section and "billing" in section and "90.00" in section
