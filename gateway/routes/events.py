"""GET /v1/events: the refund events the callbacks carry, for a billing core that polls."""

from __future__ import annotations

from aiohttp import web

from gateway import keys
from gateway.auth import require
from gateway.callbacks import event_body
from gateway.db import store
from gateway.http import json_response, query_int

routes = web.RouteTableDef()


@routes.get("/v1/events")
async def list_events(request: web.Request) -> web.Response:
    require(request, "refunds:read")
    after = query_int(request, "after", 0, 0, 2**62)
    limit = query_int(request, "limit", 100, 1, 1000)
    async with request.app[keys.POOL].acquire() as conn:
        rows = await store.events_after(conn, after, limit)
    return json_response({"data": [event_body(r) for r in rows[:limit]], "has_more": len(rows) > limit})
