"""GET /admin/exports/refunds: the finance export (gateway.finance_export), streamed from a cursor."""

from __future__ import annotations

from aiohttp import web

from gateway import finance_export, keys
from gateway.auth import require
from gateway.http import parse_query
from gateway.models import ExportQuery

routes = web.RouteTableDef()


@routes.get("/admin/exports/refunds")
async def export_refunds(request: web.Request) -> web.StreamResponse:
    require(request, "admin")
    query = parse_query(request, ExportQuery)
    name = f"refunds_{query.since:%Y%m%dT%H%M%SZ}_{query.until:%Y%m%dT%H%M%SZ}.{query.format}"
    response = web.StreamResponse(headers={"Content-Type": finance_export.CONTENT_TYPES[query.format],
                                           "Content-Disposition": f'attachment; filename="{name}"',
                                           "Cache-Control": "no-store"})
    async with request.app[keys.POOL].acquire() as conn:
        await response.prepare(request)
        await finance_export.stream(conn, query.since, query.until, query.format, response.write)
    await response.write_eof()
    return response
