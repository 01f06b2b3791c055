"""Exactly once against the BridgePay-like simulator, a processor that executes every request it
gets (no idempotency key), when time lies: a request carried out seconds after the gateway gave up
on it, and a lease that runs out while its call is alive.

Each test ends by comparing the processor's books (the simulator's state) with the gateway's:
every refund carried out exactly once, or flagged where an operator sees it."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from typing import AsyncIterator

from prometheus_client import REGISTRY

from adapters.bridgepay_sim import SimConfig
from gateway import keys
from gateway.callbacks import event_body
from tests.conftest import ADMIN_KEY, eventually
from tests.e2e.test_bridgepay_flow import BP, BridgePayWorld, bridgepay_world


@asynccontextmanager
async def late_world(database_url: str, *, window: float, timeout: float = 1.0,
                     **settings) -> AsyncIterator[BridgePayWorld]:
    """A BridgePay world without sandbox amounts, whose gateway gives up after `timeout` (1 s)."""
    async with bridgepay_world(database_url, SimConfig(**BP, seed=13), window=window, timeout=timeout,
                               **settings) as world:
        yield world


def counted(metric: str) -> float:
    return REGISTRY.get_sample_value(f"{metric}_total", {"processor": "bridgepay"}) or 0.0


async def refund_now(world: BridgePayWorld, refund_id: str) -> dict:
    return await (await world.api.get(f"/v1/refunds/{refund_id}")).json()


async def settles(world: BridgePayWorld, refund_id: str, status: str, timeout: float = 20) -> dict:
    async def check():
        body = await refund_now(world, refund_id)
        return body if body["status"] == status else None
    return await eventually(check, timeout)


async def attempts(world: BridgePayWorld, refund_id: str) -> list[tuple[str, str]]:
    async with world.api.app[keys.POOL].acquire() as conn:
        return [(r["call"], r["outcome"]) for r in await conn.fetch(
            "SELECT call, outcome FROM refund_attempts WHERE refund_id = $1 ORDER BY id", refund_id)]


async def test_a_request_carried_out_after_the_gateway_gave_up_is_found_not_resent(database_url):
    # BridgePay takes 3 s to carry out the first refund request; the gateway gives up after 1 s.
    # Its look-up then finds nothing, but nothing is resent while the request may still land
    # (10 s): it is looked up a few times meanwhile, and found soon after it lands.
    async with late_world(database_url, window=10.0) as world:
        tx = await world.sale(5_000, settled=True)
        await world.faults({"latency": {"spike_ms": 3_000, "count": 1, "request_type": "012"}})
        waits = counted("psp_gateway_execution_window_waits")
        refund = await world.refund(tx, 1_200)
        assert (refund["status"], refund["stage"]) == ("pending", "outcome_unknown")
        assert counted("psp_gateway_execution_window_waits") == waits + 1
        assert "may still be carried out" in refund["failure_message"]

        final = await settles(world, refund["id"], "succeeded")
        sale = await world.sim_sale(tx["psp_reference"])
        assert (sale["refund_executions"], sale["refunded"]) == (1, 1_200)  # the processor's books
        assert final["psp_refund_id"] == sale["refunds"][0]["gateway_trans_id"]
        assert final["attempts"] == 1  # one request, never resent
        calls = await attempts(world, refund["id"])
        assert calls[0] == ("refund", "error") and calls[-1] == ("lookup", "succeeded")
        assert ("refund", "succeeded") not in calls
        async with world.api.app[keys.POOL].acquire() as conn:
            found_after = await conn.fetchval(
                "SELECT max(a.started_at) - min(a.started_at) FROM refund_attempts a WHERE refund_id = $1",
                refund["id"])
        assert found_after.total_seconds() < 10  # found inside the window, not only when it ended
        payment = await (await world.api.get(f"/v1/transactions/{tx['id']}")).json()
        assert (payment["refunded_amount"], payment["reserved_amount"]) == (1_200, 0)


async def test_a_window_set_too_short_ends_in_a_duplicate_that_is_flagged_never_silently_succeeded(database_url):
    # The window (1 s) is shorter than BridgePay really takes (3 s): the look-up after it finds
    # nothing, the refund is resent and succeeds, and then the first request is carried out too.
    # The look-up after the resend's own window finds both, and flags the refund.
    async with late_world(database_url, window=1.0) as world:
        tx = await world.sale(5_000, settled=True)
        await world.faults({"latency": {"spike_ms": 3_000, "count": 1, "request_type": "012"}})
        refund = await world.refund(tx, 1_200)
        flagged = await settles(world, refund["id"], "requires_attention")

        sale = await world.sim_sale(tx["psp_reference"])
        assert sale["refund_executions"] == 2 and sale["refunded"] == 2_400  # the processor's books
        executed = {r["gateway_trans_id"] for r in sale["refunds"]}
        assert flagged["failure_code"] == "duplicate_at_processor"
        assert {flagged["psp_refund_id"], *flagged["duplicate_psp_refund_ids"]} == executed  # both kept
        async with world.api.app[keys.POOL].acquire() as conn:
            callbacks = [event_body(r) for r in await conn.fetch(  # as the billing core reads them
                "SELECT * FROM outbox_events WHERE refund_id = $1 ORDER BY version", refund["id"])]
        assert callbacks[-1]["type"] == "refund.requires_attention"
        assert callbacks[-1]["data"]["failure_code"] == "duplicate_at_processor"
        assert counted("psp_gateway_duplicate_executions") >= 1
        # Nothing the processor says afterwards moves it: a person has to sort the money out.
        await asyncio.sleep(0.5)
        assert (await refund_now(world, refund["id"]))["status"] == "requires_attention"
        payment = await (await world.api.get(f"/v1/transactions/{tx['id']}")).json()
        assert (payment["refunded_amount"], payment["reserved_amount"]) == (0, 1_200)  # held, not released
        # The extra 12.00 recovered from the customer, the operator settles the refund.
        resp = await world.api.post(f"/admin/refunds/{refund['id']}/resolve", {
            "resolution": "refunded_offline", "reason": "second execution recovered",
            "external_reference": "RECOVERY-1"}, key=ADMIN_KEY)
        assert resp.status == 200, await resp.text()
        payment = await (await world.api.get(f"/v1/transactions/{tx['id']}")).json()
        assert (payment["refunded_amount"], payment["reserved_amount"]) == (1_200, 0)


async def test_an_answer_from_a_call_whose_lease_was_taken_over_moves_nothing_and_nothing_is_resent(database_url):
    # BridgePay holds the first request 2.5 s (under the 4 s deadline) before carrying it out.
    # Meanwhile the lease runs out (a stalled process, a clock that jumped: forced here) and the
    # janitor takes the refund over. It must neither resend nor let the old answer decide.
    async with late_world(database_url, window=4.0, timeout=4.0) as world:
        tx = await world.sale(5_000, settled=True)
        await world.faults({"latency": {"spike_ms": 2_500, "count": 1, "request_type": "012"}})
        fenced = counted("psp_gateway_refund_answers_fenced")
        refund = await world.refund(tx, 1_000)  # answers pending after the response budget (2 s)
        assert (refund["status"], refund["stage"]) == ("pending", "sending")
        async with world.api.app[keys.POOL].acquire() as conn:
            await conn.execute("UPDATE refunds SET lease_expires_at = now() WHERE id = $1", refund["id"])

        final = await settles(world, refund["id"], "succeeded")
        sale = await world.sim_sale(tx["psp_reference"])
        assert (sale["refund_executions"], sale["refunded"]) == (1, 1_000)  # the processor's books
        assert final["psp_refund_id"] == sale["refunds"][0]["gateway_trans_id"]
        calls = await attempts(world, refund["id"])
        # The first call's answer is kept as an attempt; the refund was settled by a look-up.
        assert calls.count(("refund", "succeeded")) == 1 and calls[-1] == ("lookup", "succeeded")
        async with world.api.app[keys.POOL].acquire() as conn:
            events = [(r["event"], r["to_status"], r["to_stage"]) for r in await conn.fetch(
                "SELECT event, to_status, to_stage FROM refund_events WHERE refund_id = $1 ORDER BY id", refund["id"])]
        assert counted("psp_gateway_refund_answers_fenced") == fenced + 1
        # Taken over, left waiting while the window runs, then settled by one of the janitor's look-ups.
        assert events[1:3] == [("recovery_claimed", "pending", "sending"),
                               ("processor_answer", "pending", "outcome_unknown")]
        assert events[-1] == ("processor_answer", "succeeded", "done")
        assert [e for e in events if e[1] != "pending"] == [events[-1]]


async def test_a_replay_after_a_lease_ran_out_looks_up_and_waits_instead_of_resending(database_url):
    # As above, with no janitor: an operator replays the refund whose lease ran out.
    async with late_world(database_url, window=4.0, timeout=4.0, janitor_poll_seconds=3600) as world:
        tx = await world.sale(5_000, settled=True)
        await world.faults({"latency": {"spike_ms": 2_500, "count": 1, "request_type": "012"}})
        refund = await world.refund(tx, 1_000)
        async with world.api.app[keys.POOL].acquire() as conn:
            await conn.execute("UPDATE refunds SET lease_expires_at = now() WHERE id = $1", refund["id"])
        await asyncio.sleep(0.1)

        async def replay() -> dict:
            resp = await world.api.post(f"/admin/refunds/{refund['id']}/replay", {"reason": "lease ran out"},
                                        key=ADMIN_KEY)
            assert resp.status == 200, await resp.text()
            return await resp.json()
        first = await replay()
        assert (first["found"], first["action"]) == ("no record at the processor", "nothing")
        assert (first["status"], first["stage"]) == ("pending", "outcome_unknown")
        await asyncio.sleep(6)  # the first request lands at 2.5 s; the window ends at 4 s + 1 s
        second = await replay()
        assert (second["found"], second["status"]) == ("succeeded", "succeeded")
        sale = await world.sim_sale(tx["psp_reference"])
        assert (sale["refund_executions"], sale["refunded"]) == (1, 1_000)  # the processor's books
