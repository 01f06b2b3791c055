"""End to end through the real HTTP server: the operator's API (`admin` scope) lists stuck
refunds, replays and resolves them, lists and reprocesses webhook events, and audits each action."""

from __future__ import annotations

import pytest

from gateway import keys
from gateway.execution import refund_request
from tests.conftest import ADMIN_KEY, READER_KEY, WRITER_KEY
from tests.e2e import test_stripe_flow as stripe_flow
from tests.e2e.test_refund_flow import eventually_refund

# The Stripe-like simulator wired to the gateway; a module attribute so that pytest finds it here.
stripe = stripe_flow.stripe

REASON = "customer called support, ticket OPS-1234"


async def admin(api, method: str, path: str, body=None, *, params=None, request_id: str | None = None,
                key: str | None = ADMIN_KEY) -> tuple[int, dict]:
    headers = {"X-Request-ID": request_id} if request_id else None
    if method == "GET":
        resp = await api.get(path, key=key, params=params, headers=headers)
    else:
        resp = await api.post(path, body, key=key, headers=headers)
    return resp.status, await resp.json()


async def transaction_body(api, tx: dict) -> dict:
    return await (await api.get(f"/v1/transactions/{tx['id']}")).json()


async def refund_now(api, refund_id: str) -> dict:
    return await (await api.get(f"/v1/refunds/{refund_id}")).json()


async def audit_rows(api) -> list:
    async with api.app[keys.POOL].acquire() as conn:
        return await conn.fetch("SELECT * FROM admin_audit ORDER BY id")


def audited(rows) -> list[tuple]:
    return [(r["actor"], r["action"], r["target"], r["reason"], r["result"]) for r in rows]


async def refund_events(api, refund_id: str) -> list:
    async with api.app[keys.POOL].acquire() as conn:
        return await conn.fetch("SELECT * FROM refund_events WHERE refund_id = $1 ORDER BY id", refund_id)


async def refund_calls(api, refund_id: str) -> list[tuple[str, str]]:
    async with api.app[keys.POOL].acquire() as conn:
        rows = await conn.fetch("SELECT call, outcome FROM refund_attempts WHERE refund_id = $1 ORDER BY id",
                                refund_id)
    return [(r["call"], r["outcome"]) for r in rows]


async def lost_answer(api, tx: dict, amount: int = 1_000) -> dict:
    """A refund the processor carried out whose answer never reached us: made normally on `mock`,
    then put back (by SQL) to where a lost answer leaves it, its amount reserved again."""
    refund = await api.refund(tx, amount)
    assert refund["status"] == "succeeded"
    async with api.app[keys.POOL].acquire() as conn, conn.transaction():
        await conn.execute("UPDATE refunds SET status = 'requires_attention', stage = 'outcome_unknown', "
                           "failure_code = 'outcome_unknown', failure_message = 'answer lost' WHERE id = $1",
                           refund["id"])
        await conn.execute("UPDATE transactions SET refunded_amount = refunded_amount - $2, "
                           "reserved_amount = reserved_amount + $2 WHERE id = $1", tx["id"], amount)
    return await refund_now(api, refund["id"])


async def unresolvable(api, tx3: dict) -> dict:
    """A lost answer on `mock3`, which can neither look refunds up nor deduplicate: needs attention at once."""
    refund = await api.refund(tx3, 6001)
    assert (refund["status"], refund["stage"], refund["failure_code"]) == (
        "requires_attention", "outcome_unknown", "outcome_unknown")
    return refund


# --- listing -------------------------------------------------------------------------------------

async def test_stuck_list_shows_refunds_needing_attention_and_pending_ones_older_than_asked(api):
    tx3 = await api.transaction(amount=20_000, processor="mock3")
    lost = await unresolvable(api, tx3)
    pending = await api.refund(tx3, 7001)  # mock3 cannot be asked: stays pending at the processor
    assert (pending["status"], pending["stage"]) == ("pending", "pending_at_processor")
    done = await api.refund(await api.transaction(amount=10_000), 1_000)

    status, body = await admin(api, "GET", "/admin/refunds", params={"stuck": "true"})
    assert status == 200, body
    assert [r["id"] for r in body["data"]] == [lost["id"]]  # the pending one is too fresh
    assert body["stuck_counts"] == {"requires_attention:outcome_unknown": 1} and body["stuck_total"] == 1

    status, body = await admin(api, "GET", "/admin/refunds", params={"stuck": "true", "older_than_seconds": "0"})
    assert status == 200, body
    assert [r["id"] for r in body["data"]] == [pending["id"], lost["id"]] and body["has_more"] is False
    assert body["stuck_counts"] == {"requires_attention:outcome_unknown": 1, "pending:pending_at_processor": 1}
    assert body["stuck_total"] == 2

    status, body = await admin(api, "GET", "/admin/refunds")
    assert status == 200, body
    assert [r["id"] for r in body["data"]] == [done["id"], pending["id"], lost["id"]]


