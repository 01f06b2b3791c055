"""What the simulators give a reconciliation: Stripe's refund listing filtered by `created` as Stripe
filters it, BridgePay's Reporting API filtered by a date range and paged by Skip/Take with every
row dated, and refunds made in BridgePay's merchant portal (POST /_sim/portal/refunds)."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from typing import AsyncIterator

import httpx
import pytest

from adapters.bridgepay_sim import SimConfig as BridgePaySimConfig
from adapters.bridgepay_sim import running_simulator as running_bridgepay
from adapters.bridgepay_sim.testing import RunningSimulator as RunningBridgePay
from adapters.stripe_sim import SimConfig as StripeSimConfig
from adapters.stripe_sim import running_simulator as running_stripe
from adapters.stripe_sim.testing import RunningSimulator as RunningStripe
from tests.simulators.test_bridgepay_sim import REPORTING, REPORTING_ACTION, SOAP_NS, TEMPURI, reporting

API_KEY = "sk_test_listing_sim_0123"
USER, PASSWORD = "bp_list_user", "bp-list-pw"


# -- Stripe: GET /v1/refunds?created[...] --------------------------------------------------------------

@pytest.fixture
async def stripe_sim() -> AsyncIterator[RunningStripe]:
    async with running_stripe(StripeSimConfig(api_key=API_KEY, seed=41)) as sim:
        yield sim


@pytest.fixture
async def stripe(stripe_sim) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=stripe_sim.url, headers={"Authorization": f"Bearer {API_KEY}"},
                                 timeout=5) as client:
        yield client


def dated_refunds(sim: RunningStripe, *created: int) -> list[str]:
    """Refunds of one charge, made in the order given and dated as given; their ids."""
    charge = sim.sim.world.create_charge(100_000, "eur", {}, None)
    ids = []
    for when in created:
        refund = sim.sim.create_refund(charge_id=charge["id"], payment_intent_id=None, amount=100, reason=None,
                                       metadata={})
        refund["created"] = when
        ids.append(refund["id"])
    return ids


async def listed(client: httpx.AsyncClient, **params: str) -> dict:
    response = await client.get("/v1/refunds", params=params)
    assert response.status_code == 200, response.text
    return response.json()


async def test_stripe_lists_refunds_newest_first_by_created_whatever_order_they_were_made_in(stripe_sim, stripe):
    base = int(time.time()) - 1_000
    a, b, c, d = dated_refunds(stripe_sim, base + 2, base, base + 3, base + 1)
    page = await listed(stripe)
    assert [r["id"] for r in page["data"]] == [c, a, d, b]
    assert all(isinstance(r["created"], int) for r in page["data"])


@pytest.mark.parametrize(("params", "expected"), [
    ({"created[gte]": "+1", "created[lt]": "+3"}, ["a", "d"]),
    ({"created[gt]": "+1", "created[lte]": "+3"}, ["c", "a"]),
    ({"created[gt]": "+0"}, ["c", "a", "d"]),
    ({"created[lt]": "+1"}, ["b"]),
    ({"created": "+2"}, ["a"]),
    ({"created[gte]": "+4"}, []),
])
async def test_stripe_created_filters_bound_the_listing_as_stripes_do(stripe_sim, stripe, params, expected):
    base = int(time.time()) - 1_000
    ids = dict(zip("abcd", dated_refunds(stripe_sim, base + 2, base, base + 3, base + 1)))
    query = {k: str(base + int(v)) for k, v in params.items()}
    assert [r["id"] for r in (await listed(stripe, **query))["data"]] == [ids[x] for x in expected]


async def test_stripe_created_filter_pages_with_limit_and_starting_after(stripe_sim, stripe):
    base = int(time.time()) - 1_000
    ids = dated_refunds(stripe_sim, *(base + i for i in range(7)))
    window = {"created[gte]": str(base + 1), "created[lt]": str(base + 6)}  # ids[1..5]
    first = await listed(stripe, limit="3", **window)
    assert ([r["id"] for r in first["data"]], first["has_more"]) == ([ids[5], ids[4], ids[3]], True)
    second = await listed(stripe, limit="3", starting_after=ids[3], **window)
    assert ([r["id"] for r in second["data"]], second["has_more"]) == ([ids[2], ids[1]], False)


@pytest.mark.parametrize(("params", "code", "param"), [
    ({"created[gte]": "yesterday"}, "parameter_invalid_integer", "created[gte]"),
    ({"created": "1.5"}, "parameter_invalid_integer", "created"),
    ({"created[since]": "1"}, "parameter_unknown", "created[since]"),
])
async def test_stripe_refuses_a_created_filter_it_cannot_read(stripe, params, code, param):
    response = await stripe.get("/v1/refunds", params=params)
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["type"], error["code"], error["param"]) == ("invalid_request_error", code, param)


# -- BridgePay: the Reporting API's date range, Skip and Take ------------------------------------------

@pytest.fixture
async def bridgepay_sim() -> AsyncIterator[RunningBridgePay]:
    config = BridgePaySimConfig(username=USER, password=PASSWORD, merchant_code="M1", merchant_account_code="A1",
                                seed=43)
    async with running_bridgepay(config) as sim:
        yield sim


@pytest.fixture
async def bridgepay(bridgepay_sim) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=bridgepay_sim.url, timeout=5) as client:
        yield client


def at(sim: RunningBridgePay, when: datetime) -> None:
    sim.sim.world.clock = lambda: when


def reporting_envelope(**criteria: str) -> bytes:
    # A WCF data contract reads the filter's fields in alphabetical order.
    fields = "".join(f"<{k}>{v}</{k}>" for k, v in sorted(criteria.items()))
    return (f'<soap:Envelope xmlns:soap="{SOAP_NS}"><soap:Body><PublicGetTransactionsByFilter xmlns="{TEMPURI}">'
            f"<UserName>{USER}</UserName><Password>{PASSWORD}</Password><filter>{fields}</filter>"
            "</PublicGetTransactionsByFilter></soap:Body></soap:Envelope>").encode()


async def report(client: httpx.AsyncClient, **criteria: str) -> tuple[int, list[dict[str, str]]]:
    return await reporting(client, reporting_envelope(**criteria))


async def portal(client: httpx.AsyncClient, gateway_trans_id: str, amount, **extra) -> httpx.Response:
    return await client.post("/_sim/portal/refunds", json={"gateway_trans_id": gateway_trans_id, "amount": amount,
                                                           **extra})


async def new_sale(client: httpx.AsyncClient, amount: int, *, settled: bool) -> str:
    response = await client.post("/_sim/sales", json={"amount": amount, "settled": settled})
    assert response.status_code == 200, response.text
    return response.json()["gateway_trans_id"]


async def test_reporting_rows_are_dated_and_filtered_by_an_inclusive_date_range(bridgepay_sim, bridgepay):
    t0 = datetime(2025, 3, 4, 5, 6, 7, tzinfo=timezone.utc)
    at(bridgepay_sim, t0)
    sale = await new_sale(bridgepay, 10_000, settled=True)
    at(bridgepay_sim, t0 + timedelta(minutes=1))
    first = (await portal(bridgepay, sale, 1_000)).json()
    at(bridgepay_sim, t0 + timedelta(minutes=2))
    second = (await portal(bridgepay, sale, 2_000)).json()

    total, rows = await report(bridgepay)
    assert total == 3 and [r["SaleDateTime"] for r in rows] == [
        "2025-03-04T05:06:07", "2025-03-04T05:07:07", "2025-03-04T05:08:07"]
    total, rows = await report(bridgepay, DateRangeFrom="2025-03-04T05:07:07", DateRangeTo="2025-03-04T05:08:07")
    assert (total, [r["TransactionId"] for r in rows]) == (2, [first["TransactionId"], second["TransactionId"]])
    # With a zone it is honoured; without one it is UTC.
    total, rows = await report(bridgepay, DateRangeFrom="2025-03-04T07:07:08+02:00")
    assert [r["TransactionId"] for r in rows] == [second["TransactionId"]]
    total, rows = await report(bridgepay, DateRangeTo="2025-03-04T05:07:06.9999999")
    assert [r["TransactionType"] for r in rows] == ["Sale"]


async def test_reporting_pages_a_date_range_with_skip_and_take(bridgepay_sim, bridgepay):
    sale = await new_sale(bridgepay, 100_000, settled=True)
    made = [(await portal(bridgepay, sale, 100 + i)).json()["TransactionId"] for i in range(5)]
    window = {"DateRangeFrom": "2000-01-01T00:00:00", "DateRangeTo": "2100-01-01T00:00:00"}
    pages = [await report(bridgepay, Skip=str(skip), Take="2", **window) for skip in (0, 2, 4, 6)]
    assert [total for total, _ in pages] == [6, 6, 6, 6]
    assert [r["TransactionId"] for _, rows in pages for r in rows] == [sale, *made]
    assert [len(rows) for _, rows in pages] == [2, 2, 2, 0]


async def test_reporting_refuses_a_date_it_cannot_read(bridgepay):
    response = await bridgepay.post(REPORTING, content=reporting_envelope(DateRangeFrom="04/03/2025"),
                                    headers={"Content-Type": "text/xml", "SOAPAction": REPORTING_ACTION})
    assert response.status_code == 400 and b"DateRangeFrom" in response.content


# -- BridgePay: refunds made in the merchant's portal --------------------------------------------------

async def test_portal_voids_an_unsettled_sale_once_and_refunds_a_settled_one_in_parts(bridgepay_sim, bridgepay):
    unsettled = await new_sale(bridgepay, 5_000, settled=False)
    void = await portal(bridgepay, unsettled, 2_000, invoice_num="desk-1")
    again = await portal(bridgepay, unsettled, 1_000)
    assert void.status_code == 200
    assert {k: void.json()[k] for k in ("TransactionType", "InvoiceNumber", "ReferenceNumber", "AuthorizedAmount",
                                        "ResponseCode", "TransactionStatus")} == {
        "TransactionType": "Void", "InvoiceNumber": "desk-1", "ReferenceNumber": unsettled, "AuthorizedAmount": 2_000,
        "ResponseCode": "00000", "TransactionStatus": "Voided"}
    assert (again.status_code, again.json()["error"]["code"]) == (400, "10042")  # one void per sale

    settled = await new_sale(bridgepay, 5_000, settled=True)
    first = await portal(bridgepay, settled, 1_200)
    second = await portal(bridgepay, settled, 800)
    too_much = await portal(bridgepay, settled, 3_001)
    assert [first.json()["TransactionType"], second.json()["TransactionType"]] == ["Refund", "Refund"]
    assert [first.json()["RemainingAmount"], second.json()["RemainingAmount"]] == [3_800, 3_000]
    assert (too_much.status_code, too_much.json()["error"]["code"]) == (400, "30026")
    assert first.json()["InvoiceNumber"] == "" and first.json()["SaleDateTime"]

    state = (await bridgepay.get("/_sim/state")).json()
    assert state["refund_executions"] == {unsettled: 1, settled: 2}  # counted like any other refund
    assert state["refund_attempts"] == {unsettled: 2, settled: 3}
    assert (state["counts"]["portal.voids"], state["counts"]["portal.refunds"], state["counts"]["portal.declines"]) \
        == (1, 2, 2)
    # And the Reporting API shows them, as it shows refunds asked for over SOAP.
    total, rows = await report(bridgepay, ID=first.json()["TransactionId"])
    assert total == 1 and rows[0]["TransactionType"] == "Refund"


@pytest.mark.parametrize(("body", "code"), [
    ({"amount": 100}, "10001"),
    ({"gateway_trans_id": "123", "amount": 100}, "10055"),
    ({"gateway_trans_id": "SALE", "amount": "12.00"}, "10028"),
    ({"gateway_trans_id": "SALE", "amount": 0}, "10028"),
    ({"gateway_trans_id": "SALE", "amount": True}, "10028"),
])
async def test_portal_refuses_what_bridgepay_would_with_its_code(bridgepay, body, code):
    sale = await new_sale(bridgepay, 5_000, settled=True)
    if body.get("gateway_trans_id") == "SALE":
        body = {**body, "gateway_trans_id": sale}
    response = await bridgepay.post("/_sim/portal/refunds", json=body)
    assert (response.status_code, response.json()["error"]["code"]) == (400, code)
    assert (await bridgepay.get("/_sim/state")).json()["refund_executions"] == {}


async def test_portal_follows_the_sandbox_amounts_when_they_are_on():
    config = BridgePaySimConfig(username=USER, password=PASSWORD, seed=47, sandbox_amounts=True)
    async with running_bridgepay(config) as sim, httpx.AsyncClient(base_url=sim.url, timeout=5) as client:
        sale = await new_sale(client, 10_000, settled=True)
        denied = await portal(client, sale, 300)
        assert (denied.status_code, denied.json()["error"]["code"]) == (400, "30032")
        assert (await portal(client, sale, 1_000)).status_code == 200
