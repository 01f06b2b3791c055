"""A refund webhook and the registration of its payment, crossing on real Postgres: the locks on
the payment's ids put one after the other whichever starts first, and a parked (`unmatched`) event
is swept again with backoff in case nothing wakes it."""

from __future__ import annotations

import asyncio

import asyncpg

from adapters.base import RefundSnapshot, WebhookEvent
from gateway import services, webhooks
from gateway.db import store
from gateway.domain.refunds import Outcome
from gateway.models import RefundCreate, TransactionCreate

PAYMENT = "ch_crossing"
ROW_LOCKS = ("transactionid", "tuple")  # what a session waiting for a row's lock waits on


def registration(reference: str = PAYMENT) -> TransactionCreate:
    return TransactionCreate(processor="mock", psp_reference=reference, invoice_id="INV-CROSS", amount=10_000,
                             currency="EUR")


async def stored(pool: asyncpg.Pool, event: WebhookEvent) -> int:
    """The event, stored as the inbox stores it; returns its row's id."""
    async with pool.acquire() as conn:
        return await store.insert_webhook_event(
            conn, processor_id="mock", event_id=event.event_id, event_type=event.type, headers={}, body=b"{}",
            event=event.model_dump(mode="json"), match_keys=event.match_keys())


async def stored_refund_event(pool: asyncpg.Pool, event_id: str = "evt_dashboard", amount: int = 500) -> int:
    """A refund made at the processor's dashboard on PAYMENT, stored as the inbox stores it."""
    return await stored(pool, WebhookEvent(event_id=event_id, type="refund.created", refunds=[RefundSnapshot(
        psp_refund_id=f"re_{event_id}", payment_references=[PAYMENT], amount=amount, currency="EUR",
        outcome=Outcome.SUCCEEDED)]))


async def refunds_of_a_payment(pool: asyncpg.Pool, *amounts: int) -> tuple[asyncpg.Record, list[asyncpg.Record]]:
    """PAYMENT registered, and a refund of it for each amount (created, not sent)."""
    async with pool.acquire() as conn:
        tx, _ = await services.register_transaction(conn, registration())
        refunds = [(await services.create_refund(conn, RefundCreate(invoice_id="INV-CROSS", transaction_id=tx["id"],
                                                                    amount=amount, currency="EUR"),
                                                 lease_seconds=60)).refund for amount in amounts]
    return tx, refunds


async def waits_for_locks(pool: asyncpg.Pool, task: asyncio.Task, kinds: tuple[str, ...] = ("advisory",),
                          sessions: int = 1) -> None:
    """Until `sessions` sessions of this database wait for a lock of one of these kinds (advisory: a
    payment's ids; transactionid or tuple: a row); fails if `task` ends first."""
    for _ in range(300):
        async with pool.acquire() as conn:
            waiting = await conn.fetchval(
                "SELECT count(DISTINCT pid) FROM pg_locks WHERE NOT granted AND locktype = ANY($1::text[]) "
                "AND pid IN (SELECT pid FROM pg_stat_activity WHERE datname = current_database())", list(kinds))
        if waiting >= sessions:
            return
        assert not task.done(), f"ended without waiting: {task.result()!r}"
        await asyncio.sleep(0.01)
    raise AssertionError(f"fewer than {sessions} sessions waited for a lock of {kinds}")


async def event_row(pool: asyncpg.Pool, row_id: int) -> asyncpg.Record:
    async with pool.acquire() as conn:
        return await conn.fetchrow("SELECT *, extract(epoch FROM next_attempt_at - now()) AS due_in "
                                   "FROM webhook_events WHERE id = $1", row_id)


async def balance(pool: asyncpg.Pool) -> tuple[int, int]:
    async with pool.acquire() as conn:
        row = await conn.fetchrow("SELECT refunded_amount, reserved_amount FROM transactions WHERE psp_reference = $1",
                                  PAYMENT)
    return row["refunded_amount"], row["reserved_amount"]


