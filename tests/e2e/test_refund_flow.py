"""End to end through the real HTTP server on loopback and the mock processor."""

from __future__ import annotations

import asyncio

import pytest

from gateway import keys


async def _transaction_body(api, tx):
    resp = await api.get(f"/v1/transactions/{tx['id']}")
    assert resp.status == 200
    return await resp.json()


async def test_partial_refund_succeeds_and_reduces_refundable(api):
    tx = await api.transaction(amount=10_000)
    refund = await api.refund(tx, 2_500, credit_note_id="CN-1", reason="requested_by_customer",
                              metadata={"note": "damaged"})
    assert refund["status"] == "succeeded" and refund["stage"] == "done"
    assert refund["amount"] == 2_500 and refund["psp_refund_id"].startswith("mre_")
    assert (refund["credit_note_id"], refund["reason"], refund["metadata"]) == ("CN-1", "requested_by_customer",
                                                                               {"note": "damaged"})
    body = await _transaction_body(api, tx)
    assert (body["refunded_amount"], body["reserved_amount"], body["refundable_amount"]) == (2_500, 0, 7_500)


async def test_refund_without_amount_refunds_everything_left(api):
    tx = await api.transaction(amount=10_000)
    await api.refund(tx, 1_000)
    rest = await api.refund(tx)
    assert rest["amount"] == 9_000 and rest["status"] == "succeeded"
    assert (await _transaction_body(api, tx))["refundable_amount"] == 0


async def test_refund_is_matched_by_invoice_when_it_has_one_payment(api):
    tx = await api.transaction(amount=5_000)
    resp = await api.post("/v1/refunds", {"invoice_id": tx["invoice_id"], "amount": 500, "currency": "EUR"})
    assert resp.status == 201
    assert (await resp.json())["transaction_id"] == tx["id"]


async def test_refund_is_matched_by_processor_reference(api):
    tx = await api.transaction(amount=5_000)
    resp = await api.post("/v1/refunds", {"invoice_id": tx["invoice_id"], "psp_reference": tx["psp_reference"],
                                          "amount": 500, "currency": "EUR"})
    assert resp.status == 201
    assert (await resp.json())["transaction_id"] == tx["id"]


async def test_invoice_refund_endpoint_takes_the_seed_shape(api):
    tx = await api.transaction(amount=3_000, currency="JPY")
    resp = await api.post(f"/v1/invoices/{tx['invoice_id']}/refund",
                          {"amount": 1_000, "credit_note_id": "CN-7", "reason": "duplicate"})
    assert resp.status == 201, await resp.text()
    body = await resp.json()
    assert (body["amount"], body["currency"], body["credit_note_id"], body["status"]) == (1_000, "JPY", "CN-7",
                                                                                        "succeeded")
    resp = await api.post(f"/v1/invoices/{tx['invoice_id']}/refund", {})
    assert (await resp.json())["amount"] == 2_000


async def test_second_refund_for_the_same_credit_note_returns_the_first(api):
    tx = await api.transaction(amount=10_000)
    first = await api.refund(tx, 1_000, credit_note_id="CN-9")
    again = await api.refund(tx, 1_000, credit_note_id="CN-9", expect=200)
    assert again["id"] == first["id"]
    resp = await api.post("/v1/refunds", {"invoice_id": tx["invoice_id"], "credit_note_id": "CN-9",
                                          "currency": "EUR"})
    assert resp.status == 200 and (await resp.json())["id"] == first["id"]
    assert (await _transaction_body(api, tx))["refunded_amount"] == 1_000
    assert len(api.mock.executed) == 1


async def test_declined_refund_fails_with_the_processor_code_and_releases_the_balance(api):
    tx = await api.transaction(amount=10_000)
    refund = await api.refund(tx, 4001)
    assert refund["status"] == "failed"
    assert refund["failure_code"] == "expired_or_canceled_card"
    assert "expired_or_canceled_card" in refund["failure_message"]
    body = await _transaction_body(api, tx)
    assert (body["refunded_amount"], body["reserved_amount"]) == (0, 0)


