"""Observability over the real HTTP server: GET /metrics after refunds, retries, stuck refunds and
webhooks (and with the database down), the X-Request-ID carried to the processor and to the
billing core, and OpenTelemetry spans when tracing is on."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client.parser import text_string_to_metric_families

from adapters.simkit import serve_on_loopback
from adapters.stripe_sim import SimConfig
from adapters.stripe_sim.app import create_app as create_stripe_sim
from adapters.stripe_sim.simulator import SIM
from gateway import embedded, keys
from gateway.app import create_app
from gateway.db.migrate import migrate
from gateway.db.pool import connect
from tests.conftest import (ADMIN_KEY, READER_KEY, WRITER_KEY, Api, eventually, make_settings,
                            signed_mock_webhook, start_api)

WHSEC = "whsec_observability_0123456789"
CALLBACK_SECRET = "cb_observability_0123456789"
METRICS_TOKEN = "metrics_token_0123456789abcdef"
CARD = "4242424242424242"
MOCK_WITH_WEBHOOKS = [{"id": "mock", "kind": "mock", "pending_settle_seconds": 30, "webhook_secrets": [WHSEC]}]

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    """Every sample of an exposition, keyed by name and labels (the parser refuses malformed text)."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of `name` over the samples whose labels include `labels`."""
    return sum(v for (n, ls), v in samples.items() if n == name and labels.items() <= dict(ls).items())


def grown(after: Samples, before: Samples, name: str, **labels: str) -> float:
    """How much `name` (over the samples with `labels`) grew from `before` to `after`."""
    return total(after, name, **labels) - total(before, name, **labels)


def has(samples: Samples, name: str) -> bool:
    return any(n == name for n, _ in samples)


async def scrape(api: Api, **headers: str) -> Samples:
    resp = await api.get("/metrics", key=None, headers=headers)
    assert resp.status == 200, await resp.text()
    assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return parse(await resp.text())


@pytest.fixture
async def running():
    """Start gateways with their own settings; every one is closed after the test."""
    clients: list[TestClient] = []

    async def start(settings) -> Api:
        client = await start_api(settings)
        clients.append(client)
        return Api(client)

    yield start
    for client in clients:
        await client.close()


async def test_refunds_through_the_mock_show_by_processor_and_status_with_call_latency_retries_and_stuck(api):
    before = await scrape(api)
    assert before[("psp_gateway_refunds_stuck", (("reason", "none"),))] == 0  # nothing stuck: 0, not absent
    tx = await api.transaction(amount=50_000)
    assert (await api.refund(tx, 1_000))["status"] == "succeeded"
    assert (await api.refund(tx, 4001))["status"] == "failed"
    assert (await api.refund(tx, 5001))["status"] == "succeeded"  # a 503, then a quick retry
    assert (await api.refund(tx, 8001))["status"] == "requires_attention"  # stuck at once
    after = await scrape(api)

    assert grown(after, before, "psp_gateway_refund_transitions_total", processor="mock", status="pending") == 4
    assert grown(after, before, "psp_gateway_refund_transitions_total", processor="mock", status="succeeded") == 2
    assert grown(after, before, "psp_gateway_refund_transitions_total", processor="mock", status="failed") == 1
    assert grown(after, before, "psp_gateway_refund_transitions_total", processor="mock", status="requires_attention") == 1
    calls = "psp_gateway_processor_call_duration_seconds_count"
    assert grown(after, before, calls, processor="mock", operation="refund", outcome="succeeded") == 2
    assert grown(after, before, calls, processor="mock", operation="refund", outcome="declined") == 1
    assert grown(after, before, calls, processor="mock", operation="refund", outcome="transient") == 1
    assert grown(after, before, calls, processor="mock", operation="refund", outcome="needs_attention") == 1
    assert grown(after, before, "psp_gateway_processor_call_duration_seconds_bucket", processor="mock", operation="refund",
                outcome="succeeded", le="+Inf") == 2
    assert grown(after, before, "psp_gateway_processor_retries_total", processor="mock", error_class="transient") == 1
    # Read from this test's database at scrape time: exact, not deltas.
    assert total(after, "psp_gateway_database_up") == 1
    assert total(after, "psp_gateway_refunds_stuck", reason="requires_attention:unrecognised_processor_status") == 1
    assert total(after, "psp_gateway_refunds_stuck") == 1
    assert ("psp_gateway_refunds_stuck", (("reason", "none"),)) not in after
    assert total(after, "psp_gateway_refunds_open", processor="mock", status="requires_attention") == 1
    assert total(after, "psp_gateway_refunds_open", status="pending") == 0
    assert total(after, "psp_gateway_db_pool_max_connections") == 60
    # idle + in_use is the pool: summed over the states, each connection once, no "size" to double it.
    assert total(after, "psp_gateway_db_pool_connections") >= 1
    assert total(after, "psp_gateway_db_pool_connections", state="size") == 0
    assert not any(n.endswith("_created") for n, _ in after), "no _created series"
    assert not has(after, "psp_gateway_outbox_undelivered")  # no callback_url: events are only polled


