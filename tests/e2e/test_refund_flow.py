"""End to end through the real HTTP server on loopback and the mock processor."""

from __future__ import annotations


async def test_partial_refund_succeeds_and_reduces_refundable(api):
    tx = await api.transaction(amount=10_000)
    refund = await api.refund(tx, 2_500, credit_note_id="CN-1", reason="requested_by_customer")
    assert refund["status"] == "succeeded" and refund["stage"] == "done"
    assert refund["amount"] == 2_500 and refund["psp_refund_id"].startswith("mre_")
    resp = await api.get(f"/v1/transactions/{tx['id']}")
    body = await resp.json()
    assert (body["refunded_amount"], body["reserved_amount"], body["refundable_amount"]) == (2_500, 0, 7_500)
