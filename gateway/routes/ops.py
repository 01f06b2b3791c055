"""Liveness and readiness."""

from __future__ import annotations

import asyncio

from aiohttp import web

from gateway import errors, keys
from gateway.db.migrate import current_version, latest_version
from gateway.http import json_response

routes = web.RouteTableDef()


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    try:
        async with asyncio.timeout(2):
            async with request.app[keys.POOL].acquire() as conn:
                version = await current_version(conn)
    except Exception:
        raise errors.ServiceUnavailable("the database is unreachable", code="database_unavailable",
                                        headers={"Retry-After": "5"}) from None
    if version < latest_version():
        raise errors.ServiceUnavailable(f"migrations pending: at {version}, need {latest_version()}",
                                        code="migrations_pending")
    return json_response({"status": "ready", "schema_version": version})
