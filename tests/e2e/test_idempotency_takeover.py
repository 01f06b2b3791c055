"""An Idempotency-Key whose lock expired while its first request still ran, or whose request was
cancelled after its refund committed: one key never makes two refunds, and a key that names a
committed refund is never thrown away."""

from __future__ import annotations

import asyncio

import pytest

from gateway import errors, keys, services
from gateway.db import store
from gateway.models import RefundCreate
from tests.conftest import Api, eventually, make_settings, start_api

WAITING_ON_LOCKS = """
SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"""
# Time passing, without waiting for it: the key is claimed with a lock that has already run out
# (35 s in production). An UPDATE from the test could not do it: the first request holds the row.
EXPIRED_CLAIMS = """
CREATE FUNCTION test_expired_claim() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.locked_until = now() - interval '1 second';
    RETURN NEW;
END $$;
CREATE TRIGGER test_expired_claim BEFORE INSERT ON idempotency_keys FOR EACH ROW EXECUTE FUNCTION test_expired_claim();
"""

# One row once the key's holder has let go of it; `row` is null if the key was deleted.
RELEASED = """
SELECT (SELECT k FROM idempotency_keys k WHERE client_id = $1 AND key = $2) AS row
WHERE NOT EXISTS (SELECT 1 FROM idempotency_keys WHERE client_id = $1 AND key = $2 AND locked_until > now())"""


async def _refunds_of(api, transaction_id: str) -> list:
    async with api.app[keys.POOL].acquire() as conn:
        return await conn.fetch("SELECT * FROM refunds WHERE transaction_id = $1", transaction_id)


async def test_a_key_taken_over_while_its_first_request_waits_for_the_payment_makes_one_refund(api):
    tx = await api.transaction(amount=10_000)
    body = {"invoice_id": tx["invoice_id"], "transaction_id": tx["id"], "amount": 1_000, "currency": "EUR"}
    headers = {"Idempotency-Key": "slow-first"}
    pool = api.app[keys.POOL]
    async with pool.acquire() as holder, pool.acquire() as watcher:
        # Another refund of the same payment holds its row lock: the first request waits behind it.
        locked = holder.transaction()
        await locked.start()
        await holder.execute("SELECT * FROM transactions WHERE id = $1 FOR UPDATE", tx["id"])
        await watcher.execute(EXPIRED_CLAIMS)
        first = asyncio.create_task(api.post("/v1/refunds", body, headers=headers))
        await eventually(lambda: _at_least(watcher, WAITING_ON_LOCKS, 1))
        # Its key's lock has run out meanwhile, and the client's retry arrives.
        second = asyncio.create_task(api.post("/v1/refunds", body, headers=headers))
        await eventually(lambda: _at_least(watcher, WAITING_ON_LOCKS, 2))
        await locked.rollback()
    answers = [await first, await second]
    assert [a.status for a in answers] == [201, 201], [await a.text() for a in answers]
    ids = {(await a.json())["id"] for a in answers}
    assert len(ids) == 1
    refunds = await _refunds_of(api, tx["id"])
    assert [r["id"] for r in refunds] == list(ids)
    assert len(api.mock.executed) == 1
    again = await api.post("/v1/refunds", body, headers=headers)
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert await again.read() in {await a.read() for a in answers}
    assert len(await _refunds_of(api, tx["id"])) == 1


async def _at_least(conn, query: str, n: int) -> bool:
    return await conn.fetchval(query) >= n


async def test_a_request_cancelled_after_its_refund_committed_keeps_its_key(database_url):
    # A processor slow enough that the request is still waiting for it when it is cancelled.
    settings = make_settings(database_url, processors=[{"id": "mock", "kind": "mock", "latency_seconds": 1.0}])
    client = await start_api(settings)
    try:
        api = Api(client)
        tx = await api.transaction(amount=10_000)
        body = {"invoice_id": tx["invoice_id"], "transaction_id": tx["id"], "amount": 1_000, "currency": "EUR"}
        headers = {"Idempotency-Key": "cancelled"}
        request = asyncio.create_task(api.post("/v1/refunds", body, headers=headers))
        refunds = await eventually(lambda: _refunds_of(api, tx["id"]))
        assert not api.mock.executed  # the processor call is still in flight
        # The client goes away (as a shutdown does to the handler): the handler is cancelled.
        request.cancel()
        async with api.app[keys.POOL].acquire() as conn:
            # Released by the cancelled request: deleted before the fix, its lock ended after it.
            released = await eventually(lambda: conn.fetchrow(RELEASED, "billing", "cancelled"))
        row = released["row"]
        assert row is not None, "the key of a committed refund was thrown away"
        assert row["resource_id"] == refunds[0]["id"] and row["status_code"] is None
        # The retry needs no 35 s wait: it takes the key over at once and finds the refund.
        retry = await api.post("/v1/refunds", body, headers=headers)
        assert retry.status == 201, await retry.text()
        assert (await retry.json())["id"] == refunds[0]["id"]
        await eventually(lambda: _executed(api))
        await asyncio.sleep(0.3)
        assert len(api.mock.executed) == 1
        assert [r["id"] for r in await _refunds_of(api, tx["id"])] == [refunds[0]["id"]]
        replay = await api.post("/v1/refunds", body, headers=headers)
        assert replay.headers.get("Idempotent-Replayed") == "true"
        assert await replay.read() == await retry.read()
    finally:
        await client.close()


async def _executed(api) -> bool:
    return len(api.mock.executed) >= 1


async def test_a_refund_made_under_a_key_is_returned_to_the_keys_other_holder(api):
    """The request that took the key over made the refund first: the slower first one, reaching
    create_refund with the same key, finds it rather than making another."""
    tx = await api.transaction(amount=10_000)
    cmd = RefundCreate.model_validate({"invoice_id": tx["invoice_id"], "transaction_id": tx["id"], "amount": 1_000,
                                       "currency": "EUR"})
    claim = services.IdempotencyClaim("billing", "two-holders")
    async with api.app[keys.POOL].acquire() as conn:
        await store.claim_key(conn, "billing", "two-holders", "POST", "/v1/refunds", b"h", 35)
        made = await services.create_refund(conn, cmd, lease_seconds=30, claim=claim)
        assert made.created
        first = made.refund
        again = await services.create_refund(conn, cmd, lease_seconds=30, claim=claim)
        assert not again.created and again.refund["id"] == first["id"]
        assert (await store.get_key(conn, "billing", "two-holders"))["resource_id"] == first["id"]
        # A key given up by its other holder meanwhile is no claim at all: retry, never refund unguarded.
        with pytest.raises(errors.ServiceUnavailable) as lost:
            await services.create_refund(conn, cmd, lease_seconds=30, claim=services.IdempotencyClaim("billing", "gone"))
        assert lost.value.code == "idempotency_key_lost"
    assert len(await _refunds_of(api, tx["id"])) == 1