async def test_refund_list_filters_by_status_processor_and_failure_code_and_paginates(api):
    tx3 = await api.transaction(amount=20_000, processor="mock3")
    lost = await unresolvable(api, tx3)
    pending = await api.refund(tx3, 7001)
    tx = await api.transaction(amount=10_000)
    done = await api.refund(tx, 1_000)
    declined = await api.refund(tx, 4001)

    async def ids(**params) -> list[str]:
        status, body = await admin(api, "GET", "/admin/refunds", params=params)
        assert status == 200, body
        return [r["id"] for r in body["data"]]

    assert await ids(status="pending") == [pending["id"]]
    assert await ids(status="requires_attention") == [lost["id"]]
    assert await ids(processor="mock3") == [pending["id"], lost["id"]]
    assert await ids(failure_code="expired_or_canceled_card") == [declined["id"]]
    assert await ids(stuck="true", older_than_seconds="0", processor="mock") == []

    status, page = await admin(api, "GET", "/admin/refunds", params={"limit": "2"})
    assert status == 200
    assert [r["id"] for r in page["data"]] == [declined["id"], done["id"]] and page["has_more"] is True
    status, rest = await admin(api, "GET", "/admin/refunds",
                               params={"limit": "2", "starting_after": page["data"][-1]["id"]})
    assert [r["id"] for r in rest["data"]] == [pending["id"], lost["id"]] and rest["has_more"] is False

    status, body = await admin(api, "GET", "/admin/refunds", params={"status": "stuck"})
    assert (status, body["code"]) == (422, "validation_error")
    status, body = await admin(api, "GET", "/admin/refunds", params={"older_than_seconds": "-1"})
    assert (status, body["code"]) == (422, "validation_error")


# --- who may use it ------------------------------------------------------------------------------

@pytest.mark.parametrize("key, expected", [(WRITER_KEY, (403, "forbidden")), (READER_KEY, (403, "forbidden")),
                                           (None, (401, "unauthorized"))],
                         ids=["billing_core", "reader", "no_key"])
async def test_every_admin_endpoint_refuses_keys_without_the_admin_scope(api, key, expected):
    tx3 = await api.transaction(amount=10_000, processor="mock3")
    lost = await unresolvable(api, tx3)
    calls = [
        ("GET", "/admin/refunds", None),
        ("GET", "/admin/webhook-events", None),
        ("POST", f"/admin/refunds/{lost['id']}/replay", {"reason": REASON}),
        ("POST", "/admin/refunds/replay", {"reason": REASON, "filter": {"stuck": True}}),
        ("POST", f"/admin/refunds/{lost['id']}/resolve", {"resolution": "canceled", "reason": REASON}),
        ("POST", "/admin/webhook-events/1/reprocess", {"reason": REASON}),
        ("POST", "/admin/webhook-events/reprocess", {"status": "unmatched", "reason": REASON}),
    ]
    for method, path, body in calls:
        status, answer = await admin(api, method, path, body, key=key)
        assert (status, answer["code"]) == expected, (method, path, answer)
    assert (await refund_now(api, lost["id"]))["status"] == "requires_attention"
    assert await audit_rows(api) == []


async def test_admin_key_cannot_use_the_billing_core_api(api):
    tx = await api.transaction(amount=10_000)
    resp = await api.post("/v1/refunds", {"invoice_id": tx["invoice_id"], "amount": 100, "currency": "EUR"},
                          key=ADMIN_KEY)
    assert resp.status == 403 and (await resp.json())["code"] == "forbidden"


# --- replay --------------------------------------------------------------------------------------

async def test_replay_of_a_lost_answer_records_what_the_processor_reports_without_resending(api):
    tx = await api.transaction(amount=10_000)
    lost = await lost_answer(api, tx, 1_000)
    assert (await transaction_body(api, tx))["reserved_amount"] == 1_000

    status, body = await admin(api, "POST", f"/admin/refunds/{lost['id']}/replay", {"reason": REASON})

    assert status == 200, body
    assert (body["found"], body["action"]) == ("succeeded", "recorded what the processor reported")
    assert (body["status"], body["stage"]) == ("succeeded", "done")
    assert body["refund"]["id"] == lost["id"] and body["refund"]["status"] == "succeeded"
    assert len(api.mock.executed) == 1  # looked up, never sent again
    assert (await refund_calls(api, lost["id"]))[-1] == ("lookup", "succeeded")
    balance = await transaction_body(api, tx)
    assert (balance["refunded_amount"], balance["reserved_amount"], balance["refundable_amount"]) == (1_000, 0, 9_000)
    [replayed] = [e for e in await refund_events(api, lost["id"]) if e["event"] == "admin_replay"]
    assert (replayed["from_status"], replayed["to_status"], replayed["to_stage"]) == (
        "requires_attention", "pending", "sending")
    assert (replayed["detail"]["actor"], replayed["detail"]["reason"]) == ("ops", REASON)


