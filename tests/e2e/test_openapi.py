"""The OpenAPI document describes exactly the routes the server has, from the same models: every
operation with examples and its problem codes, every code the source raises, the callbacks the
gateway sends (checked against a real one), and a page that shows it all."""

from __future__ import annotations

import ast
import functools
import hashlib
import hmac
import inspect
import re
from pathlib import Path

import jsonschema
import orjson
import pytest
from aiohttp import web
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from adapters.mock import MockAdapter
from adapters.stripe.transformers import parse_event
from adapters.stripe_sim.world import RefundBehaviour, World
from gateway import callbacks, errors, http, ledger, middleware, models
from gateway.auth import takes_basic_auth
from gateway.openapi import ERROR_CODES, GLOBAL_CODES, OPERATIONS, build
from tests.conftest import ADMIN_KEY, WRITER_KEY, Api, eventually, make_settings, start_api

GATEWAY = Path(__file__).resolve().parents[2] / "gateway"


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


async def test_docs_page_shows_each_operation_with_anchors_schemas_codes_and_examples(api):
    resp = await api.get("/docs", key=None)
    text = await resp.text()
    assert resp.status == 200 and resp.content_type == "text/html" and "/openapi.json" in text
    assert "script" not in resp.headers["Content-Security-Policy"] and "<script" not in text  # offline, no framework
    spec = build()
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            assert f"id='{operation['operationId']}'" in text and f"href='#{operation['operationId']}'" in text
            assert f"{method.upper()} {path}" in text
    for code in ERROR_CODES:
        assert f"id='examples-{code}'" in text and f"href='#examples-{code}'" in text
    for name in spec["components"]["schemas"]:
        assert f"id='schemas-{name}'" in text
    assert "Gateway-Signature" in text and "INV-2024-0042" in text  # the callbacks, and examples


def _resolve(spec: dict, ref: str) -> dict:
    node = spec
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def _media_types(spec: dict):
    """Every (where, media type object) of a request or a response, callbacks included."""
    for group in ("paths", "webhooks"):
        for path, item in spec[group].items():
            for method, operation in item.items():
                where = f"{method.upper()} {path}"
                for media in operation.get("requestBody", {}).get("content", {}).values():
                    yield f"{where} body", media
                for status, response in operation["responses"].items():
                    for media in response.get("content", {}).values():
                        yield f"{where} {status}", media


def test_every_example_in_the_document_is_valid_against_its_own_schema():
    spec = build()
    # The schemas' refs ("#/components/...") resolve inside the document, registered under one name.
    registry = Registry().with_resource("urn:spec", Resource(contents=spec, specification=DRAFT202012))
    seen = 0
    for where, media in _media_types(spec):
        validator = jsonschema.Draft202012Validator(_rebase(media["schema"]), registry=registry)
        for name, example in media["examples"].items():
            value = _resolve(spec, example["$ref"])["value"] if "$ref" in example else example["value"]
            assert not [e.message for e in validator.iter_errors(value)], (where, name)
            seen += 1
    assert seen > 50


def _rebase(schema):
    """Point the document's local refs at the registered document."""
    if isinstance(schema, dict):
        return {k: ("urn:spec" + v if k == "$ref" else _rebase(v)) for k, v in schema.items()}
    if isinstance(schema, list):
        return [_rebase(v) for v in schema]
    return schema


def test_examples_are_accepted_by_the_models_that_validate_and_shape_the_api():
    spec = build()
    checked = set()
    for name in spec["components"]["schemas"]:
        model = getattr(models, name, None)
        examples = ((getattr(model, "model_config", None) or {}).get("json_schema_extra") or {}).get("examples", [])
        for example in examples:
            model.model_validate_json(orjson.dumps(example))  # JSON mode: as the server reads a body
            checked.add(name)
    assert {"RefundCreate", "RefundTarget", "TransactionCreate", "RefundOut", "TransactionOut", "Event",
            "RefundList", "AdminRefundList", "ReplayResult", "BulkReplayResult", "WebhookEventList"} <= checked
    for code in ERROR_CODES:
        problem = models.Problem.model_validate(spec["components"]["examples"][code]["value"])
        assert problem.code == code and problem.type.endswith("/" + code)


