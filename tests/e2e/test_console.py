"""The operator console over plain HTTP, through the real server: who may open it (HTTP Basic or
an API key, `admin` scope), what the page shows, that its actions need the anti-CSRF header and
are audited like the admin API's, and that hostile values from outside come out escaped."""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid

import orjson
import pytest

from gateway import keys
from tests.conftest import ADMIN_KEY, WRITER_KEY, Api, eventually, make_settings, start_api
from tests.e2e.test_admin import audit_rows, refund_now, unresolvable

CONSOLE = "/admin/console"
MOCK_WEBHOOK_SECRET = "whsec_console_0123456789"
HASHED_ADMIN_KEY = "sk_console_hashed_0123456789"


def basic(login: str, password: str) -> dict[str, str]:
    """HTTP Basic credentials, as a browser sends them once signed in."""
    return {"Authorization": "Basic " + base64.b64encode(f"{login}:{password}".encode()).decode()}


ADMIN = basic("ops", ADMIN_KEY)
FROM_THE_PAGE = {"X-Requested-With": "psp-gateway-console", "Sec-Fetch-Site": "same-origin"}
REASON = "customer called support, ticket OPS-77"


@pytest.fixture
async def console_api(database_url):
    settings = make_settings(database_url, processors=[
        {"id": "mock", "kind": "mock", "pending_settle_seconds": 0.3, "webhook_secrets": [MOCK_WEBHOOK_SECRET]},
        {"id": "mock3", "kind": "mock", "idempotency_keys": False, "lookup": False}], clients=[
        {"id": "billing", "api_key": WRITER_KEY,
         "scopes": ["transactions:write", "transactions:read", "refunds:write", "refunds:read"]},
        {"id": "ops", "api_key": ADMIN_KEY, "scopes": ["admin"]},
        {"id": "ops-hashed", "api_key_sha256": [hashlib.sha256(HASHED_ADMIN_KEY.encode()).hexdigest()],
         "scopes": ["admin"]}])
    client = await start_api(settings)
    try:
        yield Api(client)
    finally:
        await client.close()


async def open_console(api: Api, auth: dict[str, str] = ADMIN):
    return await api.http.get(CONSOLE, headers=auth)


async def console_action(api: Api, path: str, body: dict, headers=None, auth: dict[str, str] = ADMIN):
    resp = await api.http.post(f"{CONSOLE}{path}", json=body, headers={**auth, **(headers or {})})
    return resp.status, await resp.json()


