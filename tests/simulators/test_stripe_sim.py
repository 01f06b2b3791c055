"""The Stripe simulator speaks Stripe's protocol (refunds, errors, idempotency, signed webhooks)
and injects the faults chaos runs need. Webhooks land on a tiny aiohttp receiver on loopback."""

from __future__ import annotations

import asyncio
import sys
from typing import AsyncIterator

import httpx
import orjson
import pytest
import stripe
from aiohttp import web

from adapters.stripe_sim import SimConfig, running_simulator
from adapters.stripe_sim.errors import StripeError
from adapters.stripe_sim.forms import parse_form
from adapters.stripe_sim.testing import RunningSimulator

API_KEY = "sk_test_sim_0123456789"
SECRET = "whsec_test_current"
OLD_SECRET = "whsec_test_previous"


class Receiver:
    """A webhook endpoint that fails its first `fail_first` calls, then answers 200."""

    def __init__(self) -> None:
        self.fail_first = 0
        self.calls: list[tuple[int, dict[str, str], bytes]] = []  # answered status, headers, raw body
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        status = 500 if self.fail_first > 0 else 200
        self.fail_first -= status == 500
        self.calls.append((status, dict(request.headers), body))
        return web.Response(status=status)

    def delivered(self) -> list[tuple[dict[str, str], bytes]]:
        return [(headers, body) for status, headers, body in self.calls if status == 200]

    def events(self) -> list[dict]:
        return [orjson.loads(body) for _, body in self.delivered()]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/hook", rec.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    rec.url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    try:
        yield rec
    finally:
        await runner.cleanup()


@pytest.fixture
async def sim(receiver: Receiver) -> AsyncIterator[RunningSimulator]:
    config = SimConfig(api_key=API_KEY, webhook_url=receiver.url, webhook_secrets=[SECRET], seed=7,
                       delivery_max_attempts=5, delivery_initial_backoff_seconds=0.01,
                       delivery_max_backoff_seconds=0.05)
    async with running_simulator(config) as running:
        yield running


@pytest.fixture
async def client(sim: RunningSimulator) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=sim.url, headers={"Authorization": f"Bearer {API_KEY}"},
                                 timeout=5) as c:
        yield c


async def create_charge(client: httpx.AsyncClient, amount: int = 1000, **metadata: str) -> dict:
    resp = await client.post("/v1/charges", data={"amount": amount, "currency": "EUR",
                                                  **{f"metadata[{k}]": v for k, v in metadata.items()}})
    assert resp.status_code == 200, resp.text
    return resp.json()


async def refund(client: httpx.AsyncClient, key: str | None = None, **params) -> httpx.Response:
    return await client.post("/v1/refunds", data=params, headers={"Idempotency-Key": key} if key else {})


async def control(client: httpx.AsyncClient, path: str, body: dict | None = None) -> dict:
    resp = await client.post(f"/_sim/{path}", json=body or {})
    assert resp.status_code == 200, resp.text
    return resp.json()


async def state(client: httpx.AsyncClient) -> dict:
    return (await client.get("/_sim/state")).json()


async def executions(client: httpx.AsyncClient, charge_id: str) -> int:
    return (await state(client))["refund_executions"].get(charge_id, 0)


# -- refunds ---------------------------------------------------------------------------------------

async def test_charge_is_refunded_in_parts(client):
    charge = await create_charge(client, 1000, invoice_id="inv_1")
    assert (charge["object"], charge["currency"], charge["status"], charge["captured"]) == \
        ("charge", "eur", "succeeded", True)
    assert charge["payment_intent"] is None and charge["refunds"]["object"] == "list"

    first = (await refund(client, charge=charge["id"], amount=300, **{"metadata[refund_id]": "rf_1"})).json()
    rest = (await refund(client, charge=charge["id"], reason="requested_by_customer")).json()

    assert first["id"].startswith("re_") and first["object"] == "refund"
    assert (first["amount"], first["status"], first["metadata"]) == (300, "succeeded", {"refund_id": "rf_1"})
    assert (rest["amount"], rest["reason"], rest["currency"]) == (700, "requested_by_customer", "eur")
    after = (await client.get(f"/v1/charges/{charge['id']}")).json()
    assert (after["amount_refunded"], after["refunded"]) == (1000, True)
    assert [r["id"] for r in after["refunds"]["data"]] == [rest["id"], first["id"]]
    assert await executions(client, charge["id"]) == 2


