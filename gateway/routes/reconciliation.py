"""Reconciliation for the operator (`admin` scope): the findings of the runs, their resolution, and
the runs' summaries. Runs themselves are started by `psp-gateway reconcile` or on a schedule."""

from __future__ import annotations

from aiohttp import web

from gateway import keys, reconcile
from gateway.auth import require
from gateway.db import store
from gateway.http import model_response, parse_body, parse_query
from gateway.models import FindingList, FindingOut, FindingQuery, ResolveFindingRequest, RunList, RunOut, RunQuery

routes = web.RouteTableDef()


@routes.get("/admin/reconciliation/findings")
async def list_findings(request: web.Request) -> web.Response:
    require(request, "admin")
    query = parse_query(request, FindingQuery)
    async with request.app[keys.POOL].acquire() as conn:
        rows = await store.list_findings(conn, status=query.status, processor=query.processor, kind=query.kind,
                                         starting_after=query.starting_after or None, limit=query.limit)
    return model_response(FindingList(data=[FindingOut.from_row(r) for r in rows[:query.limit]],
                                      has_more=len(rows) > query.limit))


@routes.post("/admin/reconciliation/findings/{id}/resolve")
async def resolve_finding(request: web.Request) -> web.Response:
    actor = require(request, "admin").id
    body = await parse_body(request, ResolveFindingRequest)
    raw = request.match_info["id"]
    finding_id = int(raw) if raw.isascii() and raw.isdigit() and len(raw) <= 18 else -1
    row = await reconcile.resolve(request.app[keys.POOL], finding_id, actor=actor, reason=body.reason,
                                  request_id=request[keys.REQUEST_ID])
    return model_response(FindingOut.from_row(row))


@routes.get("/admin/reconciliation/runs")
async def list_runs(request: web.Request) -> web.Response:
    require(request, "admin")
    query = parse_query(request, RunQuery)
    async with request.app[keys.POOL].acquire() as conn:
        rows = await store.list_runs(conn, processor=query.processor, starting_after=query.starting_after or None,
                                     limit=query.limit)
    return model_response(RunList(data=[RunOut.from_row(r) for r in rows[:query.limit]],
                                  has_more=len(rows) > query.limit))
