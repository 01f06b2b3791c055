"""A refund webhook racing the registration of its payment, through the real server with its inbox
worker running: whichever commits first, the event is applied once the payment is known and never
stays `unmatched`, and the payment's balance counts the refund."""

from __future__ import annotations

import asyncio
import random
import uuid

import orjson
import pytest

from gateway import keys
from tests.conftest import Api, make_settings, signed_mock_webhook, start_api
from tests.ids import token

WHSEC = "whsec_race_0123456789"
RACES = 200
AT_ONCE = 5  # races in flight together: few enough that the inbox takes each event at once (more overlap)
EXTERNAL = 500


@pytest.fixture
async def racing(database_url):
    # The inbox worker runs as in production, woken by each webhook it stores.
    client = await start_api(make_settings(database_url, processors=[
        {"id": "mock", "kind": "mock", "webhook_secrets": [WHSEC]}]))
    try:
        yield Api(client)
    finally:
        await client.close()


def refund_created(payment: str) -> tuple[bytes, dict[str, str]]:
    """A refund made outside the gateway (in the processor's dashboard) on `payment`, signed."""
    return signed_mock_webhook({"id": f"re_{uuid.uuid4().hex[:12]}", "payment": payment, "amount": EXTERNAL,
                                "currency": "EUR", "status": "succeeded"}, WHSEC, "refund.created")


async def race(api: Api, rng: random.Random) -> tuple[str, str]:
    """The webhook, and 0-30 ms later the registration of its payment; (transaction id, event id)."""
    payment = f"ch_{token()}"
    body, headers = refund_created(payment)

    async def webhook() -> None:
        resp = await api.post("/v1/webhooks/mock", data=body, key=None, headers=headers)
        assert resp.status == 200, await resp.text()

    async def registration() -> dict:
        await asyncio.sleep(rng.uniform(0, 0.030))
        return await api.transaction(amount=10_000, psp_reference=payment)

    _, tx = await asyncio.gather(webhook(), registration())
    return tx["id"], orjson.loads(body)["id"]


async def open_events(api: Api) -> dict[str, int]:
    async with api.app[keys.POOL].acquire() as conn:
        rows = await conn.fetch("SELECT status, count(*) AS n FROM webhook_events "
                                "WHERE status IN ('received', 'failed', 'unmatched') GROUP BY 1")
    return {r["status"]: r["n"] for r in rows}


async def test_refund_webhook_racing_the_registration_of_its_payment_is_never_left_unmatched(racing):
    api, rng = racing, random.Random(20240611)
    done: list[tuple[str, str]] = []
    for _ in range(RACES // AT_ONCE):
        done += await asyncio.gather(*(race(api, rng) for _ in range(AT_ONCE)))

    # The inbox finishes what it holds; a parked event is woken by its registration (or, at worst,
    # swept: the first retry of a parked event is due 2 s after it was parked).
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 8
    while (left := await open_events(api)) and loop.time() < deadline:
        await asyncio.sleep(0.1)
    assert left == {}, f"events not applied: {left}"

    async with api.app[keys.POOL].acquire() as conn:
        events = dict(await conn.fetch("SELECT event_id, status FROM webhook_events"))
        balances = await conn.fetch("SELECT id, refunded_amount, reserved_amount FROM transactions")
        externals = await conn.fetchval("SELECT count(*) FROM refunds WHERE origin = 'external'")
    assert sorted(events) == sorted(event_id for _, event_id in done)
    assert set(events.values()) == {"applied"}
    assert {tx_id for tx_id, _ in done} == {b["id"] for b in balances}
    assert [b for b in balances if (b["refunded_amount"], b["reserved_amount"]) != (EXTERNAL, 0)] == []
    assert externals == RACES  # recorded once each
