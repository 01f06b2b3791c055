"""The OpenAPI 3.1 document, built from the same pydantic models that validate requests, parse
queries and shape responses. Written here: the list of operations (a test holds it to the router),
the problem codes each raises beyond the middleware's (added by rule), and what every code means."""

from __future__ import annotations

from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import orjson
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from gateway import callbacks, errors, models

REF = "#/components/schemas/{model}"
# What an operation takes or answers: a model, several (one of them), or a JSON schema (not JSON, or
# not ours) with its own "examples".
Shape = type[BaseModel] | tuple[type[BaseModel], ...] | dict[str, Any]


@dataclass(frozen=True)
class Code:
    status: int
    meaning: str
    detail: str  # an example's
    extra: dict[str, Any] = field(default_factory=dict)


_CANDIDATES = [{"transaction_id": "tx_01hz3v6r1k8m2q4w6y8a0c2e4g", "processor": "stripe",
                "psp_reference": "ch_3PqRstUvWxYz0123", "currency": "EUR", "refundable_amount": 2700},
               {"transaction_id": "tx_01hz3v9d2f4h6k8m0p2r4t6v8x", "processor": "stripe",
                "psp_reference": "ch_3PqRstUvWxYz0999", "currency": "EUR", "refundable_amount": 1000}]

