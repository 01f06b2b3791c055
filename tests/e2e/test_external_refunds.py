"""Refunds the processor reports that the gateway never made (from its dashboard, say), through the
real server: one that no longer fits its payment needs attention and is never counted as refunded."""

from __future__ import annotations

import uuid

import orjson
import pytest

from gateway import keys
from gateway.callbacks import event_body
from tests.conftest import eventually, logged_api, make_settings, signed_mock_webhook

WHSEC = "whsec_external_0123456789"


@pytest.fixture
async def hooked(database_url):
    async with logged_api(make_settings(database_url, processors=[
            {"id": "mock", "kind": "mock", "webhook_secrets": [WHSEC]}])) as api:
        yield api


def dashboard_refund(payment: str, amount: int) -> tuple[bytes, dict[str, str]]:
    return signed_mock_webhook({"id": f"re_dashboard_{uuid.uuid4().hex[:8]}", "payment": payment, "amount": amount,
                                "currency": "EUR", "status": "succeeded"}, WHSEC, "refund.created")


async def test_external_refund_that_no_longer_fits_its_payment_needs_attention_and_is_not_counted(hooked):
    api = hooked
    tx = await api.transaction(amount=10_000)
    ours = await api.refund(tx, 10_000)
    assert ours["status"] == "succeeded"
    body, headers = dashboard_refund(tx["psp_reference"], 500)
    event_id = orjson.loads(body)["id"]

    resp = await api.post("/v1/webhooks/mock", data=body, key=None, headers=headers)

    assert resp.status == 200, await resp.text()

    async def processed():
        async with api.app[keys.POOL].acquire() as conn:
            row = await conn.fetchrow("SELECT * FROM webhook_events WHERE event_id = $1", event_id)
        return row if row["status"] != "received" else None
    event = await eventually(processed)
    assert (event["status"], event["attempts"], event["last_error"]) == ("applied", 1, None)  # no CHECK failure
    async with api.app[keys.POOL].acquire() as conn:
        external = await conn.fetchrow("SELECT * FROM refunds WHERE transaction_id = $1 AND origin = 'external'",
                                       tx["id"])
        published = [event_body(r) for r in await conn.fetch("SELECT * FROM outbox_events WHERE refund_id = $1",
                                                             external["id"])]
    assert (external["status"], external["stage"], external["failure_code"], external["amount"]) == (
        "requires_attention", "done", "would_over_refund", 500)
    assert "leave no room" in external["failure_message"] and external["psp_refund_id"] in external["failure_message"]
    payment = await (await api.get(f"/v1/transactions/{tx['id']}")).json()
    assert (payment["refunded_amount"], payment["reserved_amount"]) == (10_000, 500)  # reserved, not refunded
    assert [(p["type"], p["data"]["status"]) for p in published] == [
        ("refund.created", "requires_attention")]
    logged = [orjson.loads(line) for line in api.logs.getvalue().splitlines() if line.startswith("{")]
    [error] = [line for line in logged if line.get("event") == "external_refund_would_over_refund"]
    assert (error["level"], error["transaction_id"], error["amount"]) == ("error", tx["id"], 500)
