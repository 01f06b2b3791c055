"""Every error is application/problem+json with a stable code, never a 500, never a half-written row."""

from __future__ import annotations

import pytest

from gateway import keys
from tests.conftest import ADMIN_KEY, READER_KEY, WRITER_KEY


async def _problem(resp, status: int, code: str) -> dict:
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/problem+json"
    body = await resp.json()
    assert body["code"] == code and body["status"] == status and body["detail"]
    return body


async def _row_counts(api) -> tuple[int, int, int]:
    async with api.app[keys.POOL].acquire() as conn:
        return (await conn.fetchval("SELECT count(*) FROM refunds"),
                await conn.fetchval("SELECT count(*) FROM refund_events"),
                await conn.fetchval("SELECT coalesce(sum(reserved_amount), 0) FROM transactions"))


async def test_missing_or_wrong_api_key_is_unauthorized(api):
    await _problem(await api.get("/v1/refunds", key=None), 401, "unauthorized")
    await _problem(await api.get("/v1/refunds", key="sk_not_a_real_key_123456"), 401, "unauthorized")
    resp = await api.get("/v1/refunds", key=None, headers={"X-API-Key": READER_KEY})
    assert resp.status == 200


async def test_key_without_the_scope_is_forbidden(api):
    body = await _problem(await api.post("/v1/refunds", {}, key=READER_KEY), 403, "forbidden")
    assert body["required_scope"] == "refunds:write"
    await _problem(await api.get("/v1/refunds", key=ADMIN_KEY), 403, "forbidden")


async def test_unknown_transaction_is_not_found(api):
    await _problem(await api.post("/v1/refunds", {"invoice_id": "nope", "currency": "EUR"}), 404,
                   "transaction_not_found")
    await _problem(await api.post("/v1/refunds", {"invoice_id": "x", "transaction_id": "tx_nope", "currency": "EUR"}),
                   404, "transaction_not_found")
    await _problem(await api.get("/v1/transactions/tx_nope"), 404, "transaction_not_found")
    await _problem(await api.get("/v1/refunds/rf_nope"), 404, "refund_not_found")
    await _problem(await api.post("/v1/invoices/nope/refund", {}), 404, "transaction_not_found")


async def test_refund_over_the_refundable_balance_is_rejected(api):
    tx = await api.transaction(amount=1_000)
    body = await _problem(await api.post("/v1/refunds", {"invoice_id": tx["invoice_id"], "amount": 1_001,
                                                         "currency": "EUR"}), 422, "amount_exceeds_refundable")
    assert body["refundable_amount"] == 1_000
    await api.refund(tx, 1_000)
    body = await _problem(await api.post("/v1/refunds", {"invoice_id": tx["invoice_id"], "currency": "EUR"}),
                          422, "amount_exceeds_refundable")
    assert body["refundable_amount"] == 0


async def test_refund_in_another_currency_is_rejected(api):
    tx = await api.transaction(amount=1_000, currency="EUR")
    body = await _problem(await api.post("/v1/refunds", {"invoice_id": tx["invoice_id"], "amount": 10,
                                                         "currency": "USD"}), 422, "currency_mismatch")
    assert body["transaction_currency"] == "EUR"
    assert await _row_counts(api) == (0, 0, 0)


@pytest.mark.parametrize("amount", [0, -5, 1.5, 10.0, "100", True, 10**16])
async def test_amount_that_is_not_positive_integer_minor_units_is_invalid(api, amount):
    tx = await api.transaction(amount=1_000)
    body = await _problem(await api.post("/v1/refunds", {"invoice_id": tx["invoice_id"], "amount": amount,
                                                         "currency": "EUR"}), 422, "invalid_amount")
    assert body["errors"][0]["field"] == "amount"
    assert await _row_counts(api) == (0, 0, 0)


async def test_unknown_currency_is_rejected(api):
    resp = await api.post("/v1/transactions", {"processor": "mock", "psp_reference": "ch", "invoice_id": "i",
                                               "amount": 1, "currency": "EURO"})
    await _problem(resp, 422, "invalid_currency")


async def test_invoice_with_several_refundable_payments_needs_a_pointer(api):
    a = await api.transaction(amount=1_000, invoice_id="INV-2")
    b = await api.transaction(amount=2_000, invoice_id="INV-2")
    body = await _problem(await api.post("/v1/refunds", {"invoice_id": "INV-2", "amount": 10, "currency": "EUR"}),
                          409, "ambiguous_transaction")
    assert {c["transaction_id"] for c in body["candidates"]} == {a["id"], b["id"]}
    assert await _row_counts(api) == (0, 0, 0)
    ok = await api.post("/v1/refunds", {"invoice_id": "INV-2", "transaction_id": b["id"], "amount": 10,
                                        "currency": "EUR"})
    assert ok.status == 201