async def test_refund_over_the_balance_is_rejected_with_stripes_error_body(client):
    charge = await create_charge(client, 1000)
    await refund(client, charge=charge["id"], amount=600)

    resp = await refund(client, charge=charge["id"], amount=500)

    assert resp.status_code == 400
    error = resp.json()["error"]
    assert {k: error[k] for k in ("type", "code", "param")} == \
        {"type": "invalid_request_error", "code": "amount_too_large", "param": "amount"}
    assert "greater than unrefunded amount" in error["message"]
    assert await executions(client, charge["id"]) == 1


async def test_fully_refunded_charge_unknown_charge_and_bad_reason_are_rejected(client):
    charge = await create_charge(client, 500)
    assert (await refund(client, charge=charge["id"])).status_code == 200

    again = await refund(client, charge=charge["id"], amount=1)
    unknown = await refund(client, charge="ch_nope")
    bad_reason = await refund(client, charge=charge["id"], reason="because")

    assert (again.status_code, again.json()["error"]["code"]) == (400, "charge_already_refunded")
    assert (unknown.status_code, unknown.json()["error"]["code"]) == (404, "resource_missing")
    assert bad_reason.status_code == 400
    assert bad_reason.json()["error"]["type"] == "invalid_request_error"
    assert bad_reason.json()["error"]["param"] == "reason"


async def test_pending_refund_counts_at_once_and_settles_to_succeeded_or_failed(client):
    charge = await create_charge(client, 1000)
    await control(client, "refunds/behaviour", {"status": "pending"})

    ok = (await refund(client, charge=charge["id"], amount=300)).json()
    bad = (await refund(client, charge=charge["id"], amount=200)).json()
    assert (ok["status"], bad["status"]) == ("pending", "pending")
    assert (await client.get(f"/v1/charges/{charge['id']}")).json()["amount_refunded"] == 500

    await control(client, "refunds/settle", {"refund_ids": [ok["id"]]})
    settled = await control(client, "refunds/settle", {"outcome": "failed", "failure_reason": "lost_or_stolen_card"})

    assert [r["id"] for r in settled["settled"]] == [bad["id"]]
    assert (await client.get(f"/v1/refunds/{ok['id']}")).json()["status"] == "succeeded"
    failed = (await client.get(f"/v1/refunds/{bad['id']}")).json()
    assert (failed["status"], failed["failure_reason"]) == ("failed", "lost_or_stolen_card")
    assert (await client.get(f"/v1/charges/{charge['id']}")).json()["amount_refunded"] == 300


async def test_pending_refund_settles_by_itself_after_the_configured_delay(client):
    charge = await create_charge(client, 1000)
    await control(client, "refunds/behaviour", {"status": "pending", "settle_after_seconds": 0.05,
                                                "settle_to": "failed"})
    created = (await refund(client, charge=charge["id"])).json()

    for _ in range(50):
        current = (await client.get(f"/v1/refunds/{created['id']}")).json()
        if current["status"] != "pending":
            break
        await asyncio.sleep(0.02)

    assert (current["status"], current["failure_reason"]) == ("failed", "expired_or_canceled_card")


