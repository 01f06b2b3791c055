"""One payment, several ids (a Stripe charge and its payment intent), on real Postgres: whichever
registration comes first, and however they overlap, the payment is one transaction known by all
of its ids."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest

from adapters.base import PaymentSnapshot, RefundSnapshot, WebhookEvent
from gateway import errors, services, webhooks
from gateway.db import migrate as migrate_module
from gateway.db import store
from gateway.db.migrate import migrate
from gateway.db.pool import connect
from gateway.domain.refunds import Outcome
from gateway.models import TransactionCreate


def payment_pair(amount: int = 10_000, invoice_id: str = "INV-PI") -> tuple[PaymentSnapshot, PaymentSnapshot]:
    """What charge.succeeded and payment_intent.succeeded say about one payment."""
    suffix = uuid.uuid4().hex[:12]
    charge, intent = f"ch_{suffix}", f"pi_{suffix}"
    common = dict(invoice_id=invoice_id, amount=amount, currency="EUR", metadata={"invoice_id": invoice_id})
    return (PaymentSnapshot(psp_reference=charge, other_references=[intent], **common),
            PaymentSnapshot(psp_reference=intent, other_references=[charge], **common))


async def references(conn: asyncpg.Connection) -> dict[str, str]:
    rows = await conn.fetch("SELECT reference, transaction_id FROM transaction_references")
    return {r["reference"]: r["transaction_id"] for r in rows}


@pytest.mark.parametrize("first", ["charge", "payment_intent"])
async def test_second_registration_waits_for_the_first_and_joins_its_transaction(pool, first):
    charge, intent = payment_pair()
    one, other = (charge, intent) if first == "charge" else (intent, charge)
    async with pool.acquire() as a, pool.acquire() as b:
        tx = a.transaction()
        await tx.start()
        registered, created = await services.register_payment(a, "stripe", one)
        assert created

        async def second():
            async with b.transaction():
                return await services.register_payment(b, "stripe", other)
        racing = asyncio.create_task(second())
        await asyncio.sleep(0.3)
        assert not racing.done()  # it waits on the first one's ids, uncommitted yet
        await tx.commit()
        joined, created = await racing
    assert (joined["id"], created) == (registered["id"], False)
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM transactions") == 1
        assert await references(conn) == {charge.psp_reference: registered["id"],
                                          intent.psp_reference: registered["id"]}
        assert (await conn.fetchrow("SELECT psp_reference FROM transactions"))["psp_reference"] == one.psp_reference


async def test_registrations_overlapping_on_several_ids_wait_in_one_order_and_never_deadlock(pool):
    # Two registrations that list the same ids in opposite orders both wait on a third one that
    # holds an id in the middle; once it commits, each must not be holding what the other waits for.
    charge, intent = payment_pair()
    middle = f"py_{uuid.uuid4().hex[:12]}"
    common = dict(invoice_id="INV-PI", amount=10_000, currency="EUR")
    by_charge = PaymentSnapshot(psp_reference=charge.psp_reference, other_references=[middle, intent.psp_reference],
                                **common)
    by_intent = PaymentSnapshot(psp_reference=intent.psp_reference, other_references=[middle, charge.psp_reference],
                                **common)
    async with pool.acquire() as a, pool.acquire() as b, pool.acquire() as c:
        holder = a.transaction()
        await holder.start()
        first, _ = await services.register_payment(a, "stripe", PaymentSnapshot(psp_reference=middle, **common))

        async def register(conn: asyncpg.Connection, payment: PaymentSnapshot):
            async with conn.transaction():
                return await services.register_payment(conn, "stripe", payment)
        racing = [asyncio.create_task(register(b, by_charge)), asyncio.create_task(register(c, by_intent))]
        await asyncio.sleep(0.3)
        assert not any(t.done() for t in racing)
        await holder.commit()
        results = await asyncio.gather(*racing)
    assert [(row["id"], created) for row, created in results] == [(first["id"], False)] * 2
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM transactions") == 1
        assert set((await references(conn)).values()) == {first["id"]}


async def test_both_webhooks_of_many_payments_applied_at_once_give_one_transaction_each(pool):
    pairs = [payment_pair(1_000 + n, f"INV-{n}") for n in range(25)]
    events = [WebhookEvent(event_id=f"evt_{n}_{kind}", type=kind, payments=[payment])
              for n, pair in enumerate(pairs)
              for kind, payment in zip(("charge.succeeded", "payment_intent.succeeded"), pair)]

    async def apply(event: WebhookEvent) -> str:
        async with pool.acquire() as conn, conn.transaction():
            return await webhooks.apply_event(conn, "stripe", event, recheck_seconds=60)

    # As the webhook worker applies them: each in a transaction of its own, all at once.
    assert set(await asyncio.gather(*(apply(e) for e in events))) == {"applied"}
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT id, invoice_id, amount FROM transactions")
        known = await references(conn)
    assert sorted((r["invoice_id"], r["amount"]) for r in rows) == sorted(
        (f"INV-{n}", 1_000 + n) for n in range(len(pairs)))
    by_invoice = {r["invoice_id"]: r["id"] for r in rows}
    for n, (charge, intent) in enumerate(pairs):
        assert known[charge.psp_reference] == known[intent.psp_reference] == by_invoice[f"INV-{n}"]


async def test_refund_webhook_naming_both_ids_is_recorded_once_on_the_one_transaction(pool):
    charge, intent = payment_pair()
    async with pool.acquire() as conn, conn.transaction():
        tx, _ = await services.register_payment(conn, "stripe", intent)
        await services.register_payment(conn, "stripe", charge)
        refund = RefundSnapshot(psp_refund_id="re_1", payment_references=[charge.psp_reference, intent.psp_reference],
                                amount=2_500, currency="EUR", outcome=Outcome.SUCCEEDED)
        event = WebhookEvent(event_id="evt_refund", type="charge.refunded", refunds=[refund])
        assert await webhooks.apply_event(conn, "stripe", event, recheck_seconds=60) == "applied"
        assert (await store.get_transaction(conn, tx["id"]))["refunded_amount"] == 2_500


def api_body(reference: str, **overrides) -> TransactionCreate:
    values = dict(processor="stripe", psp_reference=reference, invoice_id="INV-PI", amount=10_000, currency="EUR",
                  metadata={"invoice_id": "INV-PI"})
    return TransactionCreate(**{**values, **overrides})


async def test_billing_core_registering_the_other_id_of_a_known_payment_gets_that_transaction(pool):
    charge, intent = payment_pair()
    async with pool.acquire() as conn:
        async with conn.transaction():
            tx, _ = await services.register_payment(conn, "stripe", charge)
        same, created = await services.register_transaction(conn, api_body(intent.psp_reference))
        assert (same["id"], created) == (tx["id"], False)
        with pytest.raises(errors.Conflict) as info:
            await services.register_transaction(conn, api_body(intent.psp_reference, amount=9_000))
        assert info.value.code == "transaction_conflict"
        assert await conn.fetchval("SELECT count(*) FROM transactions") == 1


async def test_webhook_after_the_billing_core_registered_the_payment_adds_its_ids(pool):
    charge, intent = payment_pair()
    async with pool.acquire() as conn:
        tx, created = await services.register_transaction(conn, api_body(intent.psp_reference))
        assert created
        async with conn.transaction():
            joined, created = await services.register_payment(conn, "stripe", charge)
        assert (joined["id"], created) == (tx["id"], False)
        assert await references(conn) == {charge.psp_reference: tx["id"], intent.psp_reference: tx["id"]}
        assert await conn.fetchval("SELECT count(*) FROM transactions") == 1


async def test_migration_gives_existing_payments_their_ids_and_those_their_webhooks_named(empty_database,
                                                                                         monkeypatch):
    every = migrate_module.load_migrations()
    version = next(m.version for m in every if m.name == "transaction_references")
    conn = await connect(empty_database)
    try:
        monkeypatch.setattr(migrate_module, "load_migrations", lambda directory=None: every[:version - 1])
        await migrate(conn)
        await conn.execute("""
            INSERT INTO transactions (id, processor_id, psp_reference, invoice_id, amount, currency)
            VALUES ('tx_a', 'stripe', 'ch_a', 'INV-A', 100, 'EUR'), ('tx_b', 'stripe', 'pi_b', 'INV-B', 100, 'EUR'),
                   ('tx_m', 'mock', 'ch_m', 'INV-M', 100, 'EUR')""")
        event = WebhookEvent(event_id="evt_a", type="charge.succeeded", payments=[
            PaymentSnapshot(psp_reference="ch_a", other_references=["pi_a"], invoice_id="INV-A", amount=100,
                            currency="EUR")]).model_dump(mode="json")
        await conn.execute("INSERT INTO webhook_events (processor_id, event_id, event_type, headers, body, event, "
                           "match_keys) VALUES ('stripe', 'evt_a', 'charge.succeeded', '{}', '', $1, '{}')", event)
        monkeypatch.setattr(migrate_module, "load_migrations", lambda directory=None: every[:version])
        await migrate(conn)
        assert await references(conn) == {"ch_a": "tx_a", "pi_a": "tx_a", "pi_b": "tx_b", "ch_m": "tx_m"}
    finally:
        await conn.close()


async def test_ids_already_naming_two_transactions_are_logged_as_an_error(pool):
    from structlog.testing import capture_logs

    charge, intent = payment_pair()
    async with pool.acquire() as conn:  # registered once per id, as before the gateway linked them
        one, _ = await services.register_transaction(conn, TransactionCreate(
            processor="stripe", psp_reference=charge.psp_reference, invoice_id="INV-PI", amount=10_000,
            currency="EUR"))
        two, _ = await services.register_transaction(conn, TransactionCreate(
            processor="stripe", psp_reference=intent.psp_reference, invoice_id="INV-PI", amount=10_000,
            currency="EUR"))
        assert one["id"] != two["id"]
        with capture_logs() as logs:
            row = await services.known_payment(conn, "stripe", [intent.psp_reference, charge.psp_reference])
    assert row["id"] == two["id"]  # the first id given
    [error] = [e for e in logs if e["event"] == "payment_known_as_several_transactions"]
    assert (error["log_level"], error["transaction_ids"]) == ("error", [two["id"], one["id"]])