async def test_same_processor_reference_at_two_processors_is_ambiguous(api):
    a = await api.transaction(amount=1_000, psp_reference="ch_dup", invoice_id="INV-3")
    await api.transaction(amount=1_000, psp_reference="ch_dup", invoice_id="INV-3", processor="mock2")
    await _problem(await api.post("/v1/refunds", {"invoice_id": "INV-3", "psp_reference": "ch_dup", "amount": 1,
                                                  "currency": "EUR"}), 409, "ambiguous_transaction")
    assert a


async def test_transaction_of_another_invoice_is_rejected(api):
    tx = await api.transaction(amount=1_000)
    await _problem(await api.post("/v1/refunds", {"invoice_id": "other", "transaction_id": tx["id"], "amount": 1,
                                                  "currency": "EUR"}), 422, "invoice_mismatch")


async def test_missing_fields_wrong_types_and_unknown_fields_name_the_fields(api):
    body = await _problem(await api.post("/v1/refunds", {"amount": 100}), 422, "validation_error")
    assert {e["field"] for e in body["errors"]} == {"invoice_id", "currency"}
    body = await _problem(await api.post("/v1/refunds", {"invoice_id": 42, "currency": "EUR", "amout": 5}), 422,
                          "validation_error")
    assert {e["field"] for e in body["errors"]} == {"invoice_id", "amout"}
    body = await _problem(await api.post("/v1/transactions", {"processor": "mock", "psp_reference": "ch",
                                                              "invoice_id": "i", "amount": 5, "currency": "EUR",
                                                              "settled": "yes", "metadata": {"k": 1}}),
                          422, "validation_error")
    assert {e["field"] for e in body["errors"]} == {"settled", "metadata.k"}
    await _problem(await api.post("/v1/refunds", [1, 2]), 422, "validation_error")


async def test_unknown_processor_account_is_rejected(api):
    await _problem(await api.post("/v1/transactions", {"processor": "nope", "psp_reference": "ch", "invoice_id": "i",
                                                       "amount": 5, "currency": "EUR"}), 422, "unknown_processor")


async def test_malformed_json_is_a_bad_request(api):
    resp = await api.post("/v1/refunds", data=b'{"invoice_id": ', headers={"Content-Type": "application/json"})
    await _problem(resp, 400, "malformed_request")
    resp = await api.post("/v1/refunds", data=b"\xff\xfe", headers={"Content-Type": "application/json"})
    await _problem(resp, 400, "malformed_request")


async def test_wrong_content_type_is_rejected(api):
    resp = await api.post("/v1/refunds", data=b"invoice_id=x", headers={"Content-Type": "application/x-www-form-urlencoded"})
    await _problem(resp, 415, "unsupported_media_type")


async def test_oversized_body_is_rejected(api):
    huge = b'{"invoice_id": "' + b"x" * (api.app[keys.SETTINGS].max_body_bytes + 10) + b'"}'
    resp = await api.post("/v1/refunds", data=huge, headers={"Content-Type": "application/json"})
    await _problem(resp, 413, "payload_too_large")
    resp = await api.post("/v1/refunds", data=huge, headers={"Content-Type": "application/json",
                                                             "Idempotency-Key": "big"})
    await _problem(resp, 413, "payload_too_large")


async def test_bad_query_parameters_are_rejected(api):
    await _problem(await api.get("/v1/refunds", params={"status": "done"}), 422, "validation_error")
    await _problem(await api.get("/v1/refunds", params={"limit": "0"}), 422, "validation_error")
    await _problem(await api.get("/v1/refunds", params={"limit": "many"}), 422, "validation_error")
    await _problem(await api.get("/v1/transactions"), 422, "validation_error")


async def test_unknown_route_and_method_are_problems_too(api):
    await _problem(await api.get("/v1/nothing-here"), 404, "not_found")
    await _problem(await api.http.delete("/v1/refunds", headers={"Authorization": "Bearer x"}), 401, "unauthorized")
    from tests.conftest import WRITER_KEY
    await _problem(await api.http.delete("/v1/refunds", headers={"Authorization": f"Bearer {WRITER_KEY}"}), 405,
                   "method_not_allowed")


