"""Scaling out: two `psp-gateway serve` processes on one Postgres serve one API (what one writes
the other reads) and share the background work (a backlog of durable retries is done once, by both)."""

from __future__ import annotations

import asyncio

import asyncpg
import httpx

from adapters.stripe_sim import SimConfig
from adapters.stripe_sim.testing import running_simulator
from gateway.worker import RECOVERY_BATCH
from tests.e2e.test_recovery import BILLING_KEY, SIM_KEY, config, eventually, wait_ready

CHARGES = 10
REFUNDS_PER_CHARGE = 3
# More refunds than one janitor round claims, and a processor slow enough that the round holding
# RECOVERY_BATCH of them is still waiting for its answers when the other replica's janitor looks
# again (every 0.1 s): the rest can only go to that other replica.
assert CHARGES * REFUNDS_PER_CHARGE > RECOVERY_BATCH
PROCESSOR_LATENCY_MS = 1500


async def test_two_serve_replicas_share_the_api_and_the_durable_retry_backlog(gateways, database_url):
    async with running_simulator(SimConfig(api_key=SIM_KEY, seed=3)) as sim:
        env = {"GATEWAY_DATABASE_URL": database_url, "GATEWAY_JANITOR_POLL_SECONDS": "0.1",
               "GATEWAY_DURABLE_RETRY_INITIAL_SECONDS": "3600", "GATEWAY_RETRY_MAX_ATTEMPTS": "1"}
        replicas = [gateways(config(sim.url), "serve", **env) for _ in range(2)]
        await asyncio.gather(*(wait_ready(r) for r in replicas))
        clients = [httpx.AsyncClient(base_url=r.url, headers={"Authorization": f"Bearer {BILLING_KEY}"}, timeout=20)
                   for r in replicas]
        try:
            # Stripe is down: every refund, whichever replica takes it, waits for a durable retry.
            sim.sim.faults.configure({"api_error": {"path": "/v1/refunds", "method": "POST"}})
            refunds: list[tuple[int, dict]] = []  # (the replica that took it, the refund)
            for n in range(CHARGES):
                charge = sim.sim.world.create_charge(10_000, "eur", {}, None)
                tx = await clients[n % 2].post("/v1/transactions", json={
                    "processor": "stripe", "psp_reference": charge["id"], "invoice_id": f"INV-S{n}",
                    "amount": 10_000, "currency": "EUR"})
                assert tx.status_code == 201, tx.text
                for part in range(REFUNDS_PER_CHARGE):
                    taker = (n + part) % 2
                    resp = await clients[taker].post("/v1/refunds", json={
                        "invoice_id": f"INV-S{n}", "transaction_id": tx.json()["id"], "amount": 1_000,
                        "currency": "EUR", "credit_note_id": f"CN-S{n}-{part}"})
                    assert resp.status_code == 201 and resp.json()["status"] == "pending", resp.text
                    refunds.append((taker, resp.json()))
                # Both replicas see the same balance, reserved by refunds taken on both.
                for client in clients:
                    (payment,) = (await client.get("/v1/transactions", params={"invoice_id": f"INV-S{n}"})).json()[
                        "data"]
                    assert payment["reserved_amount"] == REFUNDS_PER_CHARGE * 1_000, payment
            assert {taker for taker, _ in refunds} == {0, 1}
            for taker, refund in refunds:  # what one replica wrote, the other reads
                other = (await clients[1 - taker].get(f"/v1/refunds/{refund['id']}")).json()
                assert (other["id"], other["status"], other["amount"]) == (refund["id"], "pending", 1_000)

            # Stripe is back, slowly; the whole backlog falls due at once.
            sim.sim.faults.clear()
            sim.sim.faults.configure({"latency": {"ms": PROCESSOR_LATENCY_MS, "path": "/v1/refunds", "method": "POST"}})
            refund_ids = [refund["id"] for _, refund in refunds]
            conn = await asyncpg.connect(database_url)
            try:
                assert await conn.execute("UPDATE refunds SET next_attempt_at = now() WHERE id = any($1::text[])",
                                          refund_ids) == f"UPDATE {len(refund_ids)}"

                async def all_succeeded():
                    return await conn.fetchval("SELECT count(*) FROM refunds WHERE status = 'succeeded'") == len(
                        refund_ids)
                assert await eventually(all_succeeded, 30), [r.logs()[-2000:] for r in replicas]
                claims = await conn.fetch("SELECT refund_id, count(*) AS n FROM refund_events "
                                          "WHERE event = 'recovery_claimed' GROUP BY refund_id")
            finally:
                await conn.close()
        finally:
            for client in clients:
                await client.aclose()

        assert {r["refund_id"]: r["n"] for r in claims} == {i: 1 for i in refund_ids}  # each claimed once
        executed = [r["metadata"]["refund_id"] for r in sim.sim.world.refunds.values()]
        assert sorted(executed) == sorted(refund_ids)  # each carried out once at Stripe
        per_replica = [sum(1 for line in r.logs().splitlines() if '"refund_recovering"' in line) for r in replicas]
        assert sum(per_replica) == len(refund_ids) and all(per_replica), per_replica  # both took part