# Every `code` a problem can carry. tests/e2e/test_openapi.py collects the codes the source raises:
# one missing here fails it.
ERROR_CODES: dict[str, Code] = {
    "malformed_request": Code(400, "The request cannot be read: the body is not JSON, or not HTTP the server "
                                   "understands.", "the body is not valid JSON"),
    "invalid_idempotency_key": Code(400, "Idempotency-Key is not 1 to 255 printable ASCII characters.",
                                    "Idempotency-Key must be 1 to 255 printable ASCII characters"),
    "invalid_signature": Code(400, "The webhook's signature did not verify; only a rejection is recorded.",
                              "webhook rejected: no v1 signature matches"),
    "unauthorized": Code(401, "No API key, or one the gateway does not know (Authorization: Bearer <key> or "
                              "X-API-Key).", "a valid API key is required (Authorization: Bearer <key> or X-API-Key)"),
    "same_requester": Code(403, "A refund is approved or rejected by another client than the one that asked for "
                                "it (four eyes).", "the refund must be approved or rejected by another client"),
    "forbidden": Code(403, "The key lacks the operation's scope.", "this API key lacks the 'refunds:write' scope",
                      {"required_scope": "refunds:write"}),
    "not_found": Code(404, "No such path.", "Not Found"),
    "processor_not_found": Code(404, "No processor account with this id takes webhooks here (BridgePay sends none).",
                                "no processor 'bridgepay' takes webhooks here"),
    "transaction_not_found": Code(404, "No registered payment matches (the transaction id, the psp_reference, or "
                                       "any on the invoice).", "invoice 'INV-2024-0042' has no registered payment"),
    "refund_not_found": Code(404, "No refund with this id.", "no refund 'rf_01hz3v7c9p1r3t5v7x9z1b3d5f'"),
    "credit_note_not_found": Code(404, "No refund was ever made for this credit note (on this invoice).",
                                  "no refund for credit note 'CN-2024-0007'"),
    "finding_not_found": Code(404, "No reconciliation finding with this id.", "no reconciliation finding 7"),
    "webhook_event_not_found": Code(404, "No stored webhook event with this id that can be reprocessed now.",
                                    "no webhook event '42' that can be reprocessed now"),
    "method_not_allowed": Code(405, "The path does not take this method.", "Method Not Allowed"),
    "idempotency_key_reused": Code(409, "This Idempotency-Key came with another request (method, path or body); "
                                        "nothing ran.", "this Idempotency-Key was used with a different request"),
    "idempotency_key_in_use": Code(409, "The first request with this Idempotency-Key is still running: retry after "
                                        "Retry-After.", "a request with this Idempotency-Key is still being processed"),
    "transaction_conflict": Code(409, "This payment is registered already, with other values.",
                                 "transaction 'ch_3PqRstUvWxYz0123' at 'stripe' is already registered with other "
                                 "values", {"transaction_id": "tx_01hz3v6r1k8m2q4w6y8a0c2e4g",
                                            "conflicting_fields": ["amount"]}),
    "ambiguous_transaction": Code(409, "Several of the invoice's payments could take the refund: name one with "
                                       "transaction_id.", "several transactions match: name one with transaction_id",
                                  {"candidates": _CANDIDATES}),
    "credit_note_conflict": Code(409, "The credit note already has a live or refunded refund, and the command asks "
                                      "for another amount or method: read the credit note; retry only after a "
                                      "decline or a cancel.",
                                 "credit note 'CN-2024-0007': the credit note already has rf_01hz3v7c9p1r3t5v7x9z1b3d5f "
                                 "(succeeded, 1500): it cannot also be refunded 2000",
                                 {"refund_id": "rf_01hz3v7c9p1r3t5v7x9z1b3d5f", "refund_amount": 1500,
                                  "refunds": [{"id": "rf_01hz3v7c9p1r3t5v7x9z1b3d5f", "status": "succeeded",
                                               "amount": 1500}]}),
    "ambiguous_credit_note": Code(409, "The credit note id is used on several invoices: give invoice_id.",
                                  "credit note 'CN-7' is used on several invoices: give invoice_id"),
    "refund_superseded": Code(409, "A later refund of the same credit note retried this one: act on that one.",
                              "refund rf_01hz3v7c9p1r3t5v7x9z1b3d5f was retried by a later refund of its credit note",
                              {"status_now": "failed"}),
    "finding_resolved": Code(409, "The finding is resolved already.", "finding 7 is resolved already"),
    "awaiting_approval": Code(409, "The refund awaits a second person's approval: approve or reject it.",
                              "the refund awaits approval: approve or reject it; it cannot be replayed"),
    "not_awaiting_approval": Code(409, "The refund does not await approval.",
                                  "the refund does not await approval (it is succeeded, stage done)"),
    "payment_disputed": Code(409, "The payment is under dispute: no refund goes to its processor until the dispute "
                                  "is closed (the card network would not take both).",
                             "transaction tx_01hz3v6r1k8m2q4w6y8a0c2e4g is under dispute",
                             {"transaction_id": "tx_01hz3v6r1k8m2q4w6y8a0c2e4g"}),
    "refund_final": Code(409, "The refund is final: nothing to replay or resolve.",
                         "a succeeded refund cannot be replayed", {"status_now": "succeeded"}),
    "refund_in_flight": Code(409, "A processor call for this refund is in flight: retry after Retry-After.",
                             "a processor call for this refund is in flight; try again shortly"),
    "would_over_refund": Code(409, "Settling the refund as refunded would take the payment's refunded total beyond "
                                   "its amount: reconcile with the processor first.",
                              "the payment's other refunds leave no room for this one"),
    "request_timeout": Code(408, "The request body did not arrive within request_read_seconds; the connection "
                                 "is closed.", "the request body did not arrive within 10 s"),
    "payload_too_large": Code(413, "The body is larger than max_body_bytes.",
                              "the request body is larger than this endpoint accepts"),
    "unsupported_media_type": Code(415, "The body is not sent as application/json.",
                                   "send the body as application/json"),
    "validation_error": Code(422, "The body, a query or a path parameter is not what the operation takes; "
                                  "`errors` names each field.", "invoice_id: Field required",
                             {"errors": [{"field": "invoice_id", "message": "Field required", "type": "missing"}]}),
    "invalid_amount": Code(422, "amount is not a positive integer number of minor units.",
                           "amount: amount must be greater than zero",
                           {"errors": [{"field": "amount", "message": "amount must be greater than zero",
                                        "type": "invalid_amount"}]}),
    "invalid_currency": Code(422, "currency is not an ISO 4217 code.",
                             "currency: unknown currency 'EUX': use an ISO 4217 code such as EUR",
                             {"errors": [{"field": "currency", "type": "invalid_currency",
                                          "message": "unknown currency 'EUX': use an ISO 4217 code such as EUR"}]}),
    "unknown_processor": Code(422, "No processor account with this id is configured.",
                              "no processor account 'adyen' is configured",
                              {"errors": [{"field": "processor", "message": "unknown processor account"}]}),
    "currency_not_supported": Code(422, "The processor account does not take this currency.",
                                   "'bridgepay' refunds only in USD",
                                   {"errors": [{"field": "currency", "message": "not supported by this processor"}]}),
    "amount_exceeds_refundable": Code(422, "More than is left to refund; `refundable_amount` says what is.",
                                      "amount 3000 exceeds the refundable 2700", {"refundable_amount": 2700}),
    "card_number_not_allowed": Code(422, "A text field, a path or a query value holds what looks like a card number "
                                         "(13 to 19 digits passing the Luhn check, spaces or dashes allowed): the "
                                         "gateway never takes card data. `errors` names the field; the value is "
                                         "never echoed.", "reason: looks like a card number, which the gateway "
                                                          "never takes: remove it",
                                    {"errors": [{"field": "reason", "type": "card_number_not_allowed",
                                                 "message": "looks like a card number, which the gateway never "
                                                            "takes: remove it"}]}),
    "refund_window_expired": Code(422, "The payment is older than the refund window (max_refund_age_days): "
                                       "refund it with method offline.",
                                  "transaction tx_01hz3v6r1k8m2q4w6y8a0c2e4g was paid more than 180 days ago",
                                  {"transaction_id": "tx_01hz3v6r1k8m2q4w6y8a0c2e4g", "next_action": "refund_offline"}),
    "daily_limit_exceeded": Code(422, "The client has made its daily_refund_cap of refunds today (UTC).",
                                 "client 'billing' has made 500 refunds today (UTC), and may make 500 a day",
                                 {"refunds_today": 500, "daily_cap": 500}),
    "payment_voided": Code(422, "The processor voided this unsettled payment once (BridgePay allows one void per "
                                "sale): nothing more is refundable through it until it is registered again as "
                                "settled; refund the rest with method offline.",
                           "the processor voided transaction tx_01hz3v6r1k8m2q4w6y8a0c2e4g while it was unsettled",
                           {"refundable_amount": 0, "transaction_id": "tx_01hz3v6r1k8m2q4w6y8a0c2e4g"}),
    "processor_unavailable": Code(503, "The processor did not answer a cancel: retry after Retry-After.",
                                  "the processor did not answer the cancel: Stripe 503; retry"),
    "currency_mismatch": Code(422, "The refund's currency is not the payment's.",
                              "the transaction is in EUR, the refund in USD", {"transaction_currency": "EUR"}),
    "invoice_mismatch": Code(422, "The named payment belongs to another invoice.",
                             "transaction 'tx_01hz3v6r1k8m2q4w6y8a0c2e4g' belongs to invoice 'INV-2024-0041', not "
                             "'INV-2024-0042'"),
    "unknown_cursor": Code(422, "`after` names no event: pass the id of the last event received.",
                           "after names no event: pass the id of the last event received",
                           {"errors": [{"field": "after", "message": "no such event"}]}),
    "rate_limited": Code(429, "The client is over its rate limit: retry after Retry-After.",
                         "client 'billing' is over its rate limit"),
    "internal_error": Code(500, "A bug: it has been logged with the request's X-Request-ID.",
                           "an unexpected error occurred; it has been logged"),
    "http_error": Code(400, "Another HTTP error from the server itself; its status is its own.", "Bad Request"),
    "database_unavailable": Code(503, "The database cannot be reached: retry after Retry-After.",
                                 "the database is unavailable; retry later"),
    "idempotency_key_lost": Code(503, "This request's Idempotency-Key was released by another request with it "
                                      "while this one ran: retry with the same key after Retry-After.",
                                 "this request's Idempotency-Key was released while it ran; retry"),
    "migrations_pending": Code(503, "The database schema is older than this gateway needs (psp-gateway migrate).",
                               "migrations pending: at 6, need 7"),
}
# Raised by the server for any path, not one operation: described once, in the Problem schema.
GLOBAL_CODES = ("not_found", "method_not_allowed", "internal_error", "http_error")
_KEYED = ("unauthorized", "forbidden", "rate_limited")  # auth middleware: every operation with a scope
_IDEMPOTENT = ("invalid_idempotency_key", "idempotency_key_reused", "idempotency_key_in_use")  # keyed POSTs
_PARSED_BODY = ("malformed_request", "payload_too_large", "unsupported_media_type", "validation_error",
                "card_number_not_allowed", "request_timeout")