async def test_replay_of_a_refund_the_processor_never_got_resends_it_with_the_same_key(api):
    tx = await api.transaction(amount=10_000)
    api.mock.fail_next(amount=2_345, times=1_000)  # every call fails until told otherwise
    refund = await api.refund(tx, 2_345)
    refund = await eventually_refund(api, refund["id"], lambda r: r["status"] != "pending")
    assert (refund["status"], refund["stage"], refund["failure_code"]) == (
        "requires_attention", "not_sent", "retries_exhausted")
    assert len(api.mock.executed) == 0
    api.mock.fail_next(amount=2_345, times=0)

    status, body = await admin(api, "POST", f"/admin/refunds/{refund['id']}/replay", {"reason": REASON})

    assert status == 200, body
    assert (body["found"], body["action"]) == ("no record at the processor", "resent with the same idempotency key")
    assert body["status"] == "succeeded"
    assert [r.amount for r in api.mock.executed] == [2_345]
    assert (await refund_calls(api, refund["id"]))[-2:] == [("lookup", "not_found"), ("refund", "succeeded")]
    # The processor knows the refund under the refund's own idempotency key.
    async with api.app[keys.POOL].acquire() as conn:
        row = await conn.fetchrow("SELECT * FROM refunds WHERE id = $1", refund["id"])
        tx_row = await conn.fetchrow("SELECT * FROM transactions WHERE id = $1", tx["id"])
    found = await api.mock.lookup_refund(refund_request(row, tx_row), None)
    assert found is not None and found.psp_refund_id == body["refund"]["psp_refund_id"]
    balance = await transaction_body(api, tx)
    assert (balance["refunded_amount"], balance["reserved_amount"]) == (2_345, 0)


async def test_replay_on_a_processor_without_lookup_or_idempotency_resends_nothing(api):
    tx3 = await api.transaction(amount=10_000, processor="mock3")
    lost = await unresolvable(api, tx3)
    calls_before = await refund_calls(api, lost["id"])

    status, body = await admin(api, "POST", f"/admin/refunds/{lost['id']}/replay", {"reason": REASON})

    assert status == 200, body
    assert (body["found"], body["action"]) == ("not looked up", "nothing")
    assert (body["status"], body["stage"]) == ("requires_attention", "outcome_unknown")
    assert len(api.app[keys.ADAPTERS]["mock3"].executed) == 1
    assert await refund_calls(api, lost["id"]) == calls_before
    assert (await transaction_body(api, tx3))["reserved_amount"] == 6001


async def test_replay_is_refused_for_final_or_unknown_refunds_and_without_a_reason(api):
    tx = await api.transaction(amount=10_000)
    done = await api.refund(tx, 1_000)
    lost = await lost_answer(api, tx, 2_000)

    status, body = await admin(api, "POST", f"/admin/refunds/{done['id']}/replay", {"reason": REASON})
    assert (status, body["code"]) == (409, "refund_final")
    status, body = await admin(api, "POST", "/admin/refunds/rf_nope/replay", {"reason": REASON})
    assert (status, body["code"]) == (404, "refund_not_found")
    for bad in ({}, {"reason": "ok"}, {"reason": REASON, "force": True}):
        status, body = await admin(api, "POST", f"/admin/refunds/{lost['id']}/replay", bad)
        assert (status, body["code"]) == (422, "validation_error"), bad

    assert (await refund_now(api, lost["id"]))["status"] == "requires_attention"
    assert len(api.mock.executed) == 2
    # Refused actions did nothing, and are audited as refused; a malformed request is no action.
    assert audited(await audit_rows(api)) == [
        ("ops", "refund.replay", done["id"], REASON, {"refused": "refund_final", "status_now": "succeeded"}),
        ("ops", "refund.replay", "rf_nope", REASON, {"refused": "refund_not_found"}),
    ]