async def test_a_fault_that_outlasts_the_request_counts_a_durable_retry(api):
    before = await scrape(api)
    tx = await api.transaction()
    api.mock.fail_next(amount=1_234, times=3)  # every quick retry of the request fails
    refund = await api.refund(tx, 1_234)
    assert refund["status"] == "pending" and refund["stage"] == "not_sent"

    async def settled():
        body = await (await api.get(f"/v1/refunds/{refund['id']}")).json()
        return body["status"] == "succeeded"
    await eventually(settled)  # the janitor's retry went through
    after = await scrape(api)
    assert grown(after, before, "psp_gateway_durable_retries_scheduled_total", processor="mock") == 1
    assert grown(after, before, "psp_gateway_processor_retries_total", processor="mock") == 2


def mock_webhook(refund: dict, status: str, secret: str = WHSEC) -> tuple[bytes, dict[str, str]]:
    return signed_mock_webhook({"id": refund["psp_refund_id"], "refund_id": refund["id"], "payment": "ch_unused",
                                "amount": refund["amount"], "currency": refund["currency"], "status": status}, secret)


async def test_webhook_events_are_counted_by_status_with_their_apply_lag(database_url, running):
    api = await running(make_settings(database_url, processors=MOCK_WITH_WEBHOOKS))
    before = await scrape(api)
    tx = await api.transaction()
    refund = await api.refund(tx, 7001)  # pending at the processor until its webhook says otherwise
    assert refund["stage"] == "pending_at_processor"
    body, headers = mock_webhook(refund, "succeeded")
    assert (await api.post("/v1/webhooks/mock", data=body, key=None, headers=headers)).status == 200
    assert (await api.post("/v1/webhooks/mock", data=body, key=None, headers=headers)).status == 200  # again
    forged, forged_headers = mock_webhook(refund, "failed", secret="whsec_not_the_secret_0000")
    assert (await api.post("/v1/webhooks/mock", data=forged, key=None, headers=forged_headers)).status == 400

    async def applied():
        return (await (await api.get(f"/v1/refunds/{refund['id']}")).json())["status"] == "succeeded"
    await eventually(applied)
    after = await eventually(lambda: _scrape_when(api, lambda s: total(
        s, "psp_gateway_webhook_events_total", processor="mock", status="applied")
        > total(before, "psp_gateway_webhook_events_total", processor="mock", status="applied")))

    assert grown(after, before, "psp_gateway_webhook_events_total", processor="mock", status="received") == 1
    assert grown(after, before, "psp_gateway_webhook_events_total", processor="mock", status="duplicate") == 1
    assert grown(after, before, "psp_gateway_webhook_events_total", processor="mock", status="rejected") == 1
    assert grown(after, before, "psp_gateway_webhook_events_total", processor="mock", status="applied") == 1
    assert grown(after, before, "psp_gateway_webhook_apply_lag_seconds_count", processor="mock") == 1
    assert total(after, "psp_gateway_webhook_events_open") == 0  # nothing left to apply