async def test_request_id_is_accepted_and_returned(api):
    resp = await api.get("/healthz", key=None, headers={"X-Request-ID": "abc-123"})
    assert resp.headers["X-Request-ID"] == "abc-123"
    resp = await api.get("/healthz", key=None, headers={"X-Request-ID": "bad id with spaces"})
    assert resp.headers["X-Request-ID"].startswith("req_")
    resp = await api.get("/v1/refunds", key=None)
    assert resp.headers["X-Request-ID"]


async def test_unexpected_error_is_a_problem_not_a_traceback(api):
    """A bug must still answer problem+json (500), logged, never an HTML traceback."""
    await api.app[keys.POOL].close()  # the pool is closed: asyncpg raises InterfaceError, a bug-class error
    resp = await api.get("/v1/refunds/rf_x")
    body = await _problem(resp, 500, "internal_error")
    assert "Traceback" not in body["detail"]


async def test_text_with_a_nul_character_is_a_validation_error_not_a_server_error(api):
    tx = await api.transaction(amount=1_000)
    resp = await api.post("/v1/refunds", {"invoice_id": tx["invoice_id"], "currency": "EUR", "amount": 1,
                                          "reason": "bad\u0000reason", "metadata": {"k": "v\u0000"}})
    body = await _problem(resp, 422, "validation_error")
    assert "NUL" in body["detail"]


NUL_REQUESTS = [
    ("post", "/v1/invoices/a%00b/refund", "invoice_id", WRITER_KEY),
    ("get", "/v1/refunds/a%00b", "id", WRITER_KEY),
    ("get", "/v1/transactions/a%00b", "id", WRITER_KEY),
    ("get", "/v1/transactions?invoice_id=a%00b", "invoice_id", WRITER_KEY),
    ("get", "/v1/refunds?invoice_id=a%00b", "invoice_id", WRITER_KEY),
    ("get", "/v1/refunds?starting_after=a%00b", "starting_after", WRITER_KEY),
    ("get", "/v1/events?after=a%00b", "after", WRITER_KEY),
    ("post", "/v1/webhooks/a%00b", "processor_id", None),
    ("get", "/admin/refunds?processor=a%00b", "processor", ADMIN_KEY),
    ("get", "/admin/refunds?failure_code=a%00b", "failure_code", ADMIN_KEY),
    ("get", "/admin/refunds?starting_after=a%00b", "starting_after", ADMIN_KEY),
    ("get", "/admin/webhook-events?status=a%00b", "status", ADMIN_KEY),
    ("get", "/admin/webhook-events?processor=a%00b", "processor", ADMIN_KEY),
    ("post", "/admin/refunds/a%00b/replay", "id", ADMIN_KEY),
    ("post", "/admin/refunds/a%00b/resolve", "id", ADMIN_KEY),
    ("post", "/admin/webhook-events/a%00b/reprocess", "id", ADMIN_KEY),
    ("get", "/admin/console?x=a%00b", "x", ADMIN_KEY),
]


@pytest.mark.parametrize("idempotency_key", [None, "nul-key"])
@pytest.mark.parametrize(("method", "path", "field", "key"), NUL_REQUESTS)
async def test_nul_or_control_character_in_the_path_or_query_is_a_validation_error(api, method, path, field, key,
                                                                                  idempotency_key):
    """Postgres text cannot hold U+0000: a NUL in a URL is refused by name before any query runs
    (a key, too: the Idempotency-Key row stores the path)."""
    from yarl import URL
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if idempotency_key:
        headers["Idempotency-Key"] = idempotency_key
    body = {"reason": "checking a bad id"} if "/admin/" in path and method == "post" else {}
    for bad in (path, path.replace("%00", "%1F")):
        resp = await api.http.request(method, URL(bad, encoded=True), json=body, headers=headers)
        problem = await _problem(resp, 422, "validation_error")
        assert [e["field"] for e in problem["errors"]] == [field]
    assert await _row_counts(api) == (0, 0, 0)


async def test_over_long_or_odd_ids_in_the_path_or_query_are_refused_not_a_server_error(api):
    long = "x" * 256
    for path in (f"/v1/refunds/{long}", f"/v1/transactions/{long}", f"/v1/invoices/{long}/refund"):
        resp = await (api.post(path, {}) if path.endswith("/refund") else api.get(path))
        problem = await _problem(resp, 422, "validation_error")
        assert problem["errors"][0]["field"] in ("id", "invoice_id")
    await _problem(await api.get("/v1/refunds", params={"invoice_id": long}), 422, "validation_error")
    await _problem(await api.get("/v1/nothing%00here"), 422, "validation_error")
    # Ids that could be stored but are not: plain 404s, and digits that are not ASCII are not numbers.
    await _problem(await api.get(f"/v1/refunds/{'x' * 255}"), 404, "refund_not_found")
    for after in ("²", "9" * 30, "-1"):
        resp = await api.get("/admin/webhook-events", key=ADMIN_KEY, params={"starting_after": after})
        await _problem(resp, 422, "validation_error")
        resp = await api.post(f"/admin/webhook-events/{after}/reprocess", {"reason": "checking a bad id"},
                              key=ADMIN_KEY)
        await _problem(resp, 404, "webhook_event_not_found")


