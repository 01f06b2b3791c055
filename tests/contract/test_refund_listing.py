"""Listing a processor's refunds over a period (reconciliation's side of the processor's books):
every refund made in [since, until), whoever asked for it, oldest first, or an error when the
listing cannot be had whole. Stripe and BridgePay against their simulators on loopback, the mock
in-process."""

from __future__ import annotations

import contextlib
import time
import uuid
from datetime import datetime, timedelta, timezone
from typing import AsyncIterator, Iterator

import httpx
import orjson
import pytest
from pydantic import SecretStr

from adapters.base import ProcessorProtocolError, ProcessorRefund, TransientProcessorError
from adapters.bridgepay import BridgePayAdapter
from adapters.bridgepay import transformers as bridgepay_transformers
from adapters.bridgepay.client import LISTING_TAKE
from adapters.bridgepay_sim import SimConfig as BridgePaySimConfig
from adapters.bridgepay_sim import running_simulator as running_bridgepay_simulator
from adapters.bridgepay_sim.testing import RunningSimulator as RunningBridgePay
from adapters.mock import MockAdapter
from adapters.stripe import StripeAdapter
from adapters.stripe.client import LISTING_PAGES
from adapters.stripe_sim import SimConfig as StripeSimConfig
from adapters.stripe_sim import running_simulator as running_stripe_simulator
from adapters.stripe_sim.testing import RunningSimulator as RunningStripe
from adapters.stripe_sim.world import RefundBehaviour
from gateway.domain.refunds import Outcome
from gateway.settings import BridgePayProcessor, StripeProcessor
from tests.contract.test_adapter_contract import refund_request

STRIPE_KEY = "sk_test_listing_0123"


