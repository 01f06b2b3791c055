"""End to end over loopback: the gateway's HTTP server, the BridgePay-like adapter and the
BridgePay-like simulator (SOAP, base64 XML, no idempotency key, no webhooks)."""

from __future__ import annotations

from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import AsyncIterator

import httpx
import pytest

from adapters.bridgepay_sim import SimConfig
from adapters.bridgepay_sim.testing import RunningSimulator, running_simulator
from gateway import keys
from tests.conftest import Api, eventually, make_settings, start_api

BP = dict(username="gw_user", password="gw_pass_0123", merchant_code="1000", merchant_account_code="2000")
WINDOW = 0.5  # how long BridgePay may still carry out a request the gateway gave up on, here


@dataclass
class BridgePayWorld:
    api: Api
    sim: RunningSimulator
    control: httpx.AsyncClient

    async def sale(self, amount: int, *, settled: bool, processor: str = "bridgepay") -> dict:
        resp = await self.control.post("/_sim/sales", json={"amount": amount, "settled": settled})
        assert resp.status_code == 200, resp.text
        trans_id = resp.json()["gateway_trans_id"]
        return await self.api.transaction(amount=amount, currency="USD", psp_reference=trans_id,
                                          processor=processor, settled=settled)

    async def refund(self, tx: dict, amount: int | None = None, *, expect: int = 201) -> dict:
        return await self.api.refund(tx, amount, expect=expect)

    async def faults(self, body: dict) -> None:
        resp = await self.control.post("/_sim/faults", json=body)
        assert resp.status_code == 200, resp.text

    async def sim_sale(self, trans_id: str) -> dict:
        state = (await self.control.get("/_sim/state")).json()
        [sale] = [s for s in state["sales"] if s["gateway_trans_id"] == trans_id]
        return sale

    async def events(self, refund_id: str) -> list[dict]:
        async with self.api.app[keys.POOL].acquire() as conn:
            rows = await conn.fetch("SELECT event, to_status, detail FROM refund_events WHERE refund_id = $1 "
                                    "ORDER BY id", refund_id)
        return [dict(r) for r in rows]


@asynccontextmanager
async def bridgepay_world(database_url: str, sim_config: SimConfig, *, window: float, timeout: float,
                          **settings) -> AsyncIterator[BridgePayWorld]:
    """The gateway and the simulator: the gateway gives up on a BridgePay call after `timeout`
    (whole call), and trusts a look-up's "no record" `window` seconds after the newest send."""
    async with running_simulator(sim_config) as sim:
        client = await start_api(make_settings(database_url, processors=[
            {"id": "bridgepay", "kind": "bridgepay", "base_url": sim.url, **BP, "timeout_seconds": timeout,
             "execution_window_seconds": window}], **settings))
        control = httpx.AsyncClient(base_url=sim.url, timeout=30)
        try:
            yield BridgePayWorld(Api(client), sim, control)
        finally:
            await control.aclose()
            await client.close()


@pytest.fixture
async def bridgepay(database_url):
    async with bridgepay_world(database_url, SimConfig(**BP, seed=5, sandbox_amounts=True), window=WINDOW,
                               timeout=0.5, retry_max_attempts=4, retry_max_seconds=6.0) as world:
        yield world


async def test_refund_of_an_unsettled_sale_is_a_void_and_only_one_is_allowed(bridgepay):
    tx = await bridgepay.sale(5_000, settled=False)
    void = await bridgepay.refund(tx, 2_000)
    assert void["status"] == "succeeded" and void["psp_refund_id"]
    [created, answered] = await bridgepay.events(void["id"])
    assert answered["detail"]["bridgepay_type"] == "void"
    assert answered["detail"]["gateway_message"].startswith("A07")
    # The payment shows what BridgePay holds: nothing refundable while the sale is unsettled.
    payment = await (await bridgepay.api.get(f"/v1/transactions/{tx['id']}")).json()
    assert (payment["refunded_amount"], payment["refundable_amount"]) == (2_000, 0)
    assert payment["voided_at"] is not None and payment["settled_at"] is None
    # A second refund is refused before BridgePay (which would answer 10042, already voided).
    resp = await bridgepay.api.post("/v1/refunds", {"invoice_id": tx["invoice_id"], "transaction_id": tx["id"],
                                                    "amount": 1_000, "currency": "USD"})
    assert resp.status == 422 and (await resp.json())["code"] == "payment_voided"
    sale = await bridgepay.sim_sale(tx["psp_reference"])
    assert sale["refund_executions"] == 1 and sale["voided"] == 2_000 and sale["remaining"] == 0
    # Once the batch settles (BridgePay's books) and the billing core says so, the rest is refundable.
    assert (await bridgepay.control.post("/_sim/settle", json={})).status_code == 200
    settled = await bridgepay.api.post("/v1/transactions", {
        "processor": "bridgepay", "psp_reference": tx["psp_reference"], "invoice_id": tx["invoice_id"],
        "amount": 5_000, "currency": "USD", "settled": True})
    assert settled.status == 200 and (await settled.json())["refundable_amount"] == 3_000
    rest = await bridgepay.refund(tx)
    assert (rest["status"], rest["amount"]) == ("succeeded", 3_000)
    sale = await bridgepay.sim_sale(tx["psp_reference"])
    assert (sale["voided"], sale["refunded"], sale["remaining"]) == (2_000, 3_000, 0)


