"""Reconciliation against the BridgePay-like simulator (which sends no webhooks): a refund made in
its portal found and recorded, a second execution of one of ours found, a refund the gateway
counts that the processor does not have, a clean period finding nothing, and the operator's side
(findings listed, resolved and audited, the metric, the command)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest

from adapters.bridgepay_sim import SimConfig
from gateway import keys, reconcile
from tests.conftest import ADMIN_KEY, WRITER_KEY, Api
from tests.e2e.test_bridgepay_flow import BP, BridgePayWorld, bridgepay_world


@pytest.fixture
async def world(database_url):
    async with bridgepay_world(database_url, SimConfig(**BP, seed=21), window=0.5, timeout=2.0) as w:
        yield w


def _period() -> tuple[datetime, datetime]:
    now = datetime.now(timezone.utc)
    return now - timedelta(hours=1), now + timedelta(minutes=1)


async def _run(world: BridgePayWorld) -> reconcile.RunSummary:
    since, until = _period()
    return await reconcile.run(world.api.app[keys.POOL], world.api.app[keys.ADAPTERS]["bridgepay"], since=since,
                               until=until)


async def _portal_refund(world: BridgePayWorld, trans_id: str, amount: int, invoice_num: str | None = None) -> dict:
    body = {"gateway_trans_id": trans_id, "amount": amount, **({"invoice_num": invoice_num} if invoice_num else {})}
    resp = await world.control.post("/_sim/portal/refunds", json=body)
    assert resp.status_code == 200, resp.text
    return resp.json()


async def _findings(api: Api, **params: str) -> list[dict]:
    resp = await api.get("/admin/reconciliation/findings", key=ADMIN_KEY, params=params)
    assert resp.status == 200, await resp.text()
    return (await resp.json())["data"]


async def test_a_clean_period_finds_nothing(world):
    tx = await world.sale(5_000, settled=True)
    assert (await world.refund(tx, 1_000))["status"] == "succeeded"
    summary = await _run(world)
    assert (summary.status, summary.new_findings) == ("finished", {})
    assert summary.processor_refunds >= 1 and summary.gateway_refunds >= 1
    assert await _findings(world.api, status="open") == []


async def test_a_portal_refund_is_found_recorded_against_its_payment_and_resolved_by_an_operator(world):
    tx = await world.sale(5_000, settled=True)
    assert (await world.refund(tx, 1_000))["status"] == "succeeded"
    await _portal_refund(world, tx["psp_reference"], 1_200)

    summary = await _run(world)
    assert summary.new_findings == {"missing_in_gateway": 1}
    [finding] = await _findings(world.api, status="open")
    assert (finding["kind"], finding["action"], finding["transaction_id"]) == (
        "missing_in_gateway", "recorded_external", tx["id"])
    assert finding["processor_facts"]["amount"] == 1_200 and finding["gateway"] is None
    payment = await (await world.api.get(f"/v1/transactions/{tx['id']}")).json()
    assert (payment["refunded_amount"], payment["refundable_amount"]) == (2_200, 2_800)  # the processor's books
    sale = await world.sim_sale(tx["psp_reference"])
    assert sale["refunded"] == 2_200 and sale["refund_executions"] == 2  # nothing sent by the run

    assert (await _run(world)).new_findings == {}  # found again: nothing new, nothing recorded twice
    assert len(await _findings(world.api, status="open")) == 1
    metrics = await (await world.api.get("/metrics", key=None)).text()
    assert 'psp_gateway_reconciliation_findings{kind="missing_in_gateway",processor="bridgepay"} 1.0' in metrics

    refused = await world.api.post(f"/admin/reconciliation/findings/{finding['id']}/resolve",
                                   {"reason": "agreed with finance"}, key=WRITER_KEY)
    assert refused.status == 403
    resolved = await world.api.post(f"/admin/reconciliation/findings/{finding['id']}/resolve",
                                    {"reason": "the portal refund was agreed with the customer"}, key=ADMIN_KEY)
    assert resolved.status == 200 and (await resolved.json())["status"] == "resolved"
    again = await world.api.post(f"/admin/reconciliation/findings/{finding['id']}/resolve",
                                 {"reason": "twice"}, key=ADMIN_KEY)
    assert again.status == 409 and (await again.json())["code"] == "finding_resolved"
    assert await _findings(world.api, status="open") == []
    async with world.api.app[keys.POOL].acquire() as conn:
        audit = await conn.fetchrow("SELECT actor, action FROM admin_audit WHERE target = $1",
                                    f"finding:{finding['id']}")
    assert (audit["actor"], audit["action"]) == ("ops", "reconciliation.resolve")


async def test_a_second_execution_of_our_refund_is_found(world):
    tx = await world.sale(5_000, settled=True)
    ours = await world.refund(tx, 700)
    await _portal_refund(world, tx["psp_reference"], 700, invoice_num=ours["id"])  # our id, carried out again
    summary = await _run(world)
    assert summary.new_findings == {"duplicate_at_processor": 1}
    [finding] = await _findings(world.api, status="open")
    assert (finding["refund_id"], len(finding["processor_facts"]["executions"])) == (ours["id"], 2)


async def test_a_refund_the_gateway_counts_that_the_processor_lacks_is_found(world):
    tx = await world.sale(5_000, settled=True)
    ours = await world.refund(tx, 900)
    async with world.api.app[keys.POOL].acquire() as conn:  # the books drift: another id than BridgePay's
        await conn.execute("UPDATE refunds SET psp_refund_id = 'ghost-1', idempotency_key = 'ghost' WHERE id = $1",
                           ours["id"])
    summary = await _run(world)
    assert summary.new_findings == {"missing_at_processor": 1}
    [finding] = await _findings(world.api, status="open")
    assert (finding["refund_id"], finding["gateway"]["psp_refund_id"]) == (ours["id"], "ghost-1")


async def test_the_command_runs_a_reconciliation_and_prints_its_findings(world, database_url, tmp_path):
    tx = await world.sale(5_000, settled=True)
    await _portal_refund(world, tx["psp_reference"], 300)
    config = tmp_path / "gateway.toml"
    config.write_text("[[processors]]\n" + "".join(f'{k} = "{v}"\n' for k, v in {
        "id": "bridgepay", "kind": "bridgepay", "base_url": world.sim.url, **BP}.items()))
    since = (datetime.now(timezone.utc) - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    # In a thread: the simulator answering the command runs on this test's event loop.
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "gateway", "reconcile", "--processor", "bridgepay", "--since", since,
                         "--json"], capture_output=True, text=True, timeout=60,
        env={**os.environ, "GATEWAY_CONFIG": str(config), "GATEWAY_DATABASE_URL": database_url})
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["status"] == "finished" and report["new_findings"] == {"missing_in_gateway": 1}
    assert [f["action"] for f in report["findings"]] == ["recorded_external"]