async def test_succeeded_refund_that_fails_later_restores_the_refundable_amount(client, receiver):
    charge = await create_charge(client, 1000)
    created = (await refund(client, charge=charge["id"], amount=400)).json()
    assert created["status"] == "succeeded"

    failed = await control(client, f"refunds/{created['id']}/fail", {"failure_reason": "expired_or_canceled_card"})
    await control(client, "webhooks/flush")

    assert (failed["status"], failed["failure_reason"]) == ("failed", "expired_or_canceled_card")
    after = (await client.get(f"/v1/charges/{charge['id']}")).json()
    assert (after["amount_refunded"], after["refunded"]) == (0, False)
    later = {e["type"]: e for e in receiver.events() if e["data"]["object"]["id"] == created["id"]}
    assert {"refund.created", "refund.failed", "refund.updated", "charge.refund.updated"} <= set(later)
    assert later["refund.updated"]["data"]["previous_attributes"] == {"status": "succeeded", "failure_reason": None}
    assert later["refund.created"]["data"]["object"]["status"] == "succeeded"  # a snapshot, not a live view
    assert (await refund(client, charge=charge["id"], amount=1000)).status_code == 200


async def test_refunds_are_listed_newest_first_by_charge_and_by_payment_intent(client):
    intent = (await client.post("/v1/payment_intents", data={"amount": 900, "currency": "usd", "confirm": "true",
                                                             "metadata[invoice_id]": "inv_9"})).json()
    assert (intent["object"], intent["status"]) == ("payment_intent", "succeeded")
    charge = (await client.get(f"/v1/charges/{intent['latest_charge']}")).json()
    assert (charge["payment_intent"], charge["metadata"]) == (intent["id"], {"invoice_id": "inv_9"})
    other = await create_charge(client, 100)
    await refund(client, charge=other["id"])
    ids = [(await refund(client, payment_intent=intent["id"], amount=100)).json()["id"] for _ in range(3)]

    by_intent = (await client.get("/v1/refunds", params={"payment_intent": intent["id"], "limit": 2})).json()
    by_charge = (await client.get("/v1/refunds", params={"charge": charge["id"]})).json()
    next_page = (await client.get("/v1/refunds", params={"charge": charge["id"], "starting_after": ids[1]})).json()

    assert (by_intent["object"], by_intent["url"], by_intent["has_more"]) == ("list", "/v1/refunds", True)
    assert [r["id"] for r in by_intent["data"]] == [ids[2], ids[1]]
    assert by_intent["data"][0]["payment_intent"] == intent["id"]
    assert [r["id"] for r in by_charge["data"]] == ids[::-1] and by_charge["has_more"] is False
    assert [r["id"] for r in next_page["data"]] == [ids[0]]
    assert (await client.get(f"/v1/payment_intents/{intent['id']}")).json()["amount"] == 900


# -- auth and idempotency --------------------------------------------------------------------------

async def test_missing_or_wrong_api_key_is_401_and_basic_auth_works(sim):
    async with httpx.AsyncClient(base_url=sim.url) as anonymous:
        missing = await anonymous.post("/v1/charges", data={"amount": 100, "currency": "eur"})
        wrong = await anonymous.get("/v1/refunds", headers={"Authorization": "Bearer sk_test_wrong_key_123"})
        basic = await anonymous.get("/v1/refunds", auth=(API_KEY, ""))

    for resp in (missing, wrong):
        assert resp.status_code == 401
        assert resp.json()["error"]["type"] == "invalid_request_error"
    assert "sk_test_wrong_key_123" not in wrong.text  # the key is masked
    assert basic.status_code == 200


async def test_same_key_replays_the_first_answer_byte_for_byte(client):
    charge = await create_charge(client, 1000)

    first = await refund(client, "key-1", charge=charge["id"], amount=300)
    replay = await refund(client, "key-1", charge=charge["id"], amount=300)
    other_params = await refund(client, "key-1", charge=charge["id"], amount=301)

    assert first.status_code == replay.status_code == 200
    assert replay.content == first.content
    assert replay.headers["Idempotent-Replayed"] == "true" and "Idempotent-Replayed" not in first.headers
    assert other_params.status_code == 400
    assert other_params.json()["error"]["type"] == "idempotency_error"
    assert await executions(client, charge["id"]) == 1


