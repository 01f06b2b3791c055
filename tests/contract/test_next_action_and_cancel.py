"""What each adapter says the billing core can do after a decline or a stuck refund (its
next-action table), and cancelling a Stripe refund that waits for the customer (requires_action).
Processors are faked by URL: the simulators on loopback, respx for answers they cannot give."""

from __future__ import annotations

import base64
import uuid
from typing import AsyncIterator

import httpx
import orjson
import pytest
import respx

from adapters.base import (
    CancelRefusedError,
    OutcomeUnknownError,
    ProcessorProtocolError,
    RefundResult,
    TransientProcessorError,
)
from adapters.bridgepay import BridgePayAdapter
from adapters.bridgepay import transformers as bridgepay
from adapters.bridgepay_sim import running_simulator as running_bridgepay_simulator
from adapters.mock import MockAdapter
from adapters.mock.client import NEXT_ACTIONS as MOCK_NEXT_ACTIONS
from adapters.stripe import StripeAdapter
from adapters.stripe import transformers as stripe
from adapters.stripe_sim import SimConfig
from adapters.stripe_sim.testing import RunningSimulator, running_simulator
from adapters.stripe_sim.world import FAILURE_REASONS, RefundBehaviour
from gateway.domain.refunds import NextAction, Outcome
from gateway.settings import BridgePayProcessor, StripeProcessor
from tests.contract.test_adapter_contract import BRIDGEPAY_SIM, refund_request

RETRY, OFFLINE, SUPPORT = NextAction.RETRY, NextAction.REFUND_OFFLINE, NextAction.CONTACT_SUPPORT
STRIPE_KEY = "sk_test_next_action_0123"
FAKE_URL = "https://processor.test"


# --- Stripe, at the simulator -----------------------------------------------------------------------

class Stripe:
    """The Stripe-like simulator and an adapter pointed at it, with the few moves the tests need."""

    def __init__(self, running: RunningSimulator, adapter: StripeAdapter, control: httpx.AsyncClient):
        self.running, self.adapter, self.control = running, adapter, control
        self.world = running.sim.world

    def charge(self, refunds: str = "succeeded", **behaviour) -> str:
        """A new 100.00 EUR charge; `refunds` is what the next refunds do at Stripe."""
        self.running.sim.behaviour = RefundBehaviour(status=refunds, **behaviour)
        return self.world.create_charge(10_000, "eur", {}, None)["id"]

    async def charge_state(self, charge_id: str) -> dict:
        state = (await self.control.get("/_sim/state")).json()
        [charge] = [c for c in state["charges"] if c["id"] == charge_id]
        return charge

    def events_of(self, psp_refund_id: str) -> list[dict]:
        return [e for e in self.world.events.values() if e["data"]["object"]["id"] == psp_refund_id]

    async def requiring_action(self, amount: int = 4_000) -> tuple[str, RefundResult]:
        """A refund moved from pending to requires_action through the control endpoint."""
        charge_id = self.charge("pending")
        request = refund_request(amount, psp_reference=charge_id)
        result = await self.adapter.refund(request)
        assert result.outcome is Outcome.PENDING
        resp = await self.control.post(f"/_sim/refunds/{result.psp_refund_id}/require_action")
        assert resp.status_code == 200, resp.text
        return charge_id, result


@pytest.fixture
async def sim() -> AsyncIterator[Stripe]:
    async with running_simulator(SimConfig(api_key=STRIPE_KEY, seed=5)) as running:
        adapter = StripeAdapter(StripeProcessor(id="stripe", kind="stripe", base_url=running.url, api_key=STRIPE_KEY,
                                                timeout_seconds=0.5))
        async with httpx.AsyncClient(base_url=running.url, timeout=5) as control:
            yield Stripe(running, adapter, control)
        await adapter.aclose()


STRIPE_FAILURES = {
    "lost_or_stolen_card": OFFLINE,
    "expired_or_canceled_card": OFFLINE,
    "declined": OFFLINE,
    "insufficient_funds": RETRY,
    "charge_for_pending_refund_disputed": SUPPORT,
    "merchant_request": SUPPORT,
    "unknown": SUPPORT,
}


def test_stripe_table_names_every_failure_reason_the_simulator_can_produce():
    assert set(STRIPE_FAILURES) == set(FAILURE_REASONS)
    assert set(FAILURE_REASONS) <= set(stripe.NEXT_ACTIONS)