async def unmatched_webhook(api: Api, *, event_id: str | None = None, payment: str | None = None) -> dict:
    """A signed mock webhook about a refund on a payment the gateway does not know: kept unmatched."""
    body = orjson.dumps({"id": event_id or f"evt_{uuid.uuid4().hex[:12]}", "type": "refund.updated", "refund": {
        "id": f"re_{uuid.uuid4().hex[:12]}", "payment": payment or f"ch_{uuid.uuid4().hex[:12]}", "amount": 500,
        "currency": "EUR", "status": "succeeded"}})
    signature = hmac.new(MOCK_WEBHOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
    resp = await api.http.post("/v1/webhooks/mock", data=body,
                               headers={"Content-Type": "application/json", "Mock-Signature": signature})
    assert resp.status == 200, await resp.text()

    async def parked():
        async with api.app[keys.POOL].acquire() as conn:
            return await conn.fetchrow("SELECT * FROM webhook_events WHERE event_id = $1 AND status = 'unmatched'",
                                       orjson.loads(body)["id"])
    return dict(await eventually(parked))


# --- who may open it ---------------------------------------------------------------------------

async def test_console_without_credentials_asks_for_basic_ones(console_api):
    for path in (CONSOLE, f"{CONSOLE}/console.js", f"{CONSOLE}/console.css"):
        resp = await console_api.http.get(path)
        assert resp.status == 401, path
        assert resp.headers["WWW-Authenticate"].startswith('Basic realm="psp-gateway console"')
        assert (await resp.json())["code"] == "unauthorized"


@pytest.mark.parametrize("auth", [basic("ops", "sk_wrong_key_0123456789"), basic("billing", ADMIN_KEY),
                                  basic("", ADMIN_KEY), basic("ops", ""), {"Authorization": "Basic %%%"},
                                  basic(ADMIN_KEY, "ops")],
                         ids=["wrong_key", "key_of_another_client", "no_user", "no_key", "not_base64", "swapped"])
async def test_console_refuses_basic_credentials_that_do_not_match_a_client(console_api, auth):
    resp = await open_console(console_api, auth)
    assert resp.status == 401 and resp.headers["WWW-Authenticate"].startswith("Basic ")


async def test_console_refuses_a_billing_key_with_403(console_api):
    resp = await open_console(console_api, basic("billing", WRITER_KEY))
    assert resp.status == 403 and (await resp.json())["code"] == "forbidden"
    resp = await console_api.get(CONSOLE, key=WRITER_KEY)
    assert resp.status == 403


async def test_console_opens_with_admin_credentials_as_basic_or_as_a_key(console_api):
    for login, key in (("ops", ADMIN_KEY), ("ops-hashed", HASHED_ADMIN_KEY)):  # a key given as its digest too
        resp = await open_console(console_api, basic(login, key))
        assert resp.status == 200, await resp.text()
        assert resp.content_type == "text/html"
        assert resp.headers["Cache-Control"] == "no-store"
        assert "frame-ancestors 'none'" in resp.headers["Content-Security-Policy"]
        assert f"Signed in as <strong>{login}</strong>" in await resp.text()
    assert (await console_api.get(CONSOLE, key=ADMIN_KEY)).status == 200
    for path, kind in (("console.js", "text/javascript"), ("console.css", "text/css")):
        resp = await console_api.http.get(f"{CONSOLE}/{path}", headers=ADMIN)
        assert (resp.status, resp.content_type) == (200, kind)


async def test_basic_credentials_do_not_open_the_json_admin_api(console_api):
    resp = await console_api.http.get("/admin/refunds", headers=ADMIN)
    assert resp.status == 401 and resp.headers["WWW-Authenticate"].startswith("Bearer ")
    status, answer = await console_action(console_api, "/refunds/rf_x/replay", {"reason": REASON})
    assert (status, answer["code"]) == (403, "csrf_check_failed")  # the console's own need more (below)


# --- what it shows -----------------------------------------------------------------------------

async def test_console_shows_stuck_refunds_with_history_unmatched_events_and_the_outcomes_chart(console_api):
    api = console_api
    tx3 = await api.transaction(amount=20_000, processor="mock3", invoice_id="INV-CONSOLE-1")
    stuck = await unresolvable(api, tx3)
    tx = await api.transaction(amount=10_000)
    done = await api.refund(tx, 1_000)
    declined = await api.refund(tx, 4001)
    parked = await unmatched_webhook(api)

    resp = await open_console(api)
    page = await resp.text()

    assert resp.status == 200, page
    assert f"data-refund-id='{stuck['id']}'" in page and "INV-CONSOLE-1" in page
    assert done["id"] not in page and declined["id"] not in page  # not stuck
    assert "<code>requires_attention:outcome_unknown</code>: 1" in page
    # Its history: the events (created, then needing attention) and the processor call.
    assert "<td>created</td>" in page and "outcome_unknown" in page and "History: 2 events, 1 processor calls" in page
    assert f"data-url='/admin/console/refunds/{stuck['id']}/replay'" in page
    assert f"data-url='/admin/console/refunds/{stuck['id']}/resolve'" in page
    assert f"<code>{parked['event_id']}</code>" in page and parked["match_keys"][0] in page
    assert f"data-url='/admin/console/webhook-events/{parked['id']}/reprocess'" in page
    # The chart: one per processor, with the hour's outcomes as bars.
    assert "<strong>mock</strong>: 1 succeeded, 1 failed, 0 needs attention" in page
    assert "<strong>mock3</strong>: 0 succeeded, 0 failed, 1 needs attention" in page
    assert page.count("<svg class=\"outcomes\"") == 2
    assert "<rect class=\"bar succeeded\"" in page and "<rect class=\"bar failed\"" in page


async def test_console_with_nothing_stuck_says_so(console_api):
    page = await (await open_console(console_api)).text()
    assert "No stuck refunds." in page and "No unmatched or failed webhook events." in page
    assert "<strong>mock</strong>: 0 succeeded, 0 failed, 0 needs attention" in page


async def test_console_escapes_hostile_values_from_outside(console_api):
    api = console_api
    tx3 = await api.transaction(amount=20_000, processor="mock3", invoice_id='<script>alert("invoice")</script>')
    stuck = await unresolvable(api, tx3)
    async with api.app[keys.POOL].acquire() as conn:
        await conn.execute("UPDATE refunds SET failure_message = $2, credit_note_id = $3 WHERE id = $1", stuck["id"],
                           "<script>alert('processor')</script>", "\"'><img src=x onerror=alert(1)>")
    await unmatched_webhook(api, event_id="<script>alert(\"event\")</script>", payment="<b onclick=alert(2)>ch</b>")

    page = await (await open_console(api)).text()

    assert page.count("<script") == 1  # the console's own script tag, nothing else
    assert "<img" not in page and "<b onclick" not in page and "alert(1)>" not in page
    assert "&lt;script&gt;alert(&quot;invoice&quot;)&lt;/script&gt;" in page
    assert "&lt;script&gt;alert(&#x27;processor&#x27;)&lt;/script&gt;" in page
    assert "&quot;&#x27;&gt;&lt;img src=x onerror=alert(1)&gt;" in page
    assert "&lt;script&gt;alert(&quot;event&quot;)&lt;/script&gt;" in page


# --- actions -----------------------------------------------------------------------------------

async def test_console_action_without_the_anti_csrf_header_is_refused(console_api):
    api = console_api
    stuck = await unresolvable(api, await api.transaction(amount=10_000, processor="mock3"))
    parked = await unmatched_webhook(api)
    actions = [(f"/refunds/{stuck['id']}/replay", {"reason": REASON}),
               (f"/refunds/{stuck['id']}/resolve", {"resolution": "canceled", "reason": REASON}),
               (f"/webhook-events/{parked['id']}/reprocess", {"reason": REASON})]
    refused = [None,  # what a cross-site form or a plain cross-site request carries
               {"X-Requested-With": "XMLHttpRequest"},
               {"X-Requested-With": "psp-gateway-console", "Sec-Fetch-Site": "cross-site"},
               {"X-Requested-With": "psp-gateway-console", "Sec-Fetch-Site": "same-site"}]
    for path, body in actions:
        for headers in refused:
            status, answer = await console_action(api, path, body, headers)
            assert (status, answer["code"]) == (403, "csrf_check_failed"), (path, headers)
        status, answer = await console_action(api, path, body, FROM_THE_PAGE, auth=basic("billing", WRITER_KEY))
        assert (status, answer["code"]) == (403, "forbidden"), path

    assert (await refund_now(api, stuck["id"]))["status"] == "requires_attention"
    assert await audit_rows(api) == []


async def test_console_actions_are_the_admin_actions_audited_with_the_client_id(console_api):
    api = console_api
    tx3 = await api.transaction(amount=20_000, processor="mock3")
    first, second = await unresolvable(api, tx3), await unresolvable(api, tx3)
    parked = await unmatched_webhook(api)

    status, answer = await console_action(api, f"/refunds/{first['id']}/replay", {}, FROM_THE_PAGE)
    assert (status, answer["code"]) == (422, "validation_error")  # a reason is required, as in the API
    status, answer = await console_action(api, f"/refunds/{first['id']}/replay", {"reason": REASON}, FROM_THE_PAGE)
    assert status == 200, answer
    assert (answer["found"], answer["action"], answer["status"]) == ("not looked up", "nothing", "requires_attention")
    status, answer = await console_action(api, f"/refunds/{second['id']}/resolve",
                                          {"resolution": "refunded_offline", "reason": REASON}, FROM_THE_PAGE)
    assert (status, answer["code"]) == (422, "validation_error")  # refunded offline needs its reference
    status, answer = await console_action(api, f"/refunds/{second['id']}/resolve",
                                          {"resolution": "failed", "reason": REASON}, FROM_THE_PAGE)
    assert (status, answer["status"], answer["stage"]) == (200, "failed", "done")
    status, answer = await console_action(api, f"/webhook-events/{parked['id']}/reprocess", {"reason": REASON},
                                          FROM_THE_PAGE)
    assert (status, answer["status"]) == (200, "unmatched")  # its payment is still unknown
    # An older browser sends no Sec-Fetch-Site: the header alone is enough.
    status, answer = await console_action(api, f"/refunds/{second['id']}/replay", {"reason": REASON},
                                          {"X-Requested-With": "psp-gateway-console"})
    assert (status, answer["code"]) == (409, "refund_final")

    rows = await audit_rows(api)
    assert [(r["actor"], r["action"], r["target"], r["reason"]) for r in rows] == [
        ("ops", "refund.replay", first["id"], REASON),
        ("ops", "refund.resolve.failed", second["id"], REASON),
        ("ops", "webhook_event.reprocess", f"webhook_event:{parked['id']}", REASON),
        ("ops", "refund.replay", second["id"], REASON)]  # refused, and audited as such
    assert rows[-1]["result"] == {"refused": "refund_final", "status_now": "failed"}
    page = await (await open_console(api)).text()
    assert first["id"] in page and second["id"] not in page  # resolved: no longer stuck