_REFUND_CODES = ("invalid_amount", "invalid_currency", "transaction_not_found", "ambiguous_transaction",
                 "amount_exceeds_refundable", "currency_mismatch", "invoice_mismatch", "idempotency_key_lost",
                 "credit_note_conflict", "payment_voided", "refund_window_expired", "daily_limit_exceeded",
                 "payment_disputed")
_ADMIN_REFUND_CODES = ("refund_not_found", "refund_final", "refund_in_flight", "awaiting_approval")
_RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before trying again", "schema": {"type": "string"}}}
_RESPONSE_HEADERS = {401: {"WWW-Authenticate": {"schema": {"type": "string"}}}, 409: _RETRY_AFTER,
                     429: _RETRY_AFTER, 503: _RETRY_AFTER}


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    summary: str
    scope: str | None  # None: no API key (health, webhooks signed by their processor)
    body: Shape | None = None  # a request model (gateway.http.parse_body), or a processor's payloads
    answers: dict[int, Shape] = field(default_factory=dict)
    codes: tuple[str, ...] = ()  # raised by the handler or what it calls; the middleware's are added by rule
    query: type[BaseModel] | None = None
    database: bool = True  # reads the database: 503 database_unavailable while it is away
    media: str = "application/json"  # of its answers
    notes: dict[int, str] = field(default_factory=dict)  # what an answer means, beyond "OK"
    headers: tuple[tuple[str, str], ...] = ()  # request headers it reads: (name, description)

    @property
    def operation_id(self) -> str:
        words = [w.strip("{}") for w in self.path.strip("/").replace("-", "_").split("/")]
        return "_".join([self.method, *words]).replace(".", "_")

    def parses_body(self) -> bool:
        return isinstance(self.body, type)  # a tuple: the processors' payloads, which their adapters read

    def problem_codes(self) -> list[str]:
        """The middleware's codes by rule (who it applies to), then the operation's own."""
        found: list[str] = []
        if self.scope:
            found += _KEYED
            if self.method == "post":
                found += _IDEMPOTENT
        if self.parses_body():
            found += _PARSED_BODY
        if self.query is not None or "{" in self.path:  # gateway.http.check_url and the query model
            found += ["validation_error", "card_number_not_allowed"]
        if self.database:
            found.append("database_unavailable")
        return list(dict.fromkeys(found + list(self.codes)))