@pytest.mark.parametrize(("reason", "action"), STRIPE_FAILURES.items(), ids=STRIPE_FAILURES.keys())
async def test_failed_stripe_refund_carries_the_next_action_of_its_failure_reason(sim, reason, action):
    request = refund_request(1_050, psp_reference=sim.charge("failed", failure_reason=reason))

    result = await sim.adapter.refund(request)
    found = await sim.adapter.lookup_refund(request, result.psp_refund_id)
    [event] = [e for e in sim.events_of(result.psp_refund_id) if e["type"] == "refund.failed"]
    [snapshot] = sim.adapter.parse_webhook_body(orjson.dumps(event)).refunds

    assert (result.outcome, result.decline_code, result.next_action) == (Outcome.DECLINED, reason, action)
    assert found is not None and found.next_action is action
    assert (snapshot.outcome, snapshot.next_action, snapshot.result().next_action) == (Outcome.DECLINED, action, action)


async def test_stripe_refund_over_the_unrefunded_amount_needs_support(sim):
    result = await sim.adapter.refund(refund_request(10_001, psp_reference=sim.charge()))
    assert (result.outcome, result.decline_code, result.next_action) == (Outcome.DECLINED, "amount_too_large", SUPPORT)


async def test_stripe_refund_of_a_charge_already_refunded_needs_support(sim):
    charge_id = sim.charge()
    assert (await sim.adapter.refund(refund_request(10_000, psp_reference=charge_id))).outcome is Outcome.SUCCEEDED
    result = await sim.adapter.refund(refund_request(100, psp_reference=charge_id))
    assert (result.decline_code, result.next_action) == ("charge_already_refunded", SUPPORT)


async def test_succeeded_and_pending_stripe_refunds_carry_no_next_action(sim):
    assert (await sim.adapter.refund(refund_request(100, psp_reference=sim.charge()))).next_action is None
    assert (await sim.adapter.refund(refund_request(100, psp_reference=sim.charge("pending")))).next_action is None


# --- Stripe answers the simulator does not give ---------------------------------------------------

@pytest.fixture
def stripe_api() -> respx.Router:
    return respx.Router(base_url=FAKE_URL, assert_all_called=False)


@pytest.fixture
async def faked_stripe(stripe_api) -> AsyncIterator[StripeAdapter]:
    adapter = StripeAdapter(StripeProcessor(id="stripe", kind="stripe", base_url=FAKE_URL, api_key=STRIPE_KEY,
                                            timeout_seconds=2), transport=httpx.MockTransport(stripe_api.async_handler))
    yield adapter
    await adapter.aclose()


def stripe_error(etype: str, code: str | None = None, message: str = "Stripe says no") -> dict:
    return {"error": {"type": etype, "message": message, **({"code": code} if code else {})}}


def stripe_refund(status: str, id: str = "re_fake_1", **extra) -> dict:
    return {"id": id, "object": "refund", "amount": 1_050, "currency": "eur", "charge": "ch_fake", "status": status,
            "metadata": {"refund_id": "rf_fake"}, **extra}


STRIPE_REFUSALS = {
    "charge_expired_for_refund": (400, "invalid_request_error", OFFLINE),
    "balance_insufficient": (400, "invalid_request_error", RETRY),
    "charge_disputed": (400, "invalid_request_error", SUPPORT),
    "amount_too_large": (400, "invalid_request_error", SUPPORT),
    "charge_already_refunded": (402, "card_error", SUPPORT),
    "a_code_nobody_knows": (400, "invalid_request_error", SUPPORT),
}


@pytest.mark.parametrize(("code", "http_status", "etype", "action"),
                         [(code, *spec) for code, spec in STRIPE_REFUSALS.items()], ids=STRIPE_REFUSALS.keys())
async def test_refused_stripe_refund_carries_the_next_action_of_its_error_code(faked_stripe, stripe_api, code,
                                                                               http_status, etype, action):
    stripe_api.post("/v1/refunds").respond(http_status, json=stripe_error(etype, code))
    result = await faked_stripe.refund(refund_request(1_050))
    assert (result.outcome, result.decline_code, result.next_action) == (Outcome.DECLINED, code, action)


async def test_unknown_stripe_refund_status_needs_support(faked_stripe, stripe_api):
    stripe_api.post("/v1/refunds").respond(200, json=stripe_refund("teleported"))
    result = await faked_stripe.refund(refund_request(1_050))
    assert (result.outcome, result.processor_code, result.next_action) == \
        (Outcome.NEEDS_ATTENTION, "teleported", SUPPORT)


