"""Adapters send the refund's request id as X-Request-ID on every HTTP request they make for it
(refund and look-up), read from the request object, never from global state; faked by URL with respx."""

from __future__ import annotations

import contextlib

import httpx
import pytest
import respx
from pydantic import SecretStr

from adapters.base import ProcessorError, RefundRequest
from adapters.bridgepay import BridgePayAdapter
from adapters.stripe import StripeAdapter
from gateway.settings import BridgePayProcessor, StripeProcessor

STRIPE_URL, BRIDGEPAY_URL = "https://stripe.test", "https://bridgepay.test"


def make_request(request_id: str | None) -> RefundRequest:
    return RefundRequest(refund_id="rf_01HZREQID", idempotency_key="rf_01HZREQID", psp_reference="ch_3PqRstReqId",
                         amount=2_500, currency="USD", invoice_id="INV-REQ-1", request_id=request_id)


async def calls_of(adapter, request: RefundRequest) -> None:
    with contextlib.suppress(ProcessorError):  # the answers are 503s: only what was sent matters
        await adapter.refund(request)
    with contextlib.suppress(ProcessorError):
        await adapter.lookup_refund(request, None)
    with contextlib.suppress(ProcessorError):
        await adapter.lookup_refund(request, "re_known")


@pytest.fixture
def router():
    with respx.mock(assert_all_called=False) as mock:
        mock.route(host="stripe.test").mock(return_value=httpx.Response(503))
        mock.route(host="bridgepay.test").mock(return_value=httpx.Response(503))
        yield mock


def stripe(router: respx.Router) -> StripeAdapter:
    return StripeAdapter(StripeProcessor(id="stripe", kind="stripe", base_url=STRIPE_URL,
                                         api_key=SecretStr("sk_test_request_id_0123456789")),
                         transport=httpx.MockTransport(router.async_handler))


def bridgepay(router: respx.Router) -> BridgePayAdapter:
    return BridgePayAdapter(BridgePayProcessor(id="bridgepay", kind="bridgepay", base_url=BRIDGEPAY_URL,
                                               username="bp_user", password=SecretStr("bp-Secret-Pa55"),
                                               merchant_code="1", merchant_account_code="2"),
                            transport=httpx.MockTransport(router.async_handler))


@pytest.mark.parametrize("build", [stripe, bridgepay])
async def test_every_processor_request_carries_the_refunds_request_id(router, build):
    adapter = build(router)
    try:
        await calls_of(adapter, make_request("req-from-billing-7"))
    finally:
        await adapter.aclose()
    sent = [call.request for call in router.calls]
    assert len(sent) >= 2  # a refund and at least one look-up
    assert {r.headers.get("X-Request-ID") for r in sent} == {"req-from-billing-7"}


@pytest.mark.parametrize("build", [stripe, bridgepay])
async def test_without_a_request_id_no_header_is_made_up(router, build):
    adapter = build(router)
    try:
        await calls_of(adapter, make_request(None))
    finally:
        await adapter.aclose()
    assert router.calls and all("X-Request-ID" not in call.request.headers for call in router.calls)