_REFUND_ANSWERS = {201: (models.RefundOut, models.CreditNoteOut), 200: (models.RefundOut, models.CreditNoteOut)}
_REFUND_NOTES = {201: "Created: its status so far (pending if the processor has not answered in time). With "
                      "allocation auto, the credit note with its refunds.",
                 200: "Asked before the same way: the credit note's refund (or, with allocation auto, the credit "
                      "note)."}
_ADMIN_LIST = ("Only refunds not final are replayed; each is audited, and a refusal (final, in flight) is a "
               "result, not an error.")

OPERATIONS = [
    Operation("post", "/v1/transactions", "Register an original payment (idempotent on processor + reference)",
              "transactions:write", models.TransactionCreate,
              {201: models.TransactionOut, 200: models.TransactionOut},
              ("invalid_amount", "invalid_currency", "unknown_processor", "currency_not_supported",
               "transaction_conflict"), notes={200: "Registered before with the same values: that payment."}),
    Operation("get", "/v1/transactions", "The payments of an invoice", "transactions:read",
              answers={200: models.TransactionList}, query=models.TransactionQuery),
    Operation("get", "/v1/transactions/{id}", "One payment, with refunded, reserved and refundable amounts",
              "transactions:read", answers={200: models.TransactionOut}, codes=("transaction_not_found",)),
    Operation("post", "/v1/refunds", "Refund (part of) an invoice's payment", "refunds:write", models.RefundCreate,
              _REFUND_ANSWERS, _REFUND_CODES, notes=_REFUND_NOTES),
    Operation("post", "/v1/invoices/{invoice_id}/refund", "Refund an invoice (the billing core's shape)",
              "refunds:write", models.RefundTarget, _REFUND_ANSWERS, _REFUND_CODES, notes=_REFUND_NOTES),
    Operation("post", "/v1/refunds/{id}/cancel", "Cancel a refund that has not reached the processor",
              "refunds:write", models.CancelRequest, {200: models.RefundOut},
              ("refund_not_found", "refund_final", "refund_in_flight", "unknown_processor", "processor_unavailable"),
              notes={200: "Canceled: its amount is released. A Stripe refund in requires_action is canceled at "
                          "Stripe first."}),
    Operation("get", "/v1/credit-notes/{credit_note_id}", "A credit note: where it stands and every attempt",
              "refunds:read", answers={200: models.CreditNoteOut}, query=models.CreditNoteQuery,
              codes=("credit_note_not_found", "ambiguous_credit_note")),
    Operation("get", "/v1/refunds", "Refunds, newest first", "refunds:read", answers={200: models.RefundList},
              query=models.RefundQuery),
    Operation("get", "/v1/refunds/{id}", "One refund", "refunds:read", answers={200: models.RefundOut},
              codes=("refund_not_found",)),
    Operation("get", "/v1/events", "Refund events (the callbacks' payloads), in the order they were committed",
              "refunds:read", answers={200: models.EventList}, codes=("unknown_cursor",), query=models.EventQuery),
    Operation("post", "/v1/webhooks/{processor_id}", "A processor's webhook, verified by its signature", None,
              (models.StripeEvent, models.MockWebhook), {200: models.WebhookReceipt},
              ("processor_not_found", "unsupported_media_type", "payload_too_large", "invalid_signature",
               "request_timeout"),
              notes={200: "Verified and stored (applied in the background); a duplicate is acknowledged again."},
              headers=(("Stripe-Signature", "processors of kind stripe: t=<unix>,v1=<hex>"),
                       ("Mock-Signature", "processors of kind mock: hex HMAC-SHA256 of the body"))),
    Operation("get", "/admin/refunds", "Refunds for an operator; stuck ones with counts by reason", "admin",
              answers={200: models.AdminRefundList}, query=models.AdminRefundQuery),
    Operation("post", "/admin/refunds/{id}/replay", "Resync with the processor, resend with the same key if needed",
              "admin", models.ReplayRequest, {200: models.ReplayResult},
              (*_ADMIN_REFUND_CODES, "unknown_processor", "payment_disputed")),
    Operation("post", "/admin/refunds/replay", "Replay refunds by filter (dry run lists them)", "admin",
              models.BulkReplayRequest, {200: (models.BulkReplayPreview, models.BulkReplayResult)},
              notes={200: _ADMIN_LIST}),
    Operation("post", "/admin/refunds/{id}/resolve", "Resolve a refund outside the processor", "admin",
              models.ResolveRequest, {200: models.RefundOut},
              (*_ADMIN_REFUND_CODES, "would_over_refund", "refund_superseded"),
              notes={200: "Settled. A failed refund may be resolved refunded_offline (paid back outside the "
                          "processor) unless the billing core retried it."}),
    Operation("post", "/admin/refunds/{id}/approve", "Approve a refund over its approval threshold: it is sent",
              "admin", models.ApprovalRequest, {200: models.RefundOut},
              ("refund_not_found", "refund_final", "refund_in_flight", "not_awaiting_approval", "same_requester",
               "payment_disputed")),
    Operation("post", "/admin/refunds/{id}/reject", "Reject a refund over its approval threshold: canceled",
              "admin", models.ApprovalRequest, {200: models.RefundOut},
              ("refund_not_found", "refund_final", "refund_in_flight", "not_awaiting_approval", "same_requester")),
    Operation("get", "/admin/exports/refunds", "The finance export: every refund settled in a period (CSV or JSON "
              "lines, streamed)", "admin", answers={200: {"type": "string", "examples": [
                  "refund_id,settled_at,status,method,amount,currency,amount_decimal,...\r\n"]}},
              query=models.ExportQuery, media="text/csv",
              notes={200: "CSV: UTF-8 with a BOM, a header row, CRLF; format=jsonl: one JSON object per line."}),
    Operation("get", "/admin/disputes", "Disputes of payments (open ones: ?status=open)", "admin",
              answers={200: models.DisputeList}, query=models.DisputeQuery),
    Operation("post", "/admin/disputes", "Record a dispute for a processor without dispute webhooks (audited)",
              "admin", models.DisputeRecord, {200: models.DisputeOut}, ("transaction_not_found",)),
    Operation("get", "/admin/reconciliation/findings", "Reconciliation findings (open ones: ?status=open)", "admin",
              answers={200: models.FindingList}, query=models.FindingQuery),
    Operation("post", "/admin/reconciliation/findings/{id}/resolve", "Resolve a finding, with a reason (audited)",
              "admin", models.ResolveFindingRequest, {200: models.FindingOut},
              ("finding_not_found", "finding_resolved")),
    Operation("get", "/admin/reconciliation/runs", "Reconciliation runs: period, counts, how they ended", "admin",
              answers={200: models.RunList}, query=models.RunQuery),
    Operation("get", "/admin/webhook-events", "Stored webhook events (unmatched, failed, ...)", "admin",
              answers={200: models.WebhookEventList}, query=models.WebhookEventQuery),
    Operation("post", "/admin/webhook-events/{id}/reprocess", "Apply one stored event again", "admin",
              models.ReprocessRequest, {200: models.ReprocessResult}, ("webhook_event_not_found",)),
    Operation("post", "/admin/webhook-events/reprocess", "Queue every event of a status again", "admin",
              models.BulkReprocessRequest, {200: models.Queued}),
    Operation("get", "/healthz", "The process is up", None, answers={200: models.Health}, database=False),
    Operation("get", "/readyz", "The database is reachable and migrated", None, answers={200: models.Readiness},
              codes=("migrations_pending",)),
    Operation("get", "/metrics", "Prometheus metrics, text exposition (a bearer token only when metrics_token "
              "is set)", None, answers={200: {"type": "string", "examples": [
                  ("# HELP psp_gateway_database_up 1 when this scrape's database queries answered in time\n"
                   "# TYPE psp_gateway_database_up gauge\ngateway_database_up 1.0\n")]}},
              codes=("unauthorized",), database=False, media="text/plain",
              notes={200: "Answers without the database too: then psp_gateway_database_up is 0."}),
    Operation("get", "/openapi.json", "This document (OpenAPI 3.1, JSON)", None, answers={200: {
        "type": "object", "required": ["openapi", "info", "paths"], "properties": {"openapi": {"const": "3.1.0"}},
        "examples": [{"openapi": "3.1.0", "info": {"title": "psp-gateway", "version": "1"}, "paths": {}}]}},
              database=False),
    Operation("get", "/problems/{code}", "A problem code's meaning: the `type` of every problem", None,
              answers={302: {"type": "string", "examples": [""]}}, codes=("not_found",), database=False,
              notes={302: "To the code's entry on /docs (Location: /docs#examples-<code>)."}),
    Operation("get", "/docs", "This document as a page (HTML)", None, answers={200: {
        "type": "string", "examples": ["<!doctype html><html>...</html>"]}}, database=False, media="text/html"),
]


