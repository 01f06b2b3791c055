"""The credit note as the billing core lives it, over HTTP with the mock processor: a retry after a
decline, a switch to an off-PSP refund, a conflict instead of a silent answer with another refund,
a cancel before sending, a next action for every failure, one credit note over several payments."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter

from gateway import keys
from gateway.domain.refunds import Outcome
from tests.conftest import ADMIN_KEY, Api

DECLINED_CARD, MERCHANT_SHORT = 4001, 4002  # the mock's declines (expired card, insufficient funds)


def _invoice() -> str:
    return f"INV-{uuid.uuid4().hex[:10]}"


async def _invoice_refund(api: Api, invoice_id: str, body: dict, expect: int) -> dict:
    resp = await api.post(f"/v1/invoices/{invoice_id}/refund", body)
    assert resp.status == expect, await resp.text()
    return await resp.json()


async def _credit_note(api: Api, credit_note_id: str, invoice_id: str | None = None) -> dict:
    resp = await api.get(f"/v1/credit-notes/{credit_note_id}", params={"invoice_id": invoice_id} if invoice_id else None)
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def _payment(api: Api, tx: dict) -> dict:
    return await (await api.get(f"/v1/transactions/{tx['id']}")).json()


def _executed(api: Api, tx: dict) -> int:
    """What the mock processor really refunded on the payment: its books, not the gateway's."""
    return sum(r.amount for r in api.mock.executed
               if r.psp_reference == tx["psp_reference"] and r.final is Outcome.SUCCEEDED)


async def test_decline_then_retry_succeeds_and_the_credit_note_is_refunded(api):
    tx = await api.transaction(amount=10_000, invoice_id=_invoice())
    inv = tx["invoice_id"]
    declined = await _invoice_refund(api, inv, {"amount": DECLINED_CARD, "credit_note_id": "CN-1"}, 201)
    assert (declined["status"], declined["failure_code"]) == ("failed", "expired_or_canceled_card")
    assert declined["next_action"] == "refund_offline"
    note = await _credit_note(api, "CN-1", inv)
    assert (note["status"], note["next_action"], note["open_amount"]) == ("pending_refund", "refund_offline",
                                                                          DECLINED_CARD)

    retried = await _invoice_refund(api, inv, {"amount": 3_000, "credit_note_id": "CN-1"}, 201)
    assert retried["id"] != declined["id"] and retried["previous_refund_id"] == declined["id"]
    assert (retried["status"], retried["next_action"]) == ("succeeded", "none")
    # Asked again the same way, the live refund answers; asked for another amount, a conflict.
    again = await _invoice_refund(api, inv, {"amount": 3_000, "credit_note_id": "CN-1"}, 200)
    assert again["id"] == retried["id"]
    conflict = await _invoice_refund(api, inv, {"amount": 2_000, "credit_note_id": "CN-1"}, 409)
    assert (conflict["code"], conflict["refund_id"], conflict["refund_amount"]) == ("credit_note_conflict",
                                                                                  retried["id"], 3_000)

    note = await _credit_note(api, "CN-1")  # found without its invoice too
    assert (note["status"], note["refunded_amount"], note["open_amount"], note["amount"]) == ("refunded", 3_000, 0,
                                                                                             3_000)
    assert [r["id"] for r in note["refunds"]] == [declined["id"], retried["id"]]
    listed = await (await api.get("/v1/refunds", params={"credit_note_id": "CN-1"})).json()
    assert {r["id"] for r in listed["data"]} == {declined["id"], retried["id"]}
    assert (await _payment(api, tx))["refunded_amount"] == 3_000 == _executed(api, tx)


async def test_a_different_amount_for_a_live_credit_note_is_a_conflict_never_another_refund(api):
    tx = await api.transaction(amount=10_000, invoice_id=_invoice())
    first = await api.refund(tx, 7_001, credit_note_id="CN-P")  # pending at the processor, then succeeds
    assert first["status"] == "pending"
    resp = await api.post("/v1/refunds", {"invoice_id": tx["invoice_id"], "currency": "EUR", "amount": 3_000,
                                          "credit_note_id": "CN-P"})
    problem = await resp.json()
    assert resp.status == 409 and problem["code"] == "credit_note_conflict"
    assert (problem["refund_id"], problem["refund_amount"]) == (first["id"], 7_001)
    async with api.app[keys.POOL].acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM refunds WHERE credit_note_id = 'CN-P'") == 1