# --- Stripe's requires_action ----------------------------------------------------------------------

async def test_refund_made_by_the_requires_action_fault_asks_for_a_refund_offline(sim):
    charge_id = sim.charge()
    resp = await sim.control.post("/_sim/faults", json={"refund_requires_action": {"count": 1}})
    assert resp.status_code == 200 and resp.json()["refund_requires_action"]["count"] == 1
    request = refund_request(4_000, psp_reference=charge_id)

    result = await sim.adapter.refund(request)

    assert (result.outcome, result.processor_code, result.decline_code, result.next_action) == \
        (Outcome.NEEDS_ATTENTION, "requires_action", "requires_action", OFFLINE)
    assert "customer" in result.message and f"POST /v1/refunds/{request.refund_id}/cancel" in result.message
    assert (await sim.charge_state(charge_id))["amount_refunded"] == 4_000  # held until canceled
    assert (await sim.adapter.refund(refund_request(100, psp_reference=charge_id))).outcome is Outcome.SUCCEEDED


async def test_requires_action_refund_behaviour_makes_every_new_refund_wait(sim):
    result = await sim.adapter.refund(refund_request(100, psp_reference=sim.charge("requires_action")))
    assert (result.outcome, result.next_action) == (Outcome.NEEDS_ATTENTION, OFFLINE)


async def test_pending_refund_moved_to_requires_action_is_told_by_webhooks_and_lookup(sim):
    charge_id, pending = await sim.requiring_action()
    request = refund_request(4_000, psp_reference=charge_id)

    updates = [e for e in sim.events_of(pending.psp_refund_id) if e["type"] in ("refund.updated",
                                                                                 "charge.refund.updated")]
    snapshots = [sim.adapter.parse_webhook_body(orjson.dumps(e)).refunds[0] for e in updates]
    found = await sim.adapter.lookup_refund(request, pending.psp_refund_id)

    assert [(e["type"], e["data"]["previous_attributes"]["status"]) for e in updates] == \
        [("refund.updated", "pending"), ("charge.refund.updated", "pending")]
    assert {(s.outcome, s.decline_code, s.next_action) for s in snapshots} == \
        {(Outcome.NEEDS_ATTENTION, "requires_action", OFFLINE)}
    assert found is not None and (found.outcome, found.next_action) == (Outcome.NEEDS_ATTENTION, OFFLINE)


async def test_only_a_pending_refund_can_be_moved_to_requires_action(sim):
    succeeded = await sim.adapter.refund(refund_request(100, psp_reference=sim.charge()))
    resp = await sim.control.post(f"/_sim/refunds/{succeeded.psp_refund_id}/require_action")
    assert resp.status_code == 400 and "succeeded" in resp.json()["error"]["message"]
    resp = await sim.control.post("/_sim/refunds/re_nobody/require_action")
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "resource_missing"


# --- Stripe cancel -------------------------------------------------------------------------------------

def test_only_stripe_declares_that_it_cancels_refunds():
    assert StripeAdapter.capabilities.cancel is True
    assert BridgePayAdapter.capabilities.cancel is False
    assert MockAdapter("mock").capabilities.cancel is False


async def test_cancel_of_a_requires_action_refund_releases_its_amount(sim):
    charge_id, pending = await sim.requiring_action(4_000)
    request = refund_request(4_000, psp_reference=charge_id)
    assert (await sim.charge_state(charge_id))["amount_refunded"] == 4_000

    result = await sim.adapter.cancel_refund(request, pending.psp_refund_id)

    assert (result.outcome, result.psp_refund_id, result.next_action) == \
        (Outcome.CANCELED, pending.psp_refund_id, None)
    charge = await sim.charge_state(charge_id)
    assert (charge["amount_refunded"], charge["refunded"]) == (0, False)
    [listed] = charge["refunds"]["data"]
    assert (listed["status"], listed["failure_reason"]) == ("canceled", "merchant_request")
    [event] = [e for e in sim.events_of(pending.psp_refund_id)
               if e["type"] == "refund.updated" and e["data"]["object"]["status"] == "canceled"]
    assert sim.adapter.parse_webhook_body(orjson.dumps(event)).refunds[0].outcome is Outcome.CANCELED
    # The whole charge is refundable again.
    sim.running.sim.behaviour = RefundBehaviour()
    assert (await sim.adapter.refund(refund_request(10_000, psp_reference=charge_id))).outcome is Outcome.SUCCEEDED