def _titles() -> dict[int, str]:
    found, todo = {}, [errors.GatewayError]
    while todo:
        cls = todo.pop()
        todo += cls.__subclasses__()
        found.setdefault(cls.status, cls.title)
    return found


_TITLES = _titles()


def problem_example(code: str) -> dict[str, Any]:
    """A problem with this code, as the error family writes it."""
    c = ERROR_CODES[code]
    err = errors.GatewayError(c.detail, code=code, **c.extra)
    err.status, err.title = c.status, _TITLES.get(c.status) or HTTPStatus(c.status).phrase
    return err.problem()


def _members(shape: Shape | None) -> tuple[type[BaseModel], ...]:
    if isinstance(shape, type):
        return (shape,)
    return shape if isinstance(shape, tuple) else ()


def examples(shape: Shape) -> list[Any]:
    if isinstance(shape, dict):
        return list(shape.get("examples", []))
    return [e for m in _members(shape) for e in (m.model_config.get("json_schema_extra") or {}).get("examples", [])]


def _schema(shape: Shape) -> dict[str, Any]:
    if isinstance(shape, dict):
        return {k: v for k, v in shape.items() if k != "examples"}
    refs = [{"$ref": REF.format(model=m.__name__)} for m in _members(shape)]
    return refs[0] if len(refs) == 1 else {"oneOf": refs}