async def test_an_error_answer_is_replayed_but_a_validation_failure_is_not_stored(client):
    charge = await create_charge(client, 100)

    too_much = await refund(client, "key-2", charge=charge["id"], amount=500)
    replayed = await refund(client, "key-2", charge=charge["id"], amount=500)
    invalid = await refund(client, "key-3", charge=charge["id"], reason="nope")
    corrected = await refund(client, "key-3", charge=charge["id"], amount=50)

    assert (too_much.status_code, replayed.status_code) == (400, 400)
    assert replayed.content == too_much.content and replayed.headers["Idempotent-Replayed"] == "true"
    assert invalid.status_code == 400
    assert corrected.status_code == 200 and "Idempotent-Replayed" not in corrected.headers


async def test_concurrent_request_with_the_same_key_gets_409_and_nothing_runs_twice(client):
    charge = await create_charge(client, 1000)
    await control(client, "faults", {"latency": {"ms": 300, "path": "/v1/refunds"}})

    first, second = await asyncio.gather(refund(client, "key-c", charge=charge["id"], amount=100),
                                         refund(client, "key-c", charge=charge["id"], amount=100))

    assert sorted([first.status_code, second.status_code]) == [200, 409]
    clash = first if first.status_code == 409 else second
    assert clash.json()["error"]["type"] == "idempotency_error"
    retry = await refund(client, "key-c", charge=charge["id"], amount=100)
    assert retry.status_code == 200 and retry.headers["Idempotent-Replayed"] == "true"
    assert await executions(client, charge["id"]) == 1


# -- webhooks --------------------------------------------------------------------------------------

async def test_webhooks_are_delivered_with_a_signature_the_official_package_accepts(client, receiver):
    charge = await create_charge(client, 1000, invoice_id="inv_42")
    await refund(client, charge=charge["id"], amount=250)
    await control(client, "webhooks/flush")

    for headers, body in receiver.delivered():
        event = stripe.Webhook.construct_event(body, headers["Stripe-Signature"], SECRET)
        assert event.id.startswith("evt_") and event.object == "event" and event.livemode is False
    by_type = {e["type"]: e for e in receiver.events()}
    assert by_type["charge.succeeded"]["data"]["object"]["metadata"] == {"invoice_id": "inv_42"}
    assert by_type["refund.created"]["data"]["object"]["amount"] == 250
    refunded = by_type["charge.refunded"]["data"]["object"]
    assert (refunded["amount_refunded"], len(refunded["refunds"]["data"])) == (250, 1)
    with pytest.raises(stripe.SignatureVerificationError):
        headers, body = receiver.delivered()[0]
        stripe.Webhook.construct_event(body, headers["Stripe-Signature"], "whsec_someone_else")


async def test_two_secrets_sign_twice_during_a_rotation(client, receiver):
    await control(client, "webhooks/endpoint", {"secrets": [OLD_SECRET, SECRET]})
    await create_charge(client, 100)
    await control(client, "webhooks/flush")

    headers, body = receiver.delivered()[0]
    assert headers["Stripe-Signature"].count("v1=") == 2
    for secret in (OLD_SECRET, SECRET):
        stripe.Webhook.construct_event(body, headers["Stripe-Signature"], secret)


async def test_webhook_is_retried_while_the_endpoint_answers_500(client, receiver):
    receiver.fail_first = 3
    await create_charge(client, 100)

    flushed = await control(client, "webhooks/flush")

    assert flushed["done"] is True
    (delivery,) = flushed["deliveries"]
    assert (delivery["status"], delivery["attempts"], delivery["responses"]) == ("delivered", 4, [500, 500, 500, 200])
    assert [status for status, _, _ in receiver.calls] == [500, 500, 500, 200]


async def test_unreachable_endpoint_is_retried_a_bounded_number_of_times(client, receiver):
    await control(client, "webhooks/endpoint", {"url": "http://127.0.0.1:9/unreachable"})
    await create_charge(client, 100)

    flushed = await control(client, "webhooks/flush")

    (delivery,) = flushed["deliveries"]
    assert (delivery["status"], delivery["attempts"]) == ("failed", 5)
    assert all(isinstance(r, str) for r in delivery["responses"])  # connection errors, by name


