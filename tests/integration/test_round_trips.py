"""Round trips to Postgres per refund on the hot path (creation, the processor's answer recorded),
counted by asyncpg's query logger on every pooled connection: the figure the README publishes. A
change that adds a statement to the hot path fails here and says which."""

from __future__ import annotations

import asyncio

import pytest
import structlog

from adapters.base import PaymentSnapshot, WebhookEvent
from gateway import webhooks
from gateway.db import pool as pool_module
from gateway.db import store
from tests.conftest import Api, eventually, make_settings, start_api

# The payment read (with its open disputes and row version); the refund, its reservation, event and
# callback, written only while the payment is that version; after the processor's answer, the
# outcome, balance, attempt, event and callback, written only while the refund is as the first
# statement left it. No BEGIN or COMMIT: each statement is its own transaction.
ROUND_TRIPS = 3
# With an Idempotency-Key: its claim, and the answer kept for replays (the key is pointed at the
# refund by the statement that writes it).
ROUND_TRIPS_WITH_KEY = ROUND_TRIPS + 2
TRANSACTION_CONTROL = ("BEGIN;", "COMMIT;")
# A webhook announcing a payment not known yet, applied: in one transaction, the locks on its ids
# with their claim, the payment, the wake-up of events parked on it, and the event's new status.
WEBHOOK_ROUND_TRIPS = 6


def log_statements(monkeypatch) -> list[tuple[str | None, str]]:
    """Every statement the pools made from now on send, with the request id it was sent for (the
    logger runs in the context of the task that sent it)."""
    seen: list[tuple[str | None, str]] = []
    init = pool_module._init_connection

    async def logged(conn):
        await init(conn)
        conn.add_query_logger(lambda record: seen.append(
            (structlog.contextvars.get_contextvars().get("request_id"), " ".join(record.query.split()))))

    monkeypatch.setattr(pool_module, "_init_connection", logged)
    return seen


@pytest.fixture
async def counted(database_url, monkeypatch):
    """The real server, and every statement its pool's connections sent, by request id."""
    seen = log_statements(monkeypatch)
    # One connection: prepared statements are per connection, and each is prepared once, then reused.
    client = await start_api(make_settings(database_url, db_pool_min=1, db_pool_max=1))
    try:
        yield Api(client), seen
    finally:
        await client.close()


async def _statements_of_one_refund(api: Api, seen: list, *, with_key: bool) -> list[str]:
    tx = await api.transaction()
    for n in range(3):  # the first warms the statement cache: prepared statements are reused after
        request_id = f"req_roundtrip{n}{with_key}"
        headers = {"X-Request-ID": request_id, **({"Idempotency-Key": f"roundtrip-{n}"} if with_key else {})}
        resp = await api.post("/v1/refunds", {"invoice_id": tx["invoice_id"], "transaction_id": tx["id"],
                                              "currency": "EUR", "amount": 100}, headers=headers)
        assert resp.status == 201, await resp.text()
        assert (await resp.json())["status"] == "succeeded"
        await asyncio.sleep(0.05)  # the query logger reports on the next loop iteration
    return [query for rid, query in seen if rid == request_id]


async def test_a_refund_takes_three_round_trips_and_no_transaction_control(counted):
    api, seen = counted
    statements = await _statements_of_one_refund(api, seen, with_key=False)
    assert len(statements) == ROUND_TRIPS, "\n".join(statements)
    assert not any(q in TRANSACTION_CONTROL for q in statements), "\n".join(statements)


async def test_with_an_idempotency_key_two_more(counted):
    api, seen = counted
    statements = await _statements_of_one_refund(api, seen, with_key=True)
    assert len(statements) == ROUND_TRIPS_WITH_KEY, "\n".join(statements)


async def test_a_webhook_registering_a_new_payment_takes_six_round_trips(database_url, monkeypatch):
    seen = log_statements(monkeypatch)
    pool = await pool_module.create_pool(database_url, min_size=1, max_size=1)
    try:
        for n in range(3):  # the first ones prepare the statements
            event = WebhookEvent(event_id=f"evt_roundtrip_{n}", type="charge.succeeded", created=1, payments=[
                PaymentSnapshot(psp_reference=f"ch_roundtrip_{n}", amount=5000, currency="EUR",
                                invoice_id=f"INV-RT-{n}")])
            async with pool.acquire() as conn:
                row_id = await store.insert_webhook_event(
                    conn, processor_id="stripe", event_id=event.event_id, event_type=event.type, headers={},
                    body=b"{}", event=event.model_dump(mode="json"), match_keys=event.match_keys())
            await asyncio.sleep(0.05)  # the query logger reports on the next loop iteration
            seen.clear()
            row = {"id": row_id, "processor_id": "stripe", "event_id": event.event_id,
                   "event": event.model_dump(mode="json"), "attempts": 1}
            assert await webhooks.process_row(pool, row, recheck_seconds=1) == "applied"
            await asyncio.sleep(0.05)
    finally:
        await pool.close()
    assert len(seen) == WEBHOOK_ROUND_TRIPS, "\n".join(query for _, query in seen)


async def test_the_callback_written_with_the_refund_reads_as_the_api_answers(counted):
    """The hot path writes a snapshot of the refund's row with its callback, in SQL: rendered for the
    billing core it is the refund as GET /v1/refunds/{id} shows it at that version."""
    api, _ = counted
    tx = await api.transaction()
    refund = await api.refund(tx, 300, reason="damaged", metadata={"note": "x"})
    answer = await (await api.get(f"/v1/refunds/{refund['id']}")).json()

    async def events():
        listed = (await (await api.get("/v1/events")).json())["data"]
        return [e for e in listed if e["refund_id"] == refund["id"]]
    created, succeeded = await eventually(events)
    assert succeeded["data"] == answer and succeeded["type"] == "refund.succeeded"
    assert created["type"] == "refund.created" and created["previous_status"] is None
    assert {k: v for k, v in created["data"].items() if k not in ("status", "stage", "updated_at", "psp_refund_id",
                                                                  "attempts")} == {
        k: v for k, v in answer.items() if k not in ("status", "stage", "updated_at", "psp_refund_id", "attempts")}
    assert (created["data"]["status"], created["data"]["stage"]) == ("pending", "sending")