def _content(media: str, shape: Shape) -> dict[str, Any]:
    named = {f"example{i + 1}" if i else "example": {"value": v} for i, v in enumerate(examples(shape))}
    return {media: {"schema": _schema(shape), "examples": named}}


def _present(prop: dict[str, Any]) -> dict[str, Any]:
    """A query parameter's schema: a value is a string when present, never null (absent is the default)."""
    prop = {k: v for k, v in prop.items() if k != "title"}
    branches = [b for b in prop.pop("anyOf", []) if b != {"type": "null"}]
    if branches:
        prop.update(branches[0] if len(branches) == 1 else {"anyOf": branches})
    if prop.get("default", 0) is None:
        del prop["default"]
    return prop


def _parameters(op: Operation, components: dict[str, Any]) -> list[dict[str, Any]]:
    params: list[dict[str, Any]] = [
        {"name": name.strip("{}"), "in": "path", "required": True, "schema": {
            "type": "string", "minLength": 1, "maxLength": 255, "pattern": r"^[^\x00-\x1f]+$"}}
        for name in op.path.split("/") if name.startswith("{")]
    if op.query is not None:
        schema = components[op.query.__name__]
        for name, prop in schema["properties"].items():
            prop = _present(prop)
            param = {"name": name, "in": "query", "required": name in schema.get("required", ()), "schema": prop}
            if "description" in prop:
                param["description"] = prop.pop("description")
            params.append(param)
    for name, description in op.headers:
        params.append({"name": name, "in": "header", "required": False, "description": description,
                       "schema": {"type": "string"}})
    if op.method == "post" and op.scope:
        params.append({"name": "Idempotency-Key", "in": "header", "required": False,
                       "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": r"^[\x21-\x7e]+$"},
                       "example": "cn-2024-0007-refund",
                       "description": "Same key and request: the first answer again (header Idempotent-Replayed: "
                                      "true); another request: 409 idempotency_key_reused. Invalid requests are not "
                                      "kept, so the corrected one may reuse the key."})
    return params