async def test_replay_and_resolve_of_a_refund_whose_call_is_in_flight_are_refused_and_audited(api):
    tx3 = await api.transaction(amount=10_000, processor="mock3")
    lost = await unresolvable(api, tx3)
    async with api.app[keys.POOL].acquire() as conn:  # another process is calling the processor right now
        await conn.execute("UPDATE refunds SET status = 'pending', stage = 'sending', "
                           "lease_expires_at = now() + interval '1 minute' WHERE id = $1", lost["id"])

    replay = await api.post(f"/admin/refunds/{lost['id']}/replay", {"reason": REASON}, key=ADMIN_KEY)
    resolve = await api.post(f"/admin/refunds/{lost['id']}/resolve", {"resolution": "failed", "reason": REASON},
                             key=ADMIN_KEY)

    for resp in (replay, resolve):
        assert (resp.status, (await resp.json())["code"]) == (409, "refund_in_flight")
        assert resp.headers["Retry-After"] == "5"
    assert ((await refund_now(api, lost["id"]))["stage"], len(api.app[keys.ADAPTERS]["mock3"].executed)) == (
        "sending", 1)
    assert audited(await audit_rows(api)) == [
        ("ops", "refund.replay", lost["id"], REASON, {"refused": "refund_in_flight"}),
        ("ops", "refund.resolve.failed", lost["id"], REASON, {"refused": "refund_in_flight"}),
    ]



async def test_replay_of_a_never_sent_refund_on_a_processor_without_lookup_or_idempotency_sends_it(api):
    mock3 = api.app[keys.ADAPTERS]["mock3"]
    tx3 = await api.transaction(amount=10_000, processor="mock3")
    mock3.fail_next(amount=2_345, times=1_000)  # 503s: the processor never carried it out
    refund = await api.refund(tx3, 2_345)
    refund = await eventually_refund(api, refund["id"], lambda r: r["status"] != "pending")
    assert (refund["status"], refund["stage"], refund["failure_code"]) == (
        "requires_attention", "not_sent", "retries_exhausted")
    mock3.fail_next(amount=2_345, times=0)

    status, body = await admin(api, "POST", f"/admin/refunds/{refund['id']}/replay", {"reason": REASON})

    assert status == 200, body
    assert body["action"].startswith("resent") and body["status"] == "succeeded"
    assert [r.amount for r in mock3.executed] == [2_345]


async def test_replay_of_a_refund_pending_at_a_processor_without_lookup_leaves_it_pending(api):
    tx3 = await api.transaction(amount=10_000, processor="mock3")
    pending = await api.refund(tx3, 7001)
    assert (pending["status"], pending["stage"]) == ("pending", "pending_at_processor")

    status, body = await admin(api, "POST", f"/admin/refunds/{pending['id']}/replay", {"reason": REASON})

    assert status == 200, body
    assert (body["status"], body["stage"], body["action"]) == ("pending", "pending_at_processor", "nothing")
    assert len(api.app[keys.ADAPTERS]["mock3"].executed) == 1

# --- bulk replay ---------------------------------------------------------------------------------

async def _stuck_world(api) -> dict:
    """Two refunds that need attention (one the processor has a record of, one it cannot be asked
    about), a fresh pending one and a succeeded one."""
    tx = await api.transaction(amount=10_000)
    tx3 = await api.transaction(amount=20_000, processor="mock3")
    return {"lost": await lost_answer(api, tx, 1_000), "unresolvable": await unresolvable(api, tx3),
            "pending": await api.refund(tx3, 7001), "done": await api.refund(tx, 500)}


async def test_bulk_replay_dry_run_lists_stuck_refunds_and_replays_nothing(api):
    world = await _stuck_world(api)

    status, body = await admin(api, "POST", "/admin/refunds/replay",
                               {"filter": {"stuck": True}, "dry_run": True, "reason": REASON})

    assert status == 200, body
    assert body["dry_run"] is True and body["count"] == 2
    assert sorted(body["would_replay"]) == sorted([world["lost"]["id"], world["unresolvable"]["id"]])
    for name in ("lost", "unresolvable"):
        assert (await refund_now(api, world[name]["id"]))["status"] == "requires_attention"
        assert all(e["event"] != "admin_replay" for e in await refund_events(api, world[name]["id"]))
    assert len(api.mock.executed) == 2 and len(api.app[keys.ADAPTERS]["mock3"].executed) == 2


