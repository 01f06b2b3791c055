"""Disputes over HTTP with the mock processor, recorded by an operator: an open dispute refuses new
refunds and holds the unsent ones; a lost one counts as charged back; a won one lets them go."""

from __future__ import annotations

import asyncio

import pytest

from gateway import keys
from tests.conftest import ADMIN_KEY, Api, eventually


@pytest.fixture
def api(patient_api: Api) -> Api:
    """A refund caught by an outage stays unsent while a test looks."""
    return patient_api


async def _dispute(api: Api, tx: dict, status: str, amount: int, dispute_id: str = "CB-1") -> dict:
    resp = await api.post("/admin/disputes", {"processor": "mock", "psp_reference": tx["psp_reference"],
                                              "psp_dispute_id": dispute_id, "amount": amount, "status": status,
                                              "reason": "fraudulent"}, key=ADMIN_KEY)
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def _unsent_refund(api: Api, tx: dict, amount: int) -> dict:
    api.mock.fail_next(amount=amount, times=1_000)  # the processor is down: the refund waits, unsent
    refund = await api.refund(tx, amount)
    assert (refund["status"], refund["stage"]) == ("pending", "not_sent")
    return refund


async def _refund(api: Api, refund_id: str) -> dict:
    return await (await api.get(f"/v1/refunds/{refund_id}")).json()


async def test_an_open_dispute_refuses_refunds_holds_unsent_ones_and_a_lost_one_is_charged_back(api):
    tx = await api.transaction(amount=10_000)
    waiting = await _unsent_refund(api, tx, 1_234)
    opened = await _dispute(api, tx, "open", 4_000)
    assert (opened["status"], opened["transaction_id"]) == ("open", tx["id"])

    held = await _refund(api, waiting["id"])
    assert (held["status"], held["stage"], held["failure_code"]) == ("pending", "not_sent", "payment_disputed")
    refused = await api.refund(tx, 500, expect=409)
    assert refused["code"] == "payment_disputed"
    replay = await api.post(f"/admin/refunds/{waiting['id']}/replay", {"reason": "try again"}, key=ADMIN_KEY)
    assert replay.status == 409 and (await replay.json())["code"] == "payment_disputed"
    api.mock.fail_next(amount=1_234, times=0)  # the outage is over; the hold still holds
    async with api.app[keys.POOL].acquire() as conn:
        assert await conn.fetchval("SELECT next_attempt_at FROM refunds WHERE id = $1", waiting["id"]) is None
    await asyncio.sleep(0.3)
    assert not [r for r in api.mock.executed if r.psp_reference == tx["psp_reference"]]

    await _dispute(api, tx, "lost", 4_000)
    payment = await (await api.get(f"/v1/transactions/{tx['id']}")).json()
    assert (payment["charged_back_amount"], payment["reserved_amount"], payment["refundable_amount"]) == (
        4_000, 1_234, 10_000 - 4_000 - 1_234)
    after = await _refund(api, waiting["id"])
    assert (after["status"], after["failure_code"], after["next_action"]) == (
        "requires_attention", "payment_charged_back", "contact_support")
    events = (await (await api.get("/v1/events", params={"limit": "100"})).json())["data"]
    assert [e["type"] for e in events if e.get("dispute_id") == opened["id"]] == ["dispute.opened", "dispute.lost"]
    assert all(e["data"]["object"] == "dispute" for e in events if e.get("dispute_id"))
    assert (await _dispute(api, tx, "open", 4_000))["status"] == "lost"  # a stale "open" changes nothing


async def test_a_won_dispute_lets_the_held_refunds_go(api):
    tx = await api.transaction(amount=10_000)
    waiting = await _unsent_refund(api, tx, 2_345)
    await _dispute(api, tx, "open", 10_000, dispute_id="CB-2")
    api.mock.fail_next(amount=2_345, times=0)
    await _dispute(api, tx, "won", 10_000, dispute_id="CB-2")

    async def sent():
        refund = await _refund(api, waiting["id"])
        return refund if refund["status"] == "succeeded" else None
    done = await eventually(sent)
    assert done["failure_code"] is None
    assert [r.amount for r in api.mock.executed if r.psp_reference == tx["psp_reference"]] == [2_345]
    assert (await (await api.get(f"/v1/transactions/{tx['id']}")).json())["charged_back_amount"] == 0


async def test_a_dispute_for_an_unknown_payment_is_refused(api):
    resp = await api.post("/admin/disputes", {"processor": "mock", "psp_reference": "ch_nobody",
                                              "psp_dispute_id": "CB-9", "amount": 100, "status": "open"},
                          key=ADMIN_KEY)
    assert resp.status == 404 and (await resp.json())["code"] == "transaction_not_found"