class CountingTransport(httpx.AsyncHTTPTransport):
    """A real transport that notes every request it sends, so a test can see the pages asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return await super().handle_async_request(request)


def utc(unix: int) -> datetime:
    return datetime.fromtimestamp(unix, timezone.utc)


# --- Stripe -----------------------------------------------------------------------------------------

@pytest.fixture
async def stripe_sim() -> AsyncIterator[RunningStripe]:
    async with running_stripe_simulator(StripeSimConfig(api_key=STRIPE_KEY, seed=31)) as sim:
        yield sim


@contextlib.asynccontextmanager
async def stripe_adapter(sim: RunningStripe, *, api_key: str = STRIPE_KEY,
                         transport: httpx.AsyncBaseTransport | None = None) -> AsyncIterator[StripeAdapter]:
    adapter = StripeAdapter(StripeProcessor(id="stripe", kind="stripe", base_url=sim.url, api_key=SecretStr(api_key),
                                            timeout_seconds=2), transport=transport)
    try:
        yield adapter
    finally:
        await adapter.aclose()


def stripe_refund_at(sim: RunningStripe, charge_id: str, created: int, **metadata: str) -> dict:
    """A refund at Stripe (from anywhere: the dashboard or the gateway), dated `created`."""
    refund = sim.sim.create_refund(charge_id=charge_id, payment_intent_id=None, amount=100, reason=None,
                                   metadata=metadata)
    refund["created"] = created
    return refund


async def test_stripe_listing_reads_every_page_of_the_period_oldest_first(stripe_sim):
    world = stripe_sim.sim.world
    charge = world.create_charge(100_000, "eur", {}, None)
    base = int(time.time()) - 10_000
    # 130 in the period: two pages of 100. Made in an order unlike their dates, as Stripe lists by date.
    inside = [stripe_refund_at(stripe_sim, charge["id"], base + i, refund_id=f"rf_{i:03d}") for i in range(1, 130)]
    at_since = stripe_refund_at(stripe_sim, charge["id"], base)  # a dashboard refund: none of our ids
    older = stripe_refund_at(stripe_sim, charge["id"], base - 1)
    at_until = stripe_refund_at(stripe_sim, charge["id"], base + 130)
    newer = stripe_refund_at(stripe_sim, charge["id"], base + 5_000)
    intent = world.create_payment_intent(5_000, "usd", {}, None)
    stripe_sim.sim.behaviour = RefundBehaviour(status="pending")
    pending = stripe_sim.sim.create_refund(charge_id=None, payment_intent_id=intent["id"], amount=700, reason=None,
                                           metadata={})
    pending["created"] = base + 60
    inside[10]["status"] = "a_status_nobody_knows"

    transport = CountingTransport()
    async with stripe_adapter(stripe_sim, transport=transport) as adapter:
        assert adapter.capabilities.listing is True
        listed = await adapter.list_refunds(utc(base), utc(base + 130))

    assert all(isinstance(r, ProcessorRefund) for r in listed)
    ids = [r.psp_refund_id for r in listed]
    assert older["id"] not in ids and at_until["id"] not in ids and newer["id"] not in ids
    assert len(listed) == 131 and ids[0] == at_since["id"]
    assert [r.created for r in listed] == sorted(r.created for r in listed)  # oldest first
    assert {r.psp_refund_id for r in listed} == {at_since["id"], pending["id"], *(r["id"] for r in inside)}

    first_ours = next(r for r in listed if r.psp_refund_id == inside[0]["id"])
    assert first_ours == ProcessorRefund(psp_refund_id=inside[0]["id"], payment_reference=charge["id"], amount=100,
                                         currency="EUR", outcome=Outcome.SUCCEEDED, created=utc(base + 1),
                                         refund_id="rf_001")
    by_id = {r.psp_refund_id: r for r in listed}
    assert by_id[at_since["id"]].refund_id is None and by_id[at_since["id"]].created == utc(base)
    assert by_id[inside[10]["id"]].outcome is Outcome.NEEDS_ATTENTION  # never a success
    # Stripe names the charge of a refund asked for by payment intent: that is the payment it refunds.
    assert (by_id[pending["id"]].outcome, by_id[pending["id"]].payment_reference, by_id[pending["id"]].currency) == \
        (Outcome.PENDING, intent["latest_charge"], "USD")

    pages = [r.url.params for r in transport.requests]
    assert len(pages) == 2
    assert all((p["created[gte]"], p["created[lt]"], p["limit"]) == (str(base), str(base + 130), "100") for p in pages)
    # The second page starts after the first's last: the 100th newest.
    assert "starting_after" not in pages[0] and pages[1]["starting_after"] == listed[-100].psp_refund_id


async def test_stripe_listing_takes_whole_seconds_inward_for_a_period_that_is_not(stripe_sim):
    charge = stripe_sim.sim.world.create_charge(10_000, "eur", {}, None)
    base = int(time.time()) - 1_000
    before = stripe_refund_at(stripe_sim, charge["id"], base)
    inside = stripe_refund_at(stripe_sim, charge["id"], base + 1)
    last = stripe_refund_at(stripe_sim, charge["id"], base + 2)
    async with stripe_adapter(stripe_sim) as adapter:
        listed = await adapter.list_refunds(utc(base) + timedelta(milliseconds=400),
                                            utc(base + 2) + timedelta(milliseconds=1))
    assert [r.psp_refund_id for r in listed] == [inside["id"], last["id"]]
    assert before["id"] not in {r.psp_refund_id for r in listed}


async def test_stripe_listing_with_a_page_it_cannot_read_raises_a_protocol_error(stripe_sim):
    charge = stripe_sim.sim.world.create_charge(100_000, "eur", {}, None)
    base = int(time.time()) - 1_000
    refunds = [stripe_refund_at(stripe_sim, charge["id"], base + i) for i in range(120)]
    refunds[0]["amount"] = "a lot"  # the oldest: on the second page
    transport = CountingTransport()
    async with stripe_adapter(stripe_sim, transport=transport) as adapter:
        with pytest.raises(ProcessorProtocolError) as caught:
            await adapter.list_refunds(utc(base), utc(base + 200))
    assert caught.value.code == "unparseable" and len(transport.requests) == 2


async def test_stripe_listing_that_stripe_refuses_raises_by_whether_asking_again_can_help(stripe_sim):
    since, until = utc(int(time.time()) - 60), utc(int(time.time()) + 60)
    stripe_sim.sim.faults.configure({"api_error": {"path": "/v1/refunds", "method": "GET", "count": 1}})
    async with stripe_adapter(stripe_sim) as adapter:
        with pytest.raises(TransientProcessorError):  # a 500 to a read: nothing moved, ask again
            await adapter.list_refunds(since, until)
        assert await adapter.list_refunds(since, until) == []
    async with stripe_adapter(stripe_sim, api_key="sk_test_not_the_right_one") as adapter:
        with pytest.raises(ProcessorProtocolError) as caught:  # a 401: a person must look
            await adapter.list_refunds(since, until)
    assert "not_the_right" not in str(caught.value)


async def test_stripe_listing_that_never_ends_gives_up_after_its_page_limit():
    calls = 0

    def endless(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        refund = {"id": f"re_{calls:06d}", "object": "refund", "amount": 100, "currency": "eur", "charge": "ch_1",
                  "status": "succeeded", "created": int(time.time()), "metadata": {}}
        return httpx.Response(200, content=orjson.dumps({"object": "list", "data": [refund], "has_more": True}))

    adapter = StripeAdapter(StripeProcessor(id="stripe", kind="stripe", base_url="https://api.stripe.test",
                                            api_key=SecretStr(STRIPE_KEY)), transport=httpx.MockTransport(endless))
    try:
        with pytest.raises(ProcessorProtocolError) as caught:
            await adapter.list_refunds(utc(0), datetime.now(timezone.utc) + timedelta(hours=1))
    finally:
        await adapter.aclose()
    assert caught.value.code == "listing_too_long" and calls == LISTING_PAGES


# --- BridgePay --------------------------------------------------------------------------------------

BRIDGEPAY = BridgePaySimConfig(username="listing_user", password="listing_pw", merchant_code="5001",
                               merchant_account_code="5002", seed=37)


@pytest.fixture
async def bridgepay_sim() -> AsyncIterator[RunningBridgePay]:
    async with running_bridgepay_simulator(BRIDGEPAY) as sim:
        yield sim


@pytest.fixture
async def bridgepay(bridgepay_sim) -> AsyncIterator[BridgePayAdapter]:
    adapter = BridgePayAdapter(BridgePayProcessor(
        id="bridgepay", kind="bridgepay", base_url=bridgepay_sim.url, username=BRIDGEPAY.username,
        password=SecretStr(BRIDGEPAY.password), merchant_code=BRIDGEPAY.merchant_code,
        merchant_account_code=BRIDGEPAY.merchant_account_code, timeout_seconds=2))
    yield adapter
    await adapter.aclose()


@contextlib.contextmanager
def bridgepay_clock(sim: RunningBridgePay, at: datetime) -> Iterator[None]:
    """What the simulator makes meanwhile is dated `at`."""
    world = sim.sim.world
    before, world.clock = world.clock, lambda: at
    try:
        yield
    finally:
        world.clock = before


async def portal_refund(sim: RunningBridgePay, gateway_trans_id: str, amount: int, **extra) -> httpx.Response:
    async with httpx.AsyncClient(base_url=sim.url) as control:
        return await control.post("/_sim/portal/refunds",
                                  json={"gateway_trans_id": gateway_trans_id, "amount": amount, **extra})


def new_sale(sim: RunningBridgePay, amount: int, *, settled: bool) -> str:
    return sim.sim.world.create_sale(amount, invoice_num=f"INV-{uuid.uuid4().hex[:6]}", transaction_id="",
                                     authorization_code="AUTH01", card_last4="1111", settled=settled).gateway_trans_id


async def test_bridgepay_listing_has_portal_refunds_voids_and_ours_of_the_period_oldest_first(bridgepay_sim,
                                                                                               bridgepay):
    t0 = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(hours=2)
    since, until = t0, t0 + timedelta(minutes=10)
    with bridgepay_clock(bridgepay_sim, t0 - timedelta(minutes=5)):
        settled = new_sale(bridgepay_sim, 10_000, settled=True)
        unsettled = new_sale(bridgepay_sim, 5_000, settled=False)
        assert (await portal_refund(bridgepay_sim, settled, 100)).status_code == 200  # before the period
    with bridgepay_clock(bridgepay_sim, t0 + timedelta(minutes=3)):
        ours = refund_request(1_050, psp_reference=settled, currency="USD")
        result = await bridgepay.refund(ours)
    with bridgepay_clock(bridgepay_sim, t0):  # on `since`: in
        portal = await portal_refund(bridgepay_sim, settled, 1_200)
    with bridgepay_clock(bridgepay_sim, t0 + timedelta(minutes=1)):
        void = await portal_refund(bridgepay_sim, unsettled, 5_000, invoice_num="counter-void")
        declined = await portal_refund(bridgepay_sim, settled, 99_999)  # more than is left: nothing happens
    with bridgepay_clock(bridgepay_sim, until):  # on `until`: out
        assert (await portal_refund(bridgepay_sim, settled, 300)).status_code == 200
    assert (portal.status_code, void.status_code, declined.status_code) == (200, 200, 400)

    assert bridgepay.capabilities.listing is True
    listed = await bridgepay.list_refunds(since, until)

    assert listed == [
        ProcessorRefund(psp_refund_id=portal.json()["TransactionId"], payment_reference=settled, amount=1_200,
                        currency="USD", outcome=Outcome.SUCCEEDED, created=t0, refund_id=None, kind="refund"),
        ProcessorRefund(psp_refund_id=void.json()["TransactionId"], payment_reference=unsettled, amount=5_000,
                        currency="USD", outcome=Outcome.SUCCEEDED, created=t0 + timedelta(minutes=1), refund_id=None,
                        kind="void"),
        ProcessorRefund(psp_refund_id=result.psp_refund_id, payment_reference=settled, amount=1_050, currency="USD",
                        outcome=Outcome.SUCCEEDED, created=t0 + timedelta(minutes=3), refund_id=ours.refund_id,
                        kind="refund"),
    ]


async def test_bridgepay_listing_pages_through_skip_and_take(bridgepay_sim, bridgepay):
    world, now = bridgepay_sim.sim.world, datetime.now(timezone.utc)
    sale = world.sales[new_sale(bridgepay_sim, 1_000_000, settled=True)]
    made = [world.reverse(sale, 100 + i, invoice_num=f"rf_{i:04d}", transaction_code="", transaction_id="",
                          sandbox_amounts=False).reversal for i in range(LISTING_TAKE + 50)]
    with bridgepay_clock(bridgepay_sim, now.replace(microsecond=0) + timedelta(minutes=1)):
        portal = (await portal_refund(bridgepay_sim, sale.gateway_trans_id, 5)).json()

    listed = await bridgepay.list_refunds(now - timedelta(minutes=1), now + timedelta(minutes=5))

    assert [r.psp_refund_id for r in listed] == [r.gateway_trans_id for r in made] + [portal["TransactionId"]]
    assert [r.refund_id for r in listed[:2]] == ["rf_0000", "rf_0001"] and listed[-1].refund_id is None
    assert [r.amount for r in listed[:2]] == [100, 101]
    # The sale, its 250 refunds and the portal's: two pages of LISTING_TAKE rows.
    assert bridgepay_sim.sim.counts["requests.reporting"] == 2


def reporting_row(**fields: str) -> dict[str, str]:
    return {"TransactionId": "900000123", "TransactionType": "Refund", "InvoiceNumber": "rf_01ABC",
            "ReferenceNumber": "900000001", "RequestedAmount": "1200", "AuthorizedAmount": "1200",
            "RemainingAmount": "3800", "ResponseCode": "00000", "TransactionStatus": "Open",
            "SettlementStatus": "Unsettled", "SaleDateTime": "2025-03-04T05:06:07", **fields}


@pytest.mark.parametrize(("fields", "expected"), [
    ({}, (Outcome.SUCCEEDED, "refund", "rf_01ABC")),
    ({"TransactionType": "Credit", "TransactionStatus": "Confirmed"}, (Outcome.SUCCEEDED, "refund", "rf_01ABC")),
    ({"TransactionType": "Void", "TransactionStatus": "Voided"}, (Outcome.SUCCEEDED, "void", "rf_01ABC")),
    # A refund row whose own status is Voided: the refund was voided before it settled.
    ({"TransactionStatus": "Voided"}, (Outcome.CANCELED, "refund", "rf_01ABC")),
    ({"TransactionStatus": "Reticulated"}, (Outcome.NEEDS_ATTENTION, "refund", "rf_01ABC")),
    ({"TransactionType": "Adjustment"}, (Outcome.NEEDS_ATTENTION, "adjustment", "rf_01ABC")),  # ours, unknown kind
    ({"InvoiceNumber": "INV-7"}, (Outcome.SUCCEEDED, "refund", None)),
])
def test_bridgepay_reporting_rows_map_to_refunds_exhaustively(fields, expected):
    listed = bridgepay_transformers.listed_refund(reporting_row(**fields))
    assert listed is not None and (listed.outcome, listed.kind, listed.refund_id) == expected
    assert (listed.amount, listed.currency, listed.payment_reference) == (1_200, "USD", "900000001")


@pytest.mark.parametrize("fields", [
    {"TransactionType": "Sale"}, {"ResponseCode": "30032"}, {"TransactionType": "Adjustment", "InvoiceNumber": "x"},
])
def test_bridgepay_reporting_rows_that_are_no_refund_are_left_out(fields):
    assert bridgepay_transformers.listed_refund(reporting_row(**fields)) is None


@pytest.mark.parametrize(("text", "expected"), [
    ("2025-03-04T05:06:07", datetime(2025, 3, 4, 5, 6, 7, tzinfo=timezone.utc)),  # no zone: UTC
    ("2025-03-04T05:06:07.1234567", datetime(2025, 3, 4, 5, 6, 7, 123456, tzinfo=timezone.utc)),
    ("2025-03-04T07:06:07+02:00", datetime(2025, 3, 4, 5, 6, 7, tzinfo=timezone.utc)),
])
def test_bridgepay_reporting_dates_without_a_zone_are_utc(text, expected):
    assert bridgepay_transformers.listed_refund(reporting_row(SaleDateTime=text)).created == expected


@pytest.mark.parametrize("fields", [{"SaleDateTime": ""}, {"SaleDateTime": "04/03/2025 05:06"},
                                    {"AuthorizedAmount": "12.00"}, {"AuthorizedAmount": ""}])
def test_bridgepay_refund_row_it_cannot_read_is_a_protocol_error(fields):
    row = {k: v for k, v in reporting_row(**fields).items() if v}  # reporting_rows leaves empty fields out
    with pytest.raises(ProcessorProtocolError):
        bridgepay_transformers.listed_refund(row)


async def test_bridgepay_listing_it_cannot_read_or_have_raises(bridgepay_sim, bridgepay):
    since, until = datetime.now(timezone.utc) - timedelta(minutes=1), datetime.now(timezone.utc) + timedelta(minutes=1)
    path = "/Bridgepay.Reporting.API/"
    bridgepay_sim.sim.faults.configure({"garbage": {"path": path, "payload": "body", "count": 1}})
    with pytest.raises(ProcessorProtocolError):
        await bridgepay.list_refunds(since, until)
    bridgepay_sim.sim.faults.configure({"unavailable": {"path": path, "count": 1}})
    with pytest.raises(TransientProcessorError):  # a 503 to a read: ask again
        await bridgepay.list_refunds(since, until)
    assert await bridgepay.list_refunds(since, until) == []


# --- the mock ---------------------------------------------------------------------------------------

async def test_mock_lists_its_refunds_and_dashboard_ones_of_the_period_oldest_first():
    mock = MockAdapter("mock", pending_settle_seconds=60)
    start = datetime.now(timezone.utc)
    ours = refund_request(1_050, currency="eur")
    result = await mock.refund(ours)
    pending_request = refund_request(7001)
    await mock.refund(pending_request)
    dashboard = mock.record_external("ch_dashboard", 2_500, "usd")
    mock.record_external("ch_dashboard", 900, "USD", created=start - timedelta(days=2))  # long before

    assert mock.capabilities.listing is True
    listed = await mock.list_refunds(start - timedelta(seconds=1), datetime.now(timezone.utc) + timedelta(seconds=1))

    assert [(r.psp_refund_id, r.refund_id, r.payment_reference, r.amount, r.currency, r.outcome) for r in listed] == [
        (result.psp_refund_id, ours.refund_id, ours.psp_reference, 1_050, "EUR", Outcome.SUCCEEDED),
        (listed[1].psp_refund_id, pending_request.refund_id, pending_request.psp_reference, 7001, "EUR",
         Outcome.PENDING),
        (dashboard.psp_refund_id, None, "ch_dashboard", 2_500, "USD", Outcome.SUCCEEDED),
    ]
    assert listed[2] == dashboard
    assert all(r.created.tzinfo is not None for r in listed)
    assert [r.created for r in listed] == sorted(r.created for r in listed)
    older = await mock.list_refunds(start - timedelta(days=3), start - timedelta(days=1))
    assert [(r.amount, r.refund_id) for r in older] == [(900, None)]
    assert sum(1 for r in mock.executed if r.psp_reference == "ch_dashboard") == 2  # executed, as any other