async def test_bulk_replay_replays_each_stuck_refund_and_reports_each_result(api):
    world = await _stuck_world(api)

    status, body = await admin(api, "POST", "/admin/refunds/replay", {"filter": {"stuck": True}, "reason": REASON})

    assert status == 200, body
    assert body["dry_run"] is False and body["count"] == 2
    results = {r["id"]: r for r in body["results"]}
    assert results == {
        world["lost"]["id"]: {"id": world["lost"]["id"], "found": "succeeded",
                              "action": "recorded what the processor reported", "status": "succeeded",
                              "stage": "done"},
        world["unresolvable"]["id"]: {"id": world["unresolvable"]["id"], "found": "not looked up",
                                      "action": "nothing", "status": "requires_attention",
                                      "stage": "outcome_unknown"},
    }
    assert (await refund_now(api, world["lost"]["id"]))["status"] == "succeeded"
    assert (await refund_now(api, world["pending"]["id"]))["stage"] == "pending_at_processor"  # not stuck: untouched
    assert len(api.mock.executed) == 2 and len(api.app[keys.ADAPTERS]["mock3"].executed) == 2


async def test_bulk_replay_by_ids_replays_only_the_open_refunds_named(api):
    world = await _stuck_world(api)

    status, body = await admin(api, "POST", "/admin/refunds/replay", {
        "filter": {"ids": [world["lost"]["id"], world["done"]["id"]]}, "reason": REASON})

    assert status == 200, body
    assert [(r["id"], r["status"]) for r in body["results"]] == [(world["lost"]["id"], "succeeded")]
    assert (await refund_now(api, world["unresolvable"]["id"]))["status"] == "requires_attention"
    assert all(e["event"] != "admin_replay" for e in await refund_events(api, world["unresolvable"]["id"]))



async def test_bulk_replay_limit_counts_only_refunds_that_can_be_replayed(api):
    tx = await api.transaction(amount=10_000)
    lost = await lost_answer(api, tx, 1_000)
    await api.refund(tx, 100)
    await api.refund(tx, 200)  # newer, final

    status, body = await admin(api, "POST", "/admin/refunds/replay", {
        "filter": {"processor": "mock"}, "limit": 1, "dry_run": True, "reason": REASON})

    assert status == 200, body
    assert body["would_replay"] == [lost["id"]]

async def test_bulk_replay_without_a_filter_is_rejected(api):
    world = await _stuck_world(api)
    for bad in ({"filter": {}, "reason": REASON}, {"filter": {"stuck": False}, "reason": REASON},
                {"reason": REASON}, {"filter": {"stuck": True}}):
        status, body = await admin(api, "POST", "/admin/refunds/replay", bad)
        assert (status, body["code"]) == (422, "validation_error"), bad
    assert (await refund_now(api, world["lost"]["id"]))["status"] == "requires_attention"
    assert await audit_rows(api) == []


# --- resolve -------------------------------------------------------------------------------------

async def test_resolving_refunded_offline_counts_the_amount_as_refunded(api):
    tx3 = await api.transaction(amount=10_000, processor="mock3")
    lost = await unresolvable(api, tx3)

    status, body = await admin(api, "POST", f"/admin/refunds/{lost['id']}/resolve", {
        "resolution": "refunded_offline", "reason": REASON, "external_reference": "BANK-TRF-0042"})

    assert status == 200, body
    assert (body["id"], body["status"], body["stage"], body["failure_code"]) == (
        lost["id"], "refunded_offline", "done", None)
    balance = await transaction_body(api, tx3)
    assert (balance["refunded_amount"], balance["reserved_amount"], balance["refundable_amount"]) == (6001, 0, 3999)
    [resolved] = [e for e in await refund_events(api, lost["id"]) if e["event"] == "admin_resolve"]
    assert (resolved["from_status"], resolved["to_status"]) == ("requires_attention", "refunded_offline")
    assert resolved["detail"]["actor"] == "ops" and resolved["detail"]["reason"] == REASON
    assert resolved["detail"]["external_reference"] == "BANK-TRF-0042"


@pytest.mark.parametrize("resolution", ["failed", "canceled"])
async def test_resolving_failed_or_canceled_releases_the_amount(api, resolution):
    tx3 = await api.transaction(amount=10_000, processor="mock3")
    lost = await unresolvable(api, tx3)

    status, body = await admin(api, "POST", f"/admin/refunds/{lost['id']}/resolve",
                               {"resolution": resolution, "reason": REASON})

    assert status == 200, body
    assert (body["status"], body["stage"], body["failure_code"]) == (resolution, "done", f"resolved_{resolution}")
    assert "ops" in body["failure_message"] and REASON in body["failure_message"]
    balance = await transaction_body(api, tx3)
    assert (balance["refunded_amount"], balance["reserved_amount"], balance["refundable_amount"]) == (0, 0, 10_000)
    again = await api.refund(tx3, 10_000)  # refundable again, in full
    assert again["status"] == "succeeded"
    [resolved] = [e for e in await refund_events(api, lost["id"]) if e["event"] == "admin_resolve"]
    assert (resolved["detail"]["actor"], resolved["detail"]["reason"]) == ("ops", REASON)


