"""The OpenAPI 3.1 document, built from the same pydantic models that validate requests and shape
responses; only the list of operations is written here, and a test holds it to the router."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from gateway import models

REF = "#/components/schemas/{model}"


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    summary: str
    scope: str | None  # None: no API key (health, webhooks signed by their processor)
    body: type[BaseModel] | None = None
    answers: dict[int, type[BaseModel] | str] = field(default_factory=dict)  # str: a list of that model
    errors: tuple[int, ...] = ()
    query: tuple[str, ...] = ()
    media: str = "application/json"  # of its answers; another type is described as a string


OPERATIONS = [
    Operation("post", "/v1/transactions", "Register an original payment (idempotent on processor + reference)",
              "transactions:write", models.TransactionCreate, {201: models.TransactionOut, 200: models.TransactionOut},
              (400, 401, 403, 409, 413, 415, 422)),
    Operation("get", "/v1/transactions", "The payments of an invoice", "transactions:read",
              answers={200: "TransactionOut"}, errors=(401, 403, 422), query=("invoice_id",)),
    Operation("get", "/v1/transactions/{id}", "One payment, with refunded, reserved and refundable amounts",
              "transactions:read", answers={200: models.TransactionOut}, errors=(401, 403, 404)),
    Operation("post", "/v1/refunds", "Refund (part of) an invoice's payment", "refunds:write", models.RefundCreate,
              {201: models.RefundOut, 200: models.RefundOut}, (400, 401, 403, 404, 409, 413, 415, 422, 429, 503)),
    Operation("post", "/v1/invoices/{invoice_id}/refund", "Refund an invoice (the billing core's shape)",
              "refunds:write", models.RefundTarget, {201: models.RefundOut, 200: models.RefundOut},
              (400, 401, 403, 404, 409, 413, 415, 422, 429, 503)),
    Operation("get", "/v1/refunds", "Refunds, newest first", "refunds:read", answers={200: "RefundOut"},
              errors=(401, 403, 422), query=("invoice_id", "status", "limit", "starting_after")),
    Operation("get", "/v1/refunds/{id}", "One refund", "refunds:read", answers={200: models.RefundOut},
              errors=(401, 403, 404)),
    Operation("get", "/v1/events", "Refund events (the callbacks' payloads), oldest first", "refunds:read",
              answers={200: "Event"}, errors=(401, 403, 422), query=("after", "limit")),
    Operation("post", "/v1/webhooks/{processor_id}", "A processor's webhook, verified by its signature", None,
              answers={200: "WebhookReceipt"}, errors=(400, 404, 413, 415, 503)),
    Operation("get", "/admin/refunds", "Refunds for an operator; stuck ones with counts by reason", "admin",
              answers={200: "RefundOut"}, errors=(401, 403, 422),
              query=("stuck", "status", "processor", "failure_code", "older_than_seconds", "limit", "starting_after")),
    Operation("post", "/admin/refunds/{id}/replay", "Resync with the processor, resend with the same key if needed",
              "admin", models.ReplayRequest, {200: "ReplayResult"}, (401, 403, 404, 409, 422)),
    Operation("post", "/admin/refunds/replay", "Replay refunds by filter (dry run lists them)", "admin",
              models.BulkReplayRequest, {200: "BulkReplayResult"}, (401, 403, 422)),
    Operation("post", "/admin/refunds/{id}/resolve", "Resolve a refund outside the processor", "admin",
              models.ResolveRequest, {200: models.RefundOut}, (401, 403, 404, 409, 422)),
    Operation("get", "/admin/webhook-events", "Stored webhook events (unmatched, failed, ...)", "admin",
              answers={200: "WebhookEvent"}, errors=(401, 403), query=("status", "processor", "limit", "starting_after")),
    Operation("post", "/admin/webhook-events/{id}/reprocess", "Apply one stored event again", "admin",
              models.ReprocessRequest, {200: "ReprocessResult"}, (401, 403, 404, 422)),
    Operation("post", "/admin/webhook-events/reprocess", "Queue every event of a status again", "admin",
              models.BulkReprocessRequest, {200: "Queued"}, (401, 403, 422)),
    Operation("get", "/healthz", "The process is up", None, answers={200: "Status"}),
    Operation("get", "/readyz", "The database is reachable and migrated", None, answers={200: "Status"},
              errors=(503,)),
    Operation("get", "/metrics", "Prometheus metrics, text exposition (a bearer token only when metrics_token "
              "is set)", None, answers={200: "Metrics"}, errors=(401,), media="text/plain"),
    Operation("get", "/openapi.json", "This document", None, answers={200: "Status"}),
    Operation("get", "/docs", "This document as a page", None, answers={200: "Status"}),
]

_FREE_FORM = {"type": "object", "additionalProperties": True}
PROBLEM = {
    "type": "object", "required": ["type", "title", "status", "code", "detail"],
    "properties": {"type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"},
                   "code": {"type": "string", "description": "stable, for code to branch on"},
                   "detail": {"type": "string"},
                   "errors": {"type": "array", "items": {"type": "object", "properties": {
                       "field": {"type": "string"}, "message": {"type": "string"}, "type": {"type": "string"}}}}},
}


def _response_schema(answer: type[BaseModel] | str, known: set[str]) -> dict[str, Any]:
    if isinstance(answer, str):
        item = {"$ref": REF.format(model=answer)} if answer in known else _FREE_FORM
        if answer in ("Event", "RefundOut", "TransactionOut", "WebhookEvent"):
            return {"type": "object", "required": ["data", "has_more"],
                    "properties": {"data": {"type": "array", "items": item}, "has_more": {"type": "boolean"}}}
        return _FREE_FORM
    return {"$ref": REF.format(model=answer.__name__)}


def build() -> dict[str, Any]:
    bodies = {op.body for op in OPERATIONS if op.body} | {models.RefundOut, models.TransactionOut}
    _, schemas = models_json_schema([(m, "validation") for m in sorted(bodies, key=lambda m: m.__name__)],
                                    ref_template=REF)
    components = schemas.get("$defs", {})
    components["Problem"] = PROBLEM
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        operation: dict[str, Any] = {"summary": op.summary, "responses": {}}
        if op.scope:
            operation["security"] = [{"bearer": [op.scope]}, {"apiKey": [op.scope]}]
            operation["description"] = f"Needs an API key with the `{op.scope}` scope."
        params = [{"name": name.strip("{}"), "in": "path", "required": True, "schema": {"type": "string"}}
                  for name in op.path.split("/") if name.startswith("{")]
        params += [{"name": q, "in": "query", "required": False, "schema": {"type": "string"}} for q in op.query]
        if op.method == "post" and op.scope:
            params.append({"name": "Idempotency-Key", "in": "header", "required": False,
                           "schema": {"type": "string", "maxLength": 255},
                           "description": "Same key and body: the first answer again; another body: 409."})
        if params:
            operation["parameters"] = params
        if op.body is not None:
            operation["requestBody"] = {"required": True, "content": {"application/json": {
                "schema": {"$ref": REF.format(model=op.body.__name__)}}}}
        for status, answer in op.answers.items():
            schema = (_response_schema(answer, set(components)) if op.media == "application/json"
                      else {"type": "string"})
            operation["responses"][str(status)] = {"description": "OK" if status < 300 else "",
                                                   "content": {op.media: {"schema": schema}}}
        for status in op.errors:
            operation["responses"][str(status)] = {"description": "Problem", "content": {
                "application/problem+json": {"schema": {"$ref": REF.format(model="Problem")}}}}
        paths.setdefault(op.path, {})[op.method] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "psp-gateway", "version": "1",
                 "description": "Refunds from a billing core through its payment processors. Amounts are integer "
                                "minor units of an ISO 4217 currency; errors are application/problem+json."},
        "paths": paths,
        "components": {"schemas": components, "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer"},
            "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}}},
    }