@pytest.mark.parametrize("status", ["succeeded", "pending"])
async def test_cancel_of_a_refund_not_requiring_action_is_refused_and_changes_nothing(sim, status):
    charge_id = sim.charge(status)
    request = refund_request(2_500, psp_reference=charge_id)
    refund = await sim.adapter.refund(request)

    with pytest.raises(CancelRefusedError) as info:
        await sim.adapter.cancel_refund(request, refund.psp_refund_id)

    assert "Only refunds with a status of requires_action can be canceled" in str(info.value)
    assert info.value.code == "invalid_request_error"
    assert (await sim.charge_state(charge_id))["amount_refunded"] == 2_500
    assert sim.world.refund(refund.psp_refund_id)["status"] == status


async def test_cancel_of_a_refund_stripe_does_not_know_is_refused_as_resource_missing(sim):
    with pytest.raises(CancelRefusedError) as info:
        await sim.adapter.cancel_refund(refund_request(100, psp_reference=sim.charge()), "re_nobody_knows")
    assert info.value.code == "resource_missing"


async def test_cancel_whose_answer_was_lost_is_resent_and_answered_canceled(sim):
    charge_id, pending = await sim.requiring_action(4_000)
    request = refund_request(4_000, psp_reference=charge_id)
    sim.running.sim.faults.configure({"execute_then_drop": {"count": 1, "path": "/v1/refunds/", "method": "POST"}})

    with pytest.raises(OutcomeUnknownError):
        await sim.adapter.cancel_refund(request, pending.psp_refund_id)
    assert sim.world.refund(pending.psp_refund_id)["status"] == "canceled"

    assert (await sim.adapter.cancel_refund(request, pending.psp_refund_id)).outcome is Outcome.CANCELED
    assert (await sim.charge_state(charge_id))["amount_refunded"] == 0  # released once


async def test_cancel_posts_to_the_refunds_cancel_path_with_request_id_and_its_own_key(faked_stripe, stripe_api):
    route = stripe_api.post("/v1/refunds/re_fake_1/cancel").respond(200, json=stripe_refund("canceled"))
    request = refund_request(1_050, request_id="req-cancel-1")

    result = await faked_stripe.cancel_refund(request, "re_fake_1")

    assert result.outcome is Outcome.CANCELED
    [call] = route.calls
    assert call.request.headers["X-Request-ID"] == "req-cancel-1"
    assert call.request.headers["Idempotency-Key"] == f"{request.idempotency_key}:cancel"


CANCEL_FAULTS = {
    "500": (httpx.Response(500, json=stripe_error("api_error")), OutcomeUnknownError),
    "429": (httpx.Response(429, json=stripe_error("invalid_request_error", "rate_limit")), TransientProcessorError),
    "401": (httpx.Response(401, json=stripe_error("invalid_request_error")), ProcessorProtocolError),
    "402 card_error": (httpx.Response(402, json=stripe_error("card_error", "card_declined")), ProcessorProtocolError),
    "400 idempotency_error": (httpx.Response(400, json=stripe_error("idempotency_error")), ProcessorProtocolError),
    "200 not a refund": (httpx.Response(200, content=b"<html>"), ProcessorProtocolError),
    "connection refused": (httpx.ConnectError("refused"), TransientProcessorError),
    "read timeout": (httpx.ReadTimeout("timed out"), OutcomeUnknownError),
}


@pytest.mark.parametrize(("reply", "error"), CANCEL_FAULTS.values(), ids=CANCEL_FAULTS.keys())
async def test_cancel_faults_map_as_refund_faults_do_never_to_a_refusal(faked_stripe, stripe_api, reply, error):
    route = stripe_api.post("/v1/refunds/re_fake_1/cancel")
    route.mock(side_effect=reply) if isinstance(reply, Exception) else route.mock(return_value=reply)
    with pytest.raises(error) as info:
        await faked_stripe.cancel_refund(refund_request(1_050), "re_fake_1")
    assert not isinstance(info.value, CancelRefusedError)