async def test_decline_then_offline_refund_records_it_without_the_processor(api):
    tx = await api.transaction(amount=10_000, invoice_id=_invoice())
    inv = tx["invoice_id"]
    declined = await _invoice_refund(api, inv, {"amount": DECLINED_CARD, "credit_note_id": "CN-2"}, 201)
    missing = await _invoice_refund(api, inv, {"amount": DECLINED_CARD, "credit_note_id": "CN-2",
                                               "method": "offline"}, 422)
    assert missing["errors"][0]["field"] == "external_reference"
    offline = await _invoice_refund(api, inv, {"amount": DECLINED_CARD, "credit_note_id": "CN-2", "method": "offline",
                                               "external_reference": "SEPA-0042"}, 201)
    assert (offline["status"], offline["stage"], offline["method"]) == ("refunded_offline", "done", "offline")
    assert (offline["external_reference"], offline["previous_refund_id"]) == ("SEPA-0042", declined["id"])
    assert offline["attempts"] == 0 and offline["psp_refund_id"] is None
    assert _executed(api, tx) == 0  # never sent
    payment = await _payment(api, tx)
    assert (payment["refunded_amount"], payment["reserved_amount"], payment["refundable_amount"]) == (
        DECLINED_CARD, 0, 10_000 - DECLINED_CARD)
    note = await _credit_note(api, "CN-2", inv)
    assert (note["status"], note["refunded_amount"], note["open_amount"]) == ("refunded_offline", DECLINED_CARD, 0)
    # The same offline command again is answered with it; a PSP refund of the same amount conflicts.
    assert (await _invoice_refund(api, inv, {"amount": DECLINED_CARD, "credit_note_id": "CN-2", "method": "offline",
                                             "external_reference": "SEPA-0042"}, 200))["id"] == offline["id"]
    await _invoice_refund(api, inv, {"amount": DECLINED_CARD, "credit_note_id": "CN-2"}, 409)
    # The billing core hears of it like any refund, with the credit note's status beside it.
    events = (await (await api.get("/v1/events", params={"limit": "1000"})).json())["data"]
    [created] = [e for e in events if e["refund_id"] == offline["id"]]
    assert created["data"]["status"] == "refunded_offline" and created["data"]["external_reference"] == "SEPA-0042"
    assert created["credit_note"] == {"id": "CN-2", "invoice_id": inv, "status": "refunded_offline",
                                      "next_action": "none"}
    [failed] = [e for e in events if e["refund_id"] == declined["id"] and e["type"] == "refund.failed"]
    assert failed["credit_note"]["status"] == "pending_refund"


async def test_a_payment_can_be_refunded_offline_without_a_credit_note(api):
    tx = await api.transaction(amount=5_000, invoice_id=_invoice())
    refund = await api.refund(tx, 1_500, method="offline", external_reference="VOUCHER-7")
    assert (refund["status"], refund["external_reference"]) == ("refunded_offline", "VOUCHER-7")
    assert (await _payment(api, tx))["refundable_amount"] == 3_500 and _executed(api, tx) == 0
    bad = await api.post("/v1/refunds", {"invoice_id": tx["invoice_id"], "transaction_id": tx["id"],
                                         "currency": "EUR", "amount": 100, "external_reference": "X-1"})
    assert bad.status == 422 and (await bad.json())["errors"][0]["field"] == "external_reference"