async def test_invoice_refund_takes_the_currency_of_the_payment_the_body_points_at(api):
    """An invoice paid in two currencies: with no pointer the currency is needed; with one, the
    pointed-at payment's currency is the refund's."""
    eur = await api.transaction(amount=1_000, currency="EUR", invoice_id="INV-2CUR", psp_reference="ch_2cur_eur")
    usd = await api.transaction(amount=2_000, currency="USD", invoice_id="INV-2CUR", psp_reference="ch_2cur_usd")
    body = await _problem(await api.post("/v1/invoices/INV-2CUR/refund", {"amount": 10}), 422, "validation_error")
    assert body["errors"][0]["field"] == "currency"
    resp = await api.post("/v1/invoices/INV-2CUR/refund", {"amount": 10, "transaction_id": usd["id"]})
    assert resp.status == 201, await resp.text()
    assert ((await resp.json())["currency"], (await resp.json())["transaction_id"]) == ("USD", usd["id"])
    resp = await api.post("/v1/invoices/INV-2CUR/refund", {"amount": 20, "psp_reference": "ch_2cur_eur"})
    assert resp.status == 201, await resp.text()
    assert ((await resp.json())["currency"], (await resp.json())["transaction_id"]) == ("EUR", eur["id"])
    await _problem(await api.post("/v1/invoices/INV-2CUR/refund", {"transaction_id": "tx_nope"}), 404,
                   "transaction_not_found")
    other = await api.transaction(amount=1_000, currency="GBP")
    await _problem(await api.post("/v1/invoices/INV-2CUR/refund", {"amount": 1, "transaction_id": other["id"]}),
                   422, "invoice_mismatch")


async def test_a_405_says_which_methods_the_path_takes(api):
    resp = await api.http.delete("/v1/refunds", headers={"Authorization": f"Bearer {WRITER_KEY}"})
    problem = await resp.json()
    assert resp.status == 405 and set(resp.headers["Allow"].split(", ")) >= {"GET", "POST"}
    assert (problem["code"], problem["title"]) == ("method_not_allowed", "Method not allowed")


async def test_a_problems_type_is_served_by_the_gateway(api):
    problem = await (await api.get("/v1/refunds/rf_nope")).json()
    assert problem["type"] == "/problems/refund_not_found" and problem["title"] == "Not found"
    resp = await api.http.get(problem["type"], allow_redirects=False)
    assert resp.status == 302 and resp.headers["Location"] == "/docs#examples-refund_not_found"
    page = await (await api.http.get(problem["type"])).text()
    assert "id='examples-refund_not_found'" in page
    assert (await api.http.get("/problems/no_such_code", allow_redirects=False)).status == 404
    unknown_path = await (await api.get("/nope")).json()
    assert unknown_path["title"] == "Not found"  # one spelling, whoever raised it


async def test_resources_and_lists_say_what_they_are_and_lists_page_both_ways(api):
    tx = await api.transaction(amount=10_000)
    made = [await api.refund(tx, 100 + n) for n in range(5)]
    assert {r["object"] for r in made} == {"refund"}
    assert (await (await api.get(f"/v1/transactions/{tx['id']}")).json())["object"] == "transaction"
    ids = [r["id"] for r in sorted(made, key=lambda r: r["id"], reverse=True)]  # newest first
    first = await (await api.get("/v1/refunds", params={"limit": "2"})).json()
    assert first["object"] == "list" and [r["id"] for r in first["data"]] == ids[:2] and first["has_more"]
    second = await (await api.get("/v1/refunds", params={"limit": "2", "starting_after": ids[1]})).json()
    assert [r["id"] for r in second["data"]] == ids[2:4]
    back = await (await api.get("/v1/refunds", params={"limit": "2", "ending_before": ids[2]})).json()
    assert [r["id"] for r in back["data"]] == ids[:2] and not back["has_more"]
    back = await (await api.get("/v1/refunds", params={"limit": "1", "ending_before": ids[2]})).json()
    assert [r["id"] for r in back["data"]] == ids[1:2] and back["has_more"]
    both = await api.get("/v1/refunds", params={"starting_after": ids[1], "ending_before": ids[3]})
    assert both.status == 422