async def test_cancel_answered_with_a_refund_still_requiring_action_returns_it_as_it_is(faked_stripe, stripe_api):
    stripe_api.post("/v1/refunds/re_fake_1/cancel").respond(200, json=stripe_refund("requires_action"))
    result = await faked_stripe.cancel_refund(refund_request(1_050), "re_fake_1")
    assert (result.outcome, result.next_action) == (Outcome.NEEDS_ATTENTION, OFFLINE)


# --- BridgePay ----------------------------------------------------------------------------------------

@pytest.fixture
async def bridgepay_sim() -> AsyncIterator[tuple[BridgePayAdapter, object]]:
    """The BridgePay-like simulator with its sandbox amounts on (1-499 cents: denied by the bank)."""
    async with running_bridgepay_simulator(BRIDGEPAY_SIM) as running:
        adapter = BridgePayAdapter(BridgePayProcessor(
            id="bridgepay", kind="bridgepay", base_url=running.url, username=BRIDGEPAY_SIM.username,
            password=BRIDGEPAY_SIM.password, merchant_code=BRIDGEPAY_SIM.merchant_code,
            merchant_account_code=BRIDGEPAY_SIM.merchant_account_code, timeout_seconds=2))
        yield adapter, running.sim
        await adapter.aclose()


def sale(sim, *, settled: bool = True) -> str:
    return sim.world.create_sale(10_000, invoice_num=f"INV-{uuid.uuid4().hex[:8]}", transaction_id="",
                                 authorization_code=sim.new_authorization_code(), card_last4="1111",
                                 settled=settled).gateway_trans_id


def test_bridgepay_table_names_every_code_the_adapter_declines_with():
    assert set(bridgepay.DECLINES) | set(bridgepay.DECLINE_MESSAGES) <= set(bridgepay.NEXT_ACTIONS)
    assert bridgepay.NEXT_ACTIONS["30036"] is bridgepay.NEXT_ACTIONS["D09"] is SUPPORT  # duplicates


async def test_bridgepay_refund_denied_by_the_bank_is_refunded_offline(bridgepay_sim):
    adapter, sim = bridgepay_sim
    result = await adapter.refund(refund_request(300, psp_reference=sale(sim), currency="USD"))
    assert (result.outcome, result.processor_code, result.next_action) == (Outcome.DECLINED, "30032", OFFLINE)


async def test_bridgepay_refund_over_the_remaining_amount_needs_support(bridgepay_sim):
    adapter, sim = bridgepay_sim
    result = await adapter.refund(refund_request(20_000, psp_reference=sale(sim), currency="USD"))
    assert (result.outcome, result.processor_code, result.next_action) == (Outcome.DECLINED, "30026", SUPPORT)


async def test_second_void_of_an_unsettled_bridgepay_sale_is_refunded_offline(bridgepay_sim):
    adapter, sim = bridgepay_sim
    reference = sale(sim, settled=False)
    assert (await adapter.refund(refund_request(1_000, psp_reference=reference, currency="USD"))).outcome \
        is Outcome.SUCCEEDED
    result = await adapter.refund(refund_request(1_000, psp_reference=reference, currency="USD"))
    assert (result.outcome, result.processor_code, result.next_action) == (Outcome.DECLINED, "10042", OFFLINE)


async def test_bridgepay_refund_of_a_sale_it_does_not_know_needs_support(bridgepay_sim):
    adapter, _ = bridgepay_sim
    result = await adapter.refund(refund_request(1_000, psp_reference="999999999", currency="USD"))
    assert (result.outcome, result.processor_code, result.next_action) == (Outcome.DECLINED, "10055", SUPPORT)


async def test_bridgepay_refund_in_a_currency_it_does_not_take_is_refunded_offline(bridgepay_sim):
    adapter, sim = bridgepay_sim
    result = await adapter.refund(refund_request(1_000, psp_reference=sale(sim), currency="EUR"))
    assert (result.outcome, result.decline_code, result.next_action) == \
        (Outcome.DECLINED, "currency_not_supported", OFFLINE)


async def test_bridgepay_approval_with_a_message_nobody_knows_needs_support(bridgepay_sim):
    adapter, sim = bridgepay_sim
    sim.faults.configure({"unknown_code": {"count": 1, "request_type": "012"}})
    result = await adapter.refund(refund_request(1_000, psp_reference=sale(sim), currency="USD"))
    assert (result.outcome, result.processor_code, result.next_action) == (Outcome.NEEDS_ATTENTION, "Z99", SUPPORT)


