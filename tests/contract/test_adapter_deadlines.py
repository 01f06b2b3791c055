"""Every HTTP adapter gives up on a call at its whole-call deadline (`timeout_seconds`), not only
when one read stalls: a processor trickling its answer a byte at a time must not hold a call, and
with it a refund's lease, for longer than the lease was sized for."""

from __future__ import annotations

import asyncio
import time
from typing import AsyncIterator, Callable

import pytest
from aiohttp import web

from adapters.base import OutcomeUnknownError, ProcessorAdapter, RefundRequest, TransientProcessorError
from adapters.bridgepay import BridgePayAdapter
from adapters.simkit import serve_on_loopback
from gateway.settings import BridgePayProcessor, StripeProcessor
from adapters.stripe import StripeAdapter

DEADLINE = 0.5
TRICKLE_SECONDS = 5.0  # how long the server would go on answering, one byte every 0.1 s


async def _trickle(request: web.Request) -> web.StreamResponse:
    await request.read()
    response = web.StreamResponse(status=200, headers={"Content-Type": "text/xml; charset=utf-8"})
    await response.prepare(request)
    try:
        for _ in range(int(TRICKLE_SECONDS / 0.1)):
            await response.write(b" ")
            await asyncio.sleep(0.1)  # each read well within the per-read timeout
    except ConnectionError:
        pass
    return response


@pytest.fixture
async def trickling_url() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", _trickle)
    async with serve_on_loopback(app) as url:
        yield url


def _stripe(url: str) -> ProcessorAdapter:
    return StripeAdapter(StripeProcessor(id="stripe", kind="stripe", base_url=url, api_key="sk_test_deadline",
                                         timeout_seconds=DEADLINE))


def _bridgepay(url: str) -> ProcessorAdapter:
    return BridgePayAdapter(BridgePayProcessor(id="bridgepay", kind="bridgepay", base_url=url, username="u",
                                               password="p", merchant_code="1", merchant_account_code="2",
                                               timeout_seconds=DEADLINE))


REQUEST = RefundRequest(refund_id="rf_deadline", idempotency_key="rf_deadline", psp_reference="ch_deadline",
                        amount=1_000, currency="USD", invoice_id="INV-DEADLINE")


# A call that may move money is an unknown outcome when cut off; a read is simply asked again.
@pytest.mark.parametrize("make", [_stripe, _bridgepay], ids=["stripe", "bridgepay"])
@pytest.mark.parametrize("call, error", [("refund", OutcomeUnknownError), ("lookup", TransientProcessorError)])
async def test_a_trickling_answer_is_cut_off_at_the_deadline(trickling_url: str, make: Callable[[str], ProcessorAdapter],
                                                             call: str, error: type[Exception]):
    adapter = make(trickling_url)
    try:
        t0 = time.monotonic()
        with pytest.raises(error):
            await (adapter.refund(REQUEST) if call == "refund" else adapter.lookup_refund(REQUEST, None))
        assert time.monotonic() - t0 < DEADLINE + 1.0
    finally:
        await adapter.aclose()