async def test_admin_resolves_a_declined_refund_as_refunded_offline_unless_it_was_retried(api):
    tx = await api.transaction(amount=10_000, invoice_id=_invoice())
    declined = await api.refund(tx, DECLINED_CARD, credit_note_id="CN-3")
    resolve = {"resolution": "refunded_offline", "reason": "paid back by bank transfer",
               "external_reference": "SEPA-77"}
    resp = await api.post(f"/admin/refunds/{declined['id']}/resolve", resolve, key=ADMIN_KEY)
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert (body["status"], body["external_reference"]) == ("refunded_offline", "SEPA-77")
    assert (await _payment(api, tx))["refunded_amount"] == DECLINED_CARD
    assert (await _credit_note(api, "CN-3", tx["invoice_id"]))["status"] == "refunded_offline"
    async with api.app[keys.POOL].acquire() as conn:
        audit = await conn.fetchrow("SELECT actor, result FROM admin_audit WHERE target = $1", declined["id"])
    assert audit["actor"] == "ops" and audit["result"] == {"status": "refunded_offline"}

    # A declined refund the billing core already retried is not the credit note's any more.
    other = await api.refund(tx, DECLINED_CARD, credit_note_id="CN-4")
    await api.refund(tx, 1_000, credit_note_id="CN-4")
    resp = await api.post(f"/admin/refunds/{other['id']}/resolve", resolve, key=ADMIN_KEY)
    assert resp.status == 409 and (await resp.json())["code"] == "refund_superseded"


async def test_next_action_says_what_the_billing_core_can_do_about_each_decline(api):
    tx = await api.transaction(amount=10_000, invoice_id=_invoice())
    short = await api.refund(tx, MERCHANT_SHORT, credit_note_id="CN-5")
    assert (short["failure_code"], short["next_action"]) == ("insufficient_funds", "retry")
    card = await api.refund(tx, DECLINED_CARD, credit_note_id="CN-6")
    assert (card["failure_code"], card["next_action"]) == ("expired_or_canceled_card", "refund_offline")
    unknown = await api.refund(tx, 8_001, credit_note_id="CN-7")
    assert (unknown["status"], unknown["next_action"]) == ("requires_attention", "contact_support")
    assert (await _credit_note(api, "CN-7", tx["invoice_id"]))["status"] == "requires_attention"


async def test_cancel_of_a_refund_waiting_out_an_outage_releases_it_and_nothing_is_ever_sent(patient_api):
    api = patient_api
    tx = await api.transaction(amount=10_000, invoice_id=_invoice())
    api.mock.fail_next(amount=1_234, times=1_000)  # the processor is down
    waiting = await api.refund(tx, 1_234, credit_note_id="CN-8")
    assert (waiting["status"], waiting["stage"]) == ("pending", "not_sent")
    assert (await _payment(api, tx))["reserved_amount"] == 1_234
    resp = await api.post(f"/v1/refunds/{waiting['id']}/cancel", {"reason": "customer chose store credit"})
    assert resp.status == 200, await resp.text()
    canceled = await resp.json()
    assert (canceled["status"], canceled["stage"]) == ("canceled", "done")
    assert (await _payment(api, tx))["reserved_amount"] == 0
    assert (await _credit_note(api, "CN-8", tx["invoice_id"]))["status"] == "canceled"
    again = await api.post(f"/v1/refunds/{waiting['id']}/cancel")
    assert again.status == 409 and (await again.json())["code"] == "refund_final"

    api.mock.fail_next(amount=1_234, times=0)  # the outage clears
    async with api.app[keys.POOL].acquire() as conn:  # and any retry would be due now
        await conn.execute("UPDATE refunds SET next_attempt_at = now() WHERE id = $1", waiting["id"])
    await asyncio.sleep(0.5)  # many janitor rounds
    assert _executed(api, tx) == 0
    assert (await api.get(f"/v1/refunds/{waiting['id']}")).status == 200
    assert (await (await api.get(f"/v1/refunds/{waiting['id']}")).json())["status"] == "canceled"
    # The credit note can be refunded anew; the new refund follows the canceled one.
    retry = await api.refund(tx, 1_000, credit_note_id="CN-8")
    assert (retry["status"], retry["previous_refund_id"]) == ("succeeded", waiting["id"])


async def test_a_refund_that_may_have_reached_the_processor_cannot_be_canceled(api):
    tx = await api.transaction(amount=10_000, invoice_id=_invoice())
    pending = await api.refund(tx, 7_001)  # accepted by the processor, final answer later
    resp = await api.post(f"/v1/refunds/{pending['id']}/cancel")
    assert resp.status == 409 and (await resp.json())["code"] == "refund_in_flight"
    done = await api.refund(tx, 100)
    resp = await api.post(f"/v1/refunds/{done['id']}/cancel")
    assert resp.status == 409 and (await resp.json())["code"] == "refund_final"
    assert (await api.post("/v1/refunds/rf_nope/cancel")).status == 404


