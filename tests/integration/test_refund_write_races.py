"""A refund of one payment is checked against the payment as read and written by one statement
that holds only while the payment's row is still that version (services._create_unlocked). What
changes the payment between the read and the write sends the command through the payment's lock,
where it is checked again: never a refund written against a balance or a dispute it did not see."""

from __future__ import annotations

import asyncio

import pytest

from adapters.base import DisputeSnapshot
from gateway import disputes, keys, services
from gateway.db import store
from tests.ids import token


@pytest.fixture
def between_read_and_write(api, monkeypatch):
    """Run `change(conn)` on another connection right after the command reads its payment unlocked."""
    changes = []
    read = store.transaction_for_refund
    reads = []

    async def reading(conn, transaction_id, *, lock):
        row = await read(conn, transaction_id, lock=lock)
        reads.append(lock)
        if not lock and changes:
            async with api.app[keys.POOL].acquire() as other, other.transaction():
                await changes.pop()(other, row)
        return row

    monkeypatch.setattr(services.store, "transaction_for_refund", reading)
    return changes, reads


async def test_a_balance_moved_after_the_read_is_seen_under_the_lock(api, between_read_and_write):
    changes, reads = between_read_and_write
    tx = await api.transaction(amount=1_000)

    async def another_refund(conn, row):  # 500 reserved by a refund committed meanwhile
        await conn.execute("UPDATE transactions SET reserved_amount = reserved_amount + 500 WHERE id = $1", row["id"])
    changes.append(another_refund)
    refused = await api.refund(tx, 700, expect=422)
    assert refused["code"] == "amount_exceeds_refundable" and refused["refundable_amount"] == 500
    assert reads == [False, True]  # read, the write found the payment changed, checked again under the lock
    async with api.app[keys.POOL].acquire() as conn:
        payment = await conn.fetchrow("SELECT * FROM transactions WHERE id = $1", tx["id"])
        assert await conn.fetchval("SELECT count(*) FROM refunds WHERE transaction_id = $1", tx["id"]) == 0
    assert (payment["reserved_amount"], payment["refunded_amount"]) == (500, 0)


async def test_a_refund_that_still_fits_is_made_under_the_lock(api, between_read_and_write):
    changes, reads = between_read_and_write
    tx = await api.transaction(amount=1_000)

    async def settled(conn, row):
        await store.mark_settled(conn, row["id"])
    changes.append(settled)
    made = await api.refund(tx, 700)
    assert made["status"] == "succeeded" and reads == [False, True]


async def test_a_dispute_opened_after_the_read_refuses_the_refund(api, between_read_and_write):
    changes, reads = between_read_and_write
    tx = await api.transaction(amount=1_000)

    async def dispute(conn, row):
        await disputes.apply(conn, "mock", row, DisputeSnapshot(
            psp_dispute_id=f"dp_{token()}", payment_references=[row["psp_reference"]], amount=1_000,
            currency="EUR", status="open"), source="webhook", request_id=None)
    changes.append(dispute)
    refused = await api.refund(tx, 700, expect=409)
    assert refused["code"] == "payment_disputed" and reads == [False, True]
    async with api.app[keys.POOL].acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM refunds WHERE transaction_id = $1", tx["id"]) == 0
        assert await conn.fetchval("SELECT reserved_amount FROM transactions WHERE id = $1", tx["id"]) == 0


async def test_a_dispute_committed_while_the_write_waits_for_the_payment_refuses_the_refund(api, monkeypatch):
    """The dispute's transaction holds the payment's row when the refund's statement reaches it; the
    statement waits, and the dispute commits: the row it then finds is a new version (the dispute
    touched it), so the refund is checked again, never written on what the statement saw before."""
    tx = await api.transaction(amount=1_000)
    read, held = store.transaction_for_refund, []

    async def hold_dispute_open(row):
        async with api.app[keys.POOL].acquire() as conn, conn.transaction():
            await disputes.apply(conn, "mock", row, DisputeSnapshot(
                psp_dispute_id=f"dp_{token()}", payment_references=[row["psp_reference"]], amount=1_000,
                currency="EUR", status="open"), source="webhook", request_id=None)
            started.set()
            await asyncio.sleep(0.5)  # the refund's statement waits for the payment's row meanwhile

    async def reading(conn, transaction_id, *, lock):
        row = await read(conn, transaction_id, lock=lock)
        if not lock and not held:
            held.append(asyncio.create_task(hold_dispute_open(row)))
            await started.wait()
        return row

    started = asyncio.Event()
    monkeypatch.setattr(services.store, "transaction_for_refund", reading)
    refused = await api.refund(tx, 700, expect=409)
    await held[0]
    assert refused["code"] == "payment_disputed"
    async with api.app[keys.POOL].acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM refunds WHERE transaction_id = $1", tx["id"]) == 0


async def test_an_unchanged_payment_takes_no_lock(api, between_read_and_write):
    _, reads = between_read_and_write
    tx = await api.transaction(amount=1_000)
    assert (await api.refund(tx, 700))["status"] == "succeeded"
    assert reads == [False]
