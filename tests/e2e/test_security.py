"""Hostile bytes from outside, through the real server: a processor that echoes the credentials it
was sent, card numbers in free text, forged headers, slow bodies, key guessing, version banners."""

from __future__ import annotations

import asyncio
import base64
import re
import time
from xml.sax.saxutils import escape

import pytest
from aiohttp import web

from adapters.bridgepay_sim.wire import process_response, read_process_request, soap_fault
from adapters.simkit import serve_on_loopback
from gateway import keys, metrics
from tests.conftest import ADMIN_KEY, READER_KEY, WRITER_KEY, Api, database_text, eventually, make_settings, \
    signed_mock_webhook, start_api
from tests.e2e.test_bridgepay_flow import BP
from tests.e2e.test_callbacks import SECRET as CALLBACK_SECRET
from tests.e2e.test_callbacks import BillingCore

CARD = "4111111111111111"
MOCK_SECRET = "whsec_security_0123456789"


class EchoingBridgePay:
    """A BridgePay-shaped server that answers every request with an error quoting the decoded
    request it got, credentials included: once as an ErrorResponse, then as a SOAP fault."""

    def __init__(self):
        self.app = web.Application()
        self.app.router.add_post("/{tail:.*}", self.handle)
        self.calls = 0

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.calls += 1
        encoded = re.search(rb"<requestMsg>([^<]+)</requestMsg>", body)
        decoded = base64.b64decode(encoded.group(1)).decode() if encoded else body.decode()
        read_process_request(body)  # a well-formed request, as a real server would have parsed it
        if self.calls == 1:
            inner = (f"<ErrorResponse><ResponseCode>99999</ResponseCode><ResponseDescription>Unknown error "
                     f"processing {escape(decoded)}</ResponseDescription></ErrorResponse>").encode()
            return web.Response(body=process_response(inner), content_type="text/xml")
        return web.Response(body=soap_fault("s:Server", f"cannot process {decoded}"), status=500,
                            content_type="text/xml")


async def _dump(api: Api) -> str:
    async with api.app[keys.POOL].acquire() as conn:
        return await database_text(conn)


async def test_a_processor_echoing_its_credentials_never_gets_them_stored_or_shown(database_url):
    fake, core = EchoingBridgePay(), BillingCore(failures=0)
    async with serve_on_loopback(fake.app) as bp_url, serve_on_loopback(core.app) as core_url:
        settings = make_settings(database_url, processors=[
            {"id": "bridgepay", "kind": "bridgepay", "base_url": bp_url, **BP, "timeout_seconds": 2,
             "execution_window_seconds": 0.2}],
            callback_url=f"{core_url}/callbacks", callback_secrets=[CALLBACK_SECRET], callback_poll_seconds=0.05,
            callback_initial_backoff_seconds=0.05)
        client = await start_api(settings)
        api = Api(client)
        try:
            refunds = []
            for n in range(2):
                tx = await api.transaction(amount=5_000, currency="USD", processor="bridgepay", settled=True)
                refund = await api.refund(tx, 1_000 + n)
                assert refund["status"] == "requires_attention", refund
                refunds.append(refund)
            assert fake.calls >= 2
            await eventually(lambda: asyncio.sleep(0, result=len(core.received) >= 4))
            seen = {
                "answers": str([await (await api.get(f"/v1/refunds/{r['id']}")).text() for r in refunds]),
                "events": await (await api.get("/v1/events", key=READER_KEY)).text(),
                "callbacks": str([raw for _, _, raw in core.received]),
                "console": str([await (await api.get(f"/admin/console/refunds/{r['id']}", key=ADMIN_KEY)).text()
                                for r in refunds]),
                "database": await _dump(api),
            }
        finally:
            await client.close()
    # The processor's words are kept (they say what went wrong), its echo of our credentials is not.
    assert "99999" in seen["answers"] and "Unknown error" in seen["answers"]
    for where, text in seen.items():
        assert BP["password"] not in text, where
        assert BP["password"].replace("_", "") not in text, where
        assert not re.search(r"(<|&lt;|\\u003c)User(>|&gt;|\\u003e)\s*" + BP["username"], text), where


@pytest.mark.parametrize("field", ["reason", "metadata", "metadata_key", "credit_note_id", "invoice_id",
                                   "psp_reference", "transaction_customer"])
