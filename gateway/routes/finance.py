"""GET /admin/exports/refunds: the finance export (gateway.finance_export), streamed from a cursor."""

from __future__ import annotations

from aiohttp import web

from gateway import finance_export, keys
from gateway.auth import require
from gateway.db import store
from gateway.http import parse_query
from gateway.models import ExportQuery

routes = web.RouteTableDef()
BATCH = 500


@routes.get("/admin/exports/refunds")
async def export_refunds(request: web.Request) -> web.StreamResponse:
    require(request, "admin")
    query = parse_query(request, ExportQuery)
    name = f"refunds_{query.since:%Y%m%dT%H%M%SZ}_{query.until:%Y%m%dT%H%M%SZ}.{query.format}"
    response = web.StreamResponse(headers={"Content-Type": finance_export.CONTENT_TYPES[query.format],
                                           "Content-Disposition": f'attachment; filename="{name}"',
                                           "Cache-Control": "no-store"})
    async with request.app[keys.POOL].acquire() as conn, conn.transaction(isolation="repeatable_read",
                                                                        readonly=True):
        await response.prepare(request)
        await response.write(finance_export.header(query.format))
        batch = []
        async for record in store.export_cursor(conn, query.since, query.until, prefetch=BATCH):
            batch.append(finance_export.row(record))
            if len(batch) >= BATCH:
                await response.write(finance_export.chunk(batch, query.format))
                batch = []
        await response.write(finance_export.chunk(batch, query.format))
    await response.write_eof()
    return response
