"""GET /v1/events: the refund events the callbacks carry, for a billing core that polls. They come
in the order they were committed (not always by id): the cursor is the last event's id."""

from __future__ import annotations

from aiohttp import web

from gateway import errors, keys
from gateway.auth import require
from gateway.callbacks import event_body
from gateway.db import store
from gateway.http import json_response, parse_query
from gateway.models import EventQuery

routes = web.RouteTableDef()


@routes.get("/v1/events")
async def list_events(request: web.Request) -> web.Response:
    require(request, "refunds:read")
    query = parse_query(request, EventQuery)
    after, limit = query.after, query.limit
    async with request.app[keys.POOL].acquire() as conn:
        rows = await store.events_after(conn, after, limit)
    if rows is None:
        raise errors.InvalidRequest("after names no event: pass the id of the last event received",
                                    code="unknown_cursor", errors=[{"field": "after", "message": "no such event"}])
    return json_response({"object": "list", "data": [event_body(r) for r in rows[:limit]],
                          "has_more": len(rows) > limit})
