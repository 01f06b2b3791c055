"""Scheduled reconciliation on real Postgres with the mock processor's books: due once per interval
whatever the number of replicas, from where the last run ended, recording a dashboard refund."""

from __future__ import annotations

import asyncio

from adapters.mock.client import MockAdapter
from gateway import reconcile, services
from gateway.models import TransactionCreate


async def test_a_scheduled_run_is_due_once_per_interval_and_records_a_dashboard_refund(pool):
    mock = MockAdapter("mock")
    async with pool.acquire() as conn:
        tx, _ = await services.register_transaction(conn, TransactionCreate(
            processor="mock", psp_reference="ch_sched", invoice_id="INV-SCHED", amount=10_000, currency="EUR"))
    mock.record_external("ch_sched", 2_500, "EUR")
    intervals = {"mock": (3600.0, 86_400.0)}

    # Two replicas asking at once: one runs it.
    ran = await asyncio.gather(*(reconcile.run_due(pool, {"mock": mock}, intervals) for _ in range(2)))
    assert sorted(ran) == [0, 1]
    assert await reconcile.run_due(pool, {"mock": mock}, intervals) == 0  # not due again for an hour
    async with pool.acquire() as conn:
        runs = await conn.fetch("SELECT trigger, status, counts FROM reconciliation_runs")
        refunded = await conn.fetchval("SELECT refunded_amount FROM transactions WHERE id = $1", tx["id"])
        [finding] = await conn.fetch("SELECT kind, action FROM reconciliation_findings")
    assert [(r["trigger"], r["status"], r["counts"]) for r in runs] == [
        ("schedule", "finished", {"missing_in_gateway": 1})]
    assert refunded == 2_500
    assert (finding["kind"], finding["action"]) == ("missing_in_gateway", "recorded_external")