async def test_transient_fault_is_retried_with_the_same_idempotency_key(api):
    tx = await api.transaction(amount=10_000)
    refund = await api.refund(tx, 5001)
    assert refund["status"] == "succeeded" and refund["attempts"] == 2
    assert len(api.mock.executed) == 1
    async with api.app[keys.POOL].acquire() as conn:
        attempts = await conn.fetch("SELECT outcome, error_class FROM refund_attempts WHERE refund_id = $1 ORDER BY id",
                                    refund["id"])
    assert [(a["outcome"], a["error_class"]) for a in attempts] == [("error", "transient"), ("succeeded", None)]


async def test_rate_limited_call_is_retried(api):
    tx = await api.transaction(amount=10_000)
    refund = await api.refund(tx, 5029)
    assert refund["status"] == "succeeded" and refund["attempts"] == 2


async def eventually_refund(api, refund_id: str, done, timeout: float = 10.0) -> dict:
    """Poll a refund until `done(refund)`; bounded."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        refund = await (await api.get(f"/v1/refunds/{refund_id}")).json()
        if done(refund) or asyncio.get_running_loop().time() > deadline:
            return refund
        await asyncio.sleep(0.05)


async def test_refund_whose_retries_run_out_is_retried_durably_then_needs_attention(api):
    tx = await api.transaction(amount=10_000)
    settings = api.app[keys.SETTINGS]
    refund = await api.refund(tx, 5002)
    assert (refund["status"], refund["stage"]) == ("pending", "not_sent")  # answered; retries go on
    assert refund["attempts"] == settings.retry_max_attempts and "will retry" in refund["failure_message"]
    refund = await eventually_refund(api, refund["id"], lambda r: r["status"] != "pending")
    assert (refund["status"], refund["stage"], refund["failure_code"]) == (
        "requires_attention", "not_sent", "retries_exhausted")
    assert refund["attempts"] >= settings.durable_retry_max_attempts
    assert (await _transaction_body(api, tx))["reserved_amount"] == 5002  # kept until someone resolves it


async def test_transient_fault_that_outlasts_the_request_is_retried_by_the_worker(api):
    tx = await api.transaction(amount=10_000)
    api.mock.fail_next(amount=1234, times=api.app[keys.SETTINGS].retry_max_attempts + 1)
    refund = await api.refund(tx, 1234)
    assert (refund["status"], refund["stage"]) == ("pending", "not_sent")
    refund = await eventually_refund(api, refund["id"], lambda r: r["status"] != "pending")
    assert refund["status"] == "succeeded" and refund["failure_message"] is None
    assert len(api.mock.executed) == 1


async def test_lost_answer_is_looked_up_before_any_resend_even_with_an_idempotency_key(api):
    tx = await api.transaction(amount=10_000)
    refund = await api.refund(tx, 6001)
    assert (refund["status"], refund["attempts"]) == ("succeeded", 1)
    assert len(api.mock.executed) == 1


async def test_lost_answer_to_a_deduplicating_processor_without_lookup_is_resent_with_the_same_key(settings):
    from tests.conftest import Api, start_api

    settings = settings.model_copy(update={"processors": [
        settings.processors[0].model_copy(update={"lookup": False})]})
    client = await start_api(settings)
    api = Api(client)
    try:
        tx = await api.transaction(amount=10_000)
        refund = await api.refund(tx, 6001)
        assert (refund["status"], refund["attempts"]) == ("succeeded", 2)
        assert len(api.mock.executed) == 1
    finally:
        await client.close()


async def test_lost_answer_from_a_processor_without_idempotency_is_looked_up_not_resent(api):
    tx = await api.transaction(amount=10_000, processor="mock2")
    refund = await api.refund(tx, 6001)
    assert (refund["status"], refund["attempts"]) == ("succeeded", 1)
    assert len(api.app[keys.ADAPTERS]["mock2"].executed) == 1
    async with api.app[keys.POOL].acquire() as conn:
        calls = await conn.fetch("SELECT call, outcome FROM refund_attempts WHERE refund_id = $1 ORDER BY id",
                                 refund["id"])
    assert [(c["call"], c["outcome"]) for c in calls] == [("refund", "error"), ("lookup", "succeeded")]


async def test_lost_answer_the_processor_has_no_record_of_is_resent_after_the_lookup(api):
    tx = await api.transaction(amount=10_000, processor="mock2")
    refund = await api.refund(tx, 6002)
    refund = await eventually_refund(api, refund["id"], lambda r: r["status"] != "pending")
    assert (refund["status"], refund["stage"]) == ("requires_attention", "outcome_unknown")
    async with api.app[keys.POOL].acquire() as conn:
        calls = [c["call"] for c in await conn.fetch(
            "SELECT call FROM refund_attempts WHERE refund_id = $1 ORDER BY id", refund["id"])]
    # every resend came after a lookup that found nothing
    assert calls[0] == "refund" and all(b == "lookup" for a, b in zip(calls, calls[1:]) if a == "refund")


async def test_lost_answer_from_a_processor_without_idempotency_or_lookup_is_never_resent(api):
    tx = await api.transaction(amount=10_000, processor="mock3")
    refund = await api.refund(tx, 6001)
    assert (refund["status"], refund["stage"], refund["failure_code"]) == (
        "requires_attention", "outcome_unknown", "outcome_unknown")
    assert refund["attempts"] == 1
    assert len(api.app[keys.ADAPTERS]["mock3"].executed) == 1
    assert (await _transaction_body(api, tx))["reserved_amount"] == 6001  # money may have moved: still reserved


async def test_answer_lost_on_every_resend_ends_outcome_unknown_not_failure(api):
    tx = await api.transaction(amount=10_000)
    refund = await api.refund(tx, 6002)
    assert (refund["status"], refund["stage"]) == ("pending", "outcome_unknown")
    refund = await eventually_refund(api, refund["id"], lambda r: r["status"] != "pending")
    assert (refund["status"], refund["stage"], refund["failure_code"]) == (
        "requires_attention", "outcome_unknown", "outcome_unknown")
    assert len(api.mock.executed) == 0


async def test_unrecognised_processor_status_needs_attention_never_success(api):
    tx = await api.transaction(amount=20_000)
    refund = await api.refund(tx, 8001)
    assert (refund["status"], refund["failure_code"]) == ("requires_attention", "unrecognised_processor_status")
    refund = await api.refund(tx, 8002)
    assert (refund["status"], refund["failure_code"]) == ("requires_attention", "processor_protocol_error")


@pytest.mark.parametrize("amount, final, refunded", [(7001, "succeeded", 7001), (7002, "failed", 0)])
async def test_pending_refund_settles_through_the_background_check(api, amount, final, refunded):
    tx = await api.transaction(amount=10_000)
    refund = await api.refund(tx, amount)
    assert (refund["status"], refund["stage"]) == ("pending", "pending_at_processor")
    for _ in range(100):
        resp = await api.get(f"/v1/refunds/{refund['id']}")
        refund = await resp.json()
        if refund["status"] != "pending":
            break
        await asyncio.sleep(0.05)
    assert refund["status"] == final and refund["stage"] == "done"
    body = await _transaction_body(api, tx)
    assert (body["refunded_amount"], body["reserved_amount"]) == (refunded, 0)


async def test_slow_processor_gets_a_pending_answer_and_the_refund_finishes_afterwards(settings):
    from tests.conftest import Api, start_api

    settings = settings.model_copy(update={"refund_response_budget_seconds": 0.1, "processors": [
        settings.processors[0].model_copy(update={"latency_seconds": 0.5})]})
    client = await start_api(settings)
    api = Api(client)
    try:
        tx = await api.transaction(amount=10_000)
        refund = await api.refund(tx, 1_000)
        assert (refund["status"], refund["stage"]) == ("pending", "sending")
        for _ in range(40):
            await asyncio.sleep(0.05)
            refund = await (await api.get(f"/v1/refunds/{refund['id']}")).json()
            if refund["status"] == "succeeded":
                break
        assert refund["status"] == "succeeded"
    finally:
        await client.close()


async def test_fifty_concurrent_partial_refunds_never_exceed_the_amount(api):
    tx = await api.transaction(amount=10_000)
    bodies = [{"invoice_id": tx["invoice_id"], "transaction_id": tx["id"], "amount": 300, "currency": "EUR"}
              for _ in range(50)]
    responses = await asyncio.gather(*(api.post("/v1/refunds", b) for b in bodies))
    statuses = sorted(r.status for r in responses)
    codes = [(await r.json()).get("code") for r in responses if r.status != 201]
    assert statuses.count(201) == 33  # 33 * 300 = 9900; the 34th would be 10200
    assert set(codes) == {"amount_exceeds_refundable"} and len(codes) == 17
    body = await _transaction_body(api, tx)
    assert body["refunded_amount"] == 9_900 and body["reserved_amount"] == 0
    assert len(api.mock.executed) == 33


async def test_no_database_connection_is_held_during_the_processor_call(settings):
    """The processor call must be able to take every connection in the pool."""
    from adapters.mock import MockAdapter
    from tests.conftest import Api, start_api

    settings = settings.model_copy(update={"db_pool_min": 1, "db_pool_max": 2})
    client = await start_api(settings)
    api = Api(client)
    pool = api.app[keys.POOL]
    seen: list[int] = []

    class PoolHungryMock(MockAdapter):
        async def refund(self, request):
            conns = [await asyncio.wait_for(pool.acquire(), timeout=2) for _ in range(2)]
            seen.append(len(conns))
            for conn in conns:
                await pool.release(conn)
            return await super().refund(request)

    api.app[keys.ADAPTERS]["mock"] = PoolHungryMock("mock")
    try:
        tx = await api.transaction(amount=10_000)
        refund = await api.refund(tx, 1_000)
        assert refund["status"] == "succeeded" and seen == [2]
    finally:
        await client.close()


async def test_events_and_attempts_trace_the_refund(api):
    tx = await api.transaction(amount=10_000)
    refund = await api.refund(tx, 4001)
    async with api.app[keys.POOL].acquire() as conn:
        events = await conn.fetch("SELECT event, from_status, to_status, to_stage, request_id FROM refund_events "
                                  "WHERE refund_id = $1 ORDER BY id", refund["id"])
    assert [(e["event"], e["from_status"], e["to_status"], e["to_stage"]) for e in events] == [
        ("created", None, "pending", "sending"), ("processor_answer", "pending", "failed", "done")]
    assert all(e["request_id"] for e in events)


async def test_list_refunds_paginates_newest_first_with_filters(api):
    tx = await api.transaction(amount=10_000)
    ids = [(await api.refund(tx, 100))["id"] for _ in range(5)]
    await api.refund(tx, 4001)
    page = await (await api.get("/v1/refunds", params={"invoice_id": tx["invoice_id"], "status": "succeeded",
                                                       "limit": "2"})).json()
    assert [r["id"] for r in page["data"]] == ids[::-1][:2] and page["has_more"] is True
    rest = await (await api.get("/v1/refunds", params={"invoice_id": tx["invoice_id"], "status": "succeeded",
                                                       "starting_after": page["data"][-1]["id"]})).json()
    assert [r["id"] for r in rest["data"]] == ids[::-1][2:] and rest["has_more"] is False
    failed = await (await api.get("/v1/refunds", params={"status": "failed"})).json()
    assert [r["amount"] for r in failed["data"]] == [4001]


async def test_transactions_are_listed_by_invoice(api):
    tx = await api.transaction(amount=1_000, invoice_id="INV-LIST")
    other = await api.transaction(amount=2_000, invoice_id="INV-LIST")
    body = await (await api.get("/v1/transactions", params={"invoice_id": "INV-LIST"})).json()
    assert {t["id"] for t in body["data"]} == {tx["id"], other["id"]} and body["has_more"] is False


async def test_registering_the_same_payment_twice_returns_it_and_a_different_body_conflicts(api):
    body = {"processor": "mock", "psp_reference": "ch_same", "invoice_id": "INV-1", "amount": 1_000,
            "currency": "EUR", "customer_id": "cus_1", "metadata": {"a": "b"}}
    first = await api.post("/v1/transactions", body)
    again = await api.post("/v1/transactions", body)
    assert (first.status, again.status) == (201, 200)
    assert (await first.json())["id"] == (await again.json())["id"]
    conflict = await api.post("/v1/transactions", {**body, "amount": 2_000})
    assert conflict.status == 409
    problem = await conflict.json()
    assert problem["code"] == "transaction_conflict" and problem["conflicting_fields"] == ["amount"]


async def test_health_and_readiness(api):
    assert (await api.get("/healthz", key=None)).status == 200
    resp = await api.get("/readyz", key=None)
    assert resp.status == 200 and (await resp.json())["schema_version"] >= 1


async def test_readiness_fails_when_the_database_is_unreachable(api):
    await api.app[keys.POOL].close()
    resp = await api.get("/readyz", key=None)
    assert resp.status == 503 and resp.headers["Retry-After"]
    assert (await api.get("/healthz", key=None)).status == 200
