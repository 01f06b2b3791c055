"""While Postgres is down, commands and webhooks get 503 with Retry-After, /readyz fails and
/healthz stays up; when it is back, the gateway recovers by itself and nothing is lost: the
webhook answered 503, sent again, is stored and applied."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from pathlib import Path

import orjson
import pytest

from adapters.stripe.transformers import signature_header
from gateway import embedded, keys
from gateway.db.migrate import migrate
from gateway.db.pool import connect
from tests.conftest import Api, eventually, make_settings, start_api

WHSEC = "whsec_outage_0123456789"


@pytest.fixture
def own_postgres():
    """A Postgres of this test's own, so it can be stopped without touching the others'."""
    folder = Path(tempfile.mkdtemp(prefix="gw-outage-"))
    pg = embedded.start(folder, delete_on_stop=False)
    try:
        yield folder, pg
    finally:
        embedded.start(folder).stop()  # whatever state it is in, stop it by its handle and PID
        shutil.rmtree(folder, ignore_errors=True)


async def test_outage_answers_503_and_the_gateway_recovers_when_postgres_is_back(own_postgres):
    folder, pg = own_postgres
    conn = await connect(pg.uri)
    await migrate(conn)
    await conn.close()
    settings = make_settings(pg.uri, processors=[
        {"id": "mock", "kind": "mock"},
        {"id": "stripe", "kind": "stripe", "base_url": "http://127.0.0.1:9", "api_key": "sk_test_unused_0123",
         "webhook_secrets": [WHSEC]}])
    client = await start_api(settings)
    api = Api(client)
    try:
        tx = await api.transaction(amount=10_000)
        pg.stop()  # Postgres goes away

        refund = await api.post("/v1/refunds", {"invoice_id": tx["invoice_id"], "amount": 100, "currency": "EUR"})
        assert refund.status == 503 and refund.headers["Retry-After"]
        assert (await refund.json())["code"] == "database_unavailable"
        # A payment the processor announces while the database is away.
        payment = orjson.dumps({"id": "evt_outage", "object": "event", "type": "charge.succeeded", "data": {"object": {
            "id": "ch_outage", "object": "charge", "amount": 2_500, "currency": "eur",
            "metadata": {"invoice_id": "inv_outage"}}}})

        async def send_webhook():
            return await api.post("/v1/webhooks/stripe", data=payment, key=None, headers={
                "Content-Type": "application/json",
                "Stripe-Signature": signature_header(payment, [WHSEC.encode()], int(time.time()))})

        hook = await send_webhook()
        assert hook.status == 503 and hook.headers["Retry-After"]  # the processor will send it again
        assert (await api.get("/readyz", key=None)).status == 503
        assert (await api.get("/healthz", key=None)).status == 200

        embedded.start(folder)  # Postgres is back: same data, same socket
        for _ in range(100):
            if (await api.get("/readyz", key=None)).status == 200:
                break
            await asyncio.sleep(0.1)
        refund = await api.refund(tx, 100)
        assert refund["status"] == "succeeded"
        body = await (await api.get(f"/v1/transactions/{tx['id']}")).json()
        assert (body["refunded_amount"], body["reserved_amount"]) == (100, 0)  # nothing half-written

        hook = await send_webhook()  # the processor's retry, after Retry-After
        assert hook.status == 200 and await hook.json() == {"received": True, "event_id": "evt_outage",
                                                             "duplicate": False}  # not stored during the outage

        async def applied():
            async with api.app[keys.POOL].acquire() as conn:
                status = await conn.fetchval("SELECT status FROM webhook_events WHERE event_id = 'evt_outage'")
            return status == "applied"
        await eventually(applied)
        payments = await (await api.get("/v1/transactions", params={"invoice_id": "inv_outage"})).json()
        assert [(p["psp_reference"], p["amount"]) for p in payments["data"]] == [("ch_outage", 2_500)]
    finally:
        await client.close()