def bridgepay_answer(code: str, gateway_message: str | None) -> httpx.Response:
    """A decoded 012 refusal in BridgeComm's envelope: ProcessRequestResult holds it base64-encoded."""
    message = f"<GatewayMessage>{gateway_message}</GatewayMessage>" if gateway_message else ""
    inner = (f"<VoidRefund><TransactionID>rf_fake</TransactionID><RequestType>012</RequestType>"
             f"<ResponseCode>{code}</ResponseCode><ResponseDescription>Refused</ResponseDescription>"
             f"<responseMessage><GatewayResult>{code}</GatewayResult>{message}</responseMessage></VoidRefund>")
    body = (f'<s:Envelope xmlns:s="{bridgepay.SOAP_NS}"><s:Body><ProcessRequestResponse xmlns="{bridgepay.PROCESS_NS}">'
            f"<ProcessRequestResult>{base64.b64encode(inner.encode()).decode()}</ProcessRequestResult>"
            "</ProcessRequestResponse></s:Body></s:Envelope>")
    return httpx.Response(200, content=body.encode(), headers={"Content-Type": "text/xml; charset=utf-8"})


BRIDGEPAY_REFUSALS = {
    "30027 daily refund limit": ("30027", None, Outcome.DECLINED, RETRY),
    "30047 refund not processed": ("30047", None, Outcome.DECLINED, RETRY),
    "10033 invalid void": ("10033", None, Outcome.DECLINED, OFFLINE),
    "800011 not found": ("800011", None, Outcome.DECLINED, SUPPORT),
    "D01 under a code of its own": ("30050", "D01 - Declined", Outcome.DECLINED, OFFLINE),
    "E08 refunds not allowed": ("30050", "E08 - Refunds Not Allowed", Outcome.DECLINED, SUPPORT),
    "a code nobody knows": ("30055", None, Outcome.NEEDS_ATTENTION, SUPPORT),
}


@pytest.mark.parametrize(("code", "gateway_message", "outcome", "action"), BRIDGEPAY_REFUSALS.values(),
                         ids=BRIDGEPAY_REFUSALS.keys())
async def test_bridgepay_refusal_carries_the_next_action_of_its_code(code, gateway_message, outcome, action):
    router = respx.Router(base_url=FAKE_URL, assert_all_called=False)
    router.post(f"{FAKE_URL}/PaymentService/RequestHandler.svc").mock(
        return_value=bridgepay_answer(code, gateway_message))
    adapter = BridgePayAdapter(BridgePayProcessor(
        id="bridgepay", kind="bridgepay", base_url=FAKE_URL, username="u", password="p", merchant_code="1",
        merchant_account_code="2", timeout_seconds=2), transport=httpx.MockTransport(router.async_handler))
    try:
        result = await adapter.refund(refund_request(1_000, psp_reference="117154783", currency="USD"))
    finally:
        await adapter.aclose()
    assert (result.outcome, result.processor_code, result.next_action) == (outcome, code, action)


# --- the mock processor ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("amount", "action"), [(4001, OFFLINE), (4002, RETRY), (8001, SUPPORT)],
                         ids=["4001 expired_or_canceled_card", "4002 insufficient_funds", "8001 unknown status"])
async def test_mock_scenario_carries_its_next_action(amount, action):
    result = await MockAdapter("mock").refund(refund_request(amount))
    assert result.next_action is action
    assert MOCK_NEXT_ACTIONS[result.processor_code] is action


async def test_mock_pending_refund_that_is_declined_later_is_refunded_offline():
    mock = MockAdapter("mock", pending_settle_seconds=0.0)
    request = refund_request(7002)
    await mock.refund(request)
    found = await mock.lookup_refund(request, None)
    assert (found.outcome, found.decline_code, found.next_action) == (Outcome.DECLINED, "declined", OFFLINE)


@pytest.mark.parametrize(("status", "action"), [("succeeded", None), ("needs_attention", SUPPORT)])
def test_mock_webhook_snapshot_carries_a_next_action_only_when_something_is_wrong(status, action):
    body = orjson.dumps({"id": "evt_1", "type": "refund.updated", "refund": {
        "id": "mre_1", "refund_id": "rf_1", "payment": "ch_1", "amount": 100, "currency": "EUR", "status": status}})
    [snapshot] = MockAdapter("mock").parse_webhook_body(body).refunds
    assert snapshot.next_action is action