@pytest.mark.parametrize("card", [CARD, "4111 1111 1111 1111", "4111-1111-1111-1111", "CN-378282246310005-2"])
async def test_a_card_number_in_any_free_text_field_is_refused_and_never_echoed(api, field, card):
    tx = await api.transaction(amount=5_000)
    if field == "transaction_customer":
        resp = await api.post("/v1/transactions", {"processor": "mock", "psp_reference": "ch_card_test",
                                                   "invoice_id": "INV-CARD", "amount": 100, "currency": "EUR",
                                                   "customer_id": f"cus {card}"})
        named = "customer_id"
    else:
        body = {"invoice_id": tx["invoice_id"], "transaction_id": tx["id"], "currency": "EUR", "amount": 100}
        named = {"metadata": "metadata.note", "metadata_key": "metadata"}.get(field, field)
        if field == "metadata":
            body["metadata"] = {"note": f"card {card}"}
        elif field == "metadata_key":
            body["metadata"] = {card: "x"}
        elif field == "psp_reference":
            body = {**body, "psp_reference": f"ch_{card}"}
            del body["transaction_id"]
        else:
            body[field] = f"x {card}"
        resp = await api.post("/v1/refunds", body)
    text = await resp.text()
    assert resp.status == 422, text
    problem = await resp.json()
    assert problem["code"] == "card_number_not_allowed"
    assert any(e["field"].startswith(named) for e in problem["errors"]), problem
    assert re.sub(r"\D", "", card)[:12] not in re.sub(r"\D", "", text)
    async with api.app[keys.POOL].acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM refunds") == 0


async def test_a_card_number_in_a_path_or_a_query_is_refused_and_never_echoed(api):
    for path, params in ((f"/v1/refunds/rf_{CARD}", None), (f"/v1/transactions/tx_{CARD}", None),
                         ("/v1/refunds", {"invoice_id": f"INV {CARD[:4]} {CARD[4:8]} {CARD[8:12]} {CARD[12:]}"})):
        resp = await api.get(path, params=params)
        text = await resp.text()
        assert resp.status == 422 and (await resp.json())["code"] == "card_number_not_allowed", text
        assert CARD[:12] not in re.sub(r"\D", "", text)


@pytest.fixture
async def hooks(database_url):
    client = await start_api(make_settings(database_url, processors=[
        {"id": "mock", "kind": "mock", "webhook_secrets": [MOCK_SECRET]}]))
    try:
        yield Api(client)
    finally:
        await client.close()


async def test_only_the_headers_worth_keeping_are_stored_with_a_webhook(hooks):
    refund = {"id": "mre_1", "payment": "ch_unknown", "amount": 100, "currency": "EUR", "status": "succeeded"}
    body, headers = signed_mock_webhook(refund, MOCK_SECRET)
    hostile = {"Proxy-Authorization": "Basic cHJveHk6c2VjcmV0", "X-Auth-Token": "tok_live_secret_value",
               "Cookie": "session=abc", "X-Forwarded-For": "10.0.0.1", "X-Custom-Thing": "anything"}
    ok = await hooks.http.post("/v1/webhooks/mock", data=body, headers={**headers, **hostile})
    assert ok.status == 200, await ok.text()
    forged = await hooks.http.post("/v1/webhooks/mock", data=body,
                                   headers={**headers, **hostile, "Mock-Signature": "00" * 32})
    assert forged.status == 400
    async with hooks.app[keys.POOL].acquire() as conn:
        kept = [dict(r["headers"]) for r in await conn.fetch("SELECT headers FROM webhook_events")]
        kept += [dict(r["headers"]) for r in await conn.fetch("SELECT headers FROM webhook_rejections")]
    assert len(kept) == 2
    for stored in kept:
        names = {name.lower() for name in stored}
        assert names <= {"content-type", "content-length", "user-agent", "mock-signature"}, names
        assert "mock-signature" in names


@pytest.mark.parametrize("header", ["t=" + "9" * 309 + ",v1=00", "t=" + "9" * 5000 + ",v1=00", "t=1e308,v1=00",
                                    "t=-1,v1=" + "0" * 64, "t=,v1=", ",,,", "t=1" + ",v1=0" * 500])
async def test_a_malformed_stripe_signature_header_is_a_recorded_400_never_a_500(database_url, header):
    client = await start_api(make_settings(database_url, processors=[
        {"id": "stripe", "kind": "stripe", "base_url": "http://127.0.0.1:9", "api_key": "sk_test_unused_0123",
         "webhook_secrets": ["whsec_unused_0123456789"]}]))
    api = Api(client)
    try:
        resp = await api.http.post("/v1/webhooks/stripe", data=b'{"id": "evt_1"}',
                                   headers={"Content-Type": "application/json", "Stripe-Signature": header})
        assert resp.status == 400 and (await resp.json())["code"] == "invalid_signature", await resp.text()
        async with api.app[keys.POOL].acquire() as conn:
            assert await conn.fetchval("SELECT count(*) FROM webhook_rejections") == 1
    finally:
        await client.close()


async def _raw_request(port: int, head: bytes, body_chunks=(), pause: float = 0.0, wait: float = 5.0) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        await writer.drain()
        for chunk in body_chunks:
            if reader.at_eof():
                break
            writer.write(chunk)
            await writer.drain()
            await asyncio.sleep(pause)
        return await asyncio.wait_for(reader.read(65536), wait)
    except (ConnectionError, asyncio.TimeoutError):
        return b""
    finally:
        writer.close()


