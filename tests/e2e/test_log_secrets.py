"""Nothing secret reaches the logs. A real `psp-gateway serve` process, JSON logs at debug level, its
stdout and stderr captured (stdlib loggers too: aiohttp, httpx, asyncpg): drive it along every path
that offers a secret or a card number to the logger, then scan all it wrote for the API keys,
webhook secrets and signatures, processor credentials, the callback secret and anything that looks
like a card number (13 to 19 digits that pass Luhn)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time

import asyncpg
import httpx
import pytest
from aiohttp import web

from adapters.bridgepay_sim import SimConfig as BridgePayConfig
from adapters.bridgepay_sim.testing import running_simulator as bridgepay_simulator
from adapters.simkit import serve_on_loopback
from adapters.stripe.transformers import signature_header
from adapters.stripe_sim import SimConfig as StripeConfig
from adapters.stripe_sim.testing import running_simulator as stripe_simulator
from tests.conftest import database_text

API_KEY = "sk_test_logscan_billing_0123456789"
WRONG_KEYS = ("sk_live_logscan_wrong_bearer_0123", "sk_live_logscan_wrong_header_4567", "not-a-key-but-secret-89ab")
STRIPE_KEY = "sk_test_logscan_stripe_0123456789"
STRIPE_WRONG_KEY = "sk_test_logscan_revoked_987654321"
WHSEC = "whsec_logscan_0123456789abcdef"
BP = dict(username="logscan_user", password="Bp-Pass-logscan-0123", merchant_code="1000", merchant_account_code="2000")
BP_WRONG_PASSWORD = "Bp-Old-Pass-logscan-4567"
CALLBACK_SECRET = "cb_logscan_0123456789abcdef"
CARDS = ("4111111111111111", "5555 5555 5555 4444", "3782-822463-10005")  # Visa, Mastercard, Amex test numbers
PAN = re.compile(r"(?<!\d)(?:\d[ -]?){12,18}\d(?!\d)")
# A MAC or a digest in hex (a stored Stripe-Signature): 32 or more hex characters, some of them
# letters, standing alone. One 64-character MAC in about sixty holds a Luhn-passing run of digits.
HEX_TOKEN = re.compile(r"(?<![0-9A-Za-z])(?=[0-9a-fA-F]*[a-fA-F])[0-9a-fA-F]{32,}(?![0-9A-Za-z])")


def luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


def card_like(text: str) -> list[str]:
    text = HEX_TOKEN.sub("<hex>", text)
    return [m for m in PAN.findall(text) if luhn(re.sub(r"\D", "", m))]


def test_the_scan_finds_card_numbers_wherever_they_stand():
    assert card_like("card 4111111111111111.") == ["4111111111111111"]
    assert card_like("evt_4111111111111111 and x5555 5555 5555 4444y") == ["4111111111111111",
                                                                          "5555 5555 5555 4444"]
    assert card_like("4111111111111112 and 2026-11-21T16:48:32.620802Z and 1732206512") == []
    # The MAC of a stored Stripe-Signature that once failed this scan: its digits are chance.
    mac = "59cc63ad52e889f2f8407c491872c480710398f5656fb0809273361976ee3746"
    assert card_like(f"t=1796405452,v1={mac}") == []
    assert card_like(f"v1={mac} card 4111111111111111") == ["4111111111111111"]


def config(stripe_url: str, bridgepay_url: str) -> str:
    bp = "\n".join(f'{k} = "{v}"' for k, v in BP.items() if k != "password")
    return f"""
[[processors]]
id = "stripe"
kind = "stripe"
base_url = "{stripe_url}"
api_key = "{STRIPE_KEY}"
webhook_secrets = ["{WHSEC}"]
timeout_seconds = 2

[[processors]]
id = "stripe_revoked"
kind = "stripe"
base_url = "{stripe_url}"
api_key = "{STRIPE_WRONG_KEY}"
timeout_seconds = 2

[[processors]]
id = "bridgepay"
kind = "bridgepay"
base_url = "{bridgepay_url}"
password = "{BP['password']}"
{bp}
timeout_seconds = 2