async def test_a_stalled_inbox_shows_the_age_of_its_oldest_open_event_before_any_is_applied(api):
    assert not has(await scrape(api), "psp_gateway_webhook_oldest_open_seconds")  # nothing open: no sample
    async with api.app[keys.POOL].acquire() as conn:
        for event_id, status, age in (("evt_old", "received", 600), ("evt_new", "received", 60),
                                      ("evt_parked", "unmatched", 3600)):
            await conn.execute(
                "INSERT INTO webhook_events (processor_id, event_id, event_type, headers, body, event, match_keys, "
                "status, received_at, next_attempt_at) VALUES ('mock', $1, 'refund.updated', '{}', '{}', '{}', '{}', "
                "$2, now() - make_interval(secs => $3), now() + interval '1 hour')", event_id, status, age)
    samples = await scrape(api)
    assert 600 <= total(samples, "psp_gateway_webhook_oldest_open_seconds", processor="mock", status="received") < 700
    assert 3600 <= total(samples, "psp_gateway_webhook_oldest_open_seconds", processor="mock", status="unmatched") < 3700
    # Parked events waiting for their payment (swept again with backoff) are counted apart.
    assert total(samples, "psp_gateway_webhook_events_open", processor="mock", status="unmatched") == 1
    assert total(samples, "psp_gateway_webhook_events_open", processor="mock", status="received") == 2


async def _scrape_when(api: Api, condition) -> Samples | None:
    samples = await scrape(api)
    return samples if condition(samples) else None


