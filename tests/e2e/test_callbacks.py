"""Callbacks to the billing core: every refund event reaches its endpoint at least once, in order
per refund, signed, even when the endpoint fails for a while; GET /v1/events serves the same."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections import defaultdict

import orjson
import pytest
from aiohttp import web

from adapters.simkit import serve_on_loopback
from gateway import keys
from gateway.db import store
from tests.conftest import Api, eventually, make_settings, start_api

SECRET = "cb_secret_0123456789"


class BillingCore:
    """A billing-core endpoint on loopback that fails its first `failures` requests."""

    def __init__(self, failures: int):
        self.failures = failures
        self.received: list[tuple[dict, dict[str, str], bytes]] = []
        self.app = web.Application()
        self.app.router.add_post("/callbacks", self.handle)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if self.failures > 0:
            self.failures -= 1
            return web.Response(status=500)
        self.received.append((orjson.loads(body), dict(request.headers), body))
        return web.Response(status=204)


def valid_signature(header: str, body: bytes, secret: str) -> bool:
    parts = dict(p.split("=", 1) for p in header.split(",") if p.startswith("t="))
    v1s = [p.split("=", 1)[1] for p in header.split(",") if p.startswith("v1=")]
    expected = hmac.new(secret.encode(), parts["t"].encode() + b"." + body, hashlib.sha256).hexdigest()
    return any(hmac.compare_digest(expected, v) for v in v1s)


@pytest.fixture
async def billing_core():
    core = BillingCore(failures=6)
    async with serve_on_loopback(core.app) as url:
        core.url = f"{url}/callbacks"
        yield core


async def test_failing_endpoint_receives_every_event_in_order_per_refund_signed(database_url, billing_core):
    settings = make_settings(database_url, callback_url=billing_core.url, callback_secrets=[SECRET],
                             callback_initial_backoff_seconds=0.05, callback_max_backoff_seconds=0.2,
                             callback_poll_seconds=0.05)
    client = await start_api(settings)
    api = Api(client)
    try:
        tx = await api.transaction(amount=50_000)
        ids = [(await api.refund(tx, amount))["id"] for amount in (1_000, 4001, 7001, 2_000)]
        pool = api.app[keys.POOL]
        for _ in range(200):
            async with pool.acquire() as conn:
                left = await conn.fetchval("SELECT count(*) FROM outbox_events WHERE delivered_at IS NULL")
                pending = await conn.fetchval("SELECT count(*) FROM refunds WHERE status = 'pending'")
            if left == 0 and pending == 0:
                break
            await asyncio.sleep(0.05)
        async with pool.acquire() as conn:
            outbox = await conn.fetch("SELECT id, refund_id, version, type FROM outbox_events ORDER BY id")
            failed_deliveries = await conn.fetchval("SELECT count(*) FROM callback_deliveries WHERE error IS NOT NULL")
    finally:
        await client.close()

    assert failed_deliveries == 6  # the endpoint's failures are in the delivery log
    received_ids = {event["id"] for event, _, _ in billing_core.received}
    assert received_ids == {r["id"] for r in outbox}  # every event, at least once
    versions = defaultdict(list)
    for event, headers, body in billing_core.received:
        assert valid_signature(headers["Gateway-Signature"], body, SECRET)
        assert headers["Gateway-Event-Id"] == str(event["id"])
        versions[event["refund_id"]].append(event["version"])
    for refund_id in ids:
        seen = versions[refund_id]
        assert seen == sorted(seen) and seen[0] == 1, (refund_id, seen)  # in order per refund
    finals = {event["refund_id"]: event for event, _, _ in billing_core.received}
    assert [finals[i]["data"]["status"] for i in ids] == ["succeeded", "failed", "succeeded", "succeeded"]
    assert finals[ids[1]]["type"] == "refund.failed" and finals[ids[1]]["previous_status"] == "pending"


async def test_events_can_be_polled_after_a_cursor(api):
    tx = await api.transaction(amount=10_000)
    first = await api.refund(tx, 1_000)
    page = await (await api.get("/v1/events", params={"limit": "1"})).json()
    assert page["has_more"] is True
    [created] = page["data"]
    assert (created["type"], created["refund_id"], created["version"]) == ("refund.created", first["id"], 1)
    rest = await (await api.get("/v1/events", params={"after": str(created["id"])})).json()
    assert [e["type"] for e in rest["data"]] == ["refund.succeeded"]
    assert rest["data"][0]["data"]["status"] == "succeeded" and rest["has_more"] is False


async def events_after(api, after: int) -> list[dict]:
    resp = await api.get("/v1/events", params={"after": str(after)})
    assert resp.status == 200, await resp.text()
    return (await resp.json())["data"]


async def add_event(conn, refund_id: str, version: int) -> None:
    await store.insert_outbox(conn, refund_id, version, "refund.updated",
                              {"type": "refund.updated", "refund_id": refund_id, "version": version})


async def test_polling_never_passes_an_event_whose_transaction_is_still_open(api):
    tx = await api.transaction(amount=10_000)
    refund = await api.refund(tx, 1_000)
    cursor = (await events_after(api, 0))[-1]["id"]
    pool = api.app[keys.POOL]
    async with pool.acquire() as slow, pool.acquire() as quick:
        open_transaction = slow.transaction()
        await open_transaction.start()
        await add_event(slow, refund["id"], 10)  # the lower id, still uncommitted
        async with quick.transaction():
            await add_event(quick, refund["id"], 11)  # a higher id, committed first
        ids = await slow.fetch("SELECT id FROM outbox_events WHERE version IN (10, 11) ORDER BY version")
        assert ids[0]["id"] < ids[1]["id"]
        assert await events_after(api, cursor) == []  # not 11 alone: the cursor would pass 10
        await open_transaction.commit()
    served = await eventually(lambda: events_after(api, cursor))
    assert [e["version"] for e in served] == [10, 11]


async def test_event_committed_first_with_a_higher_id_is_served_before_an_open_lower_one(api):
    tx = await api.transaction(amount=10_000)
    refund = await api.refund(tx, 1_000)
    cursor = (await events_after(api, 0))[-1]["id"]
    pool = api.app[keys.POOL]
    async with pool.acquire() as slow, pool.acquire() as quick:
        quick_transaction = quick.transaction()
        await quick_transaction.start()
        await quick.fetchval("SELECT pg_current_xact_id()")  # the older transaction...
        slow_transaction = slow.transaction()
        await slow_transaction.start()
        await add_event(slow, refund["id"], 20)  # ...and the younger one takes the lower id
        await add_event(quick, refund["id"], 21)
        await quick_transaction.commit()
        served = await eventually(lambda: events_after(api, cursor))
        assert [e["version"] for e in served] == [21]
        cursor = served[-1]["id"]
        await slow_transaction.commit()
    served = await eventually(lambda: events_after(api, cursor))
    assert [e["version"] for e in served] == [20]  # behind the cursor by id, after it in commit order


async def test_polling_after_an_event_that_does_not_exist_is_refused(api):
    resp = await api.get("/v1/events", params={"after": "987654"})
    assert resp.status == 422 and (await resp.json())["code"] == "unknown_cursor"


def test_callbacks_without_a_secret_are_refused_at_start():
    from gateway.settings import ConfigError, load_settings

    with pytest.raises(ConfigError, match="callback_secrets"):
        load_settings(database_url="postgresql://x@127.0.0.1:1/x", callback_url="http://127.0.0.1:1/cb")