async def test_a_non_ascii_signature_header_is_a_recorded_400(hooks):
    port = hooks.http.server.port
    body = b'{"id": "evt_1", "type": "refund.updated", "refund": {}}'
    head = (b"POST /v1/webhooks/mock HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Mock-Signature: \xe9\xe9\xff\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body))
    answer = await _raw_request(port, head + body)
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    assert b"invalid_signature" in answer
    async with hooks.app[keys.POOL].acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM webhook_rejections") == 1


async def test_a_body_trickling_in_is_cut_at_the_read_deadline(database_url):
    client = await start_api(make_settings(database_url, request_read_seconds=1.0, processors=[
        {"id": "mock", "kind": "mock", "webhook_secrets": [MOCK_SECRET]}]))
    try:
        head = (b"POST /v1/webhooks/mock HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 100000\r\n\r\n")
        started = time.monotonic()
        answer = await _raw_request(client.server.port, head, [b"x"] * 40, pause=0.1, wait=6)
        took = time.monotonic() - started
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert b"request_timeout" in answer and took < 5, took
    finally:
        await client.close()


async def test_failed_sign_ins_and_keyless_requests_are_limited_per_address(database_url):
    client = await start_api(make_settings(database_url, failed_sign_ins_per_minute=5,
                                           unauthenticated_per_second=1.0))
    api = Api(client)
    refused_before = metrics.SOURCE_LIMITED.labels("failed_sign_in")._value.get()
    try:
        for _ in range(5):
            assert (await api.get("/v1/refunds", key="sk_test_wrong_guess_000")).status == 401
        limited = await api.get("/v1/refunds", key="sk_test_wrong_guess_000")
        assert limited.status == 429 and int(limited.headers["Retry-After"]) >= 1
        assert (await limited.json())["code"] == "rate_limited"
        # The address is cooling down: even the right key waits (guessing must cost time).
        assert (await api.get("/v1/refunds", key=WRITER_KEY)).status == 429
        statuses = [(await api.get("/healthz", key=None)).status for _ in range(4)]
        assert statuses[:2] == [200, 200] and statuses[-1] == 429, statuses
        assert metrics.SOURCE_LIMITED.labels("failed_sign_in")._value.get() >= refused_before + 2
        assert metrics.SOURCE_LIMITED.labels("unauthenticated")._value.get() >= 1
    finally:
        await client.close()


async def test_verified_webhooks_are_not_limited_by_address_and_forged_ones_are_failed_sign_ins(database_url):
    """A processor sends bursts from few addresses: its signed webhooks pass whatever the rate;
    a bad signature counts as a failed sign-in, and once those are spent the address waits."""
    client = await start_api(make_settings(database_url, failed_sign_ins_per_minute=3, unauthenticated_per_second=1.0,
                                           processors=[{"id": "mock", "kind": "mock", "webhook_secrets": [MOCK_SECRET]}]))
    api = Api(client)
    refund = {"id": "mre_burst", "payment": "ch_unknown", "amount": 100, "currency": "EUR", "status": "succeeded"}
    try:
        for _ in range(10):  # ten times the keyless rate, at once
            body, headers = signed_mock_webhook(refund, MOCK_SECRET)
            assert (await api.post("/v1/webhooks/mock", data=body, key=None, headers=headers)).status == 200
        forged = {"Content-Type": "application/json", "Mock-Signature": "0" * 64}
        statuses = [(await api.post("/v1/webhooks/mock", data=b"{}", key=None, headers=forged)).status
                    for _ in range(4)]
        assert statuses == [400, 400, 400, 429], statuses
        body, headers = signed_mock_webhook(refund, MOCK_SECRET)
        assert (await api.post("/v1/webhooks/mock", data=body, key=None, headers=headers)).status == 429
    finally:
        await client.close()


async def test_no_answer_names_the_server_software(api):
    for path in ("/healthz", "/v1/refunds", "/nope"):
        resp = await api.get(path)
        assert "Server" not in resp.headers, resp.headers.get("Server")


async def test_callback_deliveries_keep_the_url_without_its_credentials(database_url):
    core = BillingCore(failures=0)
    async with serve_on_loopback(core.app) as url:
        with_credentials = url.replace("http://", "http://hook_user:hook_pass_0123@") + "/callbacks"
        client = await start_api(make_settings(database_url, callback_url=with_credentials,
                                               callback_secrets=[CALLBACK_SECRET], callback_poll_seconds=0.05))
        api = Api(client)
        try:
            tx = await api.transaction(amount=1_000)
            await api.refund(tx, 100)

            async def delivered():
                async with api.app[keys.POOL].acquire() as conn:
                    return await conn.fetch("SELECT url FROM callback_deliveries")
            rows = await eventually(delivered)
        finally:
            await client.close()
    assert rows and all(r["url"] == f"{url}/callbacks" for r in rows), [r["url"] for r in rows]