[[processors]]
id = "bridgepay_old"
kind = "bridgepay"
base_url = "{bridgepay_url}"
password = "{BP_WRONG_PASSWORD}"
{bp}
timeout_seconds = 2

[[clients]]
id = "billing"
api_key = "{API_KEY}"
scopes = ["transactions:write", "transactions:read", "refunds:write", "refunds:read"]
"""


class Receiver:
    """The billing core's callback endpoint: refuses the first deliveries, with a body full of secrets."""

    def __init__(self) -> None:
        self.calls = 0
        self.bodies: list[bytes] = []
        self.app = web.Application()
        self.app.router.add_post("/callbacks", self.handle)

    async def handle(self, request: web.Request) -> web.Response:
        self.calls += 1
        self.bodies.append(await request.read())
        if self.calls <= 2:
            return web.Response(status=500, text=f"card {CARDS[0]} declined; api_key={API_KEY}")
        return web.Response(status=204)


async def eventually(check, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await check()
        if value:
            return value
        await asyncio.sleep(0.1)
    raise AssertionError("condition not met in time")


def signed(body: dict, secret: str = WHSEC) -> tuple[bytes, dict[str, str]]:
    raw = json.dumps(body).encode()
    return raw, {"Content-Type": "application/json",
                 "Stripe-Signature": signature_header(raw, [secret.encode()], int(time.time()))}


async def drive(gw: httpx.AsyncClient, stripe, bridgepay) -> list[str]:
    """Every path that offers a secret or a card number to the logs; returns derived secrets to look for too."""
    auth = {"Authorization": f"Bearer {API_KEY}"}
    # API keys: wrong ones in both headers and as Basic, a right one in X-API-Key, a card number and
    # a key as the request id.
    assert (await gw.get("/v1/refunds", headers={"Authorization": f"Bearer {WRONG_KEYS[0]}"})).status_code == 401
    assert (await gw.get("/v1/refunds", headers={"X-API-Key": WRONG_KEYS[1]})).status_code == 401
    assert (await gw.get("/v1/refunds", auth=(WRONG_KEYS[2], API_KEY))).status_code == 401
    assert (await gw.get("/v1/refunds", headers={"X-API-Key": API_KEY})).status_code == 200
    for request_id in (CARDS[0], API_KEY, f"req-{CARDS[0]}"):
        resp = await gw.get("/v1/refunds", headers={**auth, "X-Request-ID": request_id})
        assert resp.headers["X-Request-ID"] != request_id
    refused = await gw.get(f"/v1/refunds/{CARDS[0]}", headers=auth)
    assert refused.status_code == 422 and refused.json()["code"] == "card_number_not_allowed"

    # Stripe: a charge (its webhook registers it), a refund with card numbers in its reason and
    # metadata through a 500 and a refund carried out and then answered with a 500; then a refund
    # through the account whose key Stripe no longer takes.
    charge = stripe.sim.world.create_charge(9_000, "eur", {"invoice_id": "INV-LOG-S", "note": f"pan {CARDS[1]}"},
                                            f"card {CARDS[0]}")
    tx = await eventually(lambda: _transaction(gw, "INV-LOG-S"))
    stripe.sim.faults.configure({"api_error": {"count": 1, "path": "/v1/refunds", "method": "POST"},
                                 "execute_then_api_error": {"count": 1, "path": "/v1/refunds", "method": "POST"}})
    # Card numbers in free text are refused, never echoed; keys in it go through, redacted.
    resp = await gw.post("/v1/refunds", headers=auth, json={
        "invoice_id": "INV-LOG-S", "transaction_id": tx["id"], "amount": 1_000, "currency": "EUR",
        "credit_note_id": f"CN-{CARDS[0]}-0", "reason": f"card {CARDS[0]} stolen",
        "metadata": {"card": CARDS[0], "note": f"card {CARDS[2]}"}})
    assert resp.status_code == 422 and resp.json()["code"] == "card_number_not_allowed", resp.text
    assert {e["field"] for e in resp.json()["errors"]} == {"credit_note_id", "reason", "metadata.card",
                                                           "metadata.note"}
    for n, amount in enumerate((1_000, 1_500)):
        resp = await gw.post("/v1/refunds", headers=auth, json={
            "invoice_id": "INV-LOG-S", "transaction_id": tx["id"], "amount": amount, "currency": "EUR",
            "credit_note_id": f"CN-{n}", "reason": f"stolen, key {STRIPE_KEY}",
            "metadata": {"password": BP["password"]}})
        assert resp.status_code == 201, resp.text
    revoked = await _register(gw, "stripe_revoked", charge["id"] + "_r", "INV-LOG-R", "EUR")
    resp = await gw.post("/v1/refunds", headers=auth, json={"invoice_id": "INV-LOG-R", "transaction_id": revoked,
                                                            "amount": 100, "currency": "EUR"})
    assert resp.status_code == 201 and resp.json()["status"] in ("failed", "requires_attention"), resp.text

    # BridgePay: a refund carried out and the answer dropped, then one with an old password.
    for processor, invoice in (("bridgepay", "INV-LOG-B"), ("bridgepay_old", "INV-LOG-BO")):
        sale = bridgepay.sim.world.create_sale(5_000, invoice_num=invoice, transaction_id="",
                                               authorization_code="123456", card_last4="1111", settled=True)
        tx_id = await _register(gw, processor, sale.gateway_trans_id, invoice, "USD")
        if processor == "bridgepay":
            bridgepay.sim.faults.configure({"execute_then_drop": {"count": 1, "request_type": "012"}})
        resp = await gw.post("/v1/refunds", headers=auth, json={"invoice_id": invoice, "transaction_id": tx_id,
                                                                "amount": 1_000, "currency": "USD",
                                                                "reason": "card stolen"})
        assert resp.status_code == 201, resp.text

    # Webhooks: a bad signature (made with another secret), a bad content type carrying a card
    # number, and signed ones (the processor's own word) with card numbers in their ids and fields,
    # one readable, one not.
    body, headers = signed({"id": "evt_bad", "type": "charge.succeeded"}, secret="whsec_not_the_right_one")
    timestamp = int(headers["Stripe-Signature"].split(",")[0].removeprefix("t="))
    expected = signature_header(body, [WHSEC.encode()], timestamp).split("v1=")[1]  # what a leak would show
    assert (await gw.post("/v1/webhooks/stripe", content=body, headers=headers)).status_code == 400
    resp = await gw.post("/v1/webhooks/stripe", content=b"{}", headers={"Content-Type": f"text/{CARDS[0]}"})
    assert resp.status_code == 415
    view = stripe.sim.world.charge_view({**charge, "id": f"ch_{CARDS[0]}", "metadata": {}})
    for event in ({"id": f"evt_{CARDS[0]}", "object": "event", "type": "charge.succeeded", "created": int(time.time()),
                   "data": {"object": view}},
                  {"id": f"evt_x{CARDS[0]}", "object": "event", "type": "charge.succeeded",
                   "created": int(time.time()), "data": {"object": {**view, "amount": f"pan:{CARDS[0]}"}}}):
        body, headers = signed(event)
        resp = await gw.post("/v1/webhooks/stripe", content=body, headers=headers)
        assert resp.status_code == 200, resp.text
    # Malformed HTTP, whose parser errors may quote what they could not parse.
    host, port = gw.base_url.host, gw.base_url.port
    for raw in (f"GET /v1/refunds HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\x01{CARDS[0]}\r\n\r\n",
                f"GET /v1/refunds?{CARDS[0]} HTTP/1.1\r\nHost: x\r\nX-API-Key {API_KEY}\r\n\r\n",
                f"POST /v1/refunds HTTP/1.1\r\nHost: x\r\nContent-Length: {CARDS[0]}\r\n\r\n"):
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(raw.encode())
        await writer.drain()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(reader.read(65536), 5)  # the answer (a 400), or nothing
        writer.close()
    return [expected]


async def _transaction(gw: httpx.AsyncClient, invoice_id: str) -> dict | None:
    resp = await gw.get("/v1/transactions", params={"invoice_id": invoice_id},
                        headers={"Authorization": f"Bearer {API_KEY}"})
    return resp.json()["data"][0] if resp.json()["data"] else None


async def _register(gw: httpx.AsyncClient, processor: str, reference: str, invoice: str, currency: str) -> str:
    resp = await gw.post("/v1/transactions", headers={"Authorization": f"Bearer {API_KEY}"}, json={
        "processor": processor, "psp_reference": reference, "invoice_id": invoice, "amount": 5_000,
        "currency": currency, "settled": True, "metadata": {"card": "last4 1111"}})
    assert resp.status_code == 201, resp.text
    return resp.json()["id"]


@pytest.mark.timeout(120)
async def test_a_gateway_process_driven_along_every_secret_bearing_path_logs_no_secret(gateways, database_url):
    receiver = Receiver()
    async with serve_on_loopback(receiver.app) as receiver_url, \
            stripe_simulator(StripeConfig(api_key=STRIPE_KEY, webhook_secrets=[WHSEC], seed=3,
                                          delivery_initial_backoff_seconds=0.05)) as stripe, \
            bridgepay_simulator(BridgePayConfig(**BP, seed=3, sandbox_amounts=True)) as bridgepay:
        gateway = gateways(config(stripe.url, bridgepay.url), GATEWAY_DATABASE_URL=database_url,
                           GATEWAY_LOG_LEVEL="debug", GATEWAY_CALLBACK_URL=f"{receiver_url}/callbacks",
                           GATEWAY_CALLBACK_SECRETS=json.dumps([CALLBACK_SECRET]),
                           GATEWAY_CALLBACK_POLL_SECONDS="0.1", GATEWAY_CALLBACK_INITIAL_BACKOFF_SECONDS="0.1",
                           GATEWAY_WEBHOOK_POLL_SECONDS="0.1", GATEWAY_RETRY_INITIAL_BACKOFF_SECONDS="0.01",
                           GATEWAY_RETRY_MAX_BACKOFF_SECONDS="0.05", GATEWAY_REFUND_RESPONSE_BUDGET_SECONDS="5")
        gateway.wait_ready()
        async with httpx.AsyncClient(base_url=stripe.url, timeout=10) as control:
            resp = await control.post("/_sim/webhooks/endpoint", headers={"Authorization": f"Bearer {STRIPE_KEY}"},
                                      json={"url": f"{gateway.url}/v1/webhooks/stripe", "secrets": [WHSEC]})
            assert resp.status_code == 200, resp.text
        async with httpx.AsyncClient(base_url=gateway.url, timeout=15) as gw:
            derived = await drive(gw, stripe, bridgepay)
        await eventually(lambda: _callbacks_delivered(receiver))
        gateway.stop()
    text = gateway.logs()
    # The paths above were taken and logged (a scan of nothing would prove nothing).
    for event in ("webhook_rejected", "webhook_received", "webhook_unreadable", "refund_state_changed",
                  "processor_retry", "callback_failed", "webhook_payment_without_invoice"):
        assert event in text, f"{event} was not logged:\n{text[-3000:]}"
    secrets = [API_KEY, *WRONG_KEYS, STRIPE_KEY, STRIPE_WRONG_KEY, WHSEC, BP["password"], BP_WRONG_PASSWORD,
               CALLBACK_SECRET, *CARDS, *derived]
    leaked = [s for s in secrets if s in text]
    assert leaked == [], f"reached the logs: {[s[:8] + '...' for s in leaked]}"
    assert card_like(text) == []
    # Nor the callbacks, nor any table of the database.
    for where, seen in (("callbacks", b"\n".join(receiver.bodies).decode()),
                        ("database", await _dump(database_url))):
        leaked = [s for s in secrets if s in seen]
        rows = [line[:300] for line in seen.splitlines() if any(s in line for s in leaked)]
        assert leaked == [], f"reached the {where}: {[s[:8] + '...' for s in leaked]} in {rows[:3]}"
        assert card_like(seen) == [], (where, [line[:400] for line in seen.splitlines() if card_like(line)][:3])



async def _dump(database_url: str) -> str:
    conn = await asyncpg.connect(database_url)
    try:
        return await database_text(conn)
    finally:
        await conn.close()


async def _callbacks_delivered(receiver: Receiver) -> bool:
    return receiver.calls > 2