async def test_duplicate_out_of_order_and_missing_deliveries_when_switched_on(client, receiver):
    await control(client, "faults", {"webhooks": {"duplicate_probability": 1.0}})
    await create_charge(client, 100)
    await control(client, "webhooks/flush")
    events = receiver.events()
    assert len(events) == 2 and events[0]["id"] == events[1]["id"]

    receiver.calls.clear()
    await control(client, "faults", {"webhooks": {"max_delay_ms": 200}})
    charges = [(await create_charge(client, 100))["id"] for _ in range(8)]
    await control(client, "webhooks/flush")
    arrived = [e["data"]["object"]["id"] for e in receiver.events()]
    assert sorted(arrived) == sorted(charges) and arrived != charges

    receiver.calls.clear()
    await control(client, "faults", {"webhooks": {"drop_probability": 1.0}})
    await create_charge(client, 100)
    flushed = await control(client, "webhooks/flush")
    assert receiver.calls == [] and flushed["deliveries"][-1]["status"] == "dropped"


# -- faults ----------------------------------------------------------------------------------------

async def test_injected_500_runs_nothing_and_a_retry_with_the_same_key_succeeds(client):
    charge = await create_charge(client, 1000)
    await control(client, "faults", {"api_error": {"count": 1, "path": "/v1/refunds", "method": "POST"}})

    failed = await refund(client, "key-500", charge=charge["id"], amount=100)
    retried = await refund(client, "key-500", charge=charge["id"], amount=100)

    assert (failed.status_code, failed.json()["error"]["type"]) == (500, "api_error")
    assert retried.status_code == 200 and "Idempotent-Replayed" not in retried.headers
    assert await executions(client, charge["id"]) == 1


async def test_500_after_execution_is_stored_and_replayed_like_stripe_does(client):
    charge = await create_charge(client, 1000)
    await control(client, "faults", {"execute_then_api_error": {"count": 1, "path": "/v1/refunds"}})

    failed = await refund(client, "key-x500", charge=charge["id"], amount=100)
    replayed = await refund(client, "key-x500", charge=charge["id"], amount=100)

    assert failed.status_code == replayed.status_code == 500
    assert replayed.headers["Idempotent-Replayed"] == "true"
    assert await executions(client, charge["id"]) == 1  # it ran, though the client only saw 500s


async def test_rate_limit_answers_429_with_retry_after(client):
    await control(client, "faults", {"rate_limit": {"count": 2, "retry_after": 3}})

    limited = [await client.get("/v1/refunds") for _ in range(3)]

    assert [r.status_code for r in limited] == [429, 429, 200]
    assert limited[0].headers["Retry-After"] == "3"
    assert limited[0].json()["error"]["code"] == "rate_limit"


async def test_dropped_connection_before_execution_runs_nothing(client):
    charge = await create_charge(client, 1000)
    await control(client, "faults", {"drop": {"count": 1, "path": "/v1/refunds"}})

    with pytest.raises(httpx.TransportError):
        await refund(client, "key-drop", charge=charge["id"], amount=100)

    assert await executions(client, charge["id"]) == 0
    assert (await refund(client, "key-drop", charge=charge["id"], amount=100)).status_code == 200


async def test_execute_then_timeout_leaves_a_refund_the_client_never_heard_of(client):
    charge = await create_charge(client, 1000)
    await control(client, "faults", {"execute_then_timeout": {"count": 1, "path": "/v1/refunds",
                                                              "hold_seconds": 30}})

    with pytest.raises(httpx.ReadTimeout):
        await client.post("/v1/refunds", data={"charge": charge["id"], "amount": 100},
                          headers={"Idempotency-Key": "key-t"}, timeout=0.3)

    (stored,) = [c for c in (await state(client))["charges"] if c["id"] == charge["id"]]
    assert (stored["amount_refunded"], stored["refund_executions"]) == (100, 1)
    resent = await refund(client, "key-t", charge=charge["id"], amount=100)
    assert resent.headers["Idempotent-Replayed"] == "true"
    assert resent.json()["id"] == stored["refunds"]["data"][0]["id"]


