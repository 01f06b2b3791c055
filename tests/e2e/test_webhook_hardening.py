"""Hostile webhooks: a wrong signature, a stale timestamp, a replayed event, a truncated or huge
body, a wrong content type. Each is answered cleanly, nothing is stored as verified, and the
rejection is logged."""

from __future__ import annotations

import io
import time

import orjson
import pytest

from adapters.stripe.transformers import signature_header
from gateway import keys
from gateway.logging import configure
from tests.conftest import Api, make_settings, start_api

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
    stream = io.StringIO()
    configure("json", "info", stream=stream)
    settings = make_settings(database_url, processors=[
        {"id": "stripe", "kind": "stripe", "base_url": "http://127.0.0.1:9", "api_key": "sk_test_unused_0123",
         "webhook_secrets": [WHSEC]}], max_body_bytes=64 * 1024)
    client = await start_api(settings)
    api = Api(client)
    api.logs = stream
    try:
        yield api
    finally:
        await client.close()
        configure("console", "warning")


async def stored(api) -> int:
    async with api.app[keys.POOL].acquire() as conn:
        return await conn.fetchval("SELECT count(*) FROM webhook_events")


async def post(api, body: bytes, headers: dict[str, str]):
    return await api.post("/v1/webhooks/stripe", data=body, key=None, headers=headers)


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
    assert '"event": "webhook_rejected"' in hooks.logs.getvalue()
    async with hooks.app[keys.POOL].acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM webhook_rejections") == 1


async def test_replayed_event_is_acknowledged_and_stored_once(hooks):
    body = event("evt_replayed")
    first = await post(hooks, body, signed(body))
    again = await post(hooks, body, signed(body))
    assert (first.status, again.status) == (200, 200)
    assert ((await first.json())["duplicate"], (await again.json())["duplicate"]) == (False, True)
    assert await stored(hooks) == 1


async def test_huge_webhook_is_refused_before_it_is_read(hooks):
    body = b'{"id": "evt_huge", "pad": "' + b"x" * (70 * 1024) + b'"}'
    resp = await post(hooks, body, signed(body))
    assert resp.status == 413 and (await resp.json())["code"] == "payload_too_large"
    assert await stored(hooks) == 0


async def test_webhook_with_the_wrong_content_type_is_refused(hooks):
    body = event()
    headers = {**signed(body), "Content-Type": "application/x-www-form-urlencoded"}
    resp = await post(hooks, body, headers)
    assert resp.status == 415 and (await resp.json())["code"] == "unsupported_media_type"
    assert await stored(hooks) == 0