async def _three_payments(api: Api, amounts=(3_000, 4_000, 5_000)) -> tuple[str, list[dict]]:
    inv = _invoice()
    txs = [await api.transaction(amount=a, invoice_id=inv, captured_at=f"2024-0{i + 1}-01T00:00:00Z")
           for i, a in enumerate(amounts)]
    return inv, txs


async def test_allocation_spreads_a_credit_note_over_the_newest_payments_first(api):
    inv, (oldest, middle, newest) = await _three_payments(api)
    body = {"invoice_id": inv, "currency": "EUR", "amount": 7_000, "credit_note_id": "CN-S"}
    plain = await api.post("/v1/refunds", body)
    assert plain.status == 409 and (await plain.json())["code"] == "ambiguous_transaction"
    resp = await api.post("/v1/refunds", {**body, "allocation": "auto"})
    assert resp.status == 201, await resp.text()
    note = await resp.json()
    assert (note["id"], note["status"], note["amount"], note["refunded_amount"]) == ("CN-S", "refunded", 7_000, 7_000)
    by_payment = {r["transaction_id"]: r["amount"] for r in note["refunds"]}
    assert by_payment == {newest["id"]: 5_000, middle["id"]: 2_000}
    again = await api.post("/v1/refunds", {**body, "allocation": "auto"})
    assert again.status == 200 and {r["id"] for r in (await again.json())["refunds"]} == {
        r["id"] for r in note["refunds"]}
    assert (await api.post("/v1/refunds", {**body, "amount": 6_000, "allocation": "auto"})).status == 409
    too_much = await api.post("/v1/refunds", {**body, "credit_note_id": "CN-T", "amount": 5_001,
                                              "allocation": "auto"})
    assert too_much.status == 422 and (await too_much.json())["refundable_amount"] == 5_000
    assert _executed(api, oldest) == 0 and _executed(api, middle) == 2_000 and _executed(api, newest) == 5_000


async def test_allocation_retries_only_the_part_that_failed(api):
    inv, (first, second) = await _three_payments(api, amounts=(6_000, DECLINED_CARD))
    body = {"invoice_id": inv, "currency": "EUR", "amount": 6_000 + DECLINED_CARD, "credit_note_id": "CN-R",
            "allocation": "auto"}
    note = await (await api.post("/v1/refunds", body)).json()
    assert (note["status"], note["refunded_amount"], note["open_amount"]) == ("pending_refund", 6_000, DECLINED_CARD)
    [failed] = [r for r in note["refunds"] if r["status"] == "failed"]
    resp = await api.post("/v1/refunds", {**body, "method": "offline", "external_reference": "SEPA-9"})
    assert resp.status == 201, await resp.text()
    note = await resp.json()
    [offline] = [r for r in note["refunds"] if r["method"] == "offline"]
    assert (offline["amount"], offline["previous_refund_id"]) == (DECLINED_CARD, failed["id"])
    assert (note["status"], note["refunded_amount"], note["open_amount"]) == ("refunded", 6_000 + DECLINED_CARD, 0)


async def test_concurrent_allocations_never_over_refund_any_payment(api):
    inv, txs = await _three_payments(api)  # 12,000 in all

    async def command(credit_note_id: str) -> int:
        resp = await api.post("/v1/refunds", {"invoice_id": inv, "currency": "EUR", "amount": 2_500,
                                              "credit_note_id": credit_note_id, "allocation": "auto"})
        return resp.status

    statuses = Counter(await asyncio.gather(*(command(f"CN-C{i}") for i in range(8))))
    assert statuses == {201: 4, 422: 4}  # 4 x 2,500 fit in 12,000; a fifth does not
    same = Counter(await asyncio.gather(*(command("CN-C0") for _ in range(4))))
    assert same == {200: 4}  # asked again: answered with the credit note's refunds, nothing new
    for tx in txs:
        payment = await _payment(api, tx)
        assert payment["refunded_amount"] + payment["reserved_amount"] <= tx["amount"]
        assert _executed(api, tx) == payment["refunded_amount"] <= tx["amount"]
    assert sum(_executed(api, tx) for tx in txs) == 10_000