def _problems(op: Operation) -> dict[str, Any]:
    by_status: dict[int, list[str]] = {}
    for code in op.problem_codes():
        by_status.setdefault(ERROR_CODES[code].status, []).append(code)
    responses = {}
    for status, codes in sorted(by_status.items()):
        response: dict[str, Any] = {
            "description": " ".join(f"`{c}`: {ERROR_CODES[c].meaning}" for c in codes),
            "content": {"application/problem+json": {"schema": {"$ref": REF.format(model="Problem")}, "examples": {
                c: {"$ref": f"#/components/examples/{c}"} for c in codes}}}}
        if status in _RESPONSE_HEADERS:
            response["headers"] = _RESPONSE_HEADERS[status]
        responses[str(status)] = response
    return responses


def _callback() -> dict[str, Any]:
    """The billing core's side: what the gateway POSTs to callback_url (gateway.callbacks)."""
    example = examples(models.Event)[0]
    signed = callbacks.signature(orjson.dumps(example), [b"whsec_callback_secret"], 1718096403)
    headers = [(callbacks.SIGNATURE_HEADER, True,
                ("t=<unix seconds>,v1=<hex HMAC-SHA256 of \"<t>.<raw body>\" keyed with a callback secret>, one v1 "
                 "per secret (two during a rotation): check one in constant time and refuse a t far from now"), signed),
               ("Gateway-Event-Id", True, "the event's id: deduplicate on it (delivery is at least once)",
                str(example["id"])),
               ("X-Request-ID", True, "the id of the request (or round of background work) behind the change",
                "req_01hz3v7c9p1r3t5v7x9z1b3d5f")]
    return {"post": {
        "operationId": "refund_event", "summary": "A refund's change, POSTed to the billing core's callback_url",
        "description": "Each event until a 2xx answer, with backoff; in version order per refund (the next waits "
                       "for this one). GET /v1/events serves the same events to a billing core that polls.",
        "parameters": [{"name": n, "in": "header", "required": r, "description": d, "schema": {"type": "string"},
                        "example": e} for n, r, d, e in headers],
        "requestBody": {"required": True, "content": _content("application/json", models.Event)},
        "responses": {"2XX": {"description": "Delivered: not sent again."},
                      "default": {"description": "Not delivered: sent again later, with backoff."}}}}