async def test_webhook_finding_its_payment_unknown_waits_for_a_registration_in_flight_and_applies(pool):
    row_id = await stored_refund_event(pool)
    async with pool.acquire() as conn:
        registering = conn.transaction()
        await registering.start()
        await services.register_transaction(conn, registration())  # not committed yet
        inbox = asyncio.create_task(webhooks.process_due(pool, recheck_seconds=60))
        await waits_for_locks(pool, inbox)
        await registering.commit()
    assert await inbox == 1

    event = await event_row(pool, row_id)
    assert (event["status"], event["attempts"]) == ("applied", 1)
    assert await balance(pool) == (500, 0)


async def test_registration_waits_for_a_webhook_parking_its_refund_and_then_wakes_it(pool):
    row_id = await stored_refund_event(pool)
    async with pool.acquire() as conn:
        [claimed] = await store.claim_due_webhook_events(conn, 10, webhooks.LEASE_SECONDS)
        async with conn.transaction():
            event = WebhookEvent.model_validate(claimed["event"])
            assert await webhooks.apply_event(conn, "mock", event, recheck_seconds=60) == "unmatched"
            registering = asyncio.create_task(_register(pool))
            await waits_for_locks(pool, registering)
            await store.finish_webhook_event(conn, row_id, "unmatched")
    await registering

    woken = await event_row(pool, row_id)
    assert woken["status"] == "received" and woken["due_in"] <= 0  # woken by the registration, due now
    assert await webhooks.process_due(pool, recheck_seconds=60) == 1
    assert (await event_row(pool, row_id))["status"] == "applied"
    assert await balance(pool) == (500, 0)


async def _register(pool: asyncpg.Pool) -> asyncpg.Record:
    async with pool.acquire() as conn:
        row, created = await services.register_transaction(conn, registration())
    assert created
    return row


async def test_parked_event_is_swept_again_with_backoff_and_applies_once_its_payment_is_known(pool):
    row_id = await stored_refund_event(pool)
    backoff = []
    for attempt in (1, 2, 3):
        assert await webhooks.process_due(pool, recheck_seconds=60) == 1
        parked = await event_row(pool, row_id)
        assert (parked["status"], parked["attempts"]) == ("unmatched", attempt)
        backoff.append(parked["due_in"])
        assert await webhooks.process_due(pool, recheck_seconds=60) == 0  # not due yet
        async with pool.acquire() as conn:
            await conn.execute("UPDATE webhook_events SET next_attempt_at = now() WHERE id = $1", row_id)
    assert 1 < backoff[0] <= 2 < backoff[1] <= 4 < backoff[2] <= 8

    # The payment appears by a way that wakes nothing (written before parked events were woken, say).
    async with pool.acquire() as conn:
        await store.insert_transaction(conn, id="tx_quiet", processor_id="mock", psp_reference=PAYMENT,
                                       invoice_id="INV-CROSS", customer_id=None, amount=10_000, currency="EUR",
                                       captured_at=None, settled_at=None, metadata={})
    assert (await event_row(pool, row_id))["status"] == "unmatched"
    assert await webhooks.process_due(pool, recheck_seconds=60) == 1
    assert ((await event_row(pool, row_id))["status"], await balance(pool)) == ("applied", (500, 0))


async def test_long_parked_event_is_looked_at_again_at_most_hourly(pool):
    row_id = await stored_refund_event(pool)
    async with pool.acquire() as conn:
        await conn.execute("UPDATE webhook_events SET attempts = 40 WHERE id = $1", row_id)
    assert await webhooks.process_due(pool, recheck_seconds=60) == 1
    parked = await event_row(pool, row_id)
    assert parked["status"] == "unmatched" and 3590 < parked["due_in"] <= 3600


async def test_fresh_events_are_claimed_before_parked_ones(pool):
    parked = [await stored_refund_event(pool, f"evt_parked_{n}") for n in range(3)]
    assert await webhooks.process_due(pool, recheck_seconds=60) == 3
    async with pool.acquire() as conn:
        await conn.execute("UPDATE webhook_events SET next_attempt_at = now() WHERE id = ANY($1::bigint[])", parked)
    fresh = await stored_refund_event(pool, "evt_fresh")
    async with pool.acquire() as conn:
        claimed = await store.claim_due_webhook_events(conn, 2, webhooks.LEASE_SECONDS)
    # The fresh one, and the parked one due first: a claim's rows come in no particular order.
    assert sorted(r["id"] for r in claimed) == sorted([fresh, parked[0]])


