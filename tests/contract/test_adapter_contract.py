"""The contract every processor adapter passes, then the mock processor's sandbox scenarios.

To put another adapter under contract, write one more case factory (an async context manager
yielding an AdapterCase, its processor faked by URL with respx or a local simulator) and add it
to CASES; every contract test then runs against it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import time
import uuid
from dataclasses import dataclass
from typing import AsyncIterator, Callable

import orjson
import pytest

from adapters.base import (
    Capabilities,
    CredentialCheck,
    CredentialStatus,
    OutcomeUnknownError,
    ProcessorAdapter,
    ProcessorProtocolError,
    RefundRequest,
    RefundResult,
    TransientProcessorError,
    WebhookEvent,
    WebhookPayloadError,
    WebhookVerificationError,
)
from adapters.bridgepay import BridgePayAdapter
from adapters.bridgepay_sim import SimConfig as BridgePaySimConfig
from adapters.bridgepay_sim import running_simulator as running_bridgepay_simulator
from adapters.mock import SCENARIOS, MockAdapter
from adapters.stripe import StripeAdapter
from adapters.stripe.transformers import signature_header as stripe_signature_header
from adapters.stripe_sim import SimConfig
from adapters.stripe_sim.testing import running_simulator
from adapters.stripe_sim.world import RefundBehaviour
from gateway.settings import BridgePayProcessor, StripeProcessor
from tests.processes import free_port
from gateway.domain.refunds import NextAction, Outcome


def refund_request(amount: int, **overrides) -> RefundRequest:
    """A refund request with a fresh id, idempotency key and original payment."""
    refund_id = f"rf_{uuid.uuid4().hex}"
    values = dict(refund_id=refund_id, idempotency_key=refund_id, psp_reference=f"ch_{uuid.uuid4().hex[:16]}",
                  amount=amount, currency="EUR", invoice_id=f"INV-{uuid.uuid4().hex[:8]}")
    values.update(overrides)
    return RefundRequest(**values)


@dataclass
class AdapterCase:
    """One adapter under contract, with the requests that drive its processor (real or faked)."""

    name: str
    adapter: ProcessorAdapter
    succeeding: Callable[[], RefundRequest]
    declining: Callable[[], RefundRequest]
    decline_processor_code: str  # the raw code the processor sends with `declining`
    decline_next_action: NextAction  # what the adapter's table says to do about that code
    outcome_unknown: Callable[[], RefundRequest]
    unknown_was_executed: bool  # whether the processor really carried out `outcome_unknown`
    signed_webhook: Callable[[str, str], tuple[dict[str, str], bytes]]  # (psp_refund_id, refund_id) -> signed
    executions: Callable[[RefundRequest], int] | None = None  # times the processor executed it, where observable
    # The same account with a wrong secret, and pointed at a port nothing listens on; None for a
    # processor without credentials or network.
    wrong_credentials: Callable[[], ProcessorAdapter] | None = None
    unreachable: Callable[[], ProcessorAdapter] | None = None


WEBHOOK_SECRET = "whsec_mock_contract_secret"


def mock_signed_webhook(secret: str = WEBHOOK_SECRET, status: str = "succeeded"):
    def sign(psp_refund_id: str, refund_id: str) -> tuple[dict[str, str], bytes]:
        body = orjson.dumps({"id": f"evt_{uuid.uuid4().hex[:12]}", "type": "refund.updated",
                             "refund": {"id": psp_refund_id, "refund_id": refund_id, "payment": "ch_contract",
                                        "amount": 1_050, "currency": "EUR", "status": status}})
        return {"Mock-Signature": hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()}, body
    return sign


@contextlib.asynccontextmanager
async def mock_case() -> AsyncIterator[AdapterCase]:
    adapter = MockAdapter("mock", pending_settle_seconds=0.0, webhook_secrets=[WEBHOOK_SECRET])
    try:
        yield AdapterCase(
            name="mock",
            adapter=adapter,
            succeeding=lambda: refund_request(1_050),
            declining=lambda: refund_request(4002),
            decline_processor_code="insufficient_funds",
            decline_next_action=NextAction.RETRY,
            outcome_unknown=lambda: refund_request(6001),
            unknown_was_executed=True,
            signed_webhook=mock_signed_webhook(),
            executions=lambda req: sum(1 for r in adapter.executed if r.psp_reference == req.psp_reference),
        )
    finally:
        await adapter.aclose()


STRIPE_KEY, STRIPE_WHSEC = "sk_test_contract_0123", "whsec_stripe_contract_0123"


@contextlib.asynccontextmanager
async def stripe_case() -> AsyncIterator[AdapterCase]:
    """The Stripe-like adapter against the Stripe-like simulator on a loopback port."""
    async with running_simulator(SimConfig(api_key=STRIPE_KEY, seed=11)) as sim:
        world = sim.sim.world
        def stripe_adapter(base_url: str = sim.url, api_key: str = STRIPE_KEY) -> StripeAdapter:
            return StripeAdapter(StripeProcessor(id="stripe", kind="stripe", base_url=base_url, api_key=api_key,
                                                 webhook_secrets=[STRIPE_WHSEC], timeout_seconds=0.3))

        adapter = stripe_adapter()

        def on_new_charge(amount: int, refunds: str = "succeeded") -> RefundRequest:
            sim.sim.behaviour = RefundBehaviour(status=refunds)  # what the next refunds do at Stripe
            charge = world.create_charge(10_000, "eur", {}, None)
            return refund_request(amount, psp_reference=charge["id"])

        def losing_the_answer() -> RefundRequest:
            sim.sim.faults.configure({"execute_then_drop": {"count": 1, "path": "/v1/refunds", "method": "POST"}})
            return on_new_charge(1_050)

        def signed_webhook(psp_refund_id: str, refund_id: str) -> tuple[dict[str, str], bytes]:
            body = orjson.dumps({"id": f"evt_{uuid.uuid4().hex[:12]}", "object": "event", "type": "refund.updated",
                                 "created": int(time.time()), "data": {"object": {
                                     "id": psp_refund_id, "object": "refund", "amount": 1_050, "currency": "eur",
                                     "charge": "ch_contract", "status": "succeeded",
                                     "metadata": {"refund_id": refund_id}}}})
            header = stripe_signature_header(body, [STRIPE_WHSEC.encode()], int(time.time()))
            return {"Stripe-Signature": header}, body

        try:
            yield AdapterCase(
                name="stripe",
                adapter=adapter,
                succeeding=lambda: on_new_charge(1_050),
                declining=lambda: on_new_charge(1_050, refunds="failed"),
                decline_processor_code="expired_or_canceled_card",
                decline_next_action=NextAction.REFUND_OFFLINE,
                outcome_unknown=losing_the_answer,
                unknown_was_executed=True,
                signed_webhook=signed_webhook,
                executions=lambda req: world.refund_executions[req.psp_reference],
                wrong_credentials=lambda: stripe_adapter(api_key="sk_test_not_the_right_key"),
                unreachable=lambda: stripe_adapter(base_url=f"http://127.0.0.1:{free_port()}"),
            )
        finally:
            await adapter.aclose()


BRIDGEPAY_SIM = BridgePaySimConfig(username="contract_user", password="contract_p&ss<word>",
                                   merchant_code="4001", merchant_account_code="4002", seed=13,
                                   sandbox_amounts=True)


@contextlib.asynccontextmanager
async def bridgepay_case() -> AsyncIterator[AdapterCase]:
    """The BridgePay-like adapter against the BridgePay-like simulator on a loopback port. Its sandbox
    amounts are on: a refund of 1-499 cents is denied by the bank (30032)."""
    async with running_bridgepay_simulator(BRIDGEPAY_SIM) as sim:
        world = sim.sim.world
        def bridgepay_adapter(base_url: str = sim.url, **overrides: str) -> BridgePayAdapter:
            return BridgePayAdapter(BridgePayProcessor(**{
                "id": "bridgepay", "kind": "bridgepay", "base_url": base_url, "username": BRIDGEPAY_SIM.username,
                "password": BRIDGEPAY_SIM.password, "merchant_code": BRIDGEPAY_SIM.merchant_code,
                "merchant_account_code": BRIDGEPAY_SIM.merchant_account_code, "timeout_seconds": 2, **overrides}))

        adapter = bridgepay_adapter()

        def on_new_settled_sale(amount: int) -> RefundRequest:
            # Settled, so that BridgePay refunds it (several partial refunds) rather than voiding it once.
            sale = world.create_sale(10_000, invoice_num=f"INV-{uuid.uuid4().hex[:8]}", transaction_id="",
                                     authorization_code=sim.sim.new_authorization_code(), card_last4="1111",
                                     settled=True)
            return refund_request(amount, psp_reference=sale.gateway_trans_id, currency="USD")

        def losing_the_answer() -> RefundRequest:
            sim.sim.faults.configure({"execute_then_drop": {"count": 1, "request_type": "012"}})
            return on_new_settled_sale(1_050)

        def unsigned_webhook(psp_refund_id: str, refund_id: str) -> tuple[dict[str, str], bytes]:
            # BridgePay sends no webhooks, so there is no signature to make: any body must be refused.
            body = orjson.dumps({"GatewayTransID": psp_refund_id, "InvoiceNum": refund_id})
            return {"SOAPAction": "webhook"}, body

        try:
            yield AdapterCase(
                name="bridgepay",
                adapter=adapter,
                succeeding=lambda: on_new_settled_sale(1_050),
                declining=lambda: on_new_settled_sale(300),
                decline_processor_code="30032",
                decline_next_action=NextAction.REFUND_OFFLINE,
                outcome_unknown=losing_the_answer,
                unknown_was_executed=True,
                signed_webhook=unsigned_webhook,
                executions=lambda req: world.refund_executions[req.psp_reference],
                wrong_credentials=lambda: bridgepay_adapter(password="not the password"),
                unreachable=lambda: bridgepay_adapter(base_url=f"http://127.0.0.1:{free_port()}"),
            )
        finally:
            await adapter.aclose()


CASES: dict[str, Callable[[], contextlib.AbstractAsyncContextManager[AdapterCase]]] = {
    "bridgepay": bridgepay_case,
    "mock": mock_case,
    "stripe": stripe_case,
}


@pytest.fixture(params=sorted(CASES))
async def adapter_case(request) -> AsyncIterator[AdapterCase]:
    async with CASES[request.param]() as case:
        yield case


# --- the contract -----------------------------------------------------------------------------

async def test_adapter_declares_its_id_kind_and_capabilities(adapter_case):
    adapter = adapter_case.adapter
    assert isinstance(adapter.capabilities, Capabilities)
    assert isinstance(adapter.id, str) and adapter.id
    assert isinstance(adapter.kind, str) and adapter.kind


async def test_successful_refund_returns_a_result_with_the_processors_refund_id(adapter_case):
    result = await adapter_case.adapter.refund(adapter_case.succeeding())
    assert isinstance(result, RefundResult)
    assert result.outcome is Outcome.SUCCEEDED
    assert result.psp_refund_id
    assert result.decline_code is None


async def test_declined_refund_is_a_value_with_the_processors_code_kept(adapter_case):
    result = await adapter_case.adapter.refund(adapter_case.declining())  # no exception
    assert isinstance(result, RefundResult)
    assert result.outcome is Outcome.DECLINED
    assert result.processor_code == adapter_case.decline_processor_code
    assert result.decline_code
    assert result.next_action is adapter_case.decline_next_action


async def test_lost_answer_raises_outcome_unknown_not_a_result(adapter_case):
    with pytest.raises(OutcomeUnknownError):
        await adapter_case.adapter.refund(adapter_case.outcome_unknown())


async def test_same_idempotency_key_sent_twice_executes_once(adapter_case):
    if not adapter_case.adapter.capabilities.idempotency_keys:
        pytest.skip(f"{adapter_case.name} does not deduplicate on our key")
    request = adapter_case.succeeding()
    first = await adapter_case.adapter.refund(request)
    second = await adapter_case.adapter.refund(request)
    assert second.outcome is first.outcome
    assert second.psp_refund_id == first.psp_refund_id
    if adapter_case.executions is not None:
        assert adapter_case.executions(request) == 1


async def test_different_idempotency_keys_execute_separately(adapter_case):
    first, second = adapter_case.succeeding(), adapter_case.succeeding()
    a = await adapter_case.adapter.refund(first)
    b = await adapter_case.adapter.refund(second)
    assert a.psp_refund_id != b.psp_refund_id
    if adapter_case.executions is not None:
        assert (adapter_case.executions(first), adapter_case.executions(second)) == (1, 1)


async def test_lookup_finds_a_refund_that_was_executed(adapter_case):
    if not adapter_case.adapter.capabilities.lookup:
        pytest.skip(f"{adapter_case.name} cannot look refunds up")
    request = adapter_case.succeeding()
    result = await adapter_case.adapter.refund(request)
    found = await adapter_case.adapter.lookup_refund(request, result.psp_refund_id)
    assert isinstance(found, RefundResult)
    assert found.outcome is result.outcome
    assert found.psp_refund_id == result.psp_refund_id


async def test_lookup_finds_a_declined_refund_as_declined(adapter_case):
    if not adapter_case.adapter.capabilities.lookup:
        pytest.skip(f"{adapter_case.name} cannot look refunds up")
    if not adapter_case.adapter.capabilities.idempotency_keys:
        # Without a key to replay, the gateway looks up only to learn whether a refund was carried
        # out before it resends; a decline left nothing to find (see the next test).
        pytest.skip(f"{adapter_case.name} keeps no refund record for a decline")
    request = adapter_case.declining()
    result = await adapter_case.adapter.refund(request)
    found = await adapter_case.adapter.lookup_refund(request, result.psp_refund_id)
    assert found is not None and found.outcome is Outcome.DECLINED


async def test_lookup_of_a_declined_refund_never_reports_it_carried_out(adapter_case):
    if not adapter_case.adapter.capabilities.lookup:
        pytest.skip(f"{adapter_case.name} cannot look refunds up")
    request = adapter_case.declining()
    result = await adapter_case.adapter.refund(request)
    found = await adapter_case.adapter.lookup_refund(request, result.psp_refund_id)
    assert found is None or found.outcome is Outcome.DECLINED


async def test_lookup_of_a_refund_never_sent_returns_none(adapter_case):
    if not adapter_case.adapter.capabilities.lookup:
        pytest.skip(f"{adapter_case.name} cannot look refunds up")
    assert await adapter_case.adapter.lookup_refund(adapter_case.succeeding(), None) is None


async def test_lookup_resolves_an_unknown_outcome(adapter_case):
    if not adapter_case.adapter.capabilities.lookup:
        pytest.skip(f"{adapter_case.name} cannot look refunds up")
    request = adapter_case.outcome_unknown()
    with pytest.raises(OutcomeUnknownError):
        await adapter_case.adapter.refund(request)
    found = await adapter_case.adapter.lookup_refund(request, None)
    if adapter_case.unknown_was_executed:
        assert isinstance(found, RefundResult) and found.outcome is Outcome.SUCCEEDED
    else:
        assert found is None


async def test_correctly_signed_webhook_is_parsed_into_events(adapter_case):
    if not adapter_case.adapter.capabilities.webhooks:
        pytest.skip(f"{adapter_case.name} sends no webhooks")
    headers, body = adapter_case.signed_webhook("psp_re_1", "rf_1")
    event = adapter_case.adapter.parse_webhook(headers, body)
    assert isinstance(event, WebhookEvent) and event.event_id
    [refund] = event.refunds
    assert (refund.psp_refund_id, refund.refund_id) == ("psp_re_1", "rf_1")
    assert isinstance(refund.result(), RefundResult)
    assert {"psp_re_1", "rf_1"} <= set(event.match_keys())


async def test_stored_webhook_body_is_parsed_again_to_the_same_event(adapter_case):
    if not adapter_case.adapter.capabilities.webhooks:
        pytest.skip(f"{adapter_case.name} sends no webhooks")
    headers, body = adapter_case.signed_webhook("psp_re_1", "rf_1")
    assert adapter_case.adapter.parse_webhook_body(body) == adapter_case.adapter.parse_webhook(headers, body)
    with pytest.raises(WebhookPayloadError):
        adapter_case.adapter.parse_webhook_body(b"[]")


async def test_webhook_whose_body_changed_after_signing_is_rejected(adapter_case):
    headers, body = adapter_case.signed_webhook("psp_re_1", "rf_1")
    tampered = body.replace(b"psp_re_1", b"psp_re_2")
    assert tampered != body
    with pytest.raises(WebhookVerificationError):
        adapter_case.adapter.parse_webhook(headers, tampered)


async def test_webhook_without_a_signature_is_rejected(adapter_case):
    _, body = adapter_case.signed_webhook("psp_re_1", "rf_1")
    with pytest.raises(WebhookVerificationError):
        adapter_case.adapter.parse_webhook({}, body)


async def test_webhook_with_a_garbage_signature_is_rejected(adapter_case):
    headers, body = adapter_case.signed_webhook("psp_re_1", "rf_1")
    forged = {name: "0" * 64 for name in headers}
    with pytest.raises(WebhookVerificationError):
        adapter_case.adapter.parse_webhook(forged, body)


async def test_credentials_check_accepts_the_accounts_own_credentials(adapter_case):
    check = await adapter_case.adapter.check_credentials()
    assert isinstance(check, CredentialCheck)
    expected = CredentialStatus.NOT_CHECKED if adapter_case.wrong_credentials is None else CredentialStatus.OK
    assert check.status is expected, check
    assert not check.failed


async def test_credentials_check_reports_wrong_credentials_as_rejected_without_repeating_them(adapter_case):
    if adapter_case.wrong_credentials is None:
        pytest.skip(f"{adapter_case.name} has no credentials")
    adapter = adapter_case.wrong_credentials()
    try:
        check = await adapter.check_credentials()
    finally:
        await adapter.aclose()
    assert check.status is CredentialStatus.REJECTED and check.failed, check
    assert "not_the_right_key" not in check.detail and "not the password" not in check.detail


async def test_credentials_check_reports_a_processor_nobody_answers_for_as_unreachable(adapter_case):
    if adapter_case.unreachable is None:
        pytest.skip(f"{adapter_case.name} is in-process")
    adapter = adapter_case.unreachable()
    try:
        check = await adapter.check_credentials()  # a value, not an exception
    finally:
        await adapter.aclose()
    assert check.status is CredentialStatus.UNREACHABLE and check.failed, check


async def test_aclose_completes_and_can_be_repeated(adapter_case):
    assert await adapter_case.adapter.aclose() is None
    assert await adapter_case.adapter.aclose() is None


# --- the mock processor's sandbox scenarios -------------------------------------------------------------

class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, now: float = 1_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def mock(clock) -> MockAdapter:
    return MockAdapter("mock", pending_settle_seconds=30.0, webhook_secrets=[WEBHOOK_SECRET], clock=clock)


TESTED_SCENARIOS = {4001, 4002, 5001, 5002, 5029, 6001, 6002, 7001, 7002, 8001, 8002}


def test_every_documented_mock_scenario_has_a_test():
    assert set(SCENARIOS) == TESTED_SCENARIOS


async def test_ordinary_amount_succeeds_at_once(mock):
    request = refund_request(1_234)
    result = await mock.refund(request)
    assert result == RefundResult(Outcome.SUCCEEDED, psp_refund_id=result.psp_refund_id, processor_code="succeeded")
    assert result.psp_refund_id.startswith("mre_")
    assert [(r.amount, r.psp_reference) for r in mock.executed] == [(1_234, request.psp_reference)]


@pytest.mark.parametrize(("amount", "code"), [(4001, "expired_or_canceled_card"), (4002, "insufficient_funds")])
async def test_decline_amount_is_declined_with_its_code(mock, amount, code):
    result = await mock.refund(refund_request(amount))
    assert result.outcome is Outcome.DECLINED
    assert (result.processor_code, result.decline_code) == (code, code)
    assert code in result.message
    assert len(mock.executed) == 1


async def test_declined_refund_resent_returns_the_same_decline_without_executing_again(mock):
    request = refund_request(4001)
    first = await mock.refund(request)
    assert await mock.refund(request) == first
    assert len(mock.executed) == 1


async def test_5001_fails_with_503_once_then_succeeds_on_the_resend(mock):
    request = refund_request(5001)
    with pytest.raises(TransientProcessorError) as info:
        await mock.refund(request)
    assert info.value.code == "503" and info.value.retry_after is None
    assert len(mock.executed) == 0
    result = await mock.refund(request)
    assert result.outcome is Outcome.SUCCEEDED
    assert len(mock.executed) == 1


async def test_5001_under_a_new_idempotency_key_fails_again(mock):
    with pytest.raises(TransientProcessorError):
        await mock.refund(refund_request(5001))
    with pytest.raises(TransientProcessorError):
        await mock.refund(refund_request(5001))


async def test_5002_fails_with_503_on_every_call_and_never_executes(mock):
    request = refund_request(5002)
    for _ in range(5):
        with pytest.raises(TransientProcessorError) as info:
            await mock.refund(request)
        assert info.value.code == "503"
    assert len(mock.executed) == 0
    assert await mock.lookup_refund(request, None) is None


async def test_5029_is_rate_limited_with_retry_after_once_then_succeeds(mock):
    request = refund_request(5029)
    with pytest.raises(TransientProcessorError) as info:
        await mock.refund(request)
    assert info.value.code == "429"
    assert info.value.retry_after is not None and info.value.retry_after > 0
    assert len(mock.executed) == 0
    assert (await mock.refund(request)).outcome is Outcome.SUCCEEDED
    assert len(mock.executed) == 1


async def test_6001_executes_then_loses_the_answer_and_a_lookup_finds_it_succeeded(mock):
    request = refund_request(6001)
    with pytest.raises(OutcomeUnknownError):
        await mock.refund(request)
    assert len(mock.executed) == 1
    found = await mock.lookup_refund(request, None)
    assert found is not None and found.outcome is Outcome.SUCCEEDED
    assert found.psp_refund_id == mock.executed[0].id


async def test_6001_resent_with_the_same_key_answers_succeeded_without_executing_again(mock):
    request = refund_request(6001)
    with pytest.raises(OutcomeUnknownError):
        await mock.refund(request)
    result = await mock.refund(request)
    assert result.outcome is Outcome.SUCCEEDED
    assert len(mock.executed) == 1


async def test_6002_times_out_before_executing_and_a_lookup_finds_nothing(mock):
    request = refund_request(6002)
    with pytest.raises(OutcomeUnknownError):
        await mock.refund(request)
    assert len(mock.executed) == 0
    assert await mock.lookup_refund(request, None) is None


async def test_7001_is_pending_until_the_settle_time_then_succeeded(mock, clock):
    request = refund_request(7001)
    result = await mock.refund(request)
    assert (result.outcome, result.processor_code) == (Outcome.PENDING, "pending")
    assert result.psp_refund_id
    clock.now += 29.9
    assert (await mock.lookup_refund(request, result.psp_refund_id)).outcome is Outcome.PENDING
    clock.now += 0.1
    settled = await mock.lookup_refund(request, result.psp_refund_id)
    assert settled.outcome is Outcome.SUCCEEDED
    assert settled.psp_refund_id == result.psp_refund_id


async def test_7002_is_pending_until_the_settle_time_then_declined(mock, clock):
    request = refund_request(7002)
    result = await mock.refund(request)
    assert result.outcome is Outcome.PENDING
    clock.now += 10
    assert (await mock.lookup_refund(request, None)).outcome is Outcome.PENDING
    clock.now += 25
    settled = await mock.lookup_refund(request, None)
    assert settled.outcome is Outcome.DECLINED
    assert settled.decline_code == "declined"


async def test_pending_refund_resent_after_settling_answers_with_the_final_outcome(mock, clock):
    request = refund_request(7001)
    await mock.refund(request)
    clock.now += 60
    assert (await mock.refund(request)).outcome is Outcome.SUCCEEDED
    assert len(mock.executed) == 1


async def test_8001_unknown_processor_status_needs_attention_never_success(mock):
    result = await mock.refund(refund_request(8001))
    assert result.outcome is Outcome.NEEDS_ATTENTION
    assert result.processor_code == "mystery_status"
    assert "mystery_status" in result.message


async def test_8002_garbage_answer_raises_protocol_error(mock):
    request = refund_request(8002)
    with pytest.raises(ProcessorProtocolError) as info:
        await mock.refund(request)
    assert info.value.code == "unparseable"
    assert len(mock.executed) == 0


async def test_mock_with_latency_answers_after_the_delay():
    mock = MockAdapter("slow", latency_seconds=0.05)
    started = time.monotonic()
    assert (await mock.refund(refund_request(100))).outcome is Outcome.SUCCEEDED
    assert time.monotonic() - started >= 0.045


async def test_concurrent_resends_of_one_key_execute_once(mock):
    request = refund_request(100)
    results = await asyncio.gather(*(mock.refund(request) for _ in range(10)))
    assert len({r.psp_refund_id for r in results}) == 1
    assert len(mock.executed) == 1


# --- mock webhooks ----------------------------------------------------------------------------

def test_mock_webhook_signed_with_the_secret_is_parsed(mock):
    headers, body = mock_signed_webhook(status="declined")("mre_00000001", "rf_1")
    event = mock.parse_webhook(headers, body)
    [refund] = event.refunds
    assert (event.type, refund.psp_refund_id, refund.refund_id) == ("refund.updated", "mre_00000001", "rf_1")
    assert refund.result() == RefundResult(Outcome.DECLINED, psp_refund_id="mre_00000001",
                                           processor_code="declined", next_action=NextAction.REFUND_OFFLINE)
    assert (refund.payment_references, refund.amount, refund.currency) == (["ch_contract"], 1_050, "EUR")


def test_mock_webhook_signed_with_a_previous_secret_is_accepted_during_rotation():
    mock = MockAdapter("mock", webhook_secrets=["whsec_new_secret", "whsec_old_secret"])
    headers, body = mock_signed_webhook(secret="whsec_old_secret")("mre_1", "rf_1")
    assert mock.parse_webhook(headers, body).refunds[0].refund_id == "rf_1"


def test_mock_webhook_signed_with_another_secret_is_rejected(mock):
    headers, body = mock_signed_webhook(secret="whsec_someone_else")("mre_1", "rf_1")
    with pytest.raises(WebhookVerificationError):
        mock.parse_webhook(headers, body)


def test_mock_without_webhook_secrets_rejects_every_webhook():
    mock = MockAdapter("mock")
    headers, body = mock_signed_webhook()("mre_1", "rf_1")
    with pytest.raises(WebhookVerificationError):
        mock.parse_webhook(headers, body)


@pytest.mark.parametrize("payload", [
    b"not json",
    b'{"id": "evt_1", "type": "refund.updated"}',
    b'{"id": "evt_1", "type": "refund.updated", "refund": {"id": "mre_1", "status": "teleported"}}',
    b'{"id": "evt_1", "type": "refund.updated", "refund": "mre_1"}',
], ids=["not json", "no refund", "unknown status", "refund not an object"])
def test_correctly_signed_but_malformed_mock_webhook_is_a_payload_error(mock, payload):
    headers = {"Mock-Signature": hmac.new(WEBHOOK_SECRET.encode(), payload, hashlib.sha256).hexdigest()}
    with pytest.raises(WebhookPayloadError):
        mock.parse_webhook(headers, payload)


async def test_mock_remembers_a_bounded_number_of_refunds(monkeypatch):
    import adapters.mock.client as mock_client

    monkeypatch.setattr(mock_client, "MEMORY", 3)
    mock = MockAdapter("mock")
    requests = [refund_request(1_000 + n) for n in range(5)]
    for request in requests:
        await mock.refund(request)
    assert len(mock.executed) == 3
    assert await mock.lookup_refund(requests[0], None) is None  # the oldest is forgotten
    assert (await mock.lookup_refund(requests[-1], None)).outcome is Outcome.SUCCEEDED