async def test_resolve_is_refused_without_a_reference_or_reason_and_for_final_refunds(api):
    tx3 = await api.transaction(amount=10_000, processor="mock3")
    lost = await unresolvable(api, tx3)
    done = await api.refund(tx3, 1_000)
    path = f"/admin/refunds/{lost['id']}/resolve"

    for bad in ({"resolution": "refunded_offline", "reason": REASON},
                {"resolution": "failed"},
                {"resolution": "failed", "reason": "no"},
                {"resolution": "succeeded", "reason": REASON}):
        status, body = await admin(api, "POST", path, bad)
        assert (status, body["code"]) == (422, "validation_error"), bad
    status, body = await admin(api, "POST", f"/admin/refunds/{done['id']}/resolve",
                               {"resolution": "failed", "reason": REASON})
    assert (status, body["code"]) == (409, "refund_final")
    status, body = await admin(api, "POST", "/admin/refunds/rf_nope/resolve",
                               {"resolution": "failed", "reason": REASON})
    assert (status, body["code"]) == (404, "refund_not_found")

    assert (await refund_now(api, lost["id"]))["status"] == "requires_attention"
    assert (await refund_now(api, done["id"]))["status"] == "succeeded"
    assert (await transaction_body(api, tx3))["reserved_amount"] == 6001
    rows = await audit_rows(api)
    assert audited(rows) == [
        ("ops", "refund.resolve.failed", done["id"], REASON, {"refused": "refund_final", "status_now": "succeeded"}),
        ("ops", "refund.resolve.failed", "rf_nope", REASON, {"refused": "refund_not_found"}),
    ]
    assert rows[0]["request"] == {"external_reference": None}


# --- the processor answers after an operator resolved ------------------------------------------

async def pending_at_stripe(stripe, amount: int = 1_000) -> tuple[dict, dict]:
    """A 30.00 payment at the Stripe-like simulator with a refund of `amount` pending there."""
    charge = await stripe.charge(3_000)
    tx = await stripe.api.transaction(amount=3_000, psp_reference=charge["id"], processor="stripe")
    await stripe.control.post("/_sim/refunds/behaviour", json={"status": "pending"})
    refund = await stripe.api.refund(tx, amount)
    assert (refund["status"], refund["stage"]) == ("pending", "pending_at_processor")
    await stripe.settled()
    return tx, refund


async def callbacks_for(api, refund_id: str) -> list[dict]:
    body = await (await api.get("/v1/events", params={"limit": "1000"})).json()
    return [e for e in body["data"] if e["refund_id"] == refund_id]


async def balance_of(api, tx: dict) -> tuple[int, int, int]:
    body = await transaction_body(api, tx)
    return body["refunded_amount"], body["reserved_amount"], body["refundable_amount"]


async def test_processor_success_after_an_operator_resolved_failed_reopens_the_refund_with_its_amount_reserved(
        stripe):
    api = stripe.api
    tx, refund = await pending_at_stripe(stripe)
    status, body = await admin(api, "POST", f"/admin/refunds/{refund['id']}/resolve",
                               {"resolution": "failed", "reason": REASON})
    assert (status, body["status"]) == (200, "failed"), body
    assert await balance_of(api, tx) == (0, 0, 3_000)  # released: refundable again

    await stripe.control.post("/_sim/refunds/settle", json={"outcome": "succeeded"})  # the money went out after all
    await stripe.settled()

    now = await refund_now(api, refund["id"])
    assert (now["status"], now["stage"], now["failure_code"]) == ("requires_attention", "done", "processor_disagrees")
    assert "succeeded" in now["failure_message"] and "failed" in now["failure_message"]
    assert await balance_of(api, tx) == (0, 1_000, 2_000)  # reserved again: it cannot be refunded twice
    status, stuck = await admin(api, "GET", "/admin/refunds", params={"stuck": "true"})
    assert [r["id"] for r in stuck["data"]] == [refund["id"]]
    assert stuck["stuck_counts"] == {"requires_attention:processor_disagrees": 1}
    last = (await callbacks_for(api, refund["id"]))[-1]
    assert (last["type"], last["previous_status"], last["data"]["failure_code"]) == (
        "refund.requires_attention", "failed", "processor_disagrees")
    [reopened] = [e for e in await refund_events(api, refund["id"]) if e["from_status"] == "failed"]
    assert (reopened["to_status"], reopened["detail"]["settled_as"], reopened["detail"]["processor_says"]) == (
        "requires_attention", "failed", "succeeded")

    # A replay asks the processor and records what it says.
    status, body = await admin(api, "POST", f"/admin/refunds/{refund['id']}/replay", {"reason": REASON})
    assert (status, body["found"], body["status"]) == (200, "succeeded", "succeeded"), body
    assert await balance_of(api, tx) == (1_000, 0, 2_000)