def build() -> dict[str, Any]:
    shapes = [s for op in OPERATIONS for s in (op.body, op.query, *op.answers.values())]
    everything = {m for s in shapes for m in _members(s)} | {models.Problem, models.Event}
    _, schemas = models_json_schema([(m, "validation") for m in sorted(everything, key=lambda m: m.__name__)],
                                    ref_template=REF)
    components = schemas.get("$defs", {})
    code = components["Problem"]["properties"]["code"]
    code["enum"] = list(ERROR_CODES)
    code["description"] += ". Any operation may answer " + ", ".join(
        f"`{c}` ({ERROR_CODES[c].status}: {ERROR_CODES[c].meaning})" for c in GLOBAL_CODES) + "."
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        operation: dict[str, Any] = {"operationId": op.operation_id, "summary": op.summary, "responses": {}}
        if op.scope:
            operation["security"] = [{"bearer": [op.scope]}, {"apiKey": [op.scope]}]
            operation["description"] = f"Needs an API key with the `{op.scope}` scope."
        if params := _parameters(op, components):
            operation["parameters"] = params
        if op.body is not None:
            operation["requestBody"] = {"required": True, "content": _content("application/json", op.body)}
            if not op.parses_body():
                operation["requestBody"]["description"] = (
                    "The processor's own event, as it sends it: one of these, by the processor's kind.")
        for status, answer in op.answers.items():
            note = op.notes.get(status) or ("Created." if status == 201 else "OK.")
            operation["responses"][str(status)] = {"description": note, "content": _content(op.media, answer)}
        operation["responses"].update(_problems(op))
        paths.setdefault(op.path, {})[op.method] = operation
    for op in OPERATIONS:  # queries are parameters, not bodies: no schema of their own
        if op.query is not None:
            components.pop(op.query.__name__, None)
    return {
        "openapi": "3.1.0",
        "info": {"title": "psp-gateway", "version": "1",
                 "description": "Refunds from a billing core through its payment processors. Amounts are integer "
                                "minor units of an ISO 4217 currency; errors are application/problem+json with a "
                                "stable `code` (the Problem schema lists them all). Every answer carries "
                                "X-Request-ID (the caller's, if it sent a sane one). Changes to refunds reach the "
                                "billing core as signed callbacks (`webhooks` below) or from GET /v1/events."},
        "paths": paths,
        "webhooks": {"refundEvent": _callback()},
        "components": {"schemas": components, "examples": {
            c: {"summary": e.meaning, "value": problem_example(c)} for c, e in ERROR_CODES.items()},
            "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer"},
            "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}}},
    }
