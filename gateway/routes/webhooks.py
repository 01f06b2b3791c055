"""Processor webhooks: POST /v1/webhooks/{processor_id}, verified by the processor's signature."""

from __future__ import annotations

import structlog
from aiohttp import web

from adapters.base import WebhookVerificationError
from gateway import errors, keys, metrics, webhooks
from gateway.db import store
from gateway.http import model_response, read_body
from gateway.logging import scrub_text
from gateway.models import WebhookReceipt

routes = web.RouteTableDef()
log = structlog.get_logger(__name__)


@routes.post("/v1/webhooks/{processor_id}")
async def receive_webhook(request: web.Request) -> web.Response:
    processor_id = request.match_info["processor_id"]
    adapter = request.app[keys.ADAPTERS].get(processor_id)
    if adapter is None or not adapter.capabilities.webhooks:
        raise errors.NotFound(f"no processor {processor_id!r} takes webhooks here", code="processor_not_found")
    if request.content_type != "application/json":
        _rejected(processor_id, "content type is not application/json", request.content_length,
                  content_type=request.content_type[:100])
        raise errors.UnsupportedMediaType("webhooks must be application/json")
    try:
        body = await read_body(request)
    except web.HTTPRequestEntityTooLarge:
        _rejected(processor_id, "body larger than max_body_bytes", request.content_length)
        raise
    try:
        receipt = await webhooks.receive(request.app[keys.POOL], adapter, request.headers, body)
    except WebhookVerificationError as e:
        _rejected(processor_id, str(e), len(body))
        async with request.app[keys.POOL].acquire() as conn:
            await store.insert_rejection(conn, processor_id, scrub_text(str(e)),
                                         webhooks.storable_headers(request.headers), webhooks.storable_body(body))
        raise errors.MalformedRequest(f"webhook rejected: {e}", code="invalid_signature") from None
    if receipt.stored and not receipt.unreadable:
        request.app[keys.WEBHOOK_WAKE].set()
    # An unreadable body is acknowledged too: it is stored (failed), and the processor could only resend it.
    return model_response(WebhookReceipt(received=True, event_id=receipt.event_id, duplicate=not receipt.stored))


def _rejected(processor_id: str, reason: str, size: int | None, **detail: str) -> None:
    """Every refused webhook is logged and counted; never with its body (anyone can send one)."""
    log.warning("webhook_rejected", processor=processor_id, reason=reason, bytes=size, **detail)
    metrics.child(metrics.WEBHOOK_EVENTS, processor_id, "rejected").inc()