async def test_processor_success_after_an_operator_refunded_offline_is_a_visible_double_refund(stripe):
    api = stripe.api
    tx, refund = await pending_at_stripe(stripe)
    status, body = await admin(api, "POST", f"/admin/refunds/{refund['id']}/resolve", {
        "resolution": "refunded_offline", "reason": REASON, "external_reference": "BANK-TRF-7"})
    assert (status, body["status"]) == (200, "refunded_offline"), body
    assert await balance_of(api, tx) == (1_000, 0, 2_000)

    await stripe.control.post("/_sim/refunds/settle", json={"outcome": "succeeded"})  # refunded a second time
    await stripe.settled()

    now = await refund_now(api, refund["id"])
    assert (now["status"], now["failure_code"]) == ("requires_attention", "processor_disagrees")
    assert await balance_of(api, tx) == (0, 1_000, 2_000)  # still counted once, and held
    last = (await callbacks_for(api, refund["id"]))[-1]
    assert (last["type"], last["previous_status"]) == ("refund.requires_attention", "refunded_offline")
    status, stuck = await admin(api, "GET", "/admin/refunds", params={"stuck": "true"})
    assert stuck["stuck_counts"] == {"requires_attention:processor_disagrees": 1}


async def test_processor_failure_after_an_operator_resolved_canceled_changes_nothing(stripe):
    api = stripe.api
    tx, refund = await pending_at_stripe(stripe)
    status, body = await admin(api, "POST", f"/admin/refunds/{refund['id']}/resolve",
                               {"resolution": "canceled", "reason": REASON})
    assert status == 200, body
    before = await callbacks_for(api, refund["id"])

    await stripe.control.post("/_sim/refunds/settle", json={"outcome": "failed"})  # the processor agrees
    await stripe.settled()

    now = await refund_now(api, refund["id"])
    assert (now["status"], now["failure_code"]) == ("canceled", "resolved_canceled")
    assert await balance_of(api, tx) == (0, 0, 3_000)
    assert await callbacks_for(api, refund["id"]) == before


# --- audit ---------------------------------------------------------------------------------------

async def test_every_admin_action_is_audited_with_actor_reason_result_and_request_id(api):
    tx = await api.transaction(amount=10_000)
    tx3 = await api.transaction(amount=20_000, processor="mock3")
    lost = await lost_answer(api, tx, 1_000)
    stuck = await unresolvable(api, tx3)
    other = await unresolvable(api, tx3)

    assert (await admin(api, "POST", f"/admin/refunds/{lost['id']}/replay", {"reason": "replay one"},
                        request_id="req-replay"))[0] == 200
    assert (await admin(api, "POST", "/admin/refunds/replay",
                        {"filter": {"stuck": True}, "dry_run": True, "reason": "look first"},
                        request_id="req-dry-run"))[0] == 200
    assert (await admin(api, "POST", "/admin/refunds/replay", {"filter": {"ids": [stuck["id"]]}, "reason": "bulk"},
                        request_id="req-bulk"))[0] == 200
    assert (await admin(api, "POST", f"/admin/refunds/{stuck['id']}/resolve",
                        {"resolution": "refunded_offline", "reason": "paid by bank transfer",
                         "external_reference": "BANK-1"}, request_id="req-resolve"))[0] == 200
    assert (await admin(api, "POST", f"/admin/refunds/{other['id']}/resolve",
                        {"resolution": "canceled", "reason": "customer withdrew"}, request_id="req-cancel"))[0] == 200
    assert (await admin(api, "POST", f"/admin/refunds/{lost['id']}/replay", {"reason": "refused: final"},
                        request_id="req-refused"))[0] == 409

    rows = await audit_rows(api)
    assert [(r["actor"], r["action"], r["target"], r["reason"], r["request_id"]) for r in rows] == [
        ("ops", "refund.replay", lost["id"], "replay one", "req-replay"),
        ("ops", "refund.replay.dry_run", None, "look first", "req-dry-run"),
        ("ops", "refund.replay", stuck["id"], "bulk", "req-bulk"),
        ("ops", "refund.resolve.refunded_offline", stuck["id"], "paid by bank transfer", "req-resolve"),
        ("ops", "refund.resolve.canceled", other["id"], "customer withdrew", "req-cancel"),
        ("ops", "refund.replay", lost["id"], "refused: final", "req-refused"),
    ]
    assert rows[5]["result"] == {"refused": "refund_final", "status_now": "succeeded"}
    assert all(r["result"] for r in rows)
    assert rows[0]["result"] == {"found": "succeeded", "action": "recorded what the processor reported",
                                 "status": "succeeded", "stage": "done"}
    assert rows[0]["request"]["before"] == {"status": "requires_attention", "stage": "outcome_unknown"}
    assert sorted(rows[1]["result"]["would_replay"]) == sorted([stuck["id"], other["id"]])  # lost is final now
    assert rows[2]["result"]["action"] == "nothing"
    assert rows[3]["result"] == {"status": "refunded_offline"}
    assert rows[3]["request"]["external_reference"] == "BANK-1"


