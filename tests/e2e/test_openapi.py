"""The OpenAPI document describes exactly the routes the server has, from the same models."""

from __future__ import annotations

from gateway.auth import takes_basic_auth
from gateway.openapi import OPERATIONS


async def test_openapi_document_lists_every_route_and_nothing_else(api):
    spec = await (await api.get("/openapi.json", key=None)).json()
    assert spec["openapi"] == "3.1.0"
    documented = {(method.upper(), path) for path, ops in spec["paths"].items() for method in ops}
    # The operator console is a page for people, not part of the API: it signs in with HTTP Basic,
    # which the API does not take, and its actions are the documented /admin handlers behind an
    # anti-CSRF header that only the console's script sends (README, "Operator console").
    served = {(r.method, r.resource.canonical) for r in api.app.router.routes()
              if r.method not in ("HEAD", "OPTIONS") and not takes_basic_auth(r.resource.canonical)}
    assert documented == served
    assert not any(takes_basic_auth(path) for path in spec["paths"])


async def test_request_schemas_come_from_the_validating_models(api):
    spec = await (await api.get("/openapi.json", key=None)).json()
    refund = spec["components"]["schemas"]["RefundCreate"]
    assert set(refund["required"]) == {"invoice_id", "currency"}
    assert refund["additionalProperties"] is False  # unknown fields are refused, as the server does
    assert refund["properties"]["amount"]["type"] == "integer"
    operation = spec["paths"]["/v1/refunds"]["post"]
    assert operation["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/RefundCreate")
    assert "application/problem+json" in operation["responses"]["422"]["content"]
    assert all(op.summary for op in OPERATIONS)


async def test_docs_page_lists_the_operations(api):
    resp = await api.get("/docs", key=None)
    text = await resp.text()
    assert resp.status == 200 and "POST /v1/refunds" in text and "/openapi.json" in text