async def test_metrics_hold_no_secret_and_take_a_token_when_one_is_set(database_url, running):
    api = await running(make_settings(database_url, processors=MOCK_WITH_WEBHOOKS, metrics_token=METRICS_TOKEN,
                                      callback_url="http://127.0.0.1:9/callbacks",
                                      callback_secrets=[CALLBACK_SECRET], callback_poll_seconds=30))
    tx = await api.transaction(metadata={"note": f"key {WRITER_KEY}"})  # card numbers are refused at the door
    refund = await api.refund(tx, 1_000, metadata={"card": "last4 4242"})

    refused = await api.get("/metrics", key=None)
    assert refused.status == 401 and refused.content_type == "application/problem+json"
    assert (await api.get("/metrics", key=None, headers={"Authorization": "Bearer wrong"})).status == 401
    resp = await api.get("/metrics", key=None, headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    text = await resp.text()
    assert resp.status == 200
    samples = parse(text)
    assert total(samples, "psp_gateway_outbox_undelivered") >= 2  # created and succeeded, not delivered
    assert total(samples, "psp_gateway_outbox_oldest_undelivered_seconds") >= 0
    for secret in (WRITER_KEY, READER_KEY, ADMIN_KEY, WHSEC, CALLBACK_SECRET, METRICS_TOKEN, CARD,
                   database_url.split("@")[0], refund["id"], tx["id"], tx["invoice_id"]):
        assert secret not in text


@pytest.fixture
def own_postgres():
    """A Postgres of this test's own, so that it can be stopped without touching the others'."""
    folder = Path(tempfile.mkdtemp(prefix="gw-metrics-pg-"))
    pg = embedded.start(folder, delete_on_stop=False)
    try:
        yield pg
    finally:
        embedded.start(folder).stop()  # whatever state it is in, stopped by its handle and PID
        shutil.rmtree(folder, ignore_errors=True)


async def test_metrics_still_answer_with_the_database_down(own_postgres, running):
    conn = await connect(own_postgres.uri)
    await migrate(conn)
    await conn.close()
    api = await running(make_settings(own_postgres.uri, metrics_database_timeout_seconds=1.0))
    tx = await api.transaction()
    await api.refund(tx, 1_000)
    assert total(await scrape(api), "psp_gateway_database_up") == 1
    own_postgres.stop()
    samples = await scrape(api)
    assert total(samples, "psp_gateway_database_up") == 0
    assert not has(samples, "psp_gateway_refunds_open") and not has(samples, "psp_gateway_refunds_stuck")
    assert total(samples, "psp_gateway_refund_transitions_total", processor="mock", status="succeeded") >= 1


# --- X-Request-ID -----------------------------------------------------------------------------------

SIM_KEY = "sk_test_observability_0123"


class BillingCore:
    """A billing-core endpoint on loopback that fails its first request, then keeps what it gets."""

    def __init__(self) -> None:
        self.failures = 1
        self.received: list[tuple[dict, str | None]] = []

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if self.failures:
            self.failures -= 1
            return web.Response(status=503)
        self.received.append((orjson.loads(body), request.headers.get("X-Request-ID")))
        return web.Response(status=204)


async def test_an_incoming_request_id_reaches_the_processor_and_the_billing_core(database_url, running):
    seen: list[tuple[str, str, str | None]] = []

    @web.middleware
    async def record(request: web.Request, handler):
        seen.append((request.method, request.path, request.headers.get("X-Request-ID")))
        return await handler(request)

    sim = create_stripe_sim(SimConfig(api_key=SIM_KEY, seed=3))
    sim.middlewares.insert(0, record)
    core = BillingCore()
    core_app = web.Application()
    core_app.router.add_post("/callbacks", core.handle)
    async with serve_on_loopback(sim) as sim_url, serve_on_loopback(core_app) as core_url:
        api = await running(make_settings(
            database_url, processors=[{"id": "stripe", "kind": "stripe", "base_url": sim_url, "api_key": SIM_KEY}],
            callback_url=f"{core_url}/callbacks", callback_secrets=[CALLBACK_SECRET],
            callback_initial_backoff_seconds=0.05, callback_max_backoff_seconds=0.1, callback_poll_seconds=0.05))
        before = await scrape(api)
        charge = sim[SIM].world.create_charge(10_000, "eur", {}, None)
        tx = await api.transaction(processor="stripe", psp_reference=charge["id"])
        resp = await api.post("/v1/refunds", {"invoice_id": tx["invoice_id"], "amount": 2_500, "currency": "EUR"},
                              headers={"X-Request-ID": "obs-req-42"})
        assert resp.status == 201 and resp.headers["X-Request-ID"] == "obs-req-42"
        refund = await resp.json()
        assert refund["status"] == "succeeded"
        assert ("POST", "/v1/refunds", "obs-req-42") in seen

        async def both_delivered():
            return len(core.received) >= 2
        await eventually(both_delivered)
        got = {event["type"]: request_id for event, request_id in core.received if event["refund_id"] == refund["id"]}
        assert got == {"refund.created": "obs-req-42", "refund.succeeded": "obs-req-42"}

        def delivered(samples) -> bool:  # counted once the gateway has recorded the delivery, a moment later
            return grown(samples, before, "psp_gateway_callback_deliveries_total", result="delivered") >= 2
        after = await eventually(lambda: _scrape_when(api, delivered))
    assert grown(after, before, "psp_gateway_callback_deliveries_total", result="failed") == 1
    assert grown(after, before, "psp_gateway_callback_deliveries_total", result="delivered") == 2


@pytest.mark.parametrize("incoming", ["sk_live_abcdefgh123", "4242-4242-4242-4242", "two words", "x" * 129])
async def test_a_request_id_that_could_carry_a_secret_or_breaks_the_format_is_replaced(api, incoming):
    resp = await api.get("/healthz", key=None, headers={"X-Request-ID": incoming})
    assert resp.headers["X-Request-ID"].startswith("req_")


async def test_background_work_gets_a_request_id_of_its_own(api):
    tx = await api.transaction()
    api.mock.fail_next(amount=2_345, times=3)  # the request gives up; the janitor's retry succeeds
    resp = await api.post("/v1/refunds", {"invoice_id": tx["invoice_id"], "transaction_id": tx["id"],
                                          "amount": 2_345, "currency": "EUR"}, headers={"X-Request-ID": "obs-req-7"})
    refund = await resp.json()
    assert refund["status"] == "pending"

    async def succeeded():
        return (await (await api.get(f"/v1/refunds/{refund['id']}")).json())["status"] == "succeeded"
    await eventually(succeeded)
    async with api.app[keys.POOL].acquire() as conn:
        outbox = {r["type"]: r["request_id"] for r in await conn.fetch(
            "SELECT type, request_id FROM outbox_events WHERE refund_id = $1", refund["id"])}
        events = await conn.fetch("SELECT event, request_id FROM refund_events WHERE refund_id = $1 ORDER BY id",
                                  refund["id"])
    assert outbox["refund.created"] == "obs-req-7"
    background = outbox["refund.succeeded"]
    assert background.startswith("req_") and background != "obs-req-7"
    assert background in {e["request_id"] for e in events}  # the same id as the change it describes


# --- tracing --------------------------------------------------------------------------------------


TRACE_ID, CALLER_SPAN_ID = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"


async def test_tracing_records_a_server_span_with_a_child_client_span_for_a_refund(settings):
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    client = TestClient(TestServer(create_app(settings, tracer_provider=provider), host="127.0.0.1"))
    await client.start_server()
    try:
        api = Api(client)
        tx = await api.transaction(metadata={"note": f"key {WRITER_KEY}"})
        resp = await api.post("/v1/refunds", {"invoice_id": tx["invoice_id"], "amount": 1_000, "currency": "EUR"},
                              headers={"X-Request-ID": "obs-trace-1",
                                       "traceparent": f"00-{TRACE_ID}-{CALLER_SPAN_ID}-01"})
        assert resp.status == 201
        refund = await resp.json()

        async def spans_ended():
            return any(s.name == "POST /v1/refunds" for s in exporter.get_finished_spans())
        await eventually(spans_ended)
    finally:
        await client.close()
    spans = exporter.get_finished_spans()
    [server] = [s for s in spans if s.name == "POST /v1/refunds"]
    [call] = [s for s in spans if s.kind is SpanKind.CLIENT]
    assert server.kind is SpanKind.SERVER
    assert server.context.trace_id == int(TRACE_ID, 16)  # the caller's trace goes on
    assert server.parent.span_id == int(CALLER_SPAN_ID, 16)
    assert server.attributes["http.route"] == "/v1/refunds"
    assert server.attributes["http.response.status_code"] == 201
    assert server.attributes["gateway.request_id"] == "obs-trace-1"
    assert call.parent is not None and call.parent.span_id == server.context.span_id
    assert call.context.trace_id == server.context.trace_id
    assert call.name == "processor refund"
    assert dict(call.attributes) == {"gateway.processor": "mock", "gateway.operation": "refund",
                                     "gateway.refund_id": refund["id"],
                                     "gateway.request_id": "obs-trace-1", "gateway.outcome": "succeeded"}
    everything = repr([(s.name, dict(s.attributes), s.events) for s in spans])
    assert WRITER_KEY not in everything and CARD not in everything


OFF_SCRIPT = textwrap.dedent("""
    import asyncio, os, sys
    from aiohttp.test_utils import TestClient, TestServer
    from pydantic import SecretStr
    from gateway import keys
    from gateway.app import create_app
    from gateway.settings import Settings

    async def main():
        settings = Settings(database_url=SecretStr(os.environ["OFF_TEST_DSN"]),
                            processors=[{"id": "mock", "kind": "mock"}],
                            clients=[{"id": "b", "api_key": "sk_off_test_0123456789",
                                      "scopes": ["transactions:write", "refunds:write"]}])
        client = TestClient(TestServer(create_app(settings), host="127.0.0.1"))
        await client.start_server()
        try:
            auth = {"Authorization": "Bearer sk_off_test_0123456789"}
            tx = await client.post("/v1/transactions", headers=auth, json={
                "processor": "mock", "psp_reference": "ch_off", "invoice_id": "INV-OFF", "amount": 500,
                "currency": "EUR"})
            assert tx.status == 201, await tx.text()
            refund = await client.post("/v1/refunds", headers=auth, json={
                "invoice_id": "INV-OFF", "amount": 100, "currency": "EUR"})
            assert (await refund.json())["status"] == "succeeded"
            assert client.server.app[keys.TRACING] is None
        finally:
            await client.close()
        print("loaded:", sorted(m for m in sys.modules if m.split(".")[0] == "opentelemetry"))

    asyncio.run(main())
""")


def test_with_tracing_off_opentelemetry_is_never_imported(database_url):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "OTEL_"))}
    out = subprocess.run([sys.executable, "-c", OFF_SCRIPT], env={**env, "OFF_TEST_DSN": database_url},
                         capture_output=True, text=True, timeout=90)
    assert out.returncode == 0, out.stderr
    assert "loaded: []" in out.stdout


async def test_events_held_back_by_an_open_transaction_are_counted_until_it_ends(api):
    tx = await api.transaction(amount=10_000)
    async with api.app[keys.POOL].acquire() as idle:
        forgotten = idle.transaction()  # a session that took a transaction id and went quiet
        await forgotten.start()
        await idle.fetchval("SELECT pg_current_xact_id()")
        await api.refund(tx, 1_000)  # its events commit after the open transaction began
        samples = await scrape(api)
        assert total(samples, "psp_gateway_events_held_back") >= 2
        assert total(samples, "psp_gateway_events_held_back_seconds") >= 0
        await forgotten.rollback()
    await eventually(lambda: _scrape_when(api, lambda s: total(s, "psp_gateway_events_held_back") == 0))
