"""Nothing secret reaches the logs: run refunds through both processors (faults included) with
JSON logs captured, then scan them for API keys, webhook secrets, processor credentials and
card-number-like strings."""

from __future__ import annotations

import io
import re

import pytest

from gateway.logging import configure
from tests.conftest import WRITER_KEY
from tests.e2e.test_bridgepay_flow import BP, bridgepay  # noqa: F401  (fixture)
from tests.e2e.test_stripe_flow import SIM_KEY, WHSEC, stripe  # noqa: F401  (fixture)

CARD = "4111111111111111"
PAN = re.compile(r"(?<!\d)(?:\d[ -]?){12,18}\d(?!\d)")


def luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


@pytest.fixture
def captured():
    stream = io.StringIO()
    configure("json", "debug", stream=stream)
    yield stream
    configure("console", "warning")


def assert_clean(text: str) -> None:
    for secret in (WRITER_KEY, SIM_KEY, WHSEC, BP["password"], CARD):
        assert secret not in text, f"{secret[:6]}... reached the logs"
    cards = [m for m in PAN.findall(text) if luhn(re.sub(r"\D", "", m))]
    assert cards == [], cards


async def test_stripe_refunds_with_faults_log_no_secret(captured, stripe):  # noqa: F811
    await stripe.charge(5_000, invoice_id="INV-LOG")
    tx = await stripe.transaction_for("INV-LOG")
    await stripe.faults({"api_error": {"count": 1, "path": "/v1/refunds", "method": "POST"}})
    resp = await stripe.api.post("/v1/refunds", {"invoice_id": "INV-LOG", "transaction_id": tx["id"], "amount": 500,
                                                 "currency": "EUR", "metadata": {"note": f"card {CARD}"}})
    assert resp.status == 201
    await stripe.api.post("/v1/webhooks/stripe", data=b'{"id": "x"}', key=None,
                          headers={"Content-Type": "application/json", "Stripe-Signature": "t=1,v1=00"})
    await stripe.settled()
    text = captured.getvalue()
    assert "refund_state_changed" in text and "webhook_processed" in text and "webhook_rejected" in text
    assert_clean(text)


async def test_bridgepay_refunds_with_faults_log_no_secret(captured, bridgepay):  # noqa: F811
    tx = await bridgepay.sale(5_000, settled=True)
    await bridgepay.faults({"execute_then_drop": {"count": 1, "request_type": "012"}})
    refund = await bridgepay.refund(tx, 1_000)
    assert refund["status"] == "succeeded"
    text = captured.getvalue()
    assert "refund_state_changed" in text
    assert_clean(text)