async def test_two_events_naming_the_same_refunds_in_opposite_orders_never_deadlock(pool):
    """Each event locks a refund, then its payment, to apply it. Two events that name two refunds of
    one payment in opposite orders would each hold what the other waits for: the first holding the
    payment and waiting for the second refund, the other holding that refund and waiting for the
    payment. An event about several refunds locks them all first, in one order, so one waits."""
    tx, made = await refunds_of_a_payment(pool, 300, 400)

    def event(event_id: str, refunds: list) -> WebhookEvent:
        return WebhookEvent(event_id=event_id, type="charge.refunded", refunds=[RefundSnapshot(
            psp_refund_id=f"re_{r['id']}", refund_id=r["id"], payment_references=[PAYMENT], amount=r["amount"],
            currency="EUR", outcome=Outcome.SUCCEEDED) for r in refunds])

    async def apply(e: WebhookEvent) -> str:
        async with pool.acquire() as conn, conn.transaction():
            return await webhooks.apply_event(conn, "mock", e, recheck_seconds=1)

    async with pool.acquire() as holder, holder.transaction():
        await store.lock_transaction(holder, tx["id"])  # the payment, held while both events start
        first = asyncio.create_task(apply(event("evt_forward", made)))
        await waits_for_locks(pool, first, ROW_LOCKS)
        second = asyncio.create_task(apply(event("evt_backward", made[::-1])))
        await waits_for_locks(pool, second, ROW_LOCKS, sessions=2)
    assert await asyncio.gather(first, second) == ["applied", "applied"]
    async with pool.acquire() as conn:
        statuses = [await conn.fetchval("SELECT status FROM refunds WHERE id = $1", r["id"]) for r in made]
    assert statuses == ["succeeded", "succeeded"] and await balance(pool) == (700, 0)


async def test_a_refund_recorded_while_its_event_waited_for_the_payment_never_deadlocks(pool):
    """An event about a refund not known yet locks the refund's payment, then looks again. If the
    refund was recorded meanwhile, it is found holding the payment, and a session that holds the
    refund and waits for the payment (a processor answer being recorded) would wait on it while it
    waits on them. The event takes the refund only if it is free at once; else it gives all back
    and is applied again shortly, when the refund is known from the start and locked first."""
    tx, [refund] = await refunds_of_a_payment(pool, 600)
    # By the processor's refund id only (no id of ours echoed): not known until it is recorded.
    row_id = await stored(pool, WebhookEvent(event_id="evt_meanwhile", type="refund.updated", refunds=[RefundSnapshot(
        psp_refund_id="re_meanwhile", payment_references=[PAYMENT], amount=600, currency="EUR",
        outcome=Outcome.SUCCEEDED)]))

    async def record_an_answer() -> None:  # as execution does: the refund's row, then its payment's
        async with pool.acquire() as conn, conn.transaction():
            await store.lock_refund_and_payment(conn, refund["id"])

    async with pool.acquire() as holder, holder.transaction():
        await store.lock_transaction(holder, tx["id"])
        inbox = asyncio.create_task(webhooks.process_due(pool, recheck_seconds=60))
        await waits_for_locks(pool, inbox, ROW_LOCKS)  # it found no refund, and waits for the payment
        async with pool.acquire() as conn:
            await conn.execute("UPDATE refunds SET psp_refund_id = 're_meanwhile' WHERE id = $1", refund["id"])
        answer = asyncio.create_task(record_an_answer())
        await waits_for_locks(pool, answer, ROW_LOCKS, sessions=2)  # it holds the refund, and waits too
    await answer  # recorded: not chosen as a deadlock's victim
    assert await inbox == 1
    deferred = await event_row(pool, row_id)
    assert deferred["status"] == "failed" and deferred["last_error"].startswith("deferred: "), dict(deferred)
    assert deferred["due_in"] <= 2

    async with pool.acquire() as conn:
        await conn.execute("UPDATE webhook_events SET next_attempt_at = now() WHERE id = $1", row_id)
    assert await webhooks.process_due(pool, recheck_seconds=60) == 1
    assert (await event_row(pool, row_id))["status"] == "applied"
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT status FROM refunds WHERE id = $1", refund["id"]) == "succeeded"
