"""Idempotency-Key on POSTs, with Stripe's semantics."""

from __future__ import annotations

import asyncio

from gateway import keys
from tests.conftest import READER_KEY, WRITER_KEY


async def test_replay_with_the_same_key_and_body_returns_byte_identical_response(api):
    tx = await api.transaction(amount=10_000)
    body = {"invoice_id": tx["invoice_id"], "transaction_id": tx["id"], "amount": 1_000, "currency": "EUR"}
    first = await api.post("/v1/refunds", body, headers={"Idempotency-Key": "key-1"})
    first_bytes = await first.read()
    again = await api.post("/v1/refunds", body, headers={"Idempotency-Key": "key-1"})
    assert (first.status, again.status) == (201, 201)
    assert await again.read() == first_bytes
    assert again.headers["Idempotent-Replayed"] == "true"
    assert len(api.mock.executed) == 1
    assert (await (await api.get(f"/v1/transactions/{tx['id']}")).json())["refunded_amount"] == 1_000


async def test_same_json_with_keys_in_another_order_is_the_same_request(api):
    tx = await api.transaction(amount=10_000)
    raw1 = f'{{"invoice_id": "{tx["invoice_id"]}", "amount": 500, "currency": "EUR"}}'
    raw2 = f'{{"currency":"EUR","amount":500,"invoice_id":"{tx["invoice_id"]}"}}'
    headers = {"Idempotency-Key": "key-order", "Content-Type": "application/json"}
    first = await api.post("/v1/refunds", data=raw1, headers=headers)
    again = await api.post("/v1/refunds", data=raw2, headers=headers)
    assert await first.read() == await again.read()


async def test_same_key_with_a_different_body_is_rejected(api):
    tx = await api.transaction(amount=10_000)
    body = {"invoice_id": tx["invoice_id"], "amount": 1_000, "currency": "EUR"}
    await api.post("/v1/refunds", body, headers={"Idempotency-Key": "key-2"})
    resp = await api.post("/v1/refunds", {**body, "amount": 2_000}, headers={"Idempotency-Key": "key-2"})
    assert resp.status == 409
    assert resp.content_type == "application/problem+json"
    assert (await resp.json())["code"] == "idempotency_key_reused"
    assert len(api.mock.executed) == 1


async def test_keys_belong_to_their_client(api):
    tx = await api.transaction(amount=10_000)
    await api.post("/v1/refunds", {"invoice_id": tx["invoice_id"], "amount": 100, "currency": "EUR"},
                   headers={"Idempotency-Key": "shared"})
    resp = await api.post("/v1/transactions", {"processor": "mock", "psp_reference": "ch_x", "invoice_id": "i",
                                               "amount": 1, "currency": "EUR"},
                          key=READER_KEY, headers={"Idempotency-Key": "shared"})
    assert resp.status == 403  # the reader's own attempt, not the writer's replay


async def test_declined_refund_is_replayed_as_declined(api):
    tx = await api.transaction(amount=10_000)
    body = {"invoice_id": tx["invoice_id"], "amount": 4001, "currency": "EUR"}
    first = await api.post("/v1/refunds", body, headers={"Idempotency-Key": "key-decl"})
    again = await api.post("/v1/refunds", body, headers={"Idempotency-Key": "key-decl"})
    assert await first.read() == await again.read()
    assert (await again.json())["status"] == "failed"


async def test_validation_errors_are_not_stored_so_a_corrected_request_can_reuse_the_key(api):
    tx = await api.transaction(amount=10_000)
    bad = await api.post("/v1/refunds", {"invoice_id": tx["invoice_id"], "amount": -1, "currency": "EUR"},
                         headers={"Idempotency-Key": "key-3"})
    assert bad.status == 422
    good = await api.post("/v1/refunds", {"invoice_id": tx["invoice_id"], "amount": 1, "currency": "EUR"},
                          headers={"Idempotency-Key": "key-3"})
    assert good.status == 201


async def test_a_refusal_by_the_balance_is_kept_so_the_same_command_never_turns_into_a_refund(api):
    # The billing core was told "nothing left to refund"; a retry of that command must hear the
    # same, even once the balance has changed, or a credit note settled off-PSP is refunded twice.
    tx = await api.transaction(amount=5_000)
    await api.refund(tx, 4_000)
    body = {"invoice_id": tx["invoice_id"], "transaction_id": tx["id"], "amount": 2_000, "currency": "EUR"}
    refused = await api.post("/v1/refunds", body, headers={"Idempotency-Key": "key-refused"})
    assert (refused.status, (await refused.json())["code"]) == (422, "amount_exceeds_refundable")
    again = await api.post("/v1/refunds", body, headers={"Idempotency-Key": "key-refused"})
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert await again.read() == await refused.read()


async def test_concurrent_requests_with_one_key_execute_once(api):
    tx = await api.transaction(amount=10_000)
    body = {"invoice_id": tx["invoice_id"], "amount": 700, "currency": "EUR"}
    responses = await asyncio.gather(*(api.post("/v1/refunds", body, headers={"Idempotency-Key": "race"})
                                       for _ in range(10)))
    statuses = [r.status for r in responses]
    assert set(statuses) <= {201, 409} and 201 in statuses
    for r in responses:
        if r.status == 409:
            assert (await r.json())["code"] == "idempotency_key_in_use" and r.headers["Retry-After"]
    assert len(api.mock.executed) == 1
    assert (await (await api.get(f"/v1/transactions/{tx['id']}")).json())["refunded_amount"] == 700


async def test_a_key_left_locked_by_a_crashed_request_recovers_the_refund_it_created(api):
    """The first request committed its refund and died before storing its answer."""
    tx = await api.transaction(amount=10_000)
    body = {"invoice_id": tx["invoice_id"], "amount": 800, "currency": "EUR"}
    first = await (await api.post("/v1/refunds", body)).json()
    async with api.app[keys.POOL].acquire() as conn:
        await conn.execute(
            "INSERT INTO idempotency_keys (client_id, key, method, path, request_hash, resource_id, locked_until) "
            "VALUES ('billing', 'crashed', 'POST', '/v1/refunds', $1, $2, now() - interval '1 second')",
            _hash_of(body), first["id"])
    resp = await api.post("/v1/refunds", body, headers={"Idempotency-Key": "crashed"})
    assert resp.status == 201
    assert (await resp.json())["id"] == first["id"]
    assert len(api.mock.executed) == 1


def _hash_of(body: dict) -> bytes:
    import hashlib

    import orjson

    canonical = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(b"POST /v1/refunds\n" + canonical).digest()


async def test_invalid_idempotency_key_is_rejected(api):
    resp = await api.post("/v1/refunds", {}, headers={"Idempotency-Key": "x" * 256})
    assert resp.status == 400 and (await resp.json())["code"] == "invalid_idempotency_key"


async def test_transaction_registration_accepts_idempotency_keys(api):
    body = {"processor": "mock", "psp_reference": "ch_idem", "invoice_id": "INV-I", "amount": 100, "currency": "EUR"}
    first = await api.post("/v1/transactions", body, headers={"Idempotency-Key": "tx-key"})
    again = await api.post("/v1/transactions", body, headers={"Idempotency-Key": "tx-key"}, key=WRITER_KEY)
    assert (first.status, again.status) == (201, 201)
    assert await first.read() == await again.read()