def _codes(responses: dict, status: int) -> set[str]:
    problems = responses.get(str(status), {}).get("content", {}).get("application/problem+json", {})
    return set(problems.get("examples", {}))


def test_every_operation_has_examples_and_the_problems_its_middleware_can_answer():
    spec = build()
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            where = f"{method.upper()} {path}"
            responses = operation["responses"]
            for status, response in responses.items():
                for media in response["content"].values():
                    assert media["examples"], (where, status)
            if "requestBody" in operation:
                assert operation["requestBody"]["content"]["application/json"]["examples"], where
            codes = functools.partial(_codes, responses)
            # The auth middleware's rule: keys on /v1/ and /admin/, but not on processors' webhooks.
            keyed = path.startswith(middleware._PROTECTED) and not path.startswith("/v1/webhooks/")
            assert ({"unauthorized"} <= codes(401) and {"forbidden"} <= codes(403)
                    and {"rate_limited"} <= codes(429)) == keyed, where
            # The idempotency middleware's: every POST with a key.
            idempotent = keyed and method == "post"
            assert ({"invalid_idempotency_key"} <= codes(400)
                    and {"idempotency_key_reused", "idempotency_key_in_use"} <= codes(409)) == idempotent, where
            if "{" in path or any(p["in"] == "query" for p in operation.get("parameters", ())):
                assert "validation_error" in codes(422), where


def _handlers(app: web.Application) -> dict[tuple[str, str], object]:
    return {(r.method, r.resource.canonical): r.handler for r in app.router.routes()
            if r.method not in ("HEAD", "OPTIONS") and not takes_basic_auth(r.resource.canonical)}


async def test_what_each_handler_raises_and_whether_it_reads_the_database_is_documented(api):
    spec = build()
    for (method, path), handler in _handlers(api.app).items():
        operation = spec["paths"][path][method.lower()]
        documented = {code for response in operation["responses"].values()
                      for code in response.get("content", {}).get("application/problem+json", {}).get("examples", {})}
        source = inspect.getsource(handler)
        raised = set(re.findall(r'code="(\w+)"', source))
        assert raised <= documented, (method, path, raised - documented)
        # /metrics answers without the database (psp_gateway_database_up 0); every other reader may be refused.
        keyed_post = method == "POST" and "security" in operation  # the idempotency middleware's table
        reads_database = ("keys.POOL" in source and path != "/metrics") or keyed_post
        assert ("database_unavailable" in documented) == reads_database, (method, path)


def _raised_codes() -> set[str]:
    """Every problem code the source can raise: codes given to the error family by name, each
    class's own where one is raised without a code, and the middleware's and field validators'."""
    family: dict[str, type[errors.GatewayError]] = {}
    todo = [errors.GatewayError]
    while todo:
        cls = todo.pop()
        family[cls.__name__] = cls
        todo += cls.__subclasses__()
    found = set(middleware._HTTP_CODES.values()) | set(http._FIELD_CODES)
    # The operator console is a page, not part of the API (its one code: csrf_check_failed).
    for file in sorted(set(GATEWAY.rglob("*.py")) - {GATEWAY / "routes" / "console.py"}):
        for node in ast.walk(ast.parse(file.read_text())):
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "attr", None) or getattr(node.func, "id", None)
            if name not in family:
                continue
            code = next((k.value for k in node.keywords if k.arg == "code"), None)
            if code is None:
                found.add(family[name].code)
            else:
                found |= {c.value for c in ast.walk(code) if isinstance(c, ast.Constant) and isinstance(c.value, str)}
    return found


def test_every_problem_code_the_source_raises_is_documented_and_no_other():
    raised = _raised_codes()
    spec = build()
    assert set(spec["components"]["schemas"]["Problem"]["properties"]["code"]["enum"]) == raised == set(ERROR_CODES)
    in_operations = {code for item in spec["paths"].values() for operation in item.values()
                     for response in operation["responses"].values()
                     for code in response.get("content", {}).get("application/problem+json", {}).get("examples", {})}
    assert raised - set(GLOBAL_CODES) <= in_operations
    assert {"ambiguous_transaction", "amount_exceeds_refundable", "idempotency_key_reused", "rate_limited",
            "database_unavailable", "invalid_signature"} <= raised  # the scan sees through the call sites