# --- webhook events ------------------------------------------------------------------------------

async def test_webhook_event_admin_refuses_unknown_events_and_bad_statuses(api):
    status, body = await admin(api, "POST", "/admin/webhook-events/999999/reprocess", {"reason": REASON})
    assert (status, body["code"]) == (404, "webhook_event_not_found")
    status, body = await admin(api, "POST", "/admin/webhook-events/evt_x/reprocess", {"reason": REASON})
    assert (status, body["code"]) == (404, "webhook_event_not_found")
    status, body = await admin(api, "POST", "/admin/webhook-events/reprocess", {"status": "applied", "reason": REASON})
    assert (status, body["code"]) == (422, "validation_error")
    status, body = await admin(api, "POST", "/admin/webhook-events/reprocess", {"status": "unmatched"})
    assert (status, body["code"]) == (422, "validation_error")
    status, body = await admin(api, "GET", "/admin/webhook-events", params={"status": "unmatched"})
    assert (status, body) == (200, {"object": "list", "data": [], "has_more": False})
    assert audited(await audit_rows(api)) == [
        ("ops", "webhook_event.reprocess", target, REASON, {"refused": "webhook_event_not_found"})
        for target in ("webhook_event:999999", "webhook_event:evt_x")]


async def test_unmatched_webhook_events_are_listed_reprocessed_and_applied_once_the_payment_is_known(stripe):
    api = stripe.api
    charge = await stripe.charge(6_000)  # no invoice in its metadata: the gateway cannot register it itself
    await stripe.control.post("/v1/refunds", data={"charge": charge["id"], "amount": "1000"})
    await stripe.settled()

    status, listed = await admin(api, "GET", "/admin/webhook-events", params={"status": "unmatched"})
    assert status == 200, listed
    parked = listed["data"]
    assert parked and all(e["status"] == "unmatched" and e["processor_id"] == "stripe" for e in parked)
    assert all(charge["id"] in e["match_keys"] for e in parked)
    one = parked[0]

    status, body = await admin(api, "POST", f"/admin/webhook-events/{one['id']}/reprocess", {"reason": REASON},
                               request_id="req-reprocess")
    assert status == 200, body
    assert body == {"id": one["id"], "event_id": one["event_id"], "status": "unmatched"}  # still no payment

    status, body = await admin(api, "POST", "/admin/webhook-events/reprocess",
                               {"status": "unmatched", "reason": REASON}, request_id="req-reprocess-all")
    assert (status, body) == (200, {"queued": len(parked)})
    await stripe.settled()  # processed again, and parked again
    status, again = await admin(api, "GET", "/admin/webhook-events", params={"status": "unmatched"})
    assert sorted(e["id"] for e in again["data"]) == sorted(e["id"] for e in parked)
    before = {e["id"]: e["attempts"] for e in parked}
    assert all(e["attempts"] > before[e["id"]] for e in again["data"])

    tx = await api.transaction(amount=6_000, psp_reference=charge["id"], processor="stripe")

    async def applied():
        return (await transaction_body(api, tx))["refunded_amount"] == 1_000
    await stripe_flow.eventually(applied)
    await stripe.settled()
    assert (await transaction_body(api, tx))["refunded_amount"] == 1_000
    status, left = await admin(api, "GET", "/admin/webhook-events", params={"status": "unmatched"})
    assert left["data"] == []

    rows = await audit_rows(api)
    assert [(r["actor"], r["action"], r["target"], r["reason"], r["request_id"], r["result"]) for r in rows] == [
        ("ops", "webhook_event.reprocess", f"webhook_event:{one['id']}", REASON, "req-reprocess",
         {"status": "unmatched"}),
        ("ops", "webhook_event.reprocess_all", None, REASON, "req-reprocess-all", {"queued": len(parked)}),
    ]
