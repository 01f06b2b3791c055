"""Hostile webhooks: a wrong signature, a stale timestamp, a replayed event, a truncated or huge
body, a wrong content type. Each is answered cleanly, nothing is stored as verified, and the
rejection is logged. A signed event the gateway cannot read is no forgery: it is kept, failed."""

from __future__ import annotations

import hashlib
import time

import orjson
import pytest

from adapters.stripe.transformers import signature_header
from gateway import keys
from gateway.db import store
from tests.conftest import ADMIN_KEY, logged_api, make_settings

WHSEC = "whsec_hardening_0123456789"


def event(event_id: str = "evt_hard_1") -> bytes:
    return orjson.dumps({"id": event_id, "object": "event", "type": "refund.updated", "created": int(time.time()),
                         "data": {"object": {"id": "re_1", "object": "refund", "amount": 100, "currency": "eur",
                                             "charge": "ch_unknown", "status": "succeeded", "metadata": {}}}})


def signed(body: bytes, at: int | None = None, secret: str = WHSEC) -> dict[str, str]:
    return {"Content-Type": "application/json",
            "Stripe-Signature": signature_header(body, [secret.encode()], at or int(time.time()))}


@pytest.fixture
async def hooks(database_url):
    settings = make_settings(database_url, processors=[
        {"id": "stripe", "kind": "stripe", "base_url": "http://127.0.0.1:9", "api_key": "sk_test_unused_0123",
         "webhook_secrets": [WHSEC]}], max_body_bytes=64 * 1024)
    async with logged_api(settings) as api:
        yield api


async def stored(api) -> int:
    async with api.app[keys.POOL].acquire() as conn:
        return await conn.fetchval("SELECT count(*) FROM webhook_events")


async def post(api, body: bytes, headers: dict[str, str]):
    return await api.post("/v1/webhooks/stripe", data=body, key=None, headers=headers)


def logged(api, name: str) -> list[dict]:
    lines = [orjson.loads(line) for line in api.logs.getvalue().splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("event") == name]