def test_every_event_type_the_ledger_publishes_is_in_the_event_model():
    tree = ast.parse(Path(ledger.__file__).read_text())
    templates = {id(part) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr) for part in node.values}
    published = {node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and id(node) not in templates
                 and isinstance(node.value, str) and node.value.startswith("refund.")}
    assert "refund.created" in published and published <= set(models.EVENT_TYPES)
    assert {f"refund.{status}" for status in models.Status} <= set(models.EVENT_TYPES)  # f"refund.{status}"


@pytest.mark.parametrize("limit_path, key", [("/v1/refunds", WRITER_KEY), ("/v1/events", WRITER_KEY),
                                             ("/admin/refunds", ADMIN_KEY), ("/admin/webhook-events", ADMIN_KEY)])
async def test_query_bounds_in_the_document_are_the_ones_the_server_enforces(api, limit_path, key):
    spec = build()
    [limit] = [p for p in spec["paths"][limit_path]["get"]["parameters"] if p["name"] == "limit"]
    assert limit["schema"]["type"] == "integer"
    most = limit["schema"]["maximum"]
    assert (await api.get(limit_path, key=key, params={"limit": str(most)})).status == 200
    refused = await api.get(limit_path, key=key, params={"limit": str(most + 1)})
    assert refused.status == 422 and (await refused.json())["errors"][0]["field"] == "limit"


def test_documented_processor_payloads_are_what_the_adapters_and_the_stripe_simulator_speak():
    events: list[dict] = []
    ids = iter(range(10**6))
    world = World(lambda prefix: f"{prefix}_{next(ids):08d}", "2024-06-20", events.append)
    charge = world.create_charge(4200, "eur", {"invoice_id": "INV-1"}, None)
    refund = world.create_refund(charge_id=charge["id"], payment_intent_id=None, amount=1500, reason=None,
                                 metadata={}, behaviour=RefundBehaviour(status="pending"))
    world.fail(refund["id"])
    assert {e["type"] for e in events} >= {"charge.succeeded", "refund.created", "charge.refunded", "refund.failed"}
    for event in events:
        models.StripeEvent.model_validate(event)
    [stripe_example] = models.StripeEvent.model_config["json_schema_extra"]["examples"]
    assert parse_event(orjson.dumps(stripe_example)).refunds  # the adapter reads the documented example
    [mock_example] = models.MockWebhook.model_config["json_schema_extra"]["examples"]
    body = orjson.dumps(mock_example)
    signature = hmac.new(b"mock-secret", body, hashlib.sha256).hexdigest()
    assert MockAdapter("mock", webhook_secrets=["mock-secret"]).parse_webhook({"Mock-Signature": signature},
                                                                              body).refunds


async def test_a_real_callback_and_the_events_feed_match_the_documented_event(database_url):
    received: list[tuple[bytes, dict[str, str]]] = []

    async def billing_core(request: web.Request) -> web.Response:
        received.append((await request.read(), dict(request.headers)))
        return web.Response(status=204)

    receiver = web.Application()
    receiver.router.add_post("/callbacks", billing_core)
    runner = web.AppRunner(receiver)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    client = await start_api(make_settings(database_url, callback_url=f"http://{host}:{port}/callbacks",
                                           callback_secrets=["cb_secret_0123456789"], callback_poll_seconds=0.05))
    api = Api(client)
    try:
        tx = await api.transaction(amount=5_000)
        await api.refund(tx, 1_000)

        async def both_delivered() -> bool:
            return len(received) >= 2  # refund.created, refund.succeeded

        await eventually(both_delivered)
        feed = await (await api.get("/v1/events")).json()
    finally:
        await client.close()
        await runner.cleanup()
    hook = build()["webhooks"]["refundEvent"]["post"]
    assert hook["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/Event")
    for body, headers in received:
        event = models.Event.model_validate_json(body)  # unknown fields are refused: the model cannot lag
        assert {p["name"] for p in hook["parameters"]} <= set(headers), headers
        assert headers[callbacks.SIGNATURE_HEADER].startswith("t=") and headers["Gateway-Event-Id"] == str(event.id)
    assert [models.Event.model_validate(e).type for e in feed["data"]] == ["refund.created", "refund.succeeded"]
    models.EventList.model_validate(feed)
