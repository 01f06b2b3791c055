"""Processor webhooks: POST /v1/webhooks/{processor_id}, verified by the processor's signature."""

from __future__ import annotations

import structlog
from aiohttp import web

from adapters.base import WebhookVerificationError
from gateway import errors, keys, metrics, webhooks
from gateway.db import store
from gateway.http import json_response

routes = web.RouteTableDef()
log = structlog.get_logger(__name__)


@routes.post("/v1/webhooks/{processor_id}")
async def receive_webhook(request: web.Request) -> web.Response:
    processor_id = request.match_info["processor_id"]
    adapter = request.app[keys.ADAPTERS].get(processor_id)
    if adapter is None or not adapter.capabilities.webhooks:
        raise errors.NotFound(f"no processor {processor_id!r} takes webhooks here", code="processor_not_found")
    if request.content_type != "application/json":
        raise errors.UnsupportedMediaType("webhooks must be application/json")
    body = await request.read()
    try:
        event, stored = await webhooks.receive(request.app[keys.POOL], adapter, request.headers, body)
    except WebhookVerificationError as e:
        log.warning("webhook_rejected", processor=processor_id, reason=str(e), bytes=len(body))
        metrics.WEBHOOK_EVENTS.labels(processor_id, "rejected").inc()
        async with request.app[keys.POOL].acquire() as conn:
            await store.insert_rejection(conn, processor_id, str(e),
                                         webhooks.storable_headers(request.headers), body)
        raise errors.MalformedRequest(f"webhook rejected: {e}", code="invalid_signature") from None
    if stored:
        request.app[keys.WEBHOOK_WAKE].set()
    return json_response({"received": True, "event_id": event.event_id, "duplicate": not stored})