@pytest.mark.parametrize("case", ["wrong_secret", "stale", "future", "tampered", "truncated", "no_signature"])
async def test_webhook_that_fails_verification_is_rejected_logged_and_not_stored(hooks, case):
    body = event()
    headers = {
        "wrong_secret": signed(body, secret="whsec_someone_else_0123"),
        "stale": signed(body, at=int(time.time()) - 301),
        "future": signed(body, at=int(time.time()) + 301),
        "tampered": signed(body),
        "truncated": signed(body),
        "no_signature": {"Content-Type": "application/json"},
    }[case]
    sent = {"tampered": body.replace(b"succeeded", b"failed"), "truncated": body[: len(body) // 2]}.get(case, body)
    resp = await post(hooks, sent, headers)
    assert resp.status == 400 and (await resp.json())["code"] == "invalid_signature"
    assert await stored(hooks) == 0
    [line] = logged(hooks, "webhook_rejected")
    assert line["processor"] == "stripe" and line["reason"]
    async with hooks.app[keys.POOL].acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM webhook_rejections") == 1


async def test_replayed_event_is_acknowledged_and_stored_once(hooks):
    body = event("evt_replayed")
    first = await post(hooks, body, signed(body))
    again = await post(hooks, body, signed(body))
    assert (first.status, again.status) == (200, 200)
    assert ((await first.json())["duplicate"], (await again.json())["duplicate"]) == (False, True)
    assert await stored(hooks) == 1
    assert [(line["event_id"], line["duplicate"]) for line in logged(hooks, "webhook_received")] == [
        ("evt_replayed", False), ("evt_replayed", True)]


async def test_huge_webhook_is_refused_before_it_is_read(hooks):
    body = b'{"id": "evt_huge", "pad": "' + b"x" * (70 * 1024) + b'"}'
    resp = await post(hooks, body, signed(body))
    assert resp.status == 413 and (await resp.json())["code"] == "payload_too_large"
    assert await stored(hooks) == 0
    [line] = logged(hooks, "webhook_rejected")
    assert line["processor"] == "stripe" and "max_body_bytes" in line["reason"] and line["bytes"] == len(body)
    assert "xxxxxxxx" not in hooks.logs.getvalue()  # never the body


async def test_webhook_with_the_wrong_content_type_is_refused(hooks):
    body = event()
    headers = {**signed(body), "Content-Type": "application/x-www-form-urlencoded"}
    resp = await post(hooks, body, headers)
    assert resp.status == 415 and (await resp.json())["code"] == "unsupported_media_type"
    assert await stored(hooks) == 0
    [line] = logged(hooks, "webhook_rejected")
    assert line["processor"] == "stripe" and "application/json" in line["reason"]
    assert line["content_type"] == "application/x-www-form-urlencoded"
    assert "evt_hard_1" not in hooks.logs.getvalue()  # never the body


# --- verified, but not an event the gateway can read ------------------------------------------------

def unreadable(event_id: str | None) -> bytes:
    """A signed refund event without an amount (and, with event_id None, without an id)."""
    evt = orjson.loads(event(event_id or "evt_unused"))
    del evt["data"]["object"]["amount"]
    if event_id is None:
        del evt["id"]
    return orjson.dumps(evt)


async def test_signed_event_the_gateway_cannot_read_is_kept_failed_and_acknowledged(hooks):
    body = unreadable("evt_unreadable")
    resp = await post(hooks, body, signed(body))
    assert resp.status == 200, await resp.text()  # 2xx: a resend would bring the same bytes
    assert await resp.json() == {"received": True, "event_id": "evt_unreadable", "duplicate": False}
    async with hooks.app[keys.POOL].acquire() as conn:
        row = await conn.fetchrow("SELECT * FROM webhook_events")
        assert await conn.fetchval("SELECT count(*) FROM webhook_rejections") == 0
    assert (row["event_id"], row["event_type"], row["status"], row["signature"]) == (
        "evt_unreadable", "refund.updated", "failed", "verified")
    assert bytes(row["body"]) == body and row["headers"]["Stripe-Signature"] == signed(body)["Stripe-Signature"]
    assert row["event"] is None and row["last_error"].startswith("unreadable: ") and "amount" in row["last_error"]
    [line] = logged(hooks, "webhook_unreadable")
    assert (line["event_id"], line["duplicate"]) == ("evt_unreadable", False)
    assert logged(hooks, "webhook_rejected") == []

    listed = await (await hooks.get("/admin/webhook-events", key=ADMIN_KEY, params={"status": "failed"})).json()
    [failed] = listed["data"]
    assert (failed["event_id"], failed["parsed"], failed["signature"]) == ("evt_unreadable", False, "verified")
    again = await post(hooks, body, signed(body))
    assert (again.status, (await again.json())["duplicate"]) == (200, True)
    assert await stored(hooks) == 1

    resp = await hooks.post(f"/admin/webhook-events/{failed['id']}/reprocess", {"reason": "still unreadable?"},
                            key=ADMIN_KEY)
    assert resp.status == 200 and (await resp.json())["status"] == "failed"


async def test_signed_event_without_a_readable_id_is_kept_under_a_digest_of_its_body(hooks):
    body = unreadable(None)
    resp = await post(hooks, body, signed(body))
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    assert resp.status == 200 and (await resp.json())["event_id"] == digest
    again = await post(hooks, body, signed(body, at=int(time.time()) + 1))  # resent: same body, new signature
    assert (await again.json()) == {"received": True, "event_id": digest, "duplicate": True}
    async with hooks.app[keys.POOL].acquire() as conn:
        assert await conn.fetchval("SELECT status FROM webhook_events WHERE event_id = $1", digest) == "failed"


async def test_stored_body_that_this_release_can_read_is_parsed_and_applied_when_reprocessed(hooks):
    # What an older release stored unread: a charge.succeeded it could not parse, this one can.
    body = orjson.dumps({"id": "evt_read_later", "object": "event", "type": "charge.succeeded",
                         "created": int(time.time()), "data": {"object": {
                             "id": "ch_read_later", "object": "charge", "amount": 4200, "currency": "eur",
                             "payment_intent": "pi_read_later", "metadata": {"invoice_id": "inv_read_later"}}}})
    async with hooks.app[keys.POOL].acquire() as conn:
        row_id = await store.insert_unreadable_webhook_event(
            conn, processor_id="stripe", event_id="evt_read_later", event_type="unknown", headers=signed(body),
            body=body, error="unreadable: an older release")
    resp = await hooks.post(f"/admin/webhook-events/{row_id}/reprocess", {"reason": "parser fixed"}, key=ADMIN_KEY)
    assert resp.status == 200 and (await resp.json())["status"] == "applied"
    async with hooks.app[keys.POOL].acquire() as conn:
        row = await conn.fetchrow("SELECT * FROM webhook_events WHERE id = $1", row_id)
    assert (row["status"], row["event_type"], row["event"]["event_id"]) == ("applied", "charge.succeeded",
                                                                             "evt_read_later")
    assert {"ch_read_later", "pi_read_later"} <= set(row["match_keys"])
    payments = await (await hooks.get("/v1/transactions", params={"invoice_id": "inv_read_later"})).json()
    assert [p["psp_reference"] for p in payments["data"]] == ["ch_read_later"]