async def test_execute_then_drop_leaves_a_refund_the_client_never_heard_of(client):
    charge = await create_charge(client, 1000)
    await control(client, "faults", {"execute_then_drop": {"count": 1, "path": "/v1/refunds"}})

    with pytest.raises(httpx.TransportError):
        await refund(client, charge=charge["id"], amount=100)

    found = (await client.get("/v1/refunds", params={"charge": charge["id"]})).json()["data"]
    assert [r["amount"] for r in found] == [100]


async def test_seeded_faults_fail_the_same_requests_after_a_reset(client):
    await control(client, "reset", {"seed": 3})
    pattern = []
    for _ in range(2):
        await control(client, "faults", {"api_error": {"probability": 0.5}})
        pattern.append([(await client.get("/v1/refunds")).status_code for _ in range(12)])
        await control(client, "reset", {"seed": 3})

    assert pattern[0] == pattern[1] and {200, 500} == set(pattern[0])
    assert (await state(client))["faults"] == {"webhooks": {"duplicate_probability": 0.0, "max_delay_ms": 0.0,
                                                            "drop_probability": 0.0}}


# The SDK's own httpx call passes raw bytes as `data=`, which httpx deprecates.
@pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")
async def test_the_official_stripe_client_works_against_it(sim):
    http = stripe.HTTPXClient(timeout=5)
    client = stripe.StripeClient(API_KEY, base_addresses={"api": sim.url}, http_client=http, max_network_retries=2)
    try:
        charge = await client.v1.charges.create_async(params={"amount": 1000, "currency": "eur",
                                                              "metadata": {"invoice_id": "inv_1"}})
        params = {"charge": charge.id, "amount": 300, "reason": "duplicate", "metadata": {"refund_id": "rf_1"}}
        created = await client.v1.refunds.create_async(params=params, options={"idempotency_key": "sdk-1"})
        resent = await client.v1.refunds.create_async(params=params, options={"idempotency_key": "sdk-1"})
        listed = await client.v1.refunds.list_async(params={"charge": charge.id})
        with pytest.raises(stripe.InvalidRequestError) as too_much:
            await client.v1.refunds.create_async(params={"charge": charge.id, "amount": 900})
        sim.sim.faults.configure({"rate_limit": {"count": 1}})  # the client backs off and retries a 429
        fetched = await client.v1.refunds.retrieve_async(created.id)
    finally:
        await http.close_async()

    assert isinstance(created, stripe.Refund) and created.metadata.to_dict() == {"refund_id": "rf_1"}
    assert resent.id == created.id == fetched.id and [r.id for r in listed.data] == [created.id]
    assert (too_much.value.http_status, too_much.value.code) == (400, "amount_too_large")


# -- pieces ----------------------------------------------------------------------------------------

def test_bracket_keys_become_nested_objects():
    assert parse_form("amount=5&metadata[refund_id]=rf_1&metadata[note]=&expand[]=charge&a[b][c]=d") == {
        "amount": "5", "metadata": {"refund_id": "rf_1", "note": ""}, "expand": ["charge"], "a": {"b": {"c": "d"}}}
    with pytest.raises(StripeError):
        parse_form("metadata=x&metadata[a]=b")


async def test_command_line_prints_where_it_listens():
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "adapters.stripe_sim", "--port", "0", "--api-key", API_KEY,
        "--webhook-secret", SECRET, stdout=asyncio.subprocess.PIPE)
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode()
        assert "listening on http://127.0.0.1:" in line
        url = line.split("listening on ")[1].split()[0]
        async with httpx.AsyncClient() as http:
            resp = await http.get(f"{url}/v1/refunds", headers={"Authorization": f"Bearer {API_KEY}"})
        assert resp.status_code == 200
    finally:
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 10) == 0
