"""GET /admin/exports/refunds: the finance export (gateway.finance_export), read into a temporary
file and then sent from it, so that a slow client holds no database connection."""

from __future__ import annotations

from aiohttp import web

from gateway import finance_export, keys
from gateway.auth import require
from gateway.http import parse_query
from gateway.models import ExportQuery

routes = web.RouteTableDef()
SEND_CHUNK = 256 * 2**10


@routes.get("/admin/exports/refunds")
async def export_refunds(request: web.Request) -> web.StreamResponse:
    require(request, "admin")
    query = parse_query(request, ExportQuery)
    # Read first: a database error is then a problem answer, not a 200 cut short.
    spooled = await finance_export.spooled(request.app[keys.POOL], query.since, query.until, query.format)
    name = f"refunds_{query.since:%Y%m%dT%H%M%SZ}_{query.until:%Y%m%dT%H%M%SZ}.{query.format}"
    response = web.StreamResponse(headers={"Content-Type": finance_export.CONTENT_TYPES[query.format],
                                           "Content-Disposition": f'attachment; filename="{name}"',
                                           "Cache-Control": "no-store"})
    with spooled:
        await response.prepare(request)
        while data := spooled.read(SEND_CHUNK):
            await response.write(data)
    await response.write_eof()
    return response