async def test_settled_sale_is_refunded_in_parts_down_to_nothing(bridgepay):
    tx = await bridgepay.sale(9_000, settled=True)
    first = await bridgepay.refund(tx, 3_000)
    second = await bridgepay.refund(tx, 2_500)
    rest = await bridgepay.refund(tx)
    assert [r["status"] for r in (first, second, rest)] == ["succeeded"] * 3 and rest["amount"] == 3_500
    remaining = [(await bridgepay.events(r["id"]))[-1]["detail"]["remaining_amount"] for r in (first, second, rest)]
    assert remaining == ["6000", "3500", "0"]
    sale = await bridgepay.sim_sale(tx["psp_reference"])
    assert (sale["refunded"], sale["remaining"], sale["refund_executions"]) == (9_000, 0, 3)
    body = await (await bridgepay.api.get(f"/v1/transactions/{tx['id']}")).json()
    assert (body["refunded_amount"], body["refundable_amount"]) == (9_000, 0)


async def test_bank_decline_fails_the_refund_with_the_raw_code_kept(bridgepay):
    tx = await bridgepay.sale(5_000, settled=True)
    refund = await bridgepay.refund(tx, 300)  # a sandbox amount the bank denies
    assert (refund["status"], refund["failure_code"]) == ("failed", "declined")
    assert "30032" in refund["failure_message"] and "D01" in refund["failure_message"]
    assert (await (await bridgepay.api.get(f"/v1/transactions/{tx['id']}")).json())["reserved_amount"] == 0


async def test_timeout_after_the_refund_was_carried_out_is_resolved_by_lookup_with_one_refund(bridgepay):
    tx = await bridgepay.sale(5_000, settled=True)
    await bridgepay.faults({"execute_then_timeout": {"count": 1, "hold_seconds": 1.5, "request_type": "012"}})
    refund = await bridgepay.refund(tx, 1_000)
    assert (refund["status"], refund["attempts"]) == ("succeeded", 1)
    sale = await bridgepay.sim_sale(tx["psp_reference"])
    assert sale["refund_executions"] == 1 and sale["refunded"] == 1_000
    assert refund["psp_refund_id"] == sale["refunds"][0]["gateway_trans_id"]


async def test_dropped_connection_is_resent_only_once_the_execution_window_has_passed(bridgepay):
    tx = await bridgepay.sale(5_000, settled=True)
    await bridgepay.faults({"drop": {"count": 1, "request_type": "012"}})
    refund = await bridgepay.refund(tx, 1_000)
    # No record yet is not "never executed": the dropped request could still be carried out.
    assert (refund["status"], refund["stage"], refund["attempts"]) == ("pending", "outcome_unknown", 1)

    async def settled():
        body = await (await bridgepay.api.get(f"/v1/refunds/{refund['id']}")).json()
        return body if body["status"] == "succeeded" else None
    final = await eventually(settled)
    assert final["attempts"] == 2
    async with bridgepay.api.app[keys.POOL].acquire() as conn:
        calls = [(r["call"], r["outcome"]) for r in await conn.fetch(
            "SELECT call, outcome FROM refund_attempts WHERE refund_id = $1 ORDER BY id", refund["id"])]
    assert calls[:2] == [("refund", "error"), ("lookup", "not_found")]
    assert calls[-2:] == [("lookup", "not_found"), ("refund", "succeeded")]
    assert (await bridgepay.sim_sale(tx["psp_reference"]))["refund_executions"] == 1


async def test_internal_error_is_transient_and_retried(bridgepay):
    tx = await bridgepay.sale(5_000, settled=True)
    await bridgepay.faults({"internal_error": {"count": 1, "request_type": "012"}})
    refund = await bridgepay.refund(tx, 700)
    assert (refund["status"], refund["attempts"]) == ("succeeded", 2)
    assert (await bridgepay.sim_sale(tx["psp_reference"]))["refund_executions"] == 1


@pytest.mark.parametrize("fault", [{"garbage": {"count": 1, "request_type": "012"}},
                                   {"hostile": {"count": 1, "request_type": "012", "payload": "billion_laughs"}},
                                   {"hostile": {"count": 1, "request_type": "012",
                                                "payload": "billion_laughs_result"}},
                                   {"hostile": {"count": 1, "request_type": "012", "payload": "huge"}}])
async def test_hostile_or_garbage_answer_is_a_protocol_error_that_needs_attention(bridgepay, fault):
    tx = await bridgepay.sale(5_000, settled=True)
    await bridgepay.faults(fault)
    refund = await bridgepay.refund(tx, 800)
    assert (refund["status"], refund["stage"], refund["failure_code"]) == (
        "requires_attention", "outcome_unknown", "processor_protocol_error")
    assert refund["attempts"] == 1  # never resent blindly


async def test_bridgepay_accepts_only_dollars(bridgepay):
    resp = await bridgepay.api.post("/v1/transactions", {"processor": "bridgepay", "psp_reference": "123",
                                                         "invoice_id": "INV-EUR", "amount": 100, "currency": "EUR"})
    assert resp.status == 422 and (await resp.json())["code"] == "currency_not_supported"
