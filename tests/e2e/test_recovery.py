"""Recovery across processes: a gateway killed with SIGKILL in the middle of a processor call,
and several gateway processes working one backlog on one Postgres."""

from __future__ import annotations

import asyncio

import asyncpg
import httpx

from adapters.stripe_sim import SimConfig
from adapters.stripe_sim.testing import running_simulator

SIM_KEY = "sk_test_recovery_0123"
BILLING_KEY = "sk_test_recovery_billing_0123"


def config(sim_url: str) -> str:
    return (f'[[processors]]\nid = "stripe"\nkind = "stripe"\nbase_url = "{sim_url}"\napi_key = "{SIM_KEY}"\n'
            f'timeout_seconds = 2.5\n\n'
            f'[[clients]]\nid = "billing"\napi_key = "{BILLING_KEY}"\n'
            'scopes = ["transactions:write", "transactions:read", "refunds:write", "refunds:read"]\n')


async def eventually(check, timeout: float = 30.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await check()
        if value or asyncio.get_running_loop().time() > deadline:
            return value
        await asyncio.sleep(0.1)


async def wait_ready(gateway, timeout: float = 30.0) -> None:
    async with httpx.AsyncClient() as client:
        async def ready():
            assert gateway.proc.poll() is None, gateway.logs()
            try:
                return (await client.get(f"{gateway.url}/readyz", timeout=1)).status_code == 200
            except httpx.TransportError:
                return False
        assert await eventually(ready, timeout), gateway.logs()


async def test_gateway_killed_mid_call_resolves_the_refund_after_restart_with_one_refund_at_stripe(
        gateways, database_url):
    async with running_simulator(SimConfig(api_key=SIM_KEY, seed=1)) as sim:
        # The shortest lease that covers a run: 0.5 s of retries and two 2.5 s calls, with a margin.
        env = dict(GATEWAY_DATABASE_URL=database_url, GATEWAY_LEASE_SECONDS="7", GATEWAY_RETRY_MAX_SECONDS="0.5",
                   GATEWAY_REFUND_RESPONSE_BUDGET_SECONDS="0.3", GATEWAY_JANITOR_POLL_SECONDS="0.2")
        first = gateways(config(sim.url), **env)
        await wait_ready(first)
        charge = sim.sim.world.create_charge(10_000, "eur", {}, None)
        # Stripe takes 2 s to answer refunds: the gateway dies while it waits.
        sim.sim.faults.configure({"latency": {"ms": 2000, "path": "/v1/refunds", "method": "POST", "count": 1}})
        headers = {"Authorization": f"Bearer {BILLING_KEY}"}
        async with httpx.AsyncClient(base_url=first.url, headers=headers, timeout=10) as client:
            tx = (await client.post("/v1/transactions", json={
                "processor": "stripe", "psp_reference": charge["id"], "invoice_id": "INV-KILL", "amount": 10_000,
                "currency": "EUR"})).json()
            refund = (await client.post("/v1/refunds", json={
                "invoice_id": "INV-KILL", "transaction_id": tx["id"], "amount": 2_500, "currency": "EUR"})).json()
        assert (refund["status"], refund["stage"]) == ("pending", "sending")
        first.kill()

        second = gateways(config(sim.url), **env)
        await wait_ready(second)
        async with httpx.AsyncClient(base_url=second.url, headers=headers, timeout=10) as client:
            async def settled():
                body = (await client.get(f"/v1/refunds/{refund['id']}")).json()
                return body if body["status"] != "pending" else None
            final = await eventually(settled)
        assert final and final["status"] == "succeeded", second.logs()
        assert sim.sim.world.refund_executions[charge["id"]] == 1
        executed = [r for r in sim.sim.world.refunds.values() if r["charge"] == charge["id"]]
        assert [r["metadata"]["refund_id"] for r in executed] == [refund["id"]]
        assert final["psp_refund_id"] == executed[0]["id"]
        conn = await asyncpg.connect(database_url)
        try:
            events = [r["event"] for r in await conn.fetch(
                "SELECT event FROM refund_events WHERE refund_id = $1 ORDER BY id", refund["id"])]
            calls = [(r["call"], r["outcome"]) for r in await conn.fetch(
                "SELECT call, outcome FROM refund_attempts WHERE refund_id = $1 ORDER BY id", refund["id"])]
        finally:
            await conn.close()
        assert "recovery_claimed" in events
        # The killed call left no row; the recovery asked Stripe and found it: no resend, even with the key.
        assert calls == [("lookup", "succeeded")]


async def test_three_gateway_processes_share_one_backlog_and_do_each_refund_once(gateways, database_url):
    async with running_simulator(SimConfig(api_key=SIM_KEY, seed=2)) as sim:
        env = dict(GATEWAY_DATABASE_URL=database_url, GATEWAY_JANITOR_POLL_SECONDS="0.1",
                   GATEWAY_DURABLE_RETRY_INITIAL_SECONDS="3600")
        api = gateways(config(sim.url), **env, GATEWAY_RETRY_MAX_ATTEMPTS="1")
        await wait_ready(api)
        # Stripe is down while the billing core sends 30 refunds: each waits for a durable retry.
        sim.sim.faults.configure({"api_error": {"path": "/v1/refunds", "method": "POST"}})
        charges = [sim.sim.world.create_charge(10_000, "eur", {}, None) for _ in range(10)]
        refund_ids = []
        async with httpx.AsyncClient(base_url=api.url, headers={"Authorization": f"Bearer {BILLING_KEY}"},
                                     timeout=20) as client:
            for n, charge in enumerate(charges):
                tx = (await client.post("/v1/transactions", json={
                    "processor": "stripe", "psp_reference": charge["id"], "invoice_id": f"INV-B{n}",
                    "amount": 10_000, "currency": "EUR"})).json()
                for part in range(3):
                    resp = await client.post("/v1/refunds", json={
                        "invoice_id": f"INV-B{n}", "transaction_id": tx["id"], "amount": 1_000, "currency": "EUR",
                        "credit_note_id": f"CN-{n}-{part}"})
                    assert resp.json()["status"] == "pending", resp.text  # a 5xx: retried later, looked up first
                    refund_ids.append(resp.json()["id"])
        api.stop()
        sim.sim.faults.clear()
        sim.sim.faults.configure({"latency": {"ms": 50, "path": "/v1/refunds"}})

        workers = [gateways(config(sim.url), "worker", **env) for _ in range(3)]
        for worker in workers:
            await eventually(lambda w=worker: _async(lambda: "worker running" in w.logs()), 30)
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute("UPDATE refunds SET next_attempt_at = now() WHERE stage IN ('not_sent', 'outcome_unknown')")

            async def all_done():
                return await conn.fetchval("SELECT count(*) FROM refunds WHERE status <> 'succeeded'") == 0
            assert await eventually(all_done, 60), [w.logs()[-2000:] for w in workers]
            claims = await conn.fetch("SELECT refund_id, count(*) AS n FROM refund_events "
                                      "WHERE event = 'recovery_claimed' GROUP BY refund_id")
        finally:
            await conn.close()
        assert {r["refund_id"]: r["n"] for r in claims} == {i: 1 for i in refund_ids}  # each taken once
        executed = [r["metadata"]["refund_id"] for r in sim.sim.world.refunds.values()]
        assert sorted(executed) == sorted(refund_ids)  # each carried out once at Stripe
        per_worker = [sum(1 for line in w.logs().splitlines() if '"refund_recovering"' in line) for w in workers]
        assert sum(per_worker) == len(refund_ids) and sum(1 for n in per_worker if n) >= 2, per_worker


async def _async(check):
    return check()
