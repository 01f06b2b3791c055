"""Liveness, readiness, Prometheus metrics, and the API's own description (OpenAPI and a page)."""

from __future__ import annotations

import asyncio
import functools
import hmac
import html

from aiohttp import web

from gateway import errors, keys, metrics, openapi
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


@routes.get("/metrics")
async def prometheus_metrics(request: web.Request) -> web.Response:
    return await render_metrics(request.app, request)


async def render_metrics(app: web.Application, request: web.Request) -> web.Response:
    """Open like /healthz (it holds counts by processor and status, never an id or a secret),
    unless `metrics_token` is set. `app` is the gateway's application: `psp-gateway worker
    --metrics-port` answers from a listener of its own (gateway.cli)."""
    settings = app[keys.SETTINGS]
    if settings.metrics_token is not None:
        expected = f"Bearer {settings.metrics_token.get_secret_value()}".encode()
        if not hmac.compare_digest(request.headers.get("Authorization", "").encode(), expected):
            raise errors.Unauthorized("GET /metrics needs Authorization: Bearer <metrics token>")
    body = await metrics.exposition(app[keys.POOL], app[keys.DATABASE_GAUGES],
                                    stuck_after_seconds=settings.stuck_after_seconds,
                                    outbox=bool(settings.callback_url),
                                    timeout=settings.metrics_database_timeout_seconds)
    return web.Response(body=body, headers={"Content-Type": metrics.CONTENT_TYPE})


@functools.cache
def _document() -> dict:
    return openapi.build()


@routes.get("/openapi.json")
async def openapi_json(request: web.Request) -> web.Response:
    return json_response(_document())


@routes.get("/docs")
async def docs(request: web.Request) -> web.Response:
    rows = []
    for op in openapi.OPERATIONS:
        body = op.body.__name__ if op.body else ""
        rows.append(f"<tr><td><code>{op.method.upper()} {html.escape(op.path)}</code></td>"
                    f"<td>{html.escape(op.summary)}</td><td>{html.escape(op.scope or '-')}</td>"
                    f"<td>{html.escape(body)}</td></tr>")
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>psp-gateway API</title>"
            "<style>body{font-family:sans-serif;margin:2em}td{padding:.3em .8em;border-bottom:1px solid #ddd}"
            "</style></head><body><h1>psp-gateway API</h1><p>The full description, with every request and "
            "response schema: <a href='/openapi.json'>/openapi.json</a> (OpenAPI 3.1).</p>"
            "<table><tr><th>Operation</th><th>What it does</th><th>Scope</th><th>Body</th></tr>"
            + "".join(rows) + "</table></body></html>")
    return web.Response(text=page, content_type="text/html")
